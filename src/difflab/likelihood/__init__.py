# Discrete and continuous ELBO (likelihood/elbo.py).
from difflab.likelihood.elbo import ElboResult as ElboResult
from difflab.likelihood.elbo import continuous_nelbo as continuous_nelbo
from difflab.likelihood.elbo import discrete_nelbo as discrete_nelbo
from difflab.likelihood.elbo import discretized_gaussian_log_likelihood as discretized_gaussian_log_likelihood
from difflab.likelihood.elbo import gaussian_kl as gaussian_kl
from difflab.likelihood.elbo import nats_per_dim as nats_per_dim
from difflab.likelihood.elbo import posterior_coefficients as posterior_coefficients
from difflab.likelihood.elbo import to_bits_per_dim as to_bits_per_dim

# PF-ODE log-likelihood (exact / Hutchinson divergence; rk4, heun, dopri5) and bits/dim.
from difflab.likelihood.pf_ode import LikelihoodResult as LikelihoodResult
from difflab.likelihood.pf_ode import bits_per_dim as bits_per_dim
from difflab.likelihood.pf_ode import pf_ode_log_likelihood as pf_ode_log_likelihood
