"""The ``toy2d`` run kind: 2D data sets with known densities, MLP denoisers, baselines (wiring only)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from difflab.experiments.common.configs import to_dict
from difflab.experiments.protocol import SampleRequest
from difflab.experiments.study.report import ReportSpec
from difflab.experiments.toy2d import report, run


class Toy2DKind:
    """:class:`~difflab.experiments.protocol.RunKind` of the 2D pipeline."""

    name = "toy2d"

    def parse(self, raw: Mapping[str, Any]) -> Any:
        return run.validate_config(dict(raw))

    def to_dict(self, config: Any) -> dict[str, Any]:
        return to_dict(config)

    def same_run_key(self, raw: Mapping[str, Any]) -> str | None:
        return run.same_run_key(dict(raw))

    def run(self, raw: dict[str, Any], run_dir: str, progress: bool = False) -> dict[str, Any]:
        return run.run_experiment(raw, run_dir, progress=progress)

    def sample(self, run_dir: str, request: SampleRequest) -> str:
        r = request
        return run.sample_run(run_dir, r.sampler, r.steps, r.n, r.seed, r.out, r.grid, dict(r.options))

    def evaluate(self, run_dir: str) -> dict[str, Any]:
        return run.evaluate_saved_run(run_dir)

    def report(self, rows: Sequence[Mapping[str, Any]], out_dir: str) -> ReportSpec:
        return report.report_spec(rows, out_dir)

    def figures(self, rows: Sequence[Mapping[str, Any]], axes_keys: Sequence[str], out_dir: str) -> list[str]:
        return report.make_figures(rows, axes_keys, out_dir)

    def report_sections(
        self, rows: Sequence[Mapping[str, Any]], axes_keys: Sequence[str], out_dir: str
    ) -> list[str]:
        return report.report_sections(rows, axes_keys, out_dir)


KIND = Toy2DKind()
