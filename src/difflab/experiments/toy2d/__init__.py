"""The ``toy2d`` run kind: 2D data sets with known densities, MLP denoisers (or the exact oracle), the VAE /
learned-variance baselines and the truth row; exact KL by the PF-ODE, sample metrics with floors.

Modules, lowest first: ``config`` (a leaf) <- ``build`` <- ``evaluate`` <- ``baselines`` <- ``score`` <-
``run`` <- ``report`` <- ``kind``. A run directory holds ``config.json``, ``checkpoint.pt``, ``history.json``,
``metrics.json`` and ``samples.npz`` (plus ``score_error.json`` / ``contingency.json`` where asked for).
Seeds: training draws from (train.seed, step); evaluation from eval.seed (NELBO), eval.seed + 1
(samples), eval.seed + 2..4 (sample metrics and their floors), eval.seed + 5 (score error) and
eval.seed + 6 (contingency table)."""
