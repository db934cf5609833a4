"""Run kinds by name: the one table the CLI and the study engine use to reach a pipeline.

``KINDS`` maps a kind name to the module holding its ``KIND`` (a
:class:`~difflab.experiments.protocol.RunKind`); modules are imported on first use, so that
``difflab --help`` stays fast and a kind's dependencies load only when it runs. A new kind is a new package
``difflab.experiments.<name>`` with a ``kind.py`` plus one line here.
"""

from __future__ import annotations

import importlib
from types import MappingProxyType
from typing import Any

from difflab.experiments.protocol import RunKind, SampleRequest
from difflab.registry import lookup

KINDS = MappingProxyType(
    {
        "toy2d": "difflab.experiments.toy2d.kind",
        "images": "difflab.experiments.images.kind",
        "samplers": "difflab.experiments.sampler_study.kind",
    }
)


def kind_names() -> list[str]:
    return sorted(KINDS)


def get_kind(name: str) -> RunKind:
    """The run kind ``name``; UnknownNameError listing :data:`KINDS` otherwise."""
    return importlib.import_module(lookup(KINDS, name, "study kind")).KIND


def run_by_kind(kind: str, config: dict, run_dir: str) -> dict[str, Any]:
    """The study engine's ``run_fn`` for ``kind`` (top level, so ``functools.partial`` of it pickles)."""
    return get_kind(kind).run(config, run_dir)


def same_run_key_by_kind(kind: str, config: dict) -> str | None:
    """The study engine's ``same_run_key`` for ``kind`` (:meth:`RunKind.same_run_key`)."""
    return get_kind(kind).same_run_key(config)


def validate_by_kind(kind: str, config: dict) -> Any:
    """The study engine's ``validate_fn`` for ``kind``."""
    return get_kind(kind).parse(config)


__all__ = [
    "KINDS",
    "RunKind",
    "SampleRequest",
    "get_kind",
    "kind_names",
    "run_by_kind",
    "same_run_key_by_kind",
    "validate_by_kind",
]
