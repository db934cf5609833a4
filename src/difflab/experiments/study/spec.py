"""Study files: parse and load a study, apply ``--set`` overrides, expand it into runs.


The engine is generic over the run configuration: it builds nested config dicts from dotted keys and hands
each to two caller-supplied functions, ``validate_fn(config)`` (raises on a bad config) and
``run_fn(config, run_dir) -> dict`` (trains and evaluates one run; returns metrics and a ``"status"``).

A study file::

    [study]                 # name (default: the file stem) and description
    name = "loss-comparison-2d"
    [fixed]                 # dotted keys (or nested tables) shared by every run
    "train.steps" = 2000
    [axes]                  # factorial product, in the order given (last axis varies fastest)
    "objective.target" = ["x0", "eps", "v", "score"]
    "train.seed" = [0, 1, 2]
    [[extra]]               # additional runs: fixed ∪ these keys ∪ the product of their own axes
    label = "oracle"
    "model.name" = "oracle"
    axes = { "data.name" = ["mixture8"] }

Extras inherit [fixed] but not the main [axes]. The study's ``kind`` names the run kind
(:data:`difflab.experiments.kind.KINDS`); it is checked where the kind is looked up, not here.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from difflab.experiments.common.overrides import OverrideError, TOMLDecodeError, parse_value, tomllib
from difflab.experiments.study.plan import (
    StudyError,
    flatten,
    format_axis_value,
    unflatten,
)

TOP_LEVEL_TABLES = ("study", "fixed", "axes", "extra")
STUDY_KEYS = ("name", "description", "kind")


@dataclass(frozen=True)
class Extra:
    """Additional runs: ``values`` (dotted keys) on top of [fixed], times the product of ``axes``."""

    label: str
    values: dict[str, Any] = field(default_factory=dict)
    axes: dict[str, list[Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Study:
    """A parsed study: dotted-key ``fixed`` values, factorial ``axes`` and ``extras``."""

    name: str
    description: str = ""
    fixed: dict[str, Any] = field(default_factory=dict)
    axes: dict[str, list[Any]] = field(default_factory=dict)
    extras: tuple[Extra, ...] = ()
    path: str | None = None
    kind: str = "toy2d"  # which run pipeline: "toy2d" (2D data) or "images"

    @property
    def axes_keys(self) -> list[str]:
        """Main-grid axis keys in order, then any axis keys that only extras have."""
        keys = list(self.axes)
        for extra in self.extras:
            keys += [k for k in extra.axes if k not in keys]
        return keys


@dataclass(frozen=True)
class RunSpec:
    """One run: a filesystem-safe ``run_id``, its nested ``config`` and its ``axes`` values (dotted keys)."""

    run_id: str
    config: dict[str, Any]
    axes: dict[str, Any]
    label: str = ""

    @property
    def config_hash(self) -> str:
        """Short SHA-256 of the canonical JSON of ``config``."""
        text = json.dumps(self.config, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _parse_axes(table: Any, where: str) -> dict[str, list[Any]]:
    if not isinstance(table, Mapping):
        raise StudyError(f"{where} must be a table of arrays, got {table!r}")
    axes = flatten(table)
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise StudyError(f"axis {key!r} in {where} must be a non-empty array, got {values!r}")
    return axes


def parse_study(data: Mapping[str, Any], default_name: str = "study", path: str | None = None) -> Study:
    """Validate a loaded TOML document and return a :class:`Study`."""
    where = path or "study"
    unknown = sorted(set(data) - set(TOP_LEVEL_TABLES))
    if unknown:
        raise StudyError(
            f"{where}: unknown table [{unknown[0]}]; valid tables: {', '.join(TOP_LEVEL_TABLES)}"
        )
    head = data.get("study", {})
    if not isinstance(head, Mapping):
        raise StudyError(f"{where}: [study] must be a table")
    bad = sorted(set(head) - set(STUDY_KEYS))
    if bad:
        raise StudyError(f"{where}: unknown key {bad[0]!r} in [study]; valid keys: {', '.join(STUDY_KEYS)}")
    fixed_table = data.get("fixed", {})
    if not isinstance(fixed_table, Mapping):
        raise StudyError(f"{where}: [fixed] must be a table")
    fixed = flatten(fixed_table)
    axes = _parse_axes(data.get("axes", {}), "[axes]")
    both = sorted(set(fixed) & set(axes))
    if both:
        raise StudyError(f"{where}: {both[0]!r} is in both [fixed] and [axes]; keep one")
    raw_extras = data.get("extra", [])
    if not isinstance(raw_extras, list) or not all(isinstance(e, Mapping) for e in raw_extras):
        raise StudyError(f"{where}: extras must be written as [[extra]] tables")
    extras = []
    for i, raw in enumerate(raw_extras):
        label = raw.get("label", f"extra{i}")
        if not isinstance(label, str) or not label:
            raise StudyError(f"{where}: [[extra]] #{i + 1}: label must be a non-empty string")
        extra_axes = _parse_axes(raw.get("axes", {}), f"[[extra]] {label!r} axes")
        values = flatten({k: v for k, v in raw.items() if k not in ("label", "axes")})
        both = sorted(set(values) & set(extra_axes))
        if both:
            raise StudyError(f"{where}: [[extra]] {label!r}: {both[0]!r} is both a value and an axis")
        extras.append(Extra(label=label, values=values, axes=extra_axes))
    name = head.get("name", default_name)
    description = head.get("description", "")
    if not isinstance(name, str) or not name or not isinstance(description, str):
        raise StudyError(f"{where}: [study] name and description must be strings (name non-empty)")
    kind = head.get("kind", "toy2d")
    if not isinstance(kind, str) or not kind:
        raise StudyError(f"{where}: [study] kind must be a non-empty string")
    return Study(name, description, fixed, axes, tuple(extras), path, kind)


def list_builtin_studies(builtin_dir: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(name, description) of every ``<builtin_dir>/<name>.toml``, sorted by name."""
    out = []
    for path in sorted(Path(builtin_dir).glob("*.toml")):
        try:
            with open(path, "rb") as f:
                description = str(tomllib.load(f).get("study", {}).get("description", ""))
        except (OSError, TOMLDecodeError, AttributeError) as err:
            description = f"(unreadable: {err})"
        out.append((path.stem, description))
    return out


