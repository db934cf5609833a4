"""The ``samplers`` run kind: one run = (denoiser, sampler, grid, NFE) -> sample metrics on 2D data.

The denoiser is either the **exact** Bayes denoiser of the data law (``oracle``: every error is the
sampler's) or a model trained once by the ``toy2d`` pipeline from the run's ``recipe`` and cached by the hash
of that recipe under a file lock (``trained``: sampler error plus model error), so that a study of many
sampler arms trains one model. Composed on top of :mod:`difflab.experiments.toy2d` (layer 6b).

Modules: ``config`` (strict config, NFE -> steps), ``run`` (one run; the trained-model cache),
``pushforward`` (exact log-density of a deterministic sampler's pushforward), ``report`` (figures, the
cheapest-sampler rule), ``kind`` (``KIND``).
"""
