"""The application layer: run kinds (pipelines), the study engine and the pieces they share.

Layers, lowest first. A module imports only from its own layer or the layers below it (tested by
``tests/test_layers.py``, imports inside functions included); no import cycles anywhere in ``difflab``.

1. core: ``difflab.processes``, ``parameterization``, ``objectives``, ``samplers``, ``likelihood``,
   ``metrics``, ``data``, ``models``, ``baselines``, ``registry`` (never import ``difflab.experiments``)
2. ``experiments.common``: strict configs and name checks (``configs``), TOML and ``--set`` (``overrides``),
   run-directory files (``rundir``), figures on an Agg canvas (``figures``)
3. ``experiments.study``: study files (``spec``, ``plan``), the engine (``engine``), result tables
   (``results``) and the report, written once (``report.finish_study``)
4. ``experiments.training``: the trainer (``trainer``), validation and early stopping (``validation``),
   torchrun / DDP helpers (``dist``)
5. ``experiments.protocol``: the :class:`RunKind` protocol and :class:`SampleRequest`
6. ``experiments.toy2d`` and ``experiments.images``: the two run kinds; siblings that never import each
   other, each with ``config``, ``run``, ``report`` and a ``kind`` module holding ``KIND``
6b. ``experiments.sampler_study``: the ``samplers`` kind, composed on ``toy2d`` (it trains its model through
   ``toy2d.run``); never imported by the kinds of layer 6
7. ``experiments.kind``: ``KINDS`` (name -> module, imported lazily), ``get_kind``, ``run_by_kind``
8. ``difflab.cli``: kind-free; reaches every pipeline through ``get_kind``

Seams: the CLI and the study engine talk to a pipeline only through :class:`RunKind`; the pipelines share
code only through ``common``, ``study`` and ``training``.
"""
