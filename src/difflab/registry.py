"""Name tables: the only place where strings become objects (used by the config and CLI layers)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    """An unknown name was given for a concept; the message lists the valid names."""


def lookup(table: Mapping[str, T], name: str, kind: str) -> T:
    """Return ``table[name]`` or raise :class:`UnknownNameError` listing the valid choices."""
    try:
        return table[name]
    except KeyError:
        valid = ", ".join(sorted(table))
        kinds = f"{kind}es" if kind.endswith(("s", "x", "sh", "ch")) else f"{kind}s"
        raise UnknownNameError(f"unknown {kind} {name!r}; valid {kinds}: {valid}") from None


def build(table: Mapping[str, Callable[..., T]], name: str, kind: str, **kwargs: object) -> T:
    """Construct ``table[name](**kwargs)``; unknown names and unknown keyword arguments are errors."""
    ctor = lookup(table, name, kind)
    try:
        return ctor(**kwargs)
    except TypeError as err:
        raise UnknownNameError(f"bad options for {kind} {name!r}: {err}") from None
