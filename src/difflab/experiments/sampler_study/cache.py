"""The trained-model cache of the sampler study: one recipe run per config hash, trained once under a file
lock and shared by every arm (and by concurrent workers) that names the same recipe."""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from difflab.experiments.common.rundir import read_json


def canonical_hash(config: dict[str, Any]) -> str:
    """SHA-256 (16 hex digits) of a config dict's canonical JSON, label left out."""
    text = json.dumps({k: v for k, v in config.items() if k != "label"}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_recipe_run(
    config: dict[str, Any], root: Path, run_fn: Callable[[dict[str, Any], str], dict[str, Any]]
) -> tuple[dict[str, Any], Path]:
    """Run the recipe ``config`` once into ``root/<hash>`` while holding ``root/<hash>.lock`` (later callers
    read its metrics.json); returns (its metrics, its directory). RuntimeError unless it finished."""
    root.mkdir(parents=True, exist_ok=True)
    key = canonical_hash(config)
    model_dir = root / key
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            metrics = read_json(model_dir / "metrics.json")
            if metrics is None:
                metrics = run_fn(config, str(model_dir))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if metrics.get("status") != "finished":
        raise RuntimeError(f"the recipe's model in {model_dir} did not finish: {metrics.get('status')}")
    return metrics, model_dir
