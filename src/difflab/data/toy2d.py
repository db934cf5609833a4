"""Two-dimensional toy data sets (seed 000's four sets, seed 003's 8-mode mixture, a Gaussian oracle).

Raw (unscaled) laws, all i.i.d. per point, drawn with an explicitly seeded ``torch.Generator``:

* ``cluster`` (seed 000, ``generate_gaussian_clusters``): (1/4) sum_k N(mu_k, I), mu_k in {(+-5, +-5)};
  std 1 (a standard deviation).
* ``ring`` (seed 000, ``generate_intersecting_rings``): centre c in {(0, 0), (5, 0)} with probability 1/2
  each, angle theta ~ U(0, 2 pi), radius r ~ N(4, 0.2^2); x = c + r (cos theta, sin theta).
* ``swiss_roll`` (seed 000, like sklearn's ``make_swiss_roll`` keeping its x and z coordinates):
  t = 1.5 pi (1 + 2u), u ~ U(0, 1); x = (t cos t, t sin t) + N(0, 0.5^2 I).
* ``waves`` (seed 000, ``generate_parallel_waves``): x ~ U(0, 1) (seed 000 used a linspace; we draw
  uniformly so points are i.i.d.), wave w in {1, 2} with probability 1/2 each,
  y = b_w + 0.3 sin(6 pi x) + N(0, 0.03^2), b_1 = 0.6, b_2 = 0.3 (noise on y only).
* ``mixture8`` (seed 003, made consistent): (1/8) sum_j N(10 (cos 2 pi j/8, sin 2 pi j/8), I); the
  per-component std is 1 (a standard deviation; seed 003's sampler and density disagreed on this).
* ``gaussian``: one anisotropic Gaussian N((1, -2), [[2, 0.8], [0.8, 0.5]]), a test oracle.

Seed 000 put exactly n/2 points on each ring / wave; here each point picks its component with a fair
coin, so the samples are i.i.d. from the equal-weight mixture (what the sample metrics assume).

Every set has an exact density (so an exact KL for every model with a likelihood):

* ``cluster``, ``mixture8``, ``gaussian``: Gaussian mixtures (:class:`GaussianMixture`), which also give
  the diffused density, score and Bayes denoiser in closed form (the oracle);
* ``swiss_roll``: p(x) = (1 / 3 pi) int_{1.5 pi}^{4.5 pi} N(x; (t cos t, t sin t), 0.5^2 I) dt, a continuous
  mixture of Gaussians along the curve. Composite Gauss-Legendre quadrature in t (``SWISS_ROLL_PANELS``
  panels of ``SWISS_ROLL_NODES`` nodes) makes it a :class:`GaussianMixture` of 4096 components, with the
  oracle too; nodes are at most 0.02 apart along the curve against the 0.5 blur, and log p differs from
  that of 4 x as many nodes by 4e-13 at most on 2000 points (256 panels: 2e-8; tested);
* ``ring``: per centre c, |x - c| has the law of |r|, r ~ N(4, 0.2^2), and the angle is uniform, so
  p(x) = (1/2) sum_c [N(rho_c; 4, 0.2^2) + N(-rho_c; 4, 0.2^2)] / (2 pi rho_c),  rho_c = |x - c|;
* ``waves``: p(x, y) = 1[0 <= x <= 1] (1/2) sum_w N(y; b_w + 0.3 sin(6 pi x), 0.03^2).

``ring`` and ``waves`` have no finite Gaussian-mixture form (a radial Gaussian; a uniform with hard edges),
so their clean density is the formula above (:class:`ScaledDensity`). Each is, however, a continuous mixture
of *degenerate* Gaussians, and its quadrature gives the diffused density, score and Bayes denoiser (the
oracle) for every log-SNR up to ``DIFFUSED_MAX_LOGSNR`` = 10.5 (scaled units; ``Toy2D.diffused``):

* ``ring``: given the angle theta, x = c + r u_theta with u_theta = (cos theta, sin theta) is
  N(c + 4 u_theta, 0.2^2 u_theta u_theta^T), rank one; the uniform angle is integrated by the trapezoid rule
  with ``RING_NODES`` equispaced angles per centre (spectrally accurate for a periodic integrand);
* ``waves``: given x, the point is N((x, b_w + 0.3 sin 6 pi x), diag(0, 0.03^2)), rank one; x ~ U(0, 1) is
  integrated by composite Gauss-Legendre (``WAVES_PANELS`` panels of ``WAVES_NODES`` nodes) per wave.

A degenerate component is exact only after blurring; the quadrature is accurate while the blur sigma / alpha
spans several nodes, which ``DIFFUSED_MAX_LOGSNR`` bounds (the mixture refuses larger log-SNRs, sigma = 0
included). At that bound on 2000 diffused points, log p_t differs from that of 4 x as many nodes by at most
2e-10 (ring) and 1e-9 (waves), and equals a brute-force 2D convolution of the exact clean density (tested).

Every set is z-scored per dimension, x_scaled = (x - shift) / scale, with the population mean and standard
deviation of the law in closed form: the mixture's ``mean()`` / ``covariance()`` (for ``swiss_roll`` those of
its quadrature, exact to rounding), and for ``ring`` mean (2.5, 0), variances (6.25 + 8.02, 8.02)
(Var c_x + E r^2 / 2 with E r^2 = 16.04), for ``waves`` mean (1/2, 0.45), variances (1/12, 0.0225 + 0.045 +
0.0009) (the wave offsets, 0.09 E sin^2 = 0.045 over whole periods, the noise). The scaled law is therefore
exact and has mean 0 and unit marginal variances. A registered set with neither gets the empirical
moments (ddof 0) of a reference draw of ``REFERENCE_SIZE`` = 1,000,000 points with ``REFERENCE_SEED``.

Train and test are the first ``n_train`` and the last ``n_test`` rows of one i.i.d. draw of
``n_train + n_test`` points, so they are disjoint (seed 000's ``random.shuffle`` on a numpy array
duplicated rows; here no row repeats, which the tests check).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from difflab.data.gaussian import LOG_2PI, GaussianMixture, eight_mode_mixture
from difflab.registry import lookup

RawSampler = Callable[[int, "torch.Generator | None"], Tensor]

REFERENCE_SIZE = 1_000_000
REFERENCE_SEED = 20_240_000
SWISS_ROLL_PANELS = 1024
SWISS_ROLL_NODES = 4
RING_NODES = 2048
WAVES_PANELS = 1024
WAVES_NODES = 4
#: the largest log-SNR (scaled units) at which the ring and waves quadratures are evaluated (module doc)
DIFFUSED_MAX_LOGSNR = 10.5


# --- raw samplers (float64, unscaled) ----------------------------------------------------------------
def _cluster_law() -> GaussianMixture:
    means = torch.tensor([[-5.0, -5.0], [-5.0, 5.0], [5.0, -5.0], [5.0, 5.0]], dtype=torch.float64)
    return GaussianMixture.isotropic(torch.ones(4), means, 1.0)


def _gaussian_law() -> GaussianMixture:
    mean = torch.tensor([1.0, -2.0], dtype=torch.float64)
    cov = torch.tensor([[2.0, 0.8], [0.8, 0.5]], dtype=torch.float64)
    return GaussianMixture.gaussian(mean, cov)


def _mixture8_law() -> GaussianMixture:
    return eight_mode_mixture(radius=10.0, std=1.0, k=8)


def _ring(n: int, generator: torch.Generator | None) -> Tensor:
    centre_x = 5.0 * torch.randint(0, 2, (n,), generator=generator).to(torch.float64)
    theta = 2.0 * math.pi * torch.rand(n, dtype=torch.float64, generator=generator)
    radius = 4.0 + 0.2 * torch.randn(n, dtype=torch.float64, generator=generator)
    return torch.stack([centre_x + radius * torch.cos(theta), radius * torch.sin(theta)], dim=1)


def _swiss_roll(n: int, generator: torch.Generator | None) -> Tensor:
    t = 1.5 * math.pi * (1.0 + 2.0 * torch.rand(n, dtype=torch.float64, generator=generator))
    clean = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)
    return clean + 0.5 * torch.randn(n, 2, dtype=torch.float64, generator=generator)


def _waves(n: int, generator: torch.Generator | None) -> Tensor:
    x = torch.rand(n, dtype=torch.float64, generator=generator)
    base = torch.where(torch.randint(0, 2, (n,), generator=generator).bool(), 0.6, 0.3).to(torch.float64)
    y = (
        base
        + 0.3 * torch.sin(6.0 * math.pi * x)
        + 0.03 * torch.randn(n, dtype=torch.float64, generator=generator)
    )
    return torch.stack([x, y], dim=1)


def _swiss_roll_mixture(panels: int, nodes: int) -> GaussianMixture:
    """The swiss roll's law as the Gauss-Legendre quadrature of its continuous mixture (module doc)."""
    t, weights = _gauss_legendre(1.5 * math.pi, 4.5 * math.pi, panels, nodes)
    means = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)
    return GaussianMixture.isotropic(weights, means, 0.5)


