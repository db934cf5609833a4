"""Run pipelines by study kind: each gives (run_fn, validate_fn, finish_fn) to the study engine and CLI.

``run_fn(config_dict, run_dir) -> dict`` trains and evaluates one run; ``validate_fn(config_dict)`` raises
ConfigError on a bad config; ``finish_fn(study, result, out_dir) -> str`` writes plots and the report and
returns the terminal table. Imports are lazy so that ``difflab --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Pipeline = tuple[Callable[..., dict], Callable[[Any], Any], Callable[..., str]]


def _toy2d() -> Pipeline:
    from difflab.experiments.config import validate_config
    from difflab.experiments.run import run_experiment
    from difflab.experiments.study_outputs import finish_study

    return run_experiment, validate_config, finish_study


def _images() -> Pipeline:
    from difflab.experiments.images import finish_image_study, run_image_experiment, validate_image_config

    return run_image_experiment, validate_image_config, finish_image_study


PIPELINES: dict[str, Callable[[], Pipeline]] = {"toy2d": _toy2d, "images": _images}


def pipeline(kind: str) -> Pipeline:
    from difflab.registry import lookup

    return lookup(PIPELINES, kind, "study kind")()
