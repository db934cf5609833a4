"""Factorial studies, generic over the run kind: a study file (``spec``) with dotted keys (``plan``) expands
into runs that the engine (``engine``) validates, runs (resuming) and tabulates (``results``:
``results.csv``, ``results.json``); ``report.finish_study`` writes ``report.md`` once."""
