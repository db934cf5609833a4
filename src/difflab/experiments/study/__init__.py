"""Factorial studies, generic over the run kind: a study file (``spec``) with dotted keys (``plan``) expands
into runs that the engine (``engine``) validates, runs (resuming) and tabulates (``results``:
``results.csv``, ``results.json``); ``report.finish_study`` writes ``report.md`` once: the answer first
(``headline``: per comparison group, a headline table and conclusions), from paired comparisons of the arms
(``compare``: groups, best and ties; ``stats``: paired intervals and Holm's correction), as the kind's
``reportspec.ReportSpec`` asks."""
