"""difflab: train, sample and evaluate diffusion models under every standard loss formulation.

Convention: continuous time t in [0, 1], t = 0 is data, x_t = alpha_t x0 + sigma_t eps,
lambda_t = log(alpha_t^2 / sigma_t^2) strictly decreasing. See ``difflab.processes``.
"""

__version__ = "0.1.0"
