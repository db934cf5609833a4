"""Sample-based metrics for 2D (low-dimensional) generative models, defined so they mean something.

Every function works in float64 internally, is vectorised, and bounds memory by chunking pairwise
computations (at most ``CHUNK_ELEMS`` pair entries live at once). Units: KL values are in nats; distances
(mean / covariance distance, Wasserstein, sliced Wasserstein, MMD bandwidth) are in the units of the data
(for :mod:`difflab.data.toy2d`, z-scored units); MMD^2 is dimensionless (kernel values lie in [0, 1]).

* :func:`exact_kl`  KL(q || p_theta) = E_q[log q - log p_theta] from model log-densities (e.g. PF-ODE).
* :func:`kde_kl`    seed 003's KDE measure made honest: normalised Monte-Carlo KL(q || p_hat) with p_hat a
  Gaussian KDE of the model samples, evaluated on fresh samples of q; :func:`kde_kl_floor` its floor.
* :func:`mmd`       unbiased MMD^2 with a Gaussian kernel (Gretton et al. 2012).
* :func:`sliced_wasserstein`, :func:`wasserstein_exact`  SW_2 (Bonneel et al. 2015) and exact W_2.
* :func:`mean_distance`, :func:`covariance_distance`  seed 000's moment distances.
* :func:`mode_coverage`  per-mode mass vs the true weights, total variation, outlier fraction.
* :func:`sample_metrics`  all that apply, with ``*_floor`` values from fresh true samples.

References: A. Gretton, K. Borgwardt, M. Rasch, B. Schoelkopf, A. Smola, "A kernel two-sample test",
JMLR 13 (2012); N. Bonneel, J. Rabin, G. Peyre, H. Pfister, "Sliced and Radon Wasserstein barycenters of
measures", J. Math. Imaging Vis. 51 (2015); D. W. Scott, "Multivariate Density Estimation" (Wiley, 1992);
B. W. Silverman, "Density Estimation for Statistics and Data Analysis" (Chapman & Hall, 1986).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from difflab.data.gaussian import GaussianMixture
from difflab.metrics.kde import (
    KDE_FLOOR,
    KDEKL,
    Bandwidth,
    kde_bandwidth,
    kde_kl,
    kde_kl_floor,
    kde_log_density,
)
from difflab.metrics.pairwise import CHUNK_ELEMS, as_f64, default_generator, sqdist_blocks, subsample


# --- exact KL ------------------------------------------------------------------------------------------
def exact_kl(
    log_q_fn: Callable[[Tensor], Tensor],
    log_p_model: Tensor | Callable[[Tensor], Tensor],
    x_from_q: Tensor,
) -> tuple[float, float]:
    """Monte-Carlo KL(q || p_theta) with its standard error, in nats.

        KL(q || p_theta) = E_{x~q}[log q(x) - log p_theta(x)]
                        ~= (1/n) sum_i d_i,   d_i = log q(x_i) - log p_theta(x_i),   x_i ~ q i.i.d.,
        s.e. = std(d, ddof=1) / sqrt(n).

    Args:
        log_q_fn: the exact log-density of the data law (e.g. ``GaussianMixture.log_prob``).
        log_p_model: log p_theta at ``x_from_q`` as an (n,) tensor (e.g. from a probability-flow ODE),
            or a callable computing it.
        x_from_q: (n, d) i.i.d. samples of q (held-out or fresh true samples, not training data).

    Returns:
        (kl, stderr) in nats. The estimate is unbiased; it can be negative by sampling noise.
    """
    x = as_f64(x_from_q)
    log_q = torch.as_tensor(log_q_fn(x)).to(torch.float64).reshape(-1)
    log_p = log_p_model(x) if callable(log_p_model) else log_p_model
    log_p = torch.as_tensor(log_p).detach().to("cpu", torch.float64).reshape(-1)
    if log_q.shape != log_p.shape or log_q.shape[0] != x.shape[0]:
        raise ValueError("log q, log p_theta and x_from_q must have the same number of points")
    d = log_q - log_p
    n = d.shape[0]
    stderr = float(d.std(correction=1) / math.sqrt(n)) if n > 1 else float("nan")
    return float(d.mean()), stderr


# --- MMD ------------------------------------------------------------------------------------------------
def median_heuristic(
    x: Tensor, y: Tensor, *, max_n: int = 1000, generator: torch.Generator | None = None
) -> float:
    """Median Euclidean distance between distinct points of the pooled sample (Gretton et al. 2012,
    sec. 8), computed on a random subsample of at most ``max_n`` pooled points."""
    z = subsample(torch.cat([as_f64(x), as_f64(y)]), max_n, generator)
    sq = torch.cat([blk for _, blk in sqdist_blocks(z, z)], dim=0)
    iu = torch.triu_indices(z.shape[0], z.shape[0], offset=1)
    return float(sq[iu[0], iu[1]].sqrt().median())


def _kernel_sum(a: Tensor, b: Tensor, inv_two_l2: Tensor) -> float:
    """sum_{i,j} k(a_i, b_j) with k(u, v) = mean_l exp(-|u - v|^2 / (2 l^2))."""
    total = 0.0
    for _, sq in sqdist_blocks(a, b):
        if inv_two_l2.numel() == 1:
            total += float(sq.mul_(-float(inv_two_l2)).exp_().sum())
        else:
            total += sum(float(torch.exp(sq * -c).sum()) for c in inv_two_l2.tolist()) / inv_two_l2.numel()
    return total


def mmd(
    x: Tensor,
    y: Tensor,
    bandwidths: float | Sequence[float] | None = None,
    *,
    max_n: int | None = None,
    generator: torch.Generator | None = None,
) -> float:
    """Unbiased squared maximum mean discrepancy MMD^2_u (Gretton et al. 2012, eq. 3 / Lemma 6):

        MMD^2_u = 1/(m(m-1)) sum_{i != j} k(x_i, x_j) + 1/(n(n-1)) sum_{i != j} k(y_i, y_j)
                  - 2/(mn) sum_{i,j} k(x_i, y_j),
        k(u, v) = (1/L) sum_l exp(-|u - v|^2 / (2 l^2)).

    Args:
        x, y: (m, d) and (n, d) samples, m, n >= 2.
        bandwidths: kernel length scale(s) l in data units; None uses the median heuristic
            (:func:`median_heuristic` of the pooled sample); a sequence gives the mixture kernel.
        max_n: if given, each sample is randomly subsampled to at most this many points (cost O(n^2)).
        generator: randomness for subsampling and the median heuristic.

    Returns:
        MMD^2_u (dimensionless). Unbiased, so it can be slightly negative when the laws are equal; its
        null standard deviation is O(1/n).
    """
    x, y = as_f64(x), as_f64(y)
    if max_n is not None:
        x, y = subsample(x, max_n, generator), subsample(y, max_n, generator)
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError("MMD needs at least 2 samples on each side")
    if bandwidths is None:
        bandwidths = median_heuristic(x, y, generator=generator)
    ls = torch.as_tensor(bandwidths, dtype=torch.float64).reshape(-1)
    if bool((ls <= 0).any()):
        raise ValueError("MMD bandwidths must be positive")
    inv = 1.0 / (2.0 * ls**2)
    kxx = (_kernel_sum(x, x, inv) - m) / (m * (m - 1))  # the diagonal k(x_i, x_i) = 1 is removed
    kyy = (_kernel_sum(y, y, inv) - n) / (n * (n - 1))
    kxy = _kernel_sum(x, y, inv) / (m * n)
    return kxx + kyy - 2.0 * kxy


# --- Wasserstein ----------------------------------------------------------------------------------------
def _equal_sizes(x: Tensor, y: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    n = min(x.shape[0], y.shape[0])
    return subsample(x, n, generator), subsample(y, n, generator)


def sliced_wasserstein(
    x: Tensor, y: Tensor, n_projections: int = 256, generator: torch.Generator | None = None
) -> float:
    """Monte-Carlo sliced 2-Wasserstein distance (Bonneel et al. 2015), in data units:

        SW_2(x, y) = ( E_{theta ~ U(S^{d-1})} W_2^2(theta . x, theta . y) )^{1/2},

    with each 1D W_2^2 between equal-size empirical measures = mean of squared differences of the
    sorted projections, and the expectation over ``n_projections`` random directions. Samples of
    unequal size are randomly subsampled to the smaller size. For a translation by m,
    SW_2 = |m| / sqrt(d) (= |m| / sqrt(2) in 2D), not |m|.
    """
    x, y = _equal_sizes(as_f64(x), as_f64(y), generator)
    gen = default_generator(generator)
    theta = torch.randn(n_projections, x.shape[1], dtype=torch.float64, generator=gen)
    theta = theta / theta.norm(dim=1, keepdim=True)
    per_chunk = max(1, CHUNK_ELEMS // max(1, x.shape[0]))
    total = 0.0
    for start in range(0, n_projections, per_chunk):
        t = theta[start : start + per_chunk]
        px, _ = torch.sort(x @ t.T, dim=0)
        py, _ = torch.sort(y @ t.T, dim=0)
        total += float(((px - py) ** 2).mean(0).sum())
    return math.sqrt(total / n_projections)


def wasserstein_exact(
    x: Tensor, y: Tensor, *, max_n: int = 2000, generator: torch.Generator | None = None
) -> float:
    """Exact 2-Wasserstein distance between two equal-size empirical measures, in data units:

        W_2(x, y) = ( min_{permutation s} (1/n) sum_i |x_i - y_{s(i)}|^2 )^{1/2},

    solved by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``; O(n^3), n <= max_n).
    Samples of unequal size are randomly subsampled to the smaller size. Between two samples of the
    same law the value is positive (~0.2 at n = 1000 for a 2D standard normal), so read it against
    a floor.
    """
    x, y = _equal_sizes(as_f64(x), as_f64(y), generator)
    if x.shape[0] > max_n:
        raise ValueError(f"exact W2 is O(n^3); n = {x.shape[0]} > max_n = {max_n}: subsample first")
    cost = torch.cat([blk for _, blk in sqdist_blocks(x, y)], dim=0).numpy()
    rows, cols = linear_sum_assignment(cost)
    return math.sqrt(float(cost[rows, cols].mean()))


# --- moments --------------------------------------------------------------------------------------------
def mean_distance(x: Tensor, y: Tensor) -> float:
    """|mean(x) - mean(y)|_2 in data units (seed 000's "mean distance")."""
    return float((as_f64(x).mean(0) - as_f64(y).mean(0)).norm())


def covariance_distance(x: Tensor, y: Tensor) -> float:
    """|Cov(x) - Cov(y)|_F in squared data units (seed 000's "covariance distance"); sample covariances
    with ddof 1, as ``np.cov``."""
    cx = torch.cov(as_f64(x).T, correction=1).reshape(x.shape[1], x.shape[1])
    cy = torch.cov(as_f64(y).T, correction=1).reshape(y.shape[1], y.shape[1])
    return float(torch.linalg.matrix_norm(cx - cy, ord="fro"))


# --- modes ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModeCoverage:
    """Result of :func:`mode_coverage`.

    Attributes:
        fractions: (K,) fraction of all samples whose nearest mode is k (outliers included).
        weights: (K,) true mode weights.
        counts: (K,) number of samples assigned to each mode.
        tv: total variation 0.5 sum_k |fractions_k - weights_k|, in [0, 1].
        outlier_fraction: fraction of samples farther than ``radius`` from every mode (NaN if no radius).
        radius: the radius used (data units), or None.
    """

    fractions: Tensor
    weights: Tensor
    counts: Tensor
    tv: float
    outlier_fraction: float
    radius: float | None


def mode_coverage(
    samples: Tensor, modes: Tensor, weights: Tensor | None = None, radius: float | None = None
) -> ModeCoverage:
    """Assign each sample to its nearest mode (Euclidean) and compare the per-mode mass to the weights.

    Args:
        samples: (n, d) samples.
        modes: (K, d) mode centres (e.g. ``Toy2D.modes``).
        weights: (K,) true weights (normalised here); None means equal weights.
        radius: samples farther than this from every mode count as outliers (e.g. 3 component stds:
            for an isotropic 2D Gaussian P(|x - mu| > 3 s) = exp(-4.5) = 1.1%).
    """
    x, mu = as_f64(samples), as_f64(modes)
    K = mu.shape[0]
    w = (
        torch.ones(K, dtype=torch.float64)
        if weights is None
        else torch.as_tensor(weights, dtype=torch.float64)
    )
    w = w / w.sum()
    nearest = torch.empty(x.shape[0], dtype=torch.long)
    dist2 = torch.empty(x.shape[0], dtype=torch.float64)
    for start, sq in sqdist_blocks(x, mu):
        d2, k = sq.min(dim=1)
        nearest[start : start + sq.shape[0]], dist2[start : start + sq.shape[0]] = k, d2
    counts = torch.bincount(nearest, minlength=K)
    n = max(1, x.shape[0])
    fractions = counts.to(torch.float64) / n
    tv = 0.5 * float((fractions - w).abs().sum())
    outliers = float((dist2 > radius**2).to(torch.float64).mean()) if radius is not None else float("nan")
    return ModeCoverage(fractions, w, counts, tv, outliers, radius)


# --- everything at once ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Reference:
    """What every sample set of one :func:`sample_metrics` call is measured against (shared by model and
    floor, so both see the same ref subsamples, kernel and evaluation points)."""

    xr: Tensor
    ref_mmd: Tensor
    ref_w2: Tensor
    mmd_l: float
    eval_points: Tensor | None
    law: GaussianMixture | None
    modes: Tensor | None
    mode_weights: Tensor | None
    radius: float | None
    max_mmd: int
    max_w2: int
    n_projections: int
    kde_bandwidth_rule: Bandwidth
    gen: torch.Generator


def _measure(x: Tensor, suffix: str, out: dict[str, float], r: _Reference) -> None:
    """Every applicable metric of ``x`` against the reference, written to ``out`` with key suffix."""
    out["mean_dist" + suffix] = mean_distance(x, r.xr)
    out["cov_dist" + suffix] = covariance_distance(x, r.xr)
    out["mmd2" + suffix] = mmd(subsample(x, r.max_mmd, r.gen), r.ref_mmd, r.mmd_l)
    out["sw2" + suffix] = sliced_wasserstein(x, r.xr, r.n_projections, generator=r.gen)
    out["w2" + suffix] = wasserstein_exact(
        subsample(x, r.max_w2, r.gen), r.ref_w2, max_n=r.max_w2, generator=r.gen
    )
    if r.law is not None:
        k = kde_kl(x, r.law, bandwidth=r.kde_bandwidth_rule, eval_points=r.eval_points)
        out["kde_kl" + suffix] = k.value
        out["kde_kl_stderr" + suffix] = k.stderr
        out["kde_bandwidth" + suffix] = math.exp(sum(math.log(h) for h in k.bandwidth) / len(k.bandwidth))
    if r.modes is not None:
        cov = mode_coverage(x, r.modes, r.mode_weights, r.radius)
        out["mode_tv" + suffix] = cov.tv
        if r.radius is not None:
            out["mode_outliers" + suffix] = cov.outlier_fraction


def sample_metrics(
    model_samples: Tensor,
    ref_samples: Tensor,
    law: GaussianMixture | None = None,
    modes: Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    mode_weights: Tensor | None = None,
    fresh: Callable[[int, torch.Generator | None], Tensor] | None = None,
    radius: float | None = None,
    kde_bandwidth_rule: Bandwidth = "scott",
    n_eval: int = 20_000,
    max_mmd: int = 5000,
    max_w2: int = 1000,
    n_projections: int = 256,
) -> dict[str, float]:
    """All applicable 2D metrics of ``model_samples`` against held-out ``ref_samples``, with floors.

    Keys (always): ``n_model``, ``n_ref``, ``mean_dist`` and ``cov_dist`` (model vs all ref samples),
    ``mmd2`` (unbiased MMD^2, both sides subsampled to <= ``max_mmd``, Gaussian kernel with length scale
    ``mmd_bandwidth`` = median heuristic of the ref sample, fixed so model and floor share the kernel),
    ``sw2`` (sliced W_2, ``n_projections`` directions, equal sizes), ``w2`` (exact W_2 on <= ``max_w2``
    points per side).
    With ``law`` (an exact density): ``kde_kl``, ``kde_kl_stderr``, ``kde_bandwidth`` (geometric mean of
    the per-dimension h) from :func:`kde_kl` with ``kde_bandwidth_rule`` on ``n_eval`` fresh points of q.
    With ``modes``: ``mode_tv`` and ``mode_outliers`` (:func:`mode_coverage`; ``mode_radius`` = ``radius``,
    default 3 x the largest component std of ``law`` when given, else no outlier key).
    Floors: when fresh true samples are available (``fresh(n, generator)``, e.g. ``Toy2D.sample_fresh``,
    else ``law.sample``), every metric key k above also has ``k_floor``: the same metric with n_model
    fresh true samples in place of the model samples (same ref samples, kernel, evaluation points).

    ``exact_kl`` is not included: it needs the model's log-density (call :func:`exact_kl` directly).
    """
    gen = default_generator(generator)
    xm, xr = as_f64(model_samples), as_f64(ref_samples)
    n = xm.shape[0]
    if fresh is None and law is not None:
        fresh = law.sample
    xf = as_f64(fresh(n, gen)) if fresh is not None else None
    with_law_modes = modes is not None and law is not None
    if mode_weights is None and with_law_modes and law.num_components == modes.shape[0]:
        mode_weights = law.weights
    if radius is None and with_law_modes:
        radius = 3.0 * float(law.evals.max().sqrt())
    mmd_l = median_heuristic(xr, xr[:0], generator=gen)
    ref_mmd = subsample(xr, max_mmd, gen)
    ref_w2 = subsample(xr, max_w2, gen)
    eval_points = law.sample(n_eval, generator=gen) if law is not None else None

    out: dict[str, float] = {"n_model": float(n), "n_ref": float(xr.shape[0]), "mmd_bandwidth": mmd_l}
    ctx = _Reference(
        xr, ref_mmd, ref_w2, mmd_l, eval_points, law, modes, mode_weights, radius,
        max_mmd, max_w2, n_projections, kde_bandwidth_rule, gen,
    )  # fmt: skip
    _measure(xm, "", out, ctx)
    if radius is not None and modes is not None:
        out["mode_radius"] = radius
    if xf is not None:
        _measure(xf, "_floor", out, ctx)
    return out


__all__ = [
    "CHUNK_ELEMS",
    "KDEKL",
    "KDE_FLOOR",
    "ModeCoverage",
    "covariance_distance",
    "exact_kl",
    "kde_bandwidth",
    "kde_kl",
    "kde_kl_floor",
    "kde_log_density",
    "mean_distance",
    "median_heuristic",
    "mmd",
    "mode_coverage",
    "sample_metrics",
    "sliced_wasserstein",
    "wasserstein_exact",
]
