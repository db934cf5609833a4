"""Study plans as data: dotted keys, the filesystem-safe run-id tokens, seed-like axes. A leaf module.

A study's keys are dotted (``train.steps``); :func:`flatten` / :func:`unflatten` convert between dotted
keys and the nested config dicts a run kind parses; :func:`format_axis_value` makes the run-id token of one
axis value (``eps``, ``s0`` for a seed, ``steps100``).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from typing import Any


class StudyError(ValueError):
    """A bad study file, override or output directory; the message says what is valid."""


def flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables -> dotted keys: ``{"train": {"steps": 1}} -> {"train.steps": 1}``."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, dotted))
        else:
            out[dotted] = value
    return out


def unflatten(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys -> nested dict; a key that is both a value and a table raises StudyError."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise StudyError(f"key {key!r} conflicts with the value of {'.'.join(parts[: i + 1])!r}")
            node = child
        if isinstance(node.get(parts[-1]), dict):
            raise StudyError(f"key {key!r} conflicts with keys below it (e.g. {key}.…)")
        node[parts[-1]] = copy.deepcopy(value)
    return out


def is_seed_key(key: str) -> bool:
    """Seed-like axes (``seed``, ``*.seed``) are averaged over in reports."""
    return key == "seed" or key.endswith(".seed")


def _safe(text: str) -> str:
    text = re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.")
    return text or "x"


def format_axis_value(key: str, value: Any) -> str:
    """Filesystem-safe token for one axis value: strings as-is, ``s0`` for seeds, ``steps100`` for numbers."""
    short = key.rsplit(".", 1)[-1]
    if isinstance(value, str):
        return _safe(value)
    if isinstance(value, bool):
        return _safe(f"{short}-{str(value).lower()}")
    if isinstance(value, int | float):
        return _safe(f"s{value}" if is_seed_key(key) else f"{short}{value}")
    if isinstance(value, list | tuple):
        return _safe(f"{short}-" + "-".join(str(v) for v in value))
    return _safe(json.dumps(value, sort_keys=True, default=str))


def get_dotted(config: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """``config["a"]["b"]`` for ``key = "a.b"``, or ``default`` when absent."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node
