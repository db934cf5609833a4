"""Time (noise-level) distributions p(t) with importance weights.

``sample(n, generator, device)`` returns ``(t, weight)``: t float64 of shape (n,), and the importance weight
weight(t) = 1/p(t), so that for any f

    E_{t ~ p}[ weight(t) f(t) ] = int_{t_min}^{t_max} f(t) dt.

A weighted objective L = int w(t) E|...|^2 dt is therefore estimated without bias by weight(t) w(t) |...|^2
with any p, which then only sets the variance (Kingma et al. 2021, VDM, sec. 5; Kingma & Gao 2023, sec. 4).

Discrete convention (``discrete``): the measure dt on [0, 1] is replaced by point masses 1/T at the chain's
grid t_i = i/T, i = 1..T, drawn with p(i) = 1/T, so the importance weight is (1/T) / p(i) = 1 and

    E_i[ weight f(t_i) ] = (1/T) sum_i f(t_i) ~ int_0^1 f dt;    sum_{i=1}^T f(t_i) = T E_i[ weight f(t_i) ].

So a per-step quantity summed over the chain (the discrete NELBO sum_i L_i) is T times the mean of the loss.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

from difflab.processes.base import DTYPE, Process
from difflab.processes.discrete import DiscreteChain
from difflab.registry import build


def _uniform(n: int, generator: torch.Generator | None, device: torch.device | str | None) -> Tensor:
    """n draws of U[0, 1) in float64 on the CPU, drawn on the generator's device (for reproducibility)."""
    gdev = generator.device if generator is not None else torch.device(device or "cpu")
    return torch.rand(n, dtype=DTYPE, generator=generator, device=gdev).cpu()


def _stratify(u0: Tensor, n: int) -> Tensor:
    """Low-discrepancy points (u0 + i/n) mod 1, i = 0..n-1 (VDM's antithetic time sampling)."""
    return torch.remainder(u0 + torch.arange(n, dtype=DTYPE) / n, 1.0)


