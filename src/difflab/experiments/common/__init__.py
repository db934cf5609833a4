"""Pieces every run kind shares, importing only the core: strict configs and name/device checks
(``configs``), TOML files and ``--set`` overrides with the one tomllib/tomli import (``overrides``),
run-directory files written atomically (``rundir``), and figures on an Agg canvas (``figures``)."""
