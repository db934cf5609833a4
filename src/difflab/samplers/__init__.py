"""Samplers: each sees only the denoiser x0_hat = D(x_t, t) (t float64, shape (B,)), never raw network output.

Every sampler has the signature ``fn(denoiser, process, x_T, grid, *, generator=None, denoise_final=True,
callback=None, **options) -> Tensor`` and runs over an explicit grid of ``steps + 1`` strictly decreasing
times from t_max to t_min (:func:`time_grid`, registry :data:`GRIDS`). Draw x_T with :func:`prior_sample`.
All noise comes from the ``generator`` passed in. Coefficients are computed in float64; the state keeps
x_T's dtype.

Output: by default (``denoise_final=True``) the last denoised estimate x0_hat(x_{t_min}, t_min), one extra
denoiser evaluation; with ``denoise_final=False`` the state x_{t_min} itself.

NFE (denoiser evaluations) for ``steps`` grid steps, from :meth:`SamplerSpec.nfe`:

    ancestral, ddim, euler_maruyama, ode_euler   steps + 1
    ode_heun, edm_heun, edm_stochastic           2 steps + 1      (second-order correction on every step)
    dpmpp_2m                                     steps + 1        (multistep: reuses the previous x0_hat)
    pc                                           steps (1 + n_corrector) + 1
    (each minus 1 with denoise_final=False)

On a DDPM chain of T steps, ``time_grid(chain, T - 1, "discrete")`` is the full chain and ancestral sampling
on it is Ho et al. (2020) Algorithm 2 with T = NFE evaluations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from difflab.registry import lookup
from difflab.samplers.ancestral import posterior_coefficients, sample_ancestral, sample_ddim
from difflab.samplers.grids import (
    GRIDS,
    check_grid,
    discrete_grid,
    karras_grid,
    prior_sample,
    time_grid,
    uniform_logsnr_grid,
    uniform_t_grid,
)
from difflab.samplers.modern import sample_dpmpp_2m, sample_edm, sample_edm_heun
from difflab.samplers.ode import pf_ode_velocity, sample_ode_euler, sample_ode_heun
from difflab.samplers.sde import langevin_step, sample_euler_maruyama, sample_pc

SamplerFn = Callable[..., Any]


def _one(**_: Any) -> int:
    return 1


def _two(**_: Any) -> int:
    return 2


def _pc_evals(n_corrector: int = 1, **_: Any) -> int:
    return 1 + int(n_corrector)


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: its function, whether it draws noise, and its NFE formula.

    ``evals_per_step(**options)`` gives denoiser calls per grid step for the given sampler options.
    """

    name: str
    fn: SamplerFn
    stochastic: bool
    order: int
    evals_per_step: Callable[..., int]
    reference: str

    def nfe(self, steps: int, *, denoise_final: bool = True, **options: Any) -> int:
        """Denoiser evaluations for ``steps`` grid steps: steps * evals_per_step + (1 if denoise_final)."""
        return int(steps) * self.evals_per_step(**options) + int(bool(denoise_final))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


SAMPLERS: dict[str, SamplerSpec] = {
    s.name: s
    for s in [
        SamplerSpec("ancestral", sample_ancestral, True, 1, _one, "Ho et al. 2020 Alg. 2; VDM eq. 33"),
        SamplerSpec("ddim", sample_ddim, False, 1, _one, "Song, Meng & Ermon 2021 eq. 12 (eta=0 default)"),
        SamplerSpec("euler_maruyama", sample_euler_maruyama, True, 1, _one, "Song et al. 2021 eq. 6"),
        SamplerSpec("pc", sample_pc, True, 1, _pc_evals, "Song et al. 2021 Alg. 5 (EM + Langevin)"),
        SamplerSpec("ode_euler", sample_ode_euler, False, 1, _one, "Song et al. 2021 eq. 13, Euler"),
        SamplerSpec("ode_heun", sample_ode_heun, False, 2, _two, "Karras et al. 2022 Alg. 1"),
        SamplerSpec("dpmpp_2m", sample_dpmpp_2m, False, 2, _one, "Lu et al. 2022 (DPM-Solver++) Alg. 2"),
        SamplerSpec("edm_heun", sample_edm_heun, False, 2, _two, "Karras et al. 2022 Alg. 1 (in sigma~)"),
        SamplerSpec("edm_stochastic", sample_edm, True, 2, _two, "Karras et al. 2022 Alg. 2 (S_churn...)"),
    ]
}
"""name -> SamplerSpec. ``ddim`` is deterministic at its default eta = 0 (stochastic for eta > 0)."""


def get_sampler(name: str) -> SamplerSpec:
    """The SamplerSpec registered as ``name``; an unknown name raises an error listing the valid ones."""
    return lookup(SAMPLERS, name, "sampler")


__all__ = [
    "GRIDS",
    "SAMPLERS",
    "SamplerSpec",
    "check_grid",
    "discrete_grid",
    "get_sampler",
    "karras_grid",
    "langevin_step",
    "pf_ode_velocity",
    "posterior_coefficients",
    "prior_sample",
    "sample_ancestral",
    "sample_ddim",
    "sample_dpmpp_2m",
    "sample_edm",
    "sample_edm_heun",
    "sample_euler_maruyama",
    "sample_ode_euler",
    "sample_ode_heun",
    "sample_pc",
    "time_grid",
    "uniform_logsnr_grid",
    "uniform_t_grid",
]
