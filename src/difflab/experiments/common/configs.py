"""Strict frozen-dataclass configs shared by every run kind: parse, round-trip, check names and devices.

A config is a nested dict (from TOML, a study or ``config.json``) turned into frozen dataclasses by
:func:`parse_dataclass`. Unknown keys and values of the wrong type raise :class:`ConfigError` naming the key
and what is valid; :func:`to_dict` gives a JSON-ready dict that parses back to the same config.

The schema is the dataclasses themselves: a field declared with :func:`param` carries its *domain*
(bounds, choices, a description) in its metadata, and :func:`parse_dataclass` checks every value against it,
so each field's valid range is written once, next to its default, for every kind. Floats must be finite
(``nan`` / ``inf`` are never a valid setting). :func:`describe_config` lists the schema (``--help-config``).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
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
    if annotation is float and not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return float(value) if annotation is float else dict(value) if annotation is dict else value


@dataclasses.dataclass(frozen=True)
class Domain:
    """The valid values of one config field: bounds (``ge`` >=, ``gt`` >, ``le`` <=, ``lt`` <) on a number
    or on every element of an integer array, ``choices`` of a string, ``min_len`` of an array; ``doc``
    describes the field. ``None`` (where the type allows it) is always valid."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] | None = None
    min_len: int | None = None
    doc: str = ""

    def text(self) -> str:
        """The domain in words, e.g. ``>= 1``, ``> 0 and <= 0.01``, ``one of scott, silverman``."""
        parts = [
            f"{op} {v:g}"
            for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
            if v is not None
        ]
        if self.choices is not None:
            parts.append(f"one of {', '.join(self.choices)}")
        if self.min_len is not None:
            parts.append(f"at least {self.min_len} entries")
        return " and ".join(parts)

    def check(self, value: Any, where: str) -> None:
        """ConfigError naming ``where`` and the domain unless ``value`` lies in it."""
        if value is None:
            return
        if isinstance(value, tuple):
            if self.min_len is not None and len(value) < self.min_len:
                raise ConfigError(f"{where}: expected {self.text()}, got {list(value)}")
            for i, v in enumerate(value):
                dataclasses.replace(self, min_len=None).check(v, f"{where}[{i}]")
            return
        if isinstance(value, str):
            if self.choices is not None and value not in self.choices:
                raise ConfigError(f"{where}: expected {self.text()}, got {value!r}")
            return
        if isinstance(value, int | float) and not isinstance(value, bool):
            bad = (
                (self.ge is not None and value < self.ge)
                or (self.gt is not None and value <= self.gt)
                or (self.le is not None and value > self.le)
                or (self.lt is not None and value >= self.lt)
            )
            if bad:
                raise ConfigError(f"{where}: must be {self.text()}, got {value!r}")


def param(
    default: Any = dataclasses.MISSING, *, doc: str = "", factory: Any = dataclasses.MISSING, **bounds: Any
) -> Any:
    """A dataclass field with its domain: ``param(256, ge=1, doc="hidden width")``; ``factory`` for a
    mutable default (``param(factory=dict)``). ``bounds`` are the :class:`Domain` fields."""
    meta = {"domain": Domain(doc=doc, **bounds)}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def domain(doc: str = "", **bounds: Any) -> dict[str, Domain]:
    """Field metadata carrying a :class:`Domain`: ``field(default_factory=dict, metadata=domain(doc))``."""
    return {"domain": Domain(doc=doc, **bounds)}


def field_domain(f: dataclasses.Field) -> Domain | None:
    """The :class:`Domain` of a field declared by :func:`param` (None for a plain field)."""
    return f.metadata.get("domain")