def load_study(path_or_name: str | os.PathLike[str], builtin_dir: str | os.PathLike[str]) -> Study:
    """Load a study from a TOML file, or by name from ``builtin_dir/<name>.toml``.

    Raises:
        StudyError: unknown name (the message lists the built-in names), missing file, bad TOML or schema.
    """
    text = os.fspath(path_or_name)
    looks_like_path = text.endswith(".toml") or os.sep in text or "/" in text or os.path.isfile(text)
    if looks_like_path:
        path = Path(text)
        if not path.is_file():
            raise StudyError(f"study file not found: {path}")
    else:
        path = Path(builtin_dir) / f"{text}.toml"
        if not path.is_file():
            names = ", ".join(n for n, _ in list_builtin_studies(builtin_dir)) or "(none)"
            raise StudyError(f"unknown study {text!r}; built-in studies: {names} (or give a .toml file)")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except TOMLDecodeError as err:
        raise StudyError(f"{path}: invalid TOML: {err}") from None
    except OSError as err:
        raise StudyError(f"cannot read study file {path}: {err}") from None
    return parse_study(data, default_name=path.stem, path=str(path))


def _override(study: Study, key: str, value: Any) -> Study:
    """Make ``key`` take ``value`` in every run (see :func:`apply_overrides`)."""
    is_axis = key in study.axes or any(key in e.axes for e in study.extras)
    values = (value if isinstance(value, list) else [value]) if is_axis else [value]
    if is_axis and not values:
        raise StudyError(f"--set {key}=[]: an axis needs at least one value")
    fixed, axes = dict(study.fixed), dict(study.axes)
    if key in axes or (is_axis and len(values) > 1):
        axes[key] = list(values)
        fixed.pop(key, None)
    else:
        fixed[key] = values[0] if is_axis else value
    # Drop fixed keys that are now parents/children of `key` (e.g. `train` vs `train.steps`).
    for other in [k for k in fixed if k != key and (k.startswith(key + ".") or key.startswith(k + "."))]:
        del fixed[other]
    extras = []
    for e in study.extras:
        # An extra's own axes follow the override; a key the extra pins itself (e.g. the oracle's model)
        # stays pinned; extras inherit [fixed] but never the main axes.
        e_axes = dict(e.axes)
        if key in e_axes:
            e_axes[key] = list(values)
        extras.append(replace(e, axes=e_axes))
    return replace(study, fixed=fixed, axes=axes, extras=tuple(extras))


