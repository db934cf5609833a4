"""Strict frozen-dataclass configs shared by every run kind: parse, round-trip, check names and devices.

A config is a nested dict (from TOML, a study or ``config.json``) turned into frozen dataclasses by
:func:`parse_dataclass`. Unknown keys and values of the wrong type raise :class:`ConfigError` naming the key
and what is valid; :func:`to_dict` gives a JSON-ready dict that parses back to the same config.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

#: sampler arguments that are not options (the call signature every sampler shares)
SAMPLER_ARGS = frozenset({"denoiser", "process", "x_T", "grid", "generator", "callback"})


class ConfigError(ValueError):
    """A bad configuration: the message says which key and what is valid."""


def check_type(value: Any, annotation: Any, where: str) -> Any:
    """``value`` checked against a field annotation (bool, int, float, str, dict, ``tuple[int, ...]``,
    unions); ints become floats for float fields."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_type(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected an array of integers, got {value!r}")
        return tuple(check_type(v, int, f"{where}[{i}]") for i, v in enumerate(value))
    simple = {bool: "true/false", int: "an integer", float: "a number", str: "a string", dict: "a table"}
    if annotation not in simple:
        raise ConfigError(f"{where}: unsupported type {annotation}")  # pragma: no cover
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
        dict: isinstance(value, dict),
    }[annotation]
    if not ok:
        raise ConfigError(f"{where}: expected {simple[annotation]}, got {value!r}")
    return float(value) if annotation is float else dict(value) if annotation is dict else value


def parse_dataclass(cls: type, data: Any, where: str = "") -> Any:
    """Nested dict -> frozen dataclass ``cls``; unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown key {'.'.join(filter(None, [where, unknown[0]]))!r}; valid keys"
            f"{' in [' + where + ']' if where else ''}: {', '.join(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        hint = hints[name]
        kwargs[name] = (
            parse_dataclass(hint, value, key)
            if dataclasses.is_dataclass(hint)
            else check_type(value, hint, key)
        )
    return cls(**kwargs)


def json_ready(obj: Any) -> Any:
    """Tuples as lists, recursively (what JSON would do), so that configs compare after a round trip."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    return obj


def to_dict(config: Any) -> dict:
    """JSON-ready dict of a config dataclass; ``parse_dataclass(type(config), to_dict(config)) == config``."""
    return json_ready(dataclasses.asdict(config))


def check_choice(choices: Iterable[str], value: str, what: str) -> str:
    """``value`` if it is one of ``choices``, else ConfigError listing them (the registry's wording)."""
    names = sorted(choices)
    if value not in names:
        raise ConfigError(f"unknown {what} {value!r}; valid {what}s: {', '.join(names)}")
    return value


def check_device(device: str, key: str = "train.device") -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` (one rule for every kind); anything else is a ConfigError."""
    if device in ("cpu", "cuda") or re.fullmatch(r"cuda:\d+", device):
        return device
    raise ConfigError(f"{key}: unknown device {device!r}; valid devices: cpu, cuda, cuda:N")


def sampler_option_names(sampler_fn: Any) -> set[str]:
    """The keyword options a sampler function accepts (its signature minus the shared call arguments)."""
    return set(inspect.signature(sampler_fn).parameters) - SAMPLER_ARGS


def options_for(sampler_fn: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``options`` that ``sampler_fn`` accepts (e.g. ``snr`` for pc, ``eta`` for ddim)."""
    names = sampler_option_names(sampler_fn)
    return {k: v for k, v in options.items() if k in names}


def check_sampler_options(options: Mapping[str, Any], samplers: Mapping[str, Any], names: list[str]) -> None:
    """Every key of ``options`` must be accepted by at least one of the samplers ``names`` (else it would
    be silently ignored); raises ConfigError listing the valid options."""
    accepted = set().union(*(sampler_option_names(samplers[n].fn) for n in names))
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(
            f"eval.sampler_options: {unknown[0]!r} is not an option of the samplers {names}; "
            f"valid: {', '.join(sorted(accepted))}"
        )
