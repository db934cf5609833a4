"""The seam between the CLI / study engine and a pipeline: the :class:`RunKind` protocol.

A run kind (``toy2d``, ``images``) is a module ``difflab.experiments.<kind>.kind`` holding ``KIND``, an
object with the methods below; :mod:`difflab.experiments.kind` looks it up by name. The engine and the CLI
call nothing else of a pipeline, so a new kind is one new package plus one line in ``KINDS``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from difflab.experiments.study.report import ReportSpec


@dataclass(frozen=True)
class SampleRequest:
    """``difflab sample RUN ...``: how many samples, with which sampler / grid / options, written where."""

    n: int
    steps: int
    seed: int = 0
    sampler: str | None = None  # None: the run's own sampler (2D: the target's natural sampler)
    grid: str | None = None  # None: the run's eval.grid
    options: Mapping[str, Any] = field(default_factory=dict)  # sampler options (e.g. eta, snr)
    out: str | None = None  # output .npz (default inside the run directory)


class RunKind(Protocol):
    """What a pipeline offers the engine and the CLI."""

    name: str

    def parse(self, raw: Mapping[str, Any]) -> Any:
        """Strict parse of a config dict, every name checked (ConfigError); reads no data."""

    def to_dict(self, config: Any) -> dict[str, Any]:
        """JSON-ready dict with ``parse(to_dict(c)) == c``."""

    def same_run_key(self, raw: Mapping[str, Any]) -> str | None:
        """A key equal for two configs that compute the same run bit for bit (the study engine trains one
        and copies its result to the other); None when the kind cannot tell."""

    def run(self, raw: dict[str, Any], run_dir: str, progress: bool = False) -> dict[str, Any]:
        """Train (resuming from the run directory) and evaluate one run; metrics with a "status"."""

    def sample(self, run_dir: str, request: SampleRequest) -> str:
        """Draw samples from a finished run, write them, return a one-line summary."""

    def evaluate(self, run_dir: str) -> dict[str, Any]:
        """Re-evaluate a finished run from its directory (same seeds: the recorded metrics)."""

    def report(self, rows: Sequence[Mapping[str, Any]], out_dir: str) -> ReportSpec:
        """Columns, directions, terminal table and notes of a study's report."""

    def figures(self, rows: Sequence[Mapping[str, Any]], axes_keys: Sequence[str], out_dir: str) -> list[str]:
        """Write the study's figures under ``out_dir/figures``; returns their paths."""

    def report_sections(
        self, rows: Sequence[Mapping[str, Any]], axes_keys: Sequence[str], out_dir: str
    ) -> list[str]:
        """Extra markdown sections of the report (after the results table)."""