@functools.cache
def _swiss_roll_law() -> GaussianMixture:
    return _swiss_roll_mixture(SWISS_ROLL_PANELS, SWISS_ROLL_NODES)


def _gauss_legendre(lo: float, hi: float, panels: int, nodes: int) -> tuple[Tensor, Tensor]:
    """Nodes and weights of composite Gauss-Legendre quadrature on [lo, hi], each (panels * nodes,)."""
    import numpy as np

    u, w = np.polynomial.legendre.leggauss(nodes)  # nodes and weights on [-1, 1]
    edges = torch.linspace(lo, hi, panels + 1, dtype=torch.float64)
    half = 0.5 * (edges[1:] - edges[:-1])[:, None]
    mid = 0.5 * (edges[1:] + edges[:-1])[:, None]
    return (mid + half * torch.as_tensor(u)[None]).reshape(-1), (half * torch.as_tensor(w)[None]).reshape(-1)


def _raw_max_logsnr(name: str) -> float:
    """``DIFFUSED_MAX_LOGSNR`` in raw units: z-scoring moves the bound by 2 log min(scale)
    (:meth:`GaussianMixture.affine`), so the scaled law gets exactly ``DIFFUSED_MAX_LOGSNR``."""
    _, scale = standardisation(name)
    return DIFFUSED_MAX_LOGSNR - 2.0 * math.log(float(scale.min()))