class TimeDistribution(ABC):
    """A proposal p(t) on [process.t_min, process.t_max] (or the chain grid) with weight 1/p(t)."""

    name: str = "time_dist"

    def __init__(self, process: Process) -> None:
        self.process = process

    @abstractmethod
    def _draw(self, n: int, generator: torch.Generator | None, device: torch.device | str | None) -> Tensor:
        """n times (float64, CPU)."""

    @abstractmethod
    def importance(self, t: Tensor) -> Tensor:
        """1/p(t) for given times (float64); used when the caller passes t explicitly."""

    def sample(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw n times; return (t, 1/p(t)), both float64 of shape (n,), on ``device`` (default CPU)."""
        t = self._draw(int(n), generator, device)
        w = self.importance(t)
        dev = torch.device(device) if device is not None else torch.device("cpu")
        return t.to(dev), w.to(dev)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.process!r})"


class UniformTime(TimeDistribution):
    """t ~ U[t_min, t_max]; weight t_max - t_min."""

    name = "uniform"

    def _draw(self, n, generator, device):
        p = self.process
        return p.t_min + (p.t_max - p.t_min) * _uniform(n, generator, device)

    def importance(self, t: Tensor) -> Tensor:
        p = self.process
        return torch.full_like(torch.as_tensor(t, dtype=DTYPE), p.t_max - p.t_min)


class StratifiedTime(UniformTime):
    """Stratified uniform t: u_i = (u0 + i/n) mod 1, u0 ~ U[0, 1), mapped to [t_min, t_max] (VDM, app. I.1).

    Each t_i is marginally uniform (weight t_max - t_min), the batch covers [t_min, t_max] evenly.
    """

    name = "stratified"

    def _draw(self, n, generator, device):
        p = self.process
        u = _stratify(_uniform(1, generator, device), n)
        return p.t_min + (p.t_max - p.t_min) * u


def _t_of_logsnr(process: Process, lam: Tensor) -> Tensor:
    """t(lambda); closed form on a DiscreteChain (log alpha_bar piecewise linear in t), else the process's."""
    if not isinstance(process, DiscreteChain):
        return process.t_of_logsnr(lam).to(DTYPE)
    log_a2 = torch.nn.functional.logsigmoid(lam)  # VP: alpha^2 = sigmoid(lambda)
    neg = -process.log_alpha_bar  # increasing in i
    i = torch.clamp(torch.searchsorted(neg, -log_a2, right=True) - 1, 0, process.T - 1)
    frac = (log_a2 - process.log_alpha_bar[i]) / (process.log_alpha_bar[i + 1] - process.log_alpha_bar[i])
    return (i.to(DTYPE) + frac.clamp(0.0, 1.0)) / process.T


class LogSNRUniformTime(TimeDistribution):
    """lambda ~ U[lambda(t_max), lambda(t_min)], t = t(lambda); 1/p(t) = (lambda_max-lambda_min)/|lambda'(t)|.

    With ``stratified=True`` the lambda draws are stratified as in :class:`StratifiedTime`. Then w(t)/p(t) for
    the NELBO weight -lambda'/2 is the constant (lambda_max - lambda_min)/2 (lowest-variance ELBO estimator
    for a fixed schedule).
    """

    name = "logsnr_uniform"

    def __init__(self, process: Process, stratified: bool = False) -> None:
        super().__init__(process)
        self.stratified = bool(stratified)
        self.logsnr_min = float(process.logsnr(process.t_max))
        self.logsnr_max = float(process.logsnr(process.t_min))
        if not (torch.isfinite(torch.tensor([self.logsnr_min, self.logsnr_max])).all()):
            raise ValueError(f"logsnr_uniform needs a finite log-SNR range on [t_min, t_max] for {process!r}")

    def _draw(self, n, generator, device):
        p = self.process
        u = (
            _stratify(_uniform(1, generator, device), n)
            if self.stratified
            else _uniform(n, generator, device)
        )
        lam = self.logsnr_min + (self.logsnr_max - self.logsnr_min) * u
        return torch.clamp(_t_of_logsnr(p, lam), p.t_min, p.t_max)

    def importance(self, t: Tensor) -> Tensor:
        d = self.process.d_logsnr(torch.as_tensor(t, dtype=DTYPE)).abs()
        return (self.logsnr_max - self.logsnr_min) / d


class DiscreteTime(TimeDistribution):
    """t = i/T with i uniform in 1..T on a :class:`DiscreteChain` (Ho et al. 2020, Alg. 1); weight 1.

    See the module docstring: the weight is (1/T)/p(i) = 1, and sum over steps = T x mean.
    """

    name = "discrete"

    def __init__(self, process: Process) -> None:
        if not isinstance(process, DiscreteChain):
            raise ValueError(f"time distribution 'discrete' needs a DiscreteChain process, got {process!r}")
        super().__init__(process)
        self.T = process.T

    def _draw(self, n, generator, device):
        gdev = generator.device if generator is not None else torch.device(device or "cpu")
        i = torch.randint(1, self.T + 1, (n,), generator=generator, device=gdev).cpu()
        return i.to(DTYPE) / self.T

    def importance(self, t: Tensor) -> Tensor:
        return torch.ones_like(torch.as_tensor(t, dtype=DTYPE))


class _TruncatedNormalTime(TimeDistribution):
    """z ~ N(mean, std^2) truncated to the z-range of [t_min, t_max], t = t(z) (a subclass gives z(t), t(z),
    dz/dt). Drawn by inverse CDF; 1/p(t) = Z / (N(z_t; mean, std^2) |dz/dt|), Z = the mass in range."""

    mean: float
    std: float

    def _z(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _t(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def _dz_dt(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _setup(self, mean: float, std: float) -> None:
        if not std > 0:
            raise ValueError(f"time distribution {self.name!r} needs a positive std, got {std}")
        self.mean, self.std = float(mean), float(std)
        ends = self._z(torch.tensor([self.process.t_min, self.process.t_max], dtype=DTYPE))
        lo, hi = torch.sort(ends).values
        self._cdf_lo = float(torch.special.ndtr((lo - self.mean) / self.std))
        self._cdf_hi = float(torch.special.ndtr((hi - self.mean) / self.std))
        self.mass = self._cdf_hi - self._cdf_lo
        if not self.mass > 0:
            raise ValueError(f"{self.name!r}: no probability mass inside [t_min, t_max] of {self.process!r}")

    def _draw(self, n, generator, device):
        u = self._cdf_lo + self.mass * _uniform(n, generator, device)
        z = self.mean + self.std * torch.special.ndtri(u)
        p = self.process
        return torch.clamp(self._t(z), p.t_min, p.t_max)

    def importance(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=DTYPE)
        z = (self._z(t) - self.mean) / self.std
        density = torch.exp(-0.5 * z**2) / (self.std * math.sqrt(2.0 * math.pi)) * self._dz_dt(t).abs()
        return self.mass / density


class LogitNormalTime(_TruncatedNormalTime):
    """Logit-normal t: logit(t) ~ N(m, s^2) (Esser et al. 2024, SD3, eq. 19; m = 0, s = 1 their default),
    truncated to [t_min, t_max]: p(t) = N(logit t; m, s^2) / (t (1 - t) Z); weight 1/p(t)."""

    name = "logit_normal"

    def __init__(self, process: Process, m: float = 0.0, s: float = 1.0) -> None:
        super().__init__(process)
        self._setup(m, s)

    def _z(self, t: Tensor) -> Tensor:
        return torch.logit(t)

    def _t(self, z: Tensor) -> Tensor:
        return torch.sigmoid(z)

    def _dz_dt(self, t: Tensor) -> Tensor:
        return 1.0 / (t * (1.0 - t))


class EDMLogNormalTime(_TruncatedNormalTime):
    """EDM's noise-level density ln sigma~ ~ N(P_mean, P_std^2) (Karras et al. 2022, Table 1, training), with
    the VE noise level sigma~ = sigma_t / alpha_t = e^{-lambda/2}: lambda ~ N(-2 P_mean, (2 P_std)^2),
    truncated to [lambda(t_max), lambda(t_min)], t = t(lambda). 1/p(t) = Z / (p(lambda_t) |lambda'(t)|).

    A proposal like the others (under the default importance weighting any weighting can use it); with the
    ``edm`` weighting the per-example loss is Z times EDM's lambda(sigma) |D - y|^2 (see ``weighting.edm``).
    """

    name = "edm_lognormal"

    def __init__(self, process: Process, P_mean: float = -1.2, P_std: float = 1.2) -> None:
        super().__init__(process)
        self._setup(-2.0 * float(P_mean), 2.0 * float(P_std))

    def _z(self, t: Tensor) -> Tensor:
        return self.process.logsnr(t)

    def _t(self, z: Tensor) -> Tensor:
        return _t_of_logsnr(self.process, z)

    def _dz_dt(self, t: Tensor) -> Tensor:
        return self.process.d_logsnr(t)


TIME_DISTRIBUTIONS: dict[str, Callable[..., TimeDistribution]] = {
    "uniform": UniformTime,
    "stratified": StratifiedTime,
    "logsnr_uniform": LogSNRUniformTime,
    "discrete": DiscreteTime,
    "logit_normal": LogitNormalTime,
    "edm_lognormal": EDMLogNormalTime,
}


def build_time_distribution(name: str, process: Process, **options: object) -> TimeDistribution:
    """Build a time distribution by name for ``process``; unknown names/options raise UnknownNameError."""
    return build(TIME_DISTRIBUTIONS, name, "time distribution", process=process, **options)


__all__ = [
    "TIME_DISTRIBUTIONS",
    "DiscreteTime",
    "EDMLogNormalTime",
    "LogSNRUniformTime",
    "LogitNormalTime",
    "StratifiedTime",
    "TimeDistribution",
    "UniformTime",
    "build_time_distribution",
]
