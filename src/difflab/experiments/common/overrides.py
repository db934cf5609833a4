"""TOML files and ``--set key=value`` overrides: one tomllib/tomli import, one value parser.

Python 3.10 has no :mod:`tomllib`; ``pyproject.toml`` installs ``tomli`` there, imported here under the
same name. Every TOML read of difflab (run configs, study files, ``--set`` values) goes through this module.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TOMLDecodeError = tomllib.TOMLDecodeError


class OverrideError(ValueError):
    """A missing or invalid TOML file, or a malformed ``--set``; the message says which."""


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed TOML document at ``path``; OverrideError if it is missing or not valid TOML."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise OverrideError(f"{path} is a directory, not a TOML config file")
    if not os.path.isfile(path):
        raise OverrideError(f"config file not found: {path}")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise OverrideError(f"{path}: invalid TOML: {err}") from None
    except UnicodeDecodeError:
        raise OverrideError(f"{path}: not a text file (TOML must be UTF-8 text)") from None
    except OSError as err:
        raise OverrideError(f"{path}: cannot read the config file: {err.strerror}") from None


def parse_value(text: str) -> Any:
    """A ``--set`` value as a TOML literal (``100``, ``1e-3``, ``true``, ``"eps"``, ``[0, 1]``).

    Text that is not a TOML literal is a bare string (``eps``); ``[a, b]`` is an array of bare strings.
    """
    text = text.strip()
    if not text:
        raise OverrideError("empty value in --set; write key=value")
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    if text.startswith("[") and text.endswith("]"):
        items = [item for item in text[1:-1].split(",") if item.strip()]
        return [parse_value(item) for item in items]
    return text


def apply_sets(config: dict, sets: Sequence[str]) -> dict:
    """Apply ``key.sub=value`` overrides to a nested config dict in place (values by :func:`parse_value`)."""
    for item in sets:
        if "=" not in item:
            raise OverrideError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        node = config
        parts = key.strip().split(".")
        if not all(part.strip() for part in parts):
            raise OverrideError(
                f"--set {item!r}: empty key part in {key.strip()!r}; write e.g. train.steps=3"
            )
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise OverrideError(f"--set {key}: {part!r} is not a table")
        node[parts[-1]] = parse_value(text)
    return config