def describe_config(cls: type, where: str = "") -> list[str]:
    """One line per leaf field of the config dataclass ``cls``: key, type, default, domain, description."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            lines += describe_config(hint, key)
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        dom = field_domain(f)
        type_name = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
        domain = f"  [{dom.text()}]" if dom is not None and dom.text() else ""
        doc = f"  {dom.doc}" if dom is not None and dom.doc else ""
        lines.append(f"{key} ({type_name}) = {default!r}{domain}{doc}")
    return lines


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
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = parse_dataclass(hint, value, key)
            continue
        kwargs[name] = check_type(value, hint, key)
        domain = field_domain(fields[name])
        if domain is not None:
            domain.check(kwargs[name], key)
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


def plural(what: str) -> str:
    """English plural of a concept name: ``process`` -> ``processes``, ``sampler`` -> ``samplers``."""
    return f"{what}es" if what.endswith(("s", "x", "sh", "ch")) else f"{what}s"


def check_choice(choices: Iterable[str], value: str, what: str) -> str:
    """``value`` if it is one of ``choices``, else ConfigError listing them (the registry's wording)."""
    names = sorted(choices)
    if value not in names:
        raise ConfigError(f"unknown {what} {value!r}; valid {plural(what)}: {', '.join(names)}")
    return value


def check_denoiser_options(preconditioning: str, time_input: str, target: str) -> None:
    """``model.preconditioning`` and ``model.time_input`` of a TargetDenoiser (every kind): known names, and
    a combination the denoiser accepts (:func:`~difflab.parameterization.preconditioning_error`,
    :func:`~difflab.parameterization.time_input_error`); else ConfigError."""
    from difflab.parameterization import (
        PRECONDITIONINGS,
        TIME_INPUTS,
        preconditioning_error,
        time_input_error,
    )

    check_choice(PRECONDITIONINGS, preconditioning, "preconditioning")
    check_choice(TIME_INPUTS, time_input, "time input")
    errors = (preconditioning_error(preconditioning, target), time_input_error(time_input, preconditioning))
    for error in errors:
        if error is not None:
            raise ConfigError(error)


def check_device(device: str, key: str = "train.device") -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` (one rule for every kind); anything else is a ConfigError.

    Syntax only: a study is planned on one machine and may run on another. Whether the device exists here
    is :func:`check_device_available`, called by ``difflab train`` (also with ``--dry-run``) and by every
    run before it writes a file."""
    if device in ("cpu", "cuda") or re.fullmatch(r"cuda:\d+", device):
        return device
    raise ConfigError(f"{key}: unknown device {device!r}; valid devices: cpu, cuda, cuda:N")


def check_device_available(device: str, key: str = "train.device") -> str:
    """ConfigError unless ``device`` exists on this machine (CUDA available, index below the count)."""
    if check_device(device, key) == "cpu":
        return device
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= count:
        raise ConfigError(
            f"{key} = {device!r} but this machine has {count} CUDA device(s); use train.device = 'cpu'"
        )
    return device


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


#: log of the smallest normal float32 (1.18e-38): alpha_t or sigma_t below it underflow in training
_LOG_TINY32 = math.log(1.1754943508222875e-38)


def check_process_range(process: Any, key: str = "process.options") -> None:
    """ConfigError unless the process's coefficients are usable in float32 on all of [t_min, t_max].

    Extreme options pass every type check and then fail deep in a run: ``logsnr_max = 1e6`` puts t_min where
    sigma_t = 0 (log-SNR +inf), an OU ``horizon = 1e4`` or ``beta_max = 1e5`` makes alpha_{t_max} =
    e^{-10^4} = 0. Checked on 257 times: log alpha_t, log sigma_t and lambda_t = 2 log(alpha_t / sigma_t)
    finite, and alpha_t, sigma_t above the smallest normal float32 (log >= -87.3).
    """
    import torch

    t = torch.linspace(process.t_min, process.t_max, 257, dtype=torch.float64)
    c = process.coefficients(t)
    log_a, log_s = torch.log(c.alpha), torch.log(c.sigma)
    lam = c.logsnr
    finite = lam[torch.isfinite(lam)]
    span = f"{float(finite.max()):.4g} .. {float(finite.min()):.4g}" if finite.numel() else "nowhere finite"
    for name, v in (("log alpha_t", log_a), ("log sigma_t", log_s), ("log-SNR", lam)):
        bad = ~torch.isfinite(v) | (v < _LOG_TINY32 if name != "log-SNR" else torch.zeros_like(v, dtype=bool))
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ConfigError(
                f"{key}: {process!r} is unusable: {name} = {float(v[i]):.4g} at t = {float(t[i]):.4g} "
                f"(finite log-SNR over [t_min, t_max]: {span}); choose milder options"
            )


def same_objective_key(resolved: Mapping[str, Any], process: Any, objective: Any) -> str:
    """The key of what a resolved run config computes, with its weighting read as a function.

    The config without its ``label``, and with ``objective.weighting`` replaced by
    :meth:`~difflab.objectives.weighting.Weighting.fingerprint` of the objective's weighting on its target:
    runs with one key differ only in the name of a weighting that gives the same loss at every time the
    trainer draws (seed 000's "weighted" and "rescaled" on x0), so they train and evaluate bit for bit alike
    and a study runs one of them (:func:`difflab.experiments.study.engine.run_study`)."""
    import copy
    import hashlib
    import json

    identity = copy.deepcopy(dict(resolved))
    identity.pop("label", None)
    identity["objective"] = {
        **identity["objective"],
        "weighting": objective.weighting.fingerprint(objective.target, process),
    }
    text = json.dumps(identity, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()
