"""The ``difflab`` command line: train | sample | evaluate | study.

Bad input (unknown key or name, wrong type, missing file, unwritable output) prints one message and exits
with status 2, having written nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

BUILTIN_STUDIES = Path(__file__).parent / "studies"


class CLIError(Exception):
    """A user error: one message, exit code 2."""


def _load_toml(path: str) -> dict:
    import tomllib

    if not os.path.isfile(path):
        raise CLIError(f"config file not found: {path}")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise CLIError(f"{path}: invalid TOML: {err}") from None


def _parse_value(text: str) -> object:
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_sets(config: dict, sets: Sequence[str]) -> dict:
    """Apply ``key.sub=value`` overrides (values parsed as TOML literals, else strings)."""
    for item in sets:
        if "=" not in item:
            raise CLIError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        node = config
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CLIError(f"--set {key}: {part!r} is not a table")
        node[parts[-1]] = _parse_value(text.strip())
    return config


def _check_writable(path: str) -> None:
    probe = Path(path).absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise CLIError(f"output directory cannot be created: {probe} is not a directory")
    if not os.access(probe, os.W_OK):
        raise CLIError(f"output directory is not writable: {path}")


def cmd_train(args: argparse.Namespace) -> int:
    from difflab.experiments.kinds import pipeline

    sets = [*args.set, *([f'train.device="{args.device}"'] if args.device else [])]
    raw = apply_sets(_load_toml(args.config), sets)
    kind = raw.pop("kind", "toy2d")
    run_experiment, validate_config, _ = pipeline(kind)
    validate_config(raw)
    out = args.out or os.path.join("runs", Path(args.config).stem)
    _check_writable(out)
    result = run_experiment(raw, out, progress=True)
    print(json.dumps(result, indent=2, default=float))
    return 0


def _load_run(run_dir: str):
    from difflab.experiments.build import build_run_parts
    from difflab.experiments.config import validate_config
    from difflab.experiments.trainer import Trainer

    cfg_path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(cfg_path):
        raise CLIError(f"not a run directory (no config.json): {run_dir}")
    with open(cfg_path) as f:
        config = validate_config(json.load(f))
    parts = build_run_parts(config)
    if not parts.trainable:
        return parts, parts.denoiser
    trainer = Trainer(
        parts.denoiser, parts.objective, parts.data.train, config.train, parts.total_steps, run_dir
    )
    if not trainer.maybe_resume():
        raise CLIError(f"no checkpoint in {run_dir}: train it first")
    return parts, trainer.ema_model().cpu()


def _run_kind(run_dir: str) -> str:
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise CLIError(f"not a run directory (no config.json): {run_dir}")
    with open(path) as f:
        return str(json.load(f).get("kind", "toy2d"))


def cmd_sample(args: argparse.Namespace) -> int:
    import dataclasses

    import numpy as np

    from difflab.experiments.build import natural_sampler
    from difflab.experiments.evaluate import _NoGradDenoiser, draw_samples

    if _run_kind(args.run) == "images":
        from difflab.experiments.images import sample_image_run

        print(sample_image_run(args.run, args.sampler, args.steps, args.n, args.seed, args.out, args.grid))
        return 0
    parts, denoiser = _load_run(args.run)
    ev = dataclasses.replace(parts.config.eval, steps=args.steps, grid=args.grid or parts.config.eval.grid)
    parts.config = dataclasses.replace(parts.config, eval=ev)
    sampler = args.sampler or natural_sampler(parts.config.objective.target)
    x, nfe = draw_samples(parts, _NoGradDenoiser(denoiser), sampler, args.n, args.seed)
    out = args.out or os.path.join(args.run, f"samples_{sampler}_{args.steps}.npz")
    np.savez_compressed(out, samples=x)
    print(f"wrote {len(x)} samples ({sampler}, {args.steps} steps, NFE {nfe}) to {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from difflab.experiments.evaluate import evaluate_run

    if _run_kind(args.run) == "images":
        from difflab.experiments.images import evaluate_image_run

        print(json.dumps(evaluate_image_run(args.run), indent=2, default=float))
        return 0
    parts, denoiser = _load_run(args.run)
    metrics, _ = evaluate_run(parts, denoiser)
    print(json.dumps(metrics, indent=2, default=float))
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from difflab.experiments.kinds import pipeline
    from difflab.experiments.study import apply_overrides, list_builtin_studies, load_study, run_study

    if args.list:
        for name, description in list_builtin_studies(BUILTIN_STUDIES):
            print(f"{name:32s} {description}")
        return 0
    study = load_study(args.study or "default", BUILTIN_STUDIES)
    study = apply_overrides(study, args.set)
    run_experiment, validate_config, finish_study = pipeline(study.kind)
    out = args.out or os.path.join("runs", study.name)
    if not args.dry_run:
        _check_writable(out)
    result = run_study(
        study,
        run_fn=run_experiment,
        validate_fn=validate_config,
        out_dir=out,
        workers=args.workers,
        dry_run=args.dry_run,
        progress=True,
    )
    if not args.dry_run:
        print(finish_study(study, result, out))
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
    p.set_defaults(func=cmd_train)

    from difflab.samplers import GRIDS, SAMPLERS

    p = sub.add_parser("sample", help="draw samples from a trained run", formatter_class=fmt)
    p.add_argument("run", help="run directory")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), help="default: the target's natural sampler")
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--grid", choices=sorted(GRIDS), help="default: the run's eval.grid")
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
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
    from difflab.experiments.config import ConfigError
    from difflab.registry import UnknownNameError

    user_errors: tuple[type[BaseException], ...] = (
        CLIError,
        ConfigError,
        UnknownNameError,
        FileNotFoundError,
    )
    try:
        from difflab.experiments.study import StudyError

        user_errors += (StudyError,)
    except ImportError:  # pragma: no cover
        pass
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
