"""Run functions for the scale-out tests, importable by worker processes (Dask, submitit, subprocesses).

:func:`torch_run` is a deterministic, resumable run: ``train.steps`` steps of gradient descent on a
least-squares problem drawn from ``train.seed``, checkpointing (JSON, exact floats) after every step, so a
run killed at step k and resumed gives bit-for-bit the metrics of a run never killed. Each step appends
``"<pid> <step>"`` to ``steps.log`` in the run directory.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch


def _problem(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 4, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64) + 0.1 * torch.randn(
        64, generator=g, dtype=torch.float64
    )
    return x, y


def torch_run(config: dict, run_dir: str) -> dict:
    train = config["train"]
    steps, delay = int(train["steps"]), float(train.get("delay", 0.0))
    x, y = _problem(int(train["seed"]))
    ckpt = Path(run_dir) / "checkpoint.pt"
    state = json.loads(ckpt.read_text()) if ckpt.exists() else {"step": 0, "w": [0.0] * 4}
    w = torch.tensor(state["w"], dtype=torch.float64)
    lr = float(train.get("lr", 0.05))
    for step in range(state["step"], steps):
        grad = 2 * x.T @ (x @ w - y) / len(y)
        w = w - lr * grad
        with open(Path(run_dir) / "steps.log", "a") as f:
            f.write(f"{os.getpid()} {step}\n")
        tmp = ckpt.with_suffix(".tmp")
        tmp.write_text(json.dumps({"step": step + 1, "w": w.tolist()}))
        os.replace(tmp, ckpt)
        time.sleep(delay)
    loss = float(((x @ w - y) ** 2).mean())
    return {"status": "finished", "loss": loss, "w0": float(w[0]), "threads": torch.get_num_threads()}


def accept(config: dict) -> None:
    assert isinstance(config, dict)


def main() -> None:
    """``python -m tests.experiments.study.scaleout_fns STUDY.toml OUT [I/N]``: run_study with torch_run."""
    from difflab.experiments.study.engine import run_study
    from difflab.experiments.study.spec import load_study

    study = load_study(sys.argv[1], Path(sys.argv[1]).parent)
    shard = tuple(int(v) for v in sys.argv[3].split("/")) if len(sys.argv) > 3 else None
    run_study(
        study,
        run_fn=torch_run,
        validate_fn=accept,
        out_dir=sys.argv[2],
        workers=1,
        progress=False,
        shard=shard,
    )


if __name__ == "__main__":
    main()
