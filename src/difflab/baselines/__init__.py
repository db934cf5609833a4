"""VAE-family baselines (categorical / Gaussian / hierarchical VAEs) for the score-SDE study (seed 003)."""

from difflab.baselines.hvae import HierarchicalVAE
from difflab.baselines.vae import (
    CategoricalVAE,
    GaussianVAE,
    bits_per_dim,
    contingency_table,
    exponential_tau_schedule,
    gaussian_kl,
    gaussian_log_prob,
    gumbel_softmax_sample,
    mode_category_purity,
    nats_per_dim,
    standard_normal_kl,
    train_vae,
)

__all__ = [
    "CategoricalVAE",
    "GaussianVAE",
    "HierarchicalVAE",
    "bits_per_dim",
    "contingency_table",
    "exponential_tau_schedule",
    "gaussian_kl",
    "gaussian_log_prob",
    "gumbel_softmax_sample",
    "mode_category_purity",
    "nats_per_dim",
    "standard_normal_kl",
    "train_vae",
]
