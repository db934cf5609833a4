"""Fixtures of the reliability tests (issue 11): a tiny 2D config, a trained run, directory snapshots.

Every test drives the CLI through ``main([...])`` and checks the exit code, the message and that no file
was created or changed."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from difflab.cli import main

#: a 2D run that trains in about a second: 4 steps, no NLL, small evaluation
TINY_TOML = (
    "[data]\nn_train = 300\nn_test = 100\n[model]\nhidden = 8\nlayers = 1\n"
    "[train]\nsteps = 4\nbatch_size = 32\nlog_every = 2\ncheckpoint_every = 2\n"
    "[eval]\nn_samples = 50\nsteps = 3\nnll = false\nn_nelbo = 20\nnelbo_t_draws = 1\nkde_n_eval = 50\n"
    "also_ancestral = false\n"
)


def write_tiny(path: Path, extra: str = "") -> Path:
    path.write_text(TINY_TOML + extra)
    return path


def snapshot(root: str | os.PathLike[str]) -> dict[str, tuple[str, int]]:
    """relative path -> (sha256 of the bytes, mtime in ns) of every file under ``root`` (empty if none)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(p, root)] = (digest, os.stat(p).st_mtime_ns)
    return out


def trained_copy(template: Path, dest: Path) -> Path:
    """A fresh copy of the module's trained run (tests may damage it)."""
    shutil.copytree(template, dest)
    return dest


def train_tiny(tmp: Path, name: str = "run", *sets: str) -> tuple[Path, Path]:
    """Train the tiny run into ``tmp/name``; returns (config path, run dir)."""
    cfg = write_tiny(tmp / f"{name}.toml")
    run = tmp / name
    args = ["train", str(cfg), "--out", str(run)]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 0
    return cfg, run


@pytest.fixture(scope="module")
def trained_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny run per test module (copied by :func:`trained` before each use)."""
    _, run = train_tiny(tmp_path_factory.mktemp("template"), "run")
    return run


@pytest.fixture
def trained(trained_template: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(config file, run dir): a private copy of the finished tiny run and the TOML that made it."""
    return write_tiny(tmp_path / "run.toml"), trained_copy(trained_template, tmp_path / "run")