def _ring_mixture(nodes: int, max_logsnr: float) -> GaussianMixture:
    """The ring's law as the trapezoid rule in the angle of rank-one Gaussians (module doc), 2 * nodes
    components N(c + 4 u, 0.2^2 u u^T)."""
    theta = 2.0 * math.pi * torch.arange(nodes, dtype=torch.float64) / nodes
    u = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    centres = torch.tensor([[0.0, 0.0], [5.0, 0.0]], dtype=torch.float64)
    means = torch.cat([centre + 4.0 * u for centre in centres])
    radial = (0.2**2) * u[:, :, None] * u[:, None, :]
    return GaussianMixture(torch.ones(2 * nodes), means, torch.cat([radial, radial]), max_logsnr=max_logsnr)


def _waves_mixture(panels: int, nodes: int, max_logsnr: float) -> GaussianMixture:
    """The waves' law as Gauss-Legendre quadrature in x of rank-one Gaussians (module doc), 2 * panels * nodes
    components N((x, b_w + 0.3 sin 6 pi x), diag(0, 0.03^2))."""
    x, weights = _gauss_legendre(0.0, 1.0, panels, nodes)
    crest = 0.3 * torch.sin(6.0 * math.pi * x)
    means = torch.cat([torch.stack([x, base + crest], dim=1) for base in (0.6, 0.3)])
    covs = torch.zeros(means.shape[0], 2, 2, dtype=torch.float64)
    covs[:, 1, 1] = 0.03**2
    return GaussianMixture(torch.cat([weights, weights]), means, covs, max_logsnr=max_logsnr)


