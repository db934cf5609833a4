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
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def _shard(text: str | None) -> tuple[int, int] | None:
    from difflab.experiments.study.plan import StudyError

    if text is None:
        return None
    index, sep, count = text.partition("/")
    if not (sep and index.strip().isdigit() and count.strip().isdigit()):
        raise StudyError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. --shard 0/4")
    return int(index), int(count)


def _executor_options(args: argparse.Namespace, out: str):
    from difflab.experiments.study.executors import ExecutorOptions
    from difflab.experiments.study.plan import StudyError

    if args.scheduler and args.executor != "dask":
        raise StudyError("--scheduler is for --executor dask")
    slurm = {k: getattr(args, k) for k in SLURM_FLAGS if getattr(args, k) is not None}
    if slurm and args.executor != "slurm":
        raise StudyError(f"--{next(iter(slurm)).replace('_', '-')} is for --executor slurm")
    slurm.setdefault("folder", os.path.join(out, "slurm"))
    return ExecutorOptions(args.executor, args.workers, args.threads, args.scheduler, slurm)


def _study_outcome(result, out: str, command: str) -> int:
    """Print what failed, what other workers hold and what is missing; 1 if any run failed, else 0."""
    for run_id, record in result.failed.items():
        reason = record.get("error") or f"status {record.get('status', 'unknown')!r}"
        print(f"difflab: run {run_id} failed: {reason}", file=sys.stderr)
        if int(record.get("repeats", 1)) > 1:
            print(
                f"  it failed the same way on {record['repeats']} attempts, so rerunning will not help: fix"
                f" its config (traceback in {os.path.join(out, 'runs', run_id, 'result.json')}) or drop the"
                " run from the study",
                file=sys.stderr,
            )
    for run_id, source in result.copied.items():
        print(
            f"difflab: run {run_id} computes what {source} computes (the same loss on the same target, data"
            " and seeds): its result was copied, not retrained"
        )
    for run_id, owner in result.busy.items():
        print(f"difflab: run {run_id} is being run by {owner}; its result appears when it ends")
    if result.missing:
        shown = ", ".join(result.missing[:10]) + (", …" if len(result.missing) > 10 else "")
        print(f"difflab: {len(result.missing)} runs have no result yet: {shown}")
    if result.busy or result.missing:
        print(f"difflab: when they end, `{command} --gather` writes the complete tables and report")
    if result.failed:
        total = len(result.rows)
        print(f"difflab: {len(result.failed)} of {total} runs failed (see above)", file=sys.stderr)
        return 1
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from difflab.experiments.common.rundir import check_writable
    from difflab.experiments.kind import get_kind, run_by_kind, same_run_key_by_kind, validate_by_kind
    from difflab.experiments.study.engine import run_study
    from difflab.experiments.study.report import finish_study
    from difflab.experiments.study.spec import apply_overrides, list_builtin_studies, load_study, safe_run_id

    if args.list:
        for name, description in list_builtin_studies(BUILTIN_STUDIES):
            print(f"{name:32s} {description}")
        return 0
    study = apply_overrides(load_study(args.study or "default", BUILTIN_STUDIES), args.set)
    kind = get_kind(study.kind)
    out = args.out or os.path.join("runs", safe_run_id(study.name))
    options = _executor_options(args, out)
    if not args.dry_run:
        check_writable(out)
    result = run_study(
        study,
        run_fn=functools.partial(run_by_kind, study.kind),
        validate_fn=functools.partial(validate_by_kind, study.kind),
        out_dir=out,
        dry_run=args.dry_run,
        progress=True,
        executor=options,
        shard=_shard(args.shard),
        gather=args.gather,
        same_run_key=functools.partial(same_run_key_by_kind, study.kind),
    )
    if args.dry_run:
        return 0
    rows, axes = result.rows, study.axes_keys
    spec = kind.report(rows, out)
    figures, sections = kind.figures(rows, axes, out), kind.report_sections(rows, axes, out)
    print(finish_study(study, rows, out, spec, figures, sections))
    sets = "".join(f" --set {shlex.quote(item)}" for item in args.set)
    command = f"difflab study {shlex.quote(args.study or 'default')}{sets} --out {shlex.quote(out)}"
    return _study_outcome(result, out, command)


def cmd_tensorboard(args: argparse.Namespace) -> int:
    from difflab.experiments.study.tensorboard import export_tensorboard

    out = export_tensorboard(args.study_dir, args.out)
    print(f"tensorboard: {out}  (view: tensorboard --logdir {shlex.quote(str(out))})")
    return 0


SLURM_FLAGS = {
    "cluster": (str, "submitit cluster: slurm, or local / debug to try without Slurm"),
    "partition": (str, "Slurm partition"),
    "time_min": (int, "time limit of one array task (minutes)"),
    "gpus": (int, "GPUs per array task"),
    "cpus": (int, "CPUs per array task (also each run's threads)"),
    "mem_gb": (float, "memory per array task (GB)"),
    "max_parallel": (int, "array tasks running at once (default 64)"),
    "runs_per_task": (int, "runs packed into one array task (default: ceil(runs / 1000))"),
}


def _add_study_parser(sub: Any, fmt: Any) -> None:
    p = sub.add_parser(
        "study", help="run a factorial study (built-in name or TOML file)", formatter_class=fmt
    )
    p.add_argument("study", nargs="?", help="built-in study name or TOML file (default: the default study)")
    p.add_argument("--list", action="store_true", help="list the built-in studies")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key or axis")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    p.add_argument("--out", help="output directory (default runs/<study name>)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    p.add_argument("--threads", type=int, default=None, help="threads per run (default: cores / workers)")
    p.add_argument("--shard", metavar="I/N", help="run only the I-th of N disjoint slices of the runs")
    p.add_argument("--gather", action="store_true", help="run nothing: write tables and report, list missing")
    p.add_argument("--executor", choices=("local", "dask", "slurm"), default="local", help="where runs run")
    p.add_argument("--scheduler", metavar="ADDRESS", help="dask scheduler (default: start a LocalCluster)")
    g = p.add_argument_group("Slurm (--executor slurm, through submitit)")
    for name, (typ, text) in SLURM_FLAGS.items():
        g.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ, default=None, help=text)
    p.set_defaults(func=cmd_study)


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

    _add_study_parser(sub, fmt)
    p = sub.add_parser(
        "tensorboard",
        help="export a study's curves and hyperparameters as TensorBoard event files",
        formatter_class=fmt,
    )
    p.add_argument("study_dir", help="a study's output directory (with results.json)")
    p.add_argument("--out", help="event-file directory (default STUDY_DIR/tensorboard)")
    p.set_defaults(func=cmd_tensorboard)
    return parser


def _silence_stdout() -> None:
    """Point stdout at os.devnull, so that the interpreter's final flush of a closed pipe raises nothing
    (the recipe of Python's documentation, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (e.g. a captured stream)
        pass


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
    except BrokenPipeError:  # the reader closed stdout (`difflab study --dry-run | head`): end quietly
        _silence_stdout()
        return 1
    except OSError as err:  # disk full, permissions, unreadable data: the file and what to do
        where = f" {err.filename}" if err.filename else ""
        print(f"difflab: error: cannot access{where}: {err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("difflab: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
