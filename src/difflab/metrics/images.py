"""Sample-quality metrics for images computed in a feature space: FID, KID and Inception Score.

All three are defined on features/logits of some network. difflab's default network is a small classifier
trained on the dataset itself (:class:`difflab.models.classifier.FeatureClassifier`); the resulting numbers
are reported with ``feature="classifier:<name>"`` and are **not** comparable with published Inception-v3
numbers. For those, supply the standard TorchScript Inception network via :meth:`InceptionFeatures.from_file`.

* FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
  Equilibrium"): the Frechet distance between Gaussians fitted to real and generated features,
  ``||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^{1/2})``.
* KID (Binkowski et al. 2018, "Demystifying MMD GANs"): the unbiased estimate of the squared MMD with the
  cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets.
* IS (Salimans et al. 2016, "Improved Techniques for Training GANs"): ``exp(E_x KL(p(y|x) || p(y)))``,
  averaged over splits.

All computations are in float64 and vectorised (numpy / scipy).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import torch
from torch import Tensor, nn

__all__ = [
    "ImageMetrics",
    "InceptionFeatures",
    "compute_image_metrics",
    "extract_features",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "inception_score_from_logits",
    "kid_from_features",
]

ArrayLike = np.ndarray | Tensor


def _as_f64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _as_features(x: ArrayLike, what: str) -> np.ndarray:
    f = _as_f64(x)
    if f.ndim != 2:
        raise ValueError(f"{what} must be a 2-d array (N, d), got shape {f.shape}")
    return f


def feature_statistics(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``mu = (1/N) sum_i f_i`` and unbiased covariance ``S = (1/(N-1)) sum_i (f_i - mu)(f_i - mu)^T``.

    Returns float64 ``(mu (d,), S (d, d))``; needs ``N >= 2``.
    """
    f = _as_features(features, "features")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    mu = f.mean(axis=0)
    centered = f - mu
    cov = centered.T @ centered / (f.shape[0] - 1)
    return mu, cov