def apply_overrides(study: Study, overrides: Iterable[str] | None) -> Study:
    """Apply ``--set key=value`` overrides; returns a new Study.

    Each override makes ``key`` take its value in every run. If ``key`` is an axis (of the main grid or an
    extra), a TOML array gives the axis new values and a single value replaces the axis with that value;
    otherwise the value is stored as given (arrays included) in [fixed]. Extra runs (e.g. the oracle) keep the
    keys they set themselves; their own axes follow the override; they inherit [fixed], never the main axes.
    """
    for item in overrides or ():
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*", key):
            raise StudyError(
                f"bad --set {item!r}; expected key=value with a dotted key, e.g. train.steps=100"
            )
        try:
            value = parse_value(text)
        except OverrideError as err:
            raise StudyError(str(err)) from None
        study = _override(study, key, value)
    return study


MAX_RUN_ID = 120  # characters; a file name may have 255 bytes, and run ids also appear inside longer names


def safe_run_id(text: str) -> str:
    """A run id that is a safe file name, never a path: only ``[A-Za-z0-9_.+-]`` (anything else becomes
    ``-``, leading/trailing dots and dashes dropped, so ``"../../x"`` gives ``"x"``), and at most
    :data:`MAX_RUN_ID` characters: a longer id keeps its first 100 characters plus ``-`` and 16 hex digits
    of the SHA-256 of the full text, so distinct long ids stay distinct."""
    safe = re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-.") or "x"
    if len(safe) <= MAX_RUN_ID:
        return safe
    return f"{safe[:100].rstrip('-.')}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _product(axes: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


def expand(study: Study, *, label_key: str | None = "label") -> list[RunSpec]:
    """All runs of a study in a deterministic order: the main grid (last axis fastest), then each extra.

    ``run_id`` joins the axis values with ``__`` (``mixture8__eps__nelbo__s0``); extras start with their
    label; :func:`safe_run_id` makes it a safe file name. If ``label_key`` is given and not set by the
    study, ``config[label_key] = run_id``.
    """
    plan: list[tuple[str, dict[str, Any], dict[str, Any]]] = []  # (label, values, axis values)
    for point in _product(study.axes):
        plan.append(("", {**study.fixed, **point}, point))
    for extra in study.extras:
        for point in _product(extra.axes):
            plan.append((extra.label, {**study.fixed, **extra.values, **point}, point))
    specs, seen = [], {}
    for label, values, point in plan:
        parts = ([label] if label else []) + [format_axis_value(k, v) for k, v in point.items()]
        run_id = safe_run_id("__".join(parts) if parts else study.name)
        if run_id in seen:
            raise StudyError(f"two runs share the id {run_id!r}; give extras distinct labels or axis values")
        seen[run_id] = True
        config = unflatten(values)
        if label_key is not None and label_key not in config:
            config[label_key] = run_id
        specs.append(RunSpec(run_id, config, copy.deepcopy(point), label))
    return specs
