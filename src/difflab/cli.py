"""The ``difflab`` command line: train | sample | evaluate | study.

Bad input (unknown key or name, wrong type, missing file, unwritable output) prints one message and exits
with status 2, having written nothing. Every command reaches its pipeline through the run kind
(:mod:`difflab.experiments.kind`): this module holds no kind-specific code.

Training past one device: ``torchrun --nproc_per_node=N -m difflab.cli train CONFIG.toml --device cuda``
(only rank 0 prints the result).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

BUILTIN_STUDIES = Path(__file__).parent / "studies"


def cmd_train(args: argparse.Namespace) -> int:
    from difflab.experiments.common.overrides import apply_sets, load_toml
    from difflab.experiments.common.rundir import DEFAULT_KIND, check_writable
    from difflab.experiments.kind import get_kind
    from difflab.experiments.training.dist import dist_info_from_env

    sets = [*args.set, *([f'train.device="{args.device}"'] if args.device else [])]
    raw = apply_sets(load_toml(args.config), sets)
    kind = get_kind(raw.pop("kind", DEFAULT_KIND))
    config = kind.parse(raw)
    if args.dry_run:
        print(json.dumps(kind.to_dict(config), indent=2))
        return 0
    out = args.out or os.path.join("runs", Path(args.config).stem)
    check_writable(out)
    result = kind.run(raw, out, progress=True)
    if dist_info_from_env().is_main:  # under torchrun every rank trains, rank 0 reports
        print(json.dumps(result, indent=2, default=float))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from difflab.experiments.common.overrides import apply_sets
    from difflab.experiments.common.rundir import read_kind
    from difflab.experiments.kind import SampleRequest, get_kind

    options = apply_sets({}, args.option)
    request = SampleRequest(args.n, args.steps, args.seed, args.sampler, args.grid, options, args.out)
    print(get_kind(read_kind(args.run)).sample(args.run, request))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from difflab.experiments.common.rundir import read_kind
    from difflab.experiments.kind import get_kind

    print(json.dumps(get_kind(read_kind(args.run)).evaluate(args.run), indent=2, default=float))
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from difflab.experiments.common.rundir import check_writable
    from difflab.experiments.kind import get_kind, run_by_kind, validate_by_kind
    from difflab.experiments.study.engine import run_study
    from difflab.experiments.study.report import finish_study
    from difflab.experiments.study.spec import apply_overrides, list_builtin_studies, load_study

    if args.list:
        for name, description in list_builtin_studies(BUILTIN_STUDIES):
            print(f"{name:32s} {description}")
        return 0
    study = apply_overrides(load_study(args.study or "default", BUILTIN_STUDIES), args.set)
    kind = get_kind(study.kind)
    out = args.out or os.path.join("runs", study.name)
    if not args.dry_run:
        check_writable(out)
    result = run_study(
        study,
        run_fn=functools.partial(run_by_kind, study.kind),
        validate_fn=functools.partial(validate_by_kind, study.kind),
        out_dir=out,
        workers=args.workers,
        dry_run=args.dry_run,
        progress=True,
    )
    if not args.dry_run:
        rows, axes = result.rows, study.axes_keys
        spec = kind.report(rows, out)
        print(
            finish_study(
                study, rows, out, spec, kind.figures(rows, axes, out), kind.report_sections(rows, axes, out)
            )
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="difflab", description=__doc__.splitlines()[0], formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train and evaluate one run from a TOML config", formatter_class=fmt)
    p.add_argument("config", help="TOML file with [data] [process] [objective] [model] [train] [eval] tables")
    p.add_argument("--out", help="run directory (default runs/<config stem>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--device", help="cpu, cuda or cuda:N (shorthand for --set train.device=...)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=cmd_train)

    from difflab.samplers import GRIDS, SAMPLERS

    p = sub.add_parser("sample", help="draw samples from a trained run", formatter_class=fmt)
    p.add_argument("run", help="run directory")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), help="default: the run's own sampler")
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--grid", choices=sorted(GRIDS), help="default: the run's eval.grid")
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--option", action="append", default=[], metavar="NAME=VALUE", help="sampler option, e.g. eta=0.5"
    )
    p.add_argument("--out", help="output .npz (default inside the run directory)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("evaluate", help="evaluate a trained run", formatter_class=fmt)
    p.add_argument("run", help="run directory")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "study", help="run a factorial study (built-in name or TOML file)", formatter_class=fmt
    )
    p.add_argument("study", nargs="?", help="built-in study name or TOML file (default: the default study)")
    p.add_argument("--list", action="store_true", help="list the built-in studies")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key or axis")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    p.add_argument("--out", help="output directory (default runs/<study name>)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    p.set_defaults(func=cmd_study)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from difflab.experiments.common.configs import ConfigError
    from difflab.experiments.common.overrides import OverrideError
    from difflab.experiments.common.rundir import RunDirError
    from difflab.experiments.study.plan import StudyError
    from difflab.registry import UnknownNameError

    user_errors = (ConfigError, OverrideError, RunDirError, StudyError, UnknownNameError, FileNotFoundError)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except user_errors as err:
        print(f"difflab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("difflab: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
