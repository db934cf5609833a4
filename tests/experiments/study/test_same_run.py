"""Runs that compute the same thing are trained once: the weighting fingerprint, the kinds' keys, the engine's
copies (seed 000's grid trains x0 under "weighted" and under "rescaled", one objective)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from difflab.experiments.study.engine import find_copies, run_study
from difflab.experiments.study.spec import expand, load_study
from difflab.experiments.toy2d.run import same_run_key
from difflab.objectives.weighting import build_weighting
from difflab.processes import build_process

from .test_engine import accept

# ------------------------------------------------------------------------------ weighting fingerprints


@pytest.mark.parametrize("process_name", ["trig_vp", "ddpm", "linear_vp"])
def test_fingerprint_equal_exactly_for_the_same_loss(process_name):
    process = build_process(process_name)

    def fp(weighting: str, target: str) -> str:
        return build_weighting(weighting).fingerprint(target, process)

    # one objective under two names: unit x0-space weight on x0; unit eps-space weight on eps
    assert fp("weighted", "x0") == fp("rescaled", "x0")
    assert fp("weighted", "eps") == fp("eps_simple", "eps")
    # different objectives on the same target
    for target in ("eps", "v", "score"):
        assert fp("weighted", target) != fp("rescaled", target)
    for target in ("x0", "eps", "v", "score"):
        assert fp("nelbo", target) != fp("weighted", target)
    # the same values on another target are another run (the network learns another function)
    assert fp("weighted", "x0") != fp("weighted", "eps")


def test_fingerprint_sees_a_weight_that_differs_anywhere_on_the_grid():
    from difflab.objectives.weighting import Weighting

    process = build_process("trig_vp")
    unit = Weighting("unit", lambda c, p: c.t * 0 + 1, None)
    # 1 everywhere but one interval of t: a plausible "same up to a bug" weighting is told apart
    bump = Weighting("bump", lambda c, p: 1.0 + ((c.t > 0.5) & (c.t < 0.5005)).double() * 1e-12, None)
    assert unit.fingerprint("x0", process) != bump.fingerprint("x0", process)
    assert unit.fingerprint("x0", process) == build_weighting("rescaled").fingerprint("x0", process)


# ------------------------------------------------------------------------------------- the 2D kind's key


def _config(**changes) -> dict:
    config = {
        "label": "a",
        "data": {"name": "mixture8"},
        "objective": {"target": "x0", "weighting": "weighted"},
        "train": {"steps": 10, "seed": 0},
    }
    for dotted, value in changes.items():
        head, _, tail = dotted.partition("__")
        if tail:
            config.setdefault(head, {})[tail] = value
        else:
            config[head] = value
    return config


def test_toy2d_key():
    base = same_run_key(_config())
    assert base == same_run_key(_config(objective__weighting="rescaled", label="b"))
    assert base != same_run_key(_config(objective__weighting="nelbo"))
    assert base != same_run_key(_config(train__seed=1))
    assert base != same_run_key(_config(eval__n_samples=123))  # evaluation settings are part of the result
    assert same_run_key(_config(objective__target="eps")) != same_run_key(
        _config(objective__target="eps", objective__weighting="rescaled")
    )
    assert same_run_key(_config(model__name="oracle")) is None


def test_builtin_loss_comparison_copies_exactly_the_x0_rescaled_runs(tmp_path):
    from difflab.cli import BUILTIN_STUDIES

    study = load_study("loss-comparison-2d", BUILTIN_STUDIES)
    specs = expand(study, label_key="label")
    copies = find_copies(specs, same_run_key)
    assert len(copies) == 15
    for run_id, source in copies.items():
        assert "__x0__rescaled__" in run_id and source.run_id == run_id.replace("rescaled", "weighted")


# ----------------------------------------------------------------------------------------- the engine

STUDY = """
[study]
name = "same"
[fixed]
"train.steps" = 5
[axes]
"objective.weighting" = ["a", "b", "c"]
"train.seed" = [0, 1]
"""


def weight_key(config: dict) -> str | None:
    """Weightings "a" and "b" are one objective; "c" is another; seed 1 of "c" has no key."""
    w, seed = config["objective"]["weighting"], config["train"]["seed"]
    if w == "c" and seed == 1:
        return None
    return f"{'ab' if w in ('a', 'b') else w}-{seed}"


def seeded_run(config: dict, run_dir: str) -> dict:
    Path(run_dir, "checkpoint.pt").write_text("weights")
    Path(run_dir, "samples.npz").write_text(f"samples of {config['objective']['weighting']}")
    w, seed = config["objective"]["weighting"], config["train"]["seed"]
    if w == "a" and seed == 1:
        raise RuntimeError("a fails on seed 1")
    return {"status": "finished", "metric": 1.0 + seed + (w == "c"), "steps": 5, "seconds": 2.0}


def _trained(out: Path) -> list[str]:
    """Run ids in order of their training attempts, from run.log's start lines (one per attempt)."""
    starts = []
    for log in out.glob("runs/*/run.log"):
        starts += [log.parent.name for line in log.read_text().splitlines() if " start " in line]
    return sorted(starts)