def frechet_distance(
    mu1: ArrayLike, cov1: ArrayLike, mu2: ArrayLike, cov2: ArrayLike, eps: float = 1e-6
) -> float:
    """Frechet (2-Wasserstein) distance between ``N(mu1, cov1)`` and ``N(mu2, cov2)`` (Heusel et al. 2017):

    ``d^2 = ||mu1 - mu2||^2 + Tr(cov1 + cov2 - 2 (cov1 cov2)^{1/2})``.

    Computed in float64 with :func:`scipy.linalg.sqrtm`. As in pytorch-fid, if the product is singular enough
    that the square root is not finite, ``eps * I`` is added to both covariances; a complex square root (from
    round-off) is replaced by its real part, unless the imaginary part of its diagonal exceeds 1e-3.
    """
    m1, m2 = _as_f64(mu1).reshape(-1), _as_f64(mu2).reshape(-1)
    c1, c2 = np.atleast_2d(_as_f64(cov1)), np.atleast_2d(_as_f64(cov2))
    if m1.shape != m2.shape or c1.shape != c2.shape or c1.shape != (m1.size, m1.size):
        raise ValueError(f"shape mismatch: mu {m1.shape} / {m2.shape}, cov {c1.shape} / {c2.shape}")
    diff = m1 - m2
    with warnings.catch_warnings():  # singular products are handled below; silence scipy's warning
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(c1 @ c2)
    if not np.isfinite(covmean).all():
        offset = np.eye(c1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((c1 + offset) @ (c2 + offset))
    if np.iscomplexobj(covmean):
        max_imag = float(np.max(np.abs(np.diagonal(covmean).imag)))
        if max_imag > 1e-3:
            raise ValueError(f"matrix square root has a large imaginary component ({max_imag:.3g})")
        covmean = covmean.real
    return float(diff @ diff + np.trace(c1) + np.trace(c2) - 2.0 * np.trace(covmean))


def fid_from_features(f_real: ArrayLike, f_fake: ArrayLike) -> float:
    """FID of two feature sets ``(N, d)``: :func:`frechet_distance` of their :func:`feature_statistics`."""
    return frechet_distance(*feature_statistics(f_real), *feature_statistics(f_fake))


def _cube(k: np.ndarray) -> np.ndarray:
    """``k ** 3`` in place (much faster than numpy's generic float power)."""
    sq = k * k
    k *= sq
    return k


def _poly_kernel_mmd2(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 for a batch of subsets ``x, y`` of shape ``(S, m, d)`` with the cubic kernel."""
    m, d = x.shape[1], x.shape[2]
    kxx, kyy, kxy = (_cube(a @ b.transpose(0, 2, 1) / d + 1.0) for a, b in ((x, x), (y, y), (x, y)))
    sxx = kxx.sum(axis=(1, 2)) - np.trace(kxx, axis1=1, axis2=2)
    syy = kyy.sum(axis=(1, 2)) - np.trace(kyy, axis1=1, axis2=2)
    return (sxx + syy) / (m * (m - 1)) - 2.0 * kxy.sum(axis=(1, 2)) / (m * m)


def kid_from_features(
    f_real: ArrayLike,
    f_fake: ArrayLike,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): mean and std of unbiased MMD^2 estimates.

    For each of ``subsets`` random subsets of ``m = min(subset_size, N_real, N_fake)`` real features ``x`` and
    fake features ``y`` (drawn without replacement, ``numpy.random.default_rng(seed)``), with
    ``k(a, b) = (a.b / d + 1)^3``::

        MMD^2_u = 1/(m(m-1)) sum_{i!=j} [k(x_i,x_j) + k(y_i,y_j)] - 2/m^2 sum_{i,j} k(x_i,y_j)

    Returns ``(mean, std)`` over subsets (``std`` with ``ddof=0``, as in torch-fidelity). The estimate is
    unbiased, so it can be slightly negative when both sets come from the same distribution.
    """
    fr, ff = _as_features(f_real, "f_real"), _as_features(f_fake, "f_fake")
    if fr.shape[1] != ff.shape[1]:
        raise ValueError(f"feature dims differ: {fr.shape[1]} vs {ff.shape[1]}")
    m = min(subset_size, fr.shape[0], ff.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    rng = np.random.default_rng(seed)
    idx_r = np.stack([rng.choice(fr.shape[0], m, replace=False) for _ in range(subsets)])
    idx_f = np.stack([rng.choice(ff.shape[0], m, replace=False) for _ in range(subsets)])
    # process subsets in chunks so the three (chunk, m, m) kernel matrices stay under ~64 MiB each
    ch = max(1, (64 << 20) // (8 * m * m))
    values = np.concatenate(
        [_poly_kernel_mmd2(fr[idx_r[s : s + ch]], ff[idx_f[s : s + ch]]) for s in range(0, subsets, ch)]
    )
    return float(values.mean()), float(values.std())


def inception_score_from_logits(logits: ArrayLike, splits: int = 10) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016): ``IS = exp(E_x KL(p(y|x) || p(y)))``.

    ``p(y|x) = softmax(logits)``; the samples are cut into ``splits`` contiguous chunks, ``p(y)`` is the mean
    of ``p(y|x)`` within a chunk, and the score is computed per chunk. Returns ``(mean, std)`` over chunks.
    IS lies in ``[1, num_classes]``: 1 for identical predictions, ``k`` for confident predictions spread
    uniformly over ``k`` classes.
    """
    z = _as_features(logits, "logits")
    if splits < 1 or z.shape[0] < splits:
        raise ValueError(f"need at least one sample per split ({z.shape[0]} samples, {splits} splits)")
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    scores = []
    for part_p, part_log_p in zip(np.array_split(p, splits), np.array_split(log_p, splits), strict=True):
        log_py = np.log(part_p.mean(axis=0) + 1e-300)
        kl = (part_p * (part_log_p - log_py)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    arr = np.asarray(scores)
    return float(arr.mean()), float(arr.std())


@torch.no_grad()
def extract_features(
    network: nn.Module, images: Tensor, batch_size: int = 256, device: str | torch.device | None = None
) -> tuple[Tensor, Tensor | None]:
    """Run ``network`` over ``images`` in batches (eval mode) and return float64 CPU ``(features, logits)``.

    Uses ``network.features_and_logits(x)`` if present, else ``network.features(x)`` and ``network(x)``;
    ``logits`` is ``None`` for a network with ``features`` but no usable forward (e.g. feature-only models).
    """
    if device is None:
        device = next(network.parameters(), torch.empty(0)).device
    was_training = network.training
    network.eval()
    feats, logits = [], []
    for i in range(0, images.shape[0], batch_size):
        x = images[i : i + batch_size].to(device=device, dtype=torch.float32)
        if hasattr(network, "features_and_logits"):
            f, lg = network.features_and_logits(x)
        else:
            f, lg = network.features(x), network(x)
        feats.append(f.detach().to("cpu", torch.float64))
        if lg is not None:
            logits.append(lg.detach().to("cpu", torch.float64))
    network.train(was_training)
    return torch.cat(feats), (torch.cat(logits) if logits else None)


def _feature_name(network: nn.Module, name: str | None) -> str:
    if name is not None:
        return name
    return f"classifier:{getattr(network, 'name', type(network).__name__)}"


def compute_image_metrics(
    classifier: nn.Module,
    real: Tensor,
    fake: Tensor,
    batch_size: int = 256,
    *,
    is_splits: int = 10,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    device: str | torch.device | None = None,
    feature_name: str | None = None,
) -> dict[str, Any]:
    """FID, KID and IS of ``fake`` images against ``real`` images in ``classifier``'s feature space.

    Returns a dict with keys ``fid``, ``kid``, ``kid_std``, ``is``, ``is_std`` (IS of the fake images),
    ``n_real``, ``n_fake`` and ``feature`` (``"classifier:<classifier.name>"`` unless ``feature_name``).
    ``is_splits`` is reduced to ``n_fake`` when there are fewer samples than splits.
    """
    return ImageMetrics(classifier, batch_size=batch_size, device=device, feature_name=feature_name).compute(
        real, fake, is_splits=is_splits, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed
    )


class ImageMetrics:
    """Reusable metric evaluator that caches the real-image features between calls (e.g. across checkpoints).

    ``ImageMetrics(classifier).compute(real, fake)`` gives the same dict as :func:`compute_image_metrics`.
    """

    def __init__(
        self,
        classifier: nn.Module,
        batch_size: int = 256,
        device: str | torch.device | None = None,
        feature_name: str | None = None,
    ) -> None:
        self.classifier = classifier
        self.batch_size = batch_size
        self.device = device
        self.feature = _feature_name(classifier, feature_name)
        self._real: Tensor | None = None
        self._real_version = -1
        self._real_feats: Tensor | None = None

    def _real_features(self, real: Tensor) -> Tensor:
        # cached for the same tensor object, unless it was modified in place since
        if self._real is not real or self._real_version != real._version or self._real_feats is None:
            self._real_feats, _ = extract_features(self.classifier, real, self.batch_size, self.device)
            self._real, self._real_version = real, real._version
        return self._real_feats

    def compute(
        self,
        real: Tensor,
        fake: Tensor,
        *,
        is_splits: int = 10,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        seed: int = 0,
    ) -> dict[str, Any]:
        """See :func:`compute_image_metrics`."""
        f_real = self._real_features(real)
        f_fake, logits_fake = extract_features(self.classifier, fake, self.batch_size, self.device)
        kid, kid_std = kid_from_features(f_real, f_fake, kid_subsets, kid_subset_size, seed)
        out: dict[str, Any] = {"fid": fid_from_features(f_real, f_fake), "kid": kid, "kid_std": kid_std}
        if logits_fake is not None:
            is_mean, is_std = inception_score_from_logits(logits_fake, min(is_splits, logits_fake.shape[0]))
        else:
            is_mean = is_std = float("nan")
        out.update(
            {
                "is": is_mean,
                "is_std": is_std,
                "n_real": int(real.shape[0]),
                "n_fake": int(fake.shape[0]),
                "feature": self.feature,
            }
        )
        return out


class InceptionFeatures(nn.Module):
    """Standard-FID features from a user-supplied TorchScript Inception-v3 (pt_inception-2015-12-05).

    difflab cannot download anything. To get numbers comparable with published FIDs, obtain the TorchScript
    file of the ``pt_inception-2015-12-05`` network (NVIDIA's StyleGAN2-ADA/StyleGAN3 metrics
    ``inception-2015-12-05.pt``) on a machine with internet access and pass its path to :meth:`from_file`.
    That network takes float images in ``[0, 255]`` (any size, resized internally to 299x299) and returns
    2048-d pool features with ``return_features=True`` or 1008 class probabilities otherwise.

    Here, inputs are difflab images in ``[-1, 1]``; they are mapped to ``[0, 255]`` and grey images are
    repeated to 3 channels. :meth:`features_and_logits` returns ``(pool features, log-probabilities)``, so it
    plugs into :func:`compute_image_metrics` (pass ``feature_name="inception"``).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.net = module
        self.name = "inception-2015-12-05"

    @classmethod
    def from_file(cls, path: str | Path, device: str | torch.device = "cpu") -> InceptionFeatures:
        """Load the TorchScript network from ``path``; a missing file raises :class:`FileNotFoundError`."""
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(
                f"Inception TorchScript file not found: {p}. difflab never downloads weights (no internet "
                f"access is assumed). Download the pt_inception-2015-12-05 TorchScript network "
                f"('inception-2015-12-05.pt', used by NVIDIA's StyleGAN2-ADA/StyleGAN3 FID code) on a "
                f"machine with internet access, copy it here and pass its path; or use the dataset "
                f"classifier (difflab.models.classifier.load_or_train_classifier) for local FID/KID/IS."
            )
        with warnings.catch_warnings():  # TorchScript is deprecated in recent torch but is the file format
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(p), map_location=device)
        return cls(module)

    def _prepare(self, x: Tensor) -> Tensor:
        x = ((x.to(torch.float32) + 1.0) * 127.5).clamp(0.0, 255.0)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return x

    def features(self, x: Tensor) -> Tensor:
        """2048-d pool features of images in ``[-1, 1]``."""
        return self.net(self._prepare(x), return_features=True)

    def features_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(features, log p(y|x))``; the network returns probabilities, so their log serves as logits."""
        x = self._prepare(x)
        feats = self.net(x, return_features=True)
        probs = self.net(x, no_output_bias=True)  # as NVIDIA's IS code (matches the original TF code)
        return feats, torch.log(probs.clamp_min(1e-30))

    def forward(self, x: Tensor) -> Tensor:
        return self.features_and_logits(x)[1]