@functools.cache
def _ring_diffused() -> GaussianMixture:
    return _ring_mixture(RING_NODES, _raw_max_logsnr("ring"))


@functools.cache
def _waves_diffused() -> GaussianMixture:
    return _waves_mixture(WAVES_PANELS, WAVES_NODES, _raw_max_logsnr("waves"))


def _normal_log_pdf(x: Tensor, mean: float, std: float) -> Tensor:
    return -0.5 * ((x - mean) / std) ** 2 - math.log(std) - 0.5 * LOG_2PI


def _ring_log_density(x: Tensor) -> Tensor:
    """log p(x) of the raw ring set (module doc), (n, 2) -> (n,)."""
    per_centre = []
    for centre_x in (0.0, 5.0):
        rho = torch.hypot(x[:, 0] - centre_x, x[:, 1])
        radial = torch.logaddexp(_normal_log_pdf(rho, 4.0, 0.2), _normal_log_pdf(-rho, 4.0, 0.2))
        per_centre.append(radial - torch.log(2.0 * math.pi * rho))
    return torch.logaddexp(*per_centre) - math.log(2.0)


def _waves_log_density(x: Tensor) -> Tensor:
    """log p(x, y) of the raw waves set (module doc), (n, 2) -> (n,); -inf outside 0 <= x <= 1."""
    crest = 0.3 * torch.sin(6.0 * math.pi * x[:, 0])
    offset = x[:, 1] - crest
    log_y = torch.logaddexp(_normal_log_pdf(offset, 0.6, 0.03), _normal_log_pdf(offset, 0.3, 0.03))
    log_y = log_y - math.log(2.0)
    inside = (x[:, 0] >= 0.0) & (x[:, 0] <= 1.0)
    return torch.where(inside, log_y, torch.full_like(log_y, -math.inf))


def _moments(mean: tuple[float, float], var: tuple[float, float]) -> Callable[[], tuple[Tensor, Tensor]]:
    def moments() -> tuple[Tensor, Tensor]:
        return torch.tensor(mean, dtype=torch.float64), torch.tensor(var, dtype=torch.float64).sqrt()

    return moments


def _law_sampler(law_fn: Callable[[], GaussianMixture]) -> RawSampler:
    def sample(n: int, generator: torch.Generator | None) -> Tensor:
        if n == 0:  # torch.multinomial refuses n = 0
            return torch.empty(0, 2, dtype=torch.float64)
        return law_fn().sample(n, generator=generator)

    return sample


@dataclass(frozen=True)
class Toy2DSource:
    """A raw (unscaled) 2D law: ``sample(n, generator)`` gives (n, 2) float64; ``law`` its Gaussian-mixture
    form (exact density, diffused score, oracle) when it has one, else None; ``log_density`` the exact raw
    log-density of a set without a mixture form, else None; ``diffused`` (such a set only) a quadrature
    mixture of degenerate Gaussians that gives the diffused density, score and oracle up to a finite
    ``max_logsnr`` (module doc), else None; ``moments`` its population (mean, std) in closed form, else None;
    ``has_modes``: report mode coverage for it."""

    name: str
    sample: RawSampler
    law: Callable[[], GaussianMixture] | None = None
    log_density: Callable[[Tensor], Tensor] | None = None
    moments: Callable[[], tuple[Tensor, Tensor]] | None = None
    has_modes: bool = False
    diffused: Callable[[], GaussianMixture] | None = None

    @property
    def has_density(self) -> bool:
        """Whether the exact density is known (so a KL against it is)."""
        return self.law is not None or self.log_density is not None

    @property
    def has_oracle(self) -> bool:
        """Whether the diffused score (so the exact denoiser, the oracle) is known in closed form."""
        return self.law is not None or self.diffused is not None

    @property
    def max_logsnr(self) -> float:
        """The largest log-SNR (scaled units) at which the diffused closed forms hold: inf for an exact
        mixture, ``DIFFUSED_MAX_LOGSNR`` for a quadrature one (and -inf where there are none)."""
        if self.law is not None:
            return math.inf
        return DIFFUSED_MAX_LOGSNR if self.diffused is not None else -math.inf