def _run(study, out: Path, **options):
    """run_study of the fake study with the weight key, one worker, no bar."""
    return run_study(
        study,
        run_fn=seeded_run,
        validate_fn=accept,
        out_dir=out,
        workers=1,
        progress=False,
        same_run_key=weight_key,
        **options,
    )


def _study(tmp_path: Path):
    (tmp_path / "same.toml").write_text(STUDY)
    return load_study(tmp_path / "same.toml", tmp_path / "builtin")


def test_copies_are_not_trained_and_hold_the_source_result(tmp_path, capsys):
    out = tmp_path / "out"
    study = _study(tmp_path)
    result = _run(study, out)
    # b/s0 copies a/s0; b/s1's source a/s1 failed, so b/s1 trained itself (and failed the same way)
    assert result.copied == {"b__s0": "a__s0"}
    assert _trained(out) == [
        "a__s0",
        "a__s1",
        "b__s1",
        "c__s0",
        "c__s1",
    ]
    copy_dir = out / "runs" / "b__s0"
    record = json.loads((copy_dir / "result.json").read_text())
    source = json.loads((out / "runs" / "a__s0" / "result.json").read_text())
    assert record["copy_of"] == "a__s0" and record["run_id"] == "b__s0"
    assert record["metrics"] == source["metrics"] and record["steps"] == 5
    assert record["config_hash"] == next(s for s in expand(study) if s.run_id == "b__s0").config_hash
    assert json.loads((copy_dir / "config.json").read_text())["objective"] == {"weighting": "b"}
    assert (copy_dir / "samples.npz").read_text() == "samples of a"  # the source's outputs
    assert not (copy_dir / "checkpoint.pt").exists()  # the checkpoint records the source's config
    assert not (copy_dir / "claim.json").exists()
    assert "copied from a__s0" in (copy_dir / "run.log").read_text()
    rows = {r["run_id"]: r for r in result.rows}
    assert rows["b__s0"]["copy_of"] == "a__s0" and rows["b__s0"]["metric"] == 2.0 - 1.0
    assert rows["b__s1"]["status"] == "finished" and "copy_of" not in rows["b__s1"]
    assert rows["a__s1"]["status"] == "error"
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert header[-2:] == ["copy_of", "error"]

    # a rerun skips the copy and the finished runs
    again = _run(study, out)
    assert "b__s0" in again.skipped and again.copied == {}
    assert _trained(out) == ["a__s0", "a__s1", "a__s1", "b__s1", "c__s0", "c__s1"]  # the error reruns


def test_copy_of_a_source_another_shard_has_not_finished_trains_itself(tmp_path):
    """Sharded: the source a/s0 is the other shard's and not done when this shard ends, so b/s0 trains."""
    from difflab.experiments.study.engine import shard_of

    out = tmp_path / "out"
    study = _study(tmp_path)
    shards = [{s.run_id for s in shard_of(expand(study), i, 2)} for i in range(2)]
    shard = next(i for i in range(2) if "b__s0" in shards[i])
    assert "a__s0" not in shards[shard]  # shard_of is deterministic: the premise of the test holds
    result = _run(study, out, shard=(shard, 2))
    assert "b__s0" in result.ran and result.copied == {} and "b__s0" in _trained(out)
    assert "copy_of" not in json.loads((out / "runs" / "b__s0" / "result.json").read_text())


