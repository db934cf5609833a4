"""Evaluation of an image run: sampling, image grids, FID/KID/IS with their floor, bits/dim.

Sample quality (:func:`sample_quality`), in the feature space of a classifier trained on the data set itself
(seed 001; :func:`difflab.models.classifier.load_or_train_classifier`, cached, test accuracy printed and
recorded) or of the standard Inception network from a local TorchScript file:

* reference set R = the training images (all of them, not capped by ``data.n_train``);
* ``fid``, ``kid``, ``is``: the model's ``eval.n_samples`` samples against R;
* the floor ``*_floor``: the held-out images (n_h of them) against R -- what a perfect model scores;
* ``fid_same_n`` / ``kid_same_n``: the model's first n_h samples against R, the same n as the floor
  (FID is biased upward at small n, so only same-n numbers compare with the floor).

Samples are rounded to the data's grey-level grid (:func:`difflab.metrics.images.quantize`: 256 levels for
8-bit sets, 17 for the digits) before features, as pytorch-fid / torch-fidelity score uint8 images: the real
and held-out images lie on that grid, and unquantized samples would differ from them in a way no
classifier should be asked to see. ``fid_eps_fallback`` (and ``*_floor`` / ``*_same_n``) records whether
the Frechet distance needed the eps*I covariance fallback
(:class:`~difflab.metrics.images.FIDFallbackWarning`).

Bits/dim and the prior mismatch: :mod:`difflab.experiments.images.bpd`.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from difflab.experiments.common.configs import ConfigError, options_for
from difflab.experiments.images.config import ImageRunConfig

# --------------------------------------------------------------------------------------------- sampling


def resolve_grid(process: Any, steps: int, grid: str) -> tuple[Tensor, int, str]:
    """(time grid, grid steps used, grid kind). ``auto`` is ``discrete`` on a DDPM chain, else
    ``uniform_logsnr``; on a chain's discrete grid ``steps >= T`` means the full chain (T - 1 grid steps plus
    the final denoising: T network evaluations, Ho et al. Alg. 2)."""
    from difflab.processes import DiscreteChain
    from difflab.samplers import time_grid

    kind = (
        grid if grid != "auto" else ("discrete" if isinstance(process, DiscreteChain) else "uniform_logsnr")
    )
    if kind == "discrete":
        steps = min(int(steps), process.T - 1)
    return time_grid(process, steps, kind), steps, kind


@torch.no_grad()
def draw_image_samples(
    denoiser: nn.Module,
    process: Any,
    shape: tuple[int, ...],
    n: int,
    *,
    sampler: str,
    steps: int,
    grid: str = "auto",
    options: Mapping[str, Any] | None = None,
    seed: int = 0,
    batch: int = 1000,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, dict[str, Any]]:
    """n samples (float32 CPU, clamped to [-1, 1]) from ``sampler`` in batches; batch j draws x_T and all its
    noise from a generator seeded with (seed, j) on ``device``, so the same seed gives the same samples for
    every arm (changing ``batch`` changes the samples). ``options`` are passed to the sampler where its
    signature accepts them (``eta`` for ddim, ``snr`` for pc, ...). Returns (samples, info with sampler,
    sample_steps, sample_grid, nfe, eta)."""
    from difflab.samplers import SAMPLERS, prior_sample

    spec = SAMPLERS[sampler]
    t_grid, used, kind = resolve_grid(process, steps, grid)
    kwargs = options_for(spec.fn, options or {})
    device = torch.device(device)
    dtype = next(denoiser.parameters()).dtype
    was = denoiser.training
    denoiser.eval()
    out = []
    for j, lo in enumerate(range(0, n, batch)):
        b = min(batch, n - lo)
        g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + j)
        x_T = prior_sample(process, (b, *shape), g, dtype, device)
        x = spec.fn(denoiser, process, x_T, t_grid, generator=g, **kwargs)
        out.append(x.clamp(-1.0, 1.0).float().cpu())
    denoiser.train(was)
    eta = float(kwargs.get("eta", 0.0))
    info = {"sampler": sampler, "sample_steps": used, "sample_grid": kind, "nfe": spec.nfe(used), "eta": eta}
    return torch.cat(out), info


def to_uint8(x: Tensor) -> np.ndarray:
    """[-1, 1] images -> uint8 0..255 (N, C, H, W)."""
    return ((x.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).numpy()


# --------------------------------------------------------------------------------------------- features


def cache_dir(config: ImageRunConfig) -> Path:
    base = config.eval.cache_dir or os.environ.get("DIFFLAB_CACHE") or os.path.join("~", ".cache", "difflab")
    return Path(base).expanduser()


def feature_network(
    config: ImageRunConfig, train: Any, test: Any, device: torch.device
) -> tuple[nn.Module, dict]:
    """The feature network and what to record about it (name; the classifier's test accuracy).

    The classifier is trained once per (data set, settings) and cached; a file lock keeps parallel study
    workers from training it twice at the same time.
    """
    from difflab.metrics.images import InceptionFeatures
    from difflab.models.classifier import load_or_train_classifier

    ev = config.eval
    if ev.features == "inception":
        assert ev.inception_path is not None
        try:
            net = InceptionFeatures.from_file(ev.inception_path, device)
        except (RuntimeError, ValueError, OSError) as err:  # torch.jit.load of an empty/garbage/cut file
            if isinstance(err, FileNotFoundError):
                raise
            raise ConfigError(
                f"eval.inception_path {ev.inception_path}: not a readable TorchScript network "
                f"({str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__}); "
                "copy the pt_inception-2015-12-05 file again, or use eval.features = 'classifier'"
            ) from None
        return net, {"feature": "inception-2015-12-05"}
    root = cache_dir(config)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "classifier.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            net, acc = load_or_train_classifier(
                config.data.name, train, test, root, epochs=ev.classifier_epochs, device=device, verbose=True
            )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return net, {"feature": f"classifier:{config.data.name}", "classifier_test_acc": round(acc, 4)}


def sample_quality(
    net: nn.Module,
    reference: Tensor,
    heldout: Tensor,
    samples: Tensor,
    *,
    levels: int,
    seed: int = 0,
    with_floor: bool = True,
    feature: str | None = None,
    kid_subsets: int = 50,
) -> dict[str, Any]:
    """FID, KID, IS of ``samples`` (first rounded to the data's ``levels`` grey levels) against
    ``reference``; with the floor (``heldout`` against ``reference``) and the model at the floor's n (module
    docstring). KID: ``kid_subsets`` subsets of up to 1000. Without the floor (tracking during training)
    only FID and IS are computed."""
    from difflab.metrics.images import (
        ImageMetrics,
        extract_features,
        fid_from_features,
        inception_score_from_logits,
        quantize,
    )

    samples = quantize(samples, levels)
    if not with_floor:
        f_ref, _ = extract_features(net, reference, 500)
        f_fake, logits = extract_features(net, samples, 500)
        is_mean = (
            inception_score_from_logits(logits, min(10, samples.shape[0]))[0]
            if logits is not None
            else float("nan")
        )
        return {"fid": fid_from_features(f_ref, f_fake), "is": is_mean}
    metrics = ImageMetrics(net, batch_size=500, feature_name=feature)

    def compute(fake: Tensor) -> dict[str, Any]:
        sub = min(1000, fake.shape[0], reference.shape[0])
        res = metrics.compute(reference, fake, kid_subsets=kid_subsets, kid_subset_size=sub, seed=seed)
        return {**res, "fid_eps_fallback": bool(metrics.last_fid_eps_fallback)}

    model = compute(samples)
    n_h = min(heldout.shape[0], samples.shape[0])
    floor = compute(heldout[:n_h])
    same = model if n_h == samples.shape[0] else compute(samples[:n_h])
    return {
        **{k: model[k] for k in ("fid", "kid", "kid_std", "is", "is_std", "n_fake")},
        "n_ref": model["n_real"],
        "fid_floor": floor["fid"],
        "kid_floor": floor["kid"],
        "is_floor": floor["is"],
        "fid_same_n": same["fid"],
        "kid_same_n": same["kid"],
        "n_floor": n_h,
        "kid_subsets": kid_subsets,
        "levels": int(levels),
        "fid_eps_fallback": model["fid_eps_fallback"],
        "fid_floor_eps_fallback": floor["fid_eps_fallback"],
        "fid_same_n_eps_fallback": same["fid_eps_fallback"],
    }

