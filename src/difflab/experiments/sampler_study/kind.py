"""The ``samplers`` run kind: (denoiser, sampler, grid, NFE) -> sample metrics (wiring only)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from difflab.experiments.protocol import SampleRequest
from difflab.experiments.sampler_study import config, report, run
from difflab.experiments.study.report import ReportSpec


class SamplersKind:
    """:class:`~difflab.experiments.protocol.RunKind` of the sampler study."""

    name = "samplers"

    def parse(self, raw: Mapping[str, Any]) -> Any:
        return config.validate_sampler_config(dict(raw))

    def to_dict(self, cfg: Any) -> dict[str, Any]:
        return config.sampler_config_to_dict(cfg)

    def same_run_key(self, raw: Mapping[str, Any]) -> str | None:
        return None  # each run samples its own settings; none coincide by construction

    def run(self, raw: dict[str, Any], run_dir: str, progress: bool = False) -> dict[str, Any]:
        return run.run_sampler_experiment(raw, run_dir, progress=progress)

    def sample(self, run_dir: str, request: SampleRequest) -> str:
        return run.sample_sampler_run(run_dir, request)

    def evaluate(self, run_dir: str) -> dict[str, Any]:
        return run.evaluate_sampler_run(run_dir)

    def report(self, rows: Sequence[Mapping[str, Any]], out_dir: str) -> ReportSpec:
        return report.report_spec(rows, out_dir)

    def figures(self, rows: Sequence[Mapping[str, Any]], axes_keys: Sequence[str], out_dir: str) -> list[str]:
        return report.make_figures(rows, axes_keys, out_dir)

    def report_sections(
        self, rows: Sequence[Mapping[str, Any]], axes_keys: Sequence[str], out_dir: str
    ) -> list[str]:
        return report.report_sections(rows, axes_keys, out_dir)


KIND = SamplersKind()