def test_a_partial_attempt_of_the_copy_is_replaced(tmp_path):
    out = tmp_path / "out"
    (out / "runs" / "b__s0").mkdir(parents=True)
    (out / "runs" / "b__s0" / "checkpoint.pt").write_text("step 4000 of b")
    run_study(
        _study(tmp_path),
        run_fn=seeded_run,
        validate_fn=accept,
        out_dir=out,
        workers=1,
        progress=False,
        same_run_key=weight_key,
    )
    assert not (out / "runs" / "b__s0" / "checkpoint.pt").exists()
    assert json.loads((out / "runs" / "b__s0" / "result.json").read_text())["copy_of"] == "a__s0"


def test_dry_run_names_the_copies(tmp_path, capsys):
    run_study(
        _study(tmp_path),
        run_fn=seeded_run,
        validate_fn=accept,
        out_dir=tmp_path / "out",
        dry_run=True,
        same_run_key=weight_key,
    )
    text = capsys.readouterr().out
    assert "6 runs (4 trained, 2 copied from a run that computes the same)" in text
    assert "b__s0" in text and "(copy of a__s0)" in text and "(copy of a__s1)" in text


# ------------------------------------------------------------------------------- bit for bit, for real


def test_a_copied_2d_run_equals_training_it(tmp_path):
    """x0 / rescaled trained for real gives every metric of x0 / weighted exactly: the copy is honest."""
    from difflab.experiments.toy2d.run import run_experiment

    metrics = {}
    for weighting in ("weighted", "rescaled"):
        config = _config(objective__weighting=weighting, label=weighting)
        config["train"].update(steps=60, batch_size=64)
        config["model"] = {"hidden": 16, "layers": 1}
        config["eval"] = {"n_samples": 64, "n_nll": 8, "n_nelbo": 16, "curve_points": 0}
        out = run_experiment(config, str(tmp_path / weighting))
        metrics[weighting] = {k: v for k, v in out.items() if "seconds" not in k}
    assert metrics["weighted"] == metrics["rescaled"]
    assert same_run_key(_config(objective__weighting="rescaled")) == same_run_key(_config())


def test_report_notes_the_copies(tmp_path):
    from difflab.experiments.study.report import copy_note

    rows = [{"run_id": "a__s0"}, {"run_id": "b__s0", "copy_of": "a__s0"}]
    (text,) = copy_note(rows)
    assert text.startswith("1 run was not trained") and "b__s0 = a__s0" in text
    assert copy_note(rows[:1]) == []
    many = [{"run_id": f"b{i}", "copy_of": f"a{i}"} for i in range(8)]
    assert copy_note(many)[0].endswith("b5 = a5, ….")
    assert copy_note(many)[0].startswith("8 runs were not trained")


def test_an_image_copy_equals_training_it(tmp_path):
    """The image kind's key, and its claim: x0 / rescaled trains and evaluates exactly as x0 / weighted."""
    import copy

    from difflab.experiments.images.config import same_run_key as image_key
    from difflab.experiments.images.run import run_image_experiment

    from ..images.test_pipeline import TINY

    def config(weighting: str, seed: int = 0) -> dict:
        cfg = copy.deepcopy(TINY)
        cfg["eval"]["cache_dir"] = str(tmp_path / "cache")
        cfg["objective"] = {"target": "x0", "weighting": weighting}
        cfg["train"]["seed"] = seed
        cfg["label"] = weighting
        return cfg

    assert image_key(config("weighted")) == image_key(config("rescaled"))
    assert image_key(config("weighted")) != image_key(config("nelbo"))
    assert image_key(config("weighted")) != image_key(config("weighted", seed=1))
    results = {}
    for weighting in ("weighted", "rescaled"):
        out = run_image_experiment(config(weighting), str(tmp_path / weighting))
        results[weighting] = {k: v for k, v in out.items() if "seconds" not in k and k != "throughput"}
    # NaN-aware: a withheld figure (NaN) on both sides is equal
    assert json.dumps(results["weighted"], sort_keys=True) == json.dumps(results["rescaled"], sort_keys=True)