class ScaledDensity:
    """The z-scored law of a raw set known only by its sampler and exact log-density: ``log_prob`` of a
    scaled point is log p_raw(x * scale + shift) + sum_d log scale_d (change of variables); ``sample`` draws
    scaled points. The interface of :class:`GaussianMixture` that the KL and sample metrics use."""

    def __init__(self, source: Toy2DSource, shift: Tensor, scale: Tensor) -> None:
        if source.log_density is None:
            raise ValueError(f"{source.name!r} has no exact log-density")
        self._source = source
        self._log_density = source.log_density
        self.shift, self.scale = shift, scale
        self._log_jacobian = float(torch.log(scale).sum())

    @property
    def dim(self) -> int:
        return 2

    def log_prob(self, x: Tensor) -> Tensor:
        x = torch.as_tensor(x, dtype=torch.float64)
        return self._log_density(x * self.scale + self.shift) + self._log_jacobian

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return (self._source.sample(n, generator) - self.shift) / self.scale


#: name -> raw generator of the 2D set (the registry used by configs and the CLI).
TOY2D: dict[str, Toy2DSource] = {
    "cluster": Toy2DSource("cluster", _law_sampler(_cluster_law), _cluster_law, has_modes=True),
    "ring": Toy2DSource(
        "ring",
        _ring,
        log_density=_ring_log_density,
        moments=_moments((2.5, 0.0), (14.27, 8.02)),
        diffused=_ring_diffused,
    ),
    "swiss_roll": Toy2DSource("swiss_roll", _swiss_roll, _swiss_roll_law),
    "waves": Toy2DSource(
        "waves",
        _waves,
        log_density=_waves_log_density,
        moments=_moments((0.5, 0.45), (1 / 12, 0.0684)),
        diffused=_waves_diffused,
    ),
    "mixture8": Toy2DSource("mixture8", _law_sampler(_mixture8_law), _mixture8_law, has_modes=True),
    "gaussian": Toy2DSource("gaussian", _law_sampler(_gaussian_law), _gaussian_law),
}


def oracle_sets() -> list[str]:
    """Names of the sets whose diffused score is known in closed form (an exact Gaussian mixture, or the
    quadrature of a continuous one up to its ``max_logsnr``), so the oracle, the exact denoiser, exists."""
    return sorted(name for name, source in TOY2D.items() if source.has_oracle)


@functools.cache
def standardisation(name: str) -> tuple[Tensor, Tensor]:
    """(shift, scale), each (2,) float64, used to z-score set ``name``: the law's population mean and
    standard deviation in closed form, else those of the fixed reference draw (module doc)."""
    source = lookup(TOY2D, name, "toy 2D data set")
    if source.law is not None:
        law = source.law()
        return law.mean().clone(), law.covariance().diagonal().sqrt().clone()
    if source.moments is not None:
        return source.moments()
    ref = source.sample(REFERENCE_SIZE, torch.Generator().manual_seed(REFERENCE_SEED))
    return ref.mean(0), ref.std(0, correction=0)


