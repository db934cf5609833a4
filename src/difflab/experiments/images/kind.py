"""The ``images`` run kind: UNet diffusion on image sets, FID/KID/IS with floors, bits/dim (wiring only)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from difflab.experiments.images import config, report, run
from difflab.experiments.protocol import SampleRequest
from difflab.experiments.study.report import ReportSpec


class ImagesKind:
    """:class:`~difflab.experiments.protocol.RunKind` of the image pipeline."""

    name = "images"

    def parse(self, raw: Mapping[str, Any]) -> Any:
        return config.validate_image_config(dict(raw))

    def to_dict(self, cfg: Any) -> dict[str, Any]:
        return config.image_config_to_dict(cfg)

    def same_run_key(self, raw: Mapping[str, Any]) -> str | None:
        return config.same_run_key(dict(raw))

    def run(self, raw: dict[str, Any], run_dir: str, progress: bool = False) -> dict[str, Any]:
        return run.run_image_experiment(raw, run_dir, progress=progress)

    def sample(self, run_dir: str, request: SampleRequest) -> str:
        r = request
        return run.sample_image_run(run_dir, r.sampler, r.steps, r.n, r.seed, r.out, r.grid, dict(r.options))

    def evaluate(self, run_dir: str) -> dict[str, Any]:
        return run.evaluate_image_run(run_dir)

    def report(self, rows: Sequence[Mapping[str, Any]], out_dir: str) -> ReportSpec:
        return report.report_spec(rows, out_dir)

    def figures(self, rows: Sequence[Mapping[str, Any]], axes_keys: Sequence[str], out_dir: str) -> list[str]:
        return report.make_image_plots(rows, out_dir)

    def report_sections(
        self, rows: Sequence[Mapping[str, Any]], axes_keys: Sequence[str], out_dir: str
    ) -> list[str]:
        return []


KIND = ImagesKind()
