"""The ``difflab`` command line: train | sample | evaluate | study.

Bad input (unknown key or name, wrong type or range, missing, corrupt or unreadable file, unwritable
output, a full disk) prints one message and exits with status 2, having written nothing (a failed write
leaves no temporary file; rerunning the command resumes). ``train`` into a directory that holds a run of
another config is refused, listing what differs, unless ``--overwrite`` is given; ``sample`` and
``evaluate`` refuse a checkpoint that ``config.json`` does not describe, and a diverged run. Every command
reaches its pipeline through the run kind (:mod:`difflab.experiments.kind`): this module holds no
kind-specific code.

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
    from difflab.experiments.common.configs import ConfigError, check_device_available, describe_config
    from difflab.experiments.common.overrides import apply_sets, load_toml
    from difflab.experiments.common.rundir import DEFAULT_KIND, check_reuse, check_writable
    from difflab.experiments.kind import get_kind
    from difflab.experiments.training.dist import dist_info_from_env

    if args.help_config:  # the schema of the config's kind (toy2d unless the file says otherwise)
        kind_name = load_toml(args.config).get("kind", DEFAULT_KIND) if args.config else DEFAULT_KIND
        print("\n".join(describe_config(type(get_kind(kind_name).parse({})))))
        return 0
    if args.config is None:
        raise ConfigError("train needs a CONFIG.toml (see --help-config for its keys)")
    sets = [*args.set, *([f'train.device="{args.device}"'] if args.device else [])]
    file_config = load_toml(args.config)
    if not file_config:
        raise ConfigError(
            f"{args.config} is empty: every key would take its default (see --help-config); write the "
            "tables you mean, e.g. [train] steps = 2000"
        )
    raw = apply_sets(file_config, sets)
    kind = get_kind(raw.pop("kind", DEFAULT_KIND))
    config = kind.parse(raw)
    resolved = kind.to_dict(config)
    check_device_available(resolved["train"]["device"])
    if args.dry_run:
        print(json.dumps(kind.to_dict(config), indent=2))
        return 0
    out = args.out or os.path.join("runs", Path(args.config).stem)
    check_writable(out)
    resolve = lambda raw_config: kind.to_dict(kind.parse(raw_config))  # noqa: E731
    check_reuse(out, resolved, overwrite=args.overwrite, resolve=resolve)  # before the old run is touched
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


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--steps 0`` or ``--n -5`` is a usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


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
    p.add_argument(
        "config", nargs="?", help="TOML file with [data] [process] [objective] [model] [train] [eval] tables"
    )
    p.add_argument("--out", help="run directory (default runs/<config stem>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--device", help="cpu, cuda or cuda:N (shorthand for --set train.device=...)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="retrain from scratch when --out holds a run of another config (else that is refused)",
    )
    p.add_argument(
        "--help-config", action="store_true", help="list every config key: type, default, valid range"
    )
    p.set_defaults(func=cmd_train)

    from difflab.samplers import GRIDS, SAMPLERS

    p = sub.add_parser("sample", help="draw samples from a trained run", formatter_class=fmt)
    p.add_argument("run", help="run directory")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), help="default: the run's own sampler")
    p.add_argument("--steps", type=positive_int, default=256)
    p.add_argument("--grid", choices=sorted(GRIDS), help="default: the run's eval.grid")
    p.add_argument("--n", type=positive_int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--option", action="append", default=[], metavar="NAME=VALUE", help="sampler option, e.g. eta=0.5"
    )
    p.add_argument("--out", help="output .npz, or a directory to write it in (default: the run directory)")
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
    except OSError as err:  # disk full, permissions, unreadable data: the file and what to do
        where = f" {err.filename}" if err.filename else ""
        print(f"difflab: error: cannot access{where}: {err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("difflab: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