@dataclass
class Toy2D:
    """A z-scored 2D data set.

    Attributes:
        name: registry name.
        train, test: (n_train, 2) and (n_test, 2) float32, disjoint i.i.d. draws of the scaled law.
        shift, scale: (2,) float64; scaled = (raw - shift) / scale.
        law: the exact scaled law as a GaussianMixture (density, diffused score, oracle) where the set has
            that form, else None.
        density: the exact scaled law as far as its density goes (``log_prob``, ``sample``): ``law``
            where it exists, else a :class:`ScaledDensity`; None for a set with no known density.
        diffused: the scaled diffused law's closed forms (``log_prob``/``score`` at t, ``denoiser``, the
            oracle): ``law`` where it exists, else the quadrature mixture (ring, waves), valid for log-SNRs up
            to its ``max_logsnr``; None where neither exists.
        modes: (K, 2) float64 scaled component means for the multi-mode sets (cluster, mixture8), else None.
        mode_weights: (K,) float64 weights of those modes, else None.
    """

    name: str
    train: Tensor
    test: Tensor
    shift: Tensor
    scale: Tensor
    law: GaussianMixture | None
    modes: Tensor | None
    mode_weights: Tensor | None
    _raw: RawSampler = field(repr=False)
    density: GaussianMixture | ScaledDensity | None = field(default=None, repr=False)
    diffused: GaussianMixture | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.density is None and self.law is not None:
            self.density = self.law
        if self.diffused is None and self.law is not None:
            self.diffused = self.law

    def sample_fresh(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
    ) -> Tensor:
        """n fresh i.i.d. samples of the same scaled law (new randomness from ``generator``), e.g. to
        compute the floor of a sample metric. Returns (n, 2) in ``dtype`` (float64 by default)."""
        return ((self._raw(n, generator) - self.shift) / self.scale).to(dtype)

    @property
    def dim(self) -> int:
        return 2


def make_toy2d(name: str, n_train: int = 80_000, n_test: int = 20_000, seed: int = 0) -> Toy2D:
    """Build the z-scored set ``name`` with ``n_train`` training and ``n_test`` test points.

    Deterministic under ``seed`` (a fresh ``torch.Generator().manual_seed(seed)`` drives the draw).
    The defaults give seed 000's 100,000 points split 80/20. Unknown names raise
    :class:`difflab.registry.UnknownNameError` listing the valid names.
    """
    source = lookup(TOY2D, name, "toy 2D data set")
    if n_train < 0 or n_test < 0:
        raise ValueError("n_train and n_test must be non-negative")
    shift, scale = standardisation(name)
    gen = torch.Generator().manual_seed(int(seed))
    x = ((source.sample(n_train + n_test, gen) - shift) / scale).to(torch.float32)
    law = source.law().affine(shift, scale) if source.law is not None else None
    # the density of a mixture set is its law (Toy2D.__post_init__)
    density = ScaledDensity(source, shift, scale) if law is None and source.log_density is not None else None
    diffused = source.diffused().affine(shift, scale) if law is None and source.diffused is not None else None
    modes = law.means.clone() if (law is not None and source.has_modes) else None
    weights = law.weights.clone() if (law is not None and source.has_modes) else None
    return Toy2D(
        name=name,
        train=x[:n_train].contiguous(),
        test=x[n_train:].contiguous(),
        shift=shift.clone(),
        scale=scale.clone(),
        law=law,
        modes=modes,
        mode_weights=weights,
        _raw=source.sample,
        density=density,
        diffused=diffused,
    )


__all__ = [
    "DIFFUSED_MAX_LOGSNR",
    "REFERENCE_SEED",
    "REFERENCE_SIZE",
    "RING_NODES",
    "SWISS_ROLL_NODES",
    "SWISS_ROLL_PANELS",
    "TOY2D",
    "WAVES_NODES",
    "WAVES_PANELS",
    "ScaledDensity",
    "Toy2D",
    "Toy2DSource",
    "make_toy2d",
    "oracle_sets",
    "standardisation",
]
