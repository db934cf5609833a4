"""Study engine: expansion, overrides, running, resuming, errors, parallel workers and output files."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import pytest

from difflab.experiments.common.overrides import parse_value
from difflab.experiments.study.engine import run_study
from difflab.experiments.study.plan import StudyError
from difflab.experiments.study.spec import (
    Study,
    apply_overrides,
    expand,
    list_builtin_studies,
    load_study,
    parse_study,
)

TOY = """
[study]
name = "toy"
description = "a toy study"

[fixed]
"train.steps" = 7

[axes]
"model.width" = [1, 2]
"objective.target" = ["eps", "v"]
"train.seed" = [0, 1]

[[extra]]
label = "oracle"
"model.width" = 0
axes = { "objective.target" = ["eps"] }
"""


# ---------------------------------------------------------------------- picklable run/validate functions


def _mark_call(run_dir: str) -> int:
    """Record one call in run_dir; return how many calls the whole study has seen so far."""
    Path(run_dir, f"call-{os.getpid()}-{time.perf_counter_ns()}").write_text("")
    return len(list(Path(run_dir).parent.glob("*/call-*")))


def toy_run(config: dict, run_dir: str) -> dict:
    """metric = 10·width + seed (+0.5 for v); target "boom" raises, "nan" diverges."""
    _mark_call(run_dir)
    target = config["objective"]["target"]
    if target == "boom":
        raise RuntimeError(f"boom at width {config['model']['width']}")
    if target == "nan":
        return {"status": "diverged", "steps": 3, "diverged_at": 3, "seconds": 0.25}
    metric = 10 * config["model"]["width"] + config["train"].get("seed", 0) + (0.5 if target == "v" else 0.0)
    return {"status": "finished", "metric": metric, "steps": config["train"]["steps"], "seconds": 1.5}


def interrupting_run(config: dict, run_dir: str) -> dict:
    """Like toy_run, but the third call raises KeyboardInterrupt while the flag file exists."""
    n = _mark_call(run_dir)
    flag = Path(run_dir).parent.parent / "interrupt-once"
    if n == 3 and flag.exists():
        flag.unlink()
        raise KeyboardInterrupt
    return {"status": "finished", "metric": float(n), "steps": 1, "seconds": 0.0}


def fast_run(config: dict, run_dir: str) -> dict:
    import torch

    _mark_call(run_dir)
    return {"status": "finished", "metric": config["model"]["width"], "threads": torch.get_num_threads()}


def accept(config: dict) -> None:
    assert isinstance(config, dict)


def reject_v(config: dict) -> None:
    if config["objective"]["target"] == "v":
        raise ValueError("target v is not allowed")


def _toy(tmp_path: Path, text: str = TOY) -> Study:
    path = tmp_path / "toy.toml"
    path.write_text(text)
    return load_study(path, tmp_path / "builtin")


def _calls(out: Path) -> int:
    return len(list(out.glob("runs/*/call-*")))


# ----------------------------------------------------------------------------------------- expansion


def test_expand_order_ids_and_configs(tmp_path):
    specs = expand(_toy(tmp_path))
    assert len(specs) == 2 * 2 * 2 + 1
    assert [s.run_id for s in specs] == [
        "width1__eps__s0",
        "width1__eps__s1",
        "width1__v__s0",
        "width1__v__s1",
        "width2__eps__s0",
        "width2__eps__s1",
        "width2__v__s0",
        "width2__v__s1",
        "oracle__eps",
    ]
    assert len({s.run_id for s in specs}) == len(specs)
    assert specs[3].config == {
        "train": {"steps": 7, "seed": 1},
        "model": {"width": 1},
        "objective": {"target": "v"},
        "label": "width1__v__s1",
    }
    assert specs[3].axes == {"model.width": 1, "objective.target": "v", "train.seed": 1}
    oracle = specs[-1]
    assert oracle.label == "oracle" and oracle.axes == {"objective.target": "eps"}
    assert oracle.config == {
        "train": {"steps": 7},
        "model": {"width": 0},
        "objective": {"target": "eps"},
        "label": "oracle__eps",
    }
    assert expand(_toy(tmp_path), label_key=None)[0].config.get("label") is None
    assert [s.run_id for s in expand(_toy(tmp_path))] == [s.run_id for s in specs]  # deterministic


def test_nested_fixed_tables_flatten(tmp_path):
    text = '[study]\nname = "n"\n[fixed]\n"data.name" = "ring"\n[fixed.train]\nsteps = 5\nlr = 1e-3\n'
    study = _toy(tmp_path, text)
    assert study.fixed == {"data.name": "ring", "train.steps": 5, "train.lr": 1e-3}
    (spec,) = expand(study)
    assert spec.run_id == "n"
    assert spec.config == {"data": {"name": "ring"}, "train": {"steps": 5, "lr": 1e-3}, "label": "n"}


def test_overrides(tmp_path):
    study = _toy(tmp_path)
    changed = apply_overrides(study, ["train.steps=100", "objective.target=eps", "model.width=[3, 4]"])
    specs = expand(changed)
    assert [s.run_id for s in specs] == [
        "width3__eps__s0",
        "width3__eps__s1",
        "width4__eps__s0",
        "width4__eps__s1",
        "oracle__eps",  # extras follow overrides of their own axes, never inherit main axes
    ]
    assert all(s.config["train"]["steps"] == 100 for s in specs)
    assert study.fixed["train.steps"] == 7  # the original is untouched
    # A bare string, a quoted string and a new key; a one-value axis stays an axis (run ids keep it).
    specs = expand(apply_overrides(study, ['objective.target="v"', "model.act=relu", "train.seed=3"]))
    assert [s.run_id for s in specs] == ["width1__v__s3", "width2__v__s3", "oracle__v"]
    assert specs[0].config["model"] == {"width": 1, "act": "relu"}
    assert specs[-1].config["train"] == {"steps": 7}  # a main-axis override does not reach the extra
    assert specs[-1].config["model"] == {"width": 0, "act": "relu"}  # a [fixed] override does
    with pytest.raises(StudyError, match="expected key=value"):
        apply_overrides(study, ["train.steps"])
    with pytest.raises(StudyError, match="empty value"):
        apply_overrides(study, ["train.steps="])


def test_parse_value_toml_literals():
    assert parse_value("100") == 100
    assert parse_value("1e-3") == 1e-3
    assert parse_value("true") is True
    assert parse_value('"eps"') == "eps"
    assert parse_value("eps") == "eps"
    assert parse_value("[0, 1, 2]") == [0, 1, 2]
    assert parse_value("[eps, v]") == ["eps", "v"]
    assert parse_value("{ a = 1 }") == {"a": 1}


def test_load_errors(tmp_path):
    builtin = tmp_path / "builtin"
    builtin.mkdir()
    (builtin / "alpha.toml").write_text('[study]\ndescription = "first"\n')
    (builtin / "beta.toml").write_text('[study]\nname = "beta"\ndescription = "second"\n')
    assert list_builtin_studies(builtin) == [("alpha", "first"), ("beta", "second")]
    assert load_study("alpha", builtin).name == "alpha"
    with pytest.raises(StudyError, match=r"unknown study 'gamma'; built-in studies: alpha, beta"):
        load_study("gamma", builtin)
    with pytest.raises(StudyError, match=r"study file not found: .*missing\.toml"):
        load_study(tmp_path / "missing.toml", builtin)
    with pytest.raises(StudyError, match=r"unknown table \[axis\]; valid tables: study, fixed, axes, extra"):
        parse_study({"axis": {}})
    with pytest.raises(StudyError, match="must be a non-empty array"):
        parse_study({"axes": {"train.seed": 0}})
    with pytest.raises(StudyError, match="in both"):
        parse_study({"fixed": {"train.seed": 0}, "axes": {"train.seed": [0]}})
    bad = tmp_path / "bad.toml"
    bad.write_text("[study\n")
    with pytest.raises(StudyError, match="invalid TOML"):
        load_study(bad, builtin)


def test_builtin_studies_expand():
    builtin = Path(__file__).resolve().parents[3] / "src" / "difflab" / "studies"
    assert len(list_builtin_studies(builtin)) >= 5  # the path is right (the loop below is not vacuous)
    for name, _ in list_builtin_studies(builtin):
        specs = expand(load_study(name, builtin))
        assert len({s.run_id for s in specs}) == len(specs) > 0


# ------------------------------------------------------------------------------------------- running


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_study_results_csv_exact(tmp_path):
    out = tmp_path / "out"
    result = run_study(
        _toy(tmp_path), run_fn=toy_run, validate_fn=accept, out_dir=out, workers=1, progress=True
    )
    assert result.ran == [r["run_id"] for r in result.rows] and result.skipped == []
    text = (out / "results.csv").read_text().splitlines()
    assert text[0] == "run_id,label,model.width,objective.target,train.seed,status,metric,seconds,steps"
    assert text[1:] == [
        "width1__eps__s0,,1,eps,0,finished,10.0,1.5,7",
        "width1__eps__s1,,1,eps,1,finished,11.0,1.5,7",
        "width1__v__s0,,1,v,0,finished,10.5,1.5,7",
        "width1__v__s1,,1,v,1,finished,11.5,1.5,7",
        "width2__eps__s0,,2,eps,0,finished,20.0,1.5,7",
        "width2__eps__s1,,2,eps,1,finished,21.0,1.5,7",
        "width2__v__s0,,2,v,0,finished,20.5,1.5,7",
        "width2__v__s1,,2,v,1,finished,21.5,1.5,7",
        "oracle__eps,oracle,0,eps,,finished,0.0,1.5,7",
    ]
    summary = json.loads((out / "results.json").read_text())
    assert summary["study"] == "toy" and summary["rows"] == result.rows
    run_dir = out / "runs" / "width2__v__s1"
    assert json.loads((run_dir / "config.json").read_text())["model"] == {"width": 2}
    record = json.loads((run_dir / "result.json").read_text())
    assert record["status"] == "finished" and record["metrics"] == {"metric": 21.5}
    assert not (out / "report.md").exists()  # the report is written once, by study.report.finish_study
    assert not list(out.rglob("*.tmp"))


def test_errors_recorded_and_rerun_skips_finished(tmp_path):
    text = TOY.replace('["eps", "v"]', '["eps", "boom", "nan"]').replace('"train.seed" = [0, 1]', "")
    study = _toy(tmp_path, text)
    out = tmp_path / "out"
    result = run_study(study, run_fn=toy_run, validate_fn=accept, out_dir=out, workers=1, progress=False)
    rows = _read_csv(out / "results.csv")
    assert [r["status"] for r in rows] == ["finished", "error", "diverged"] * 2 + ["finished"]
    assert list(rows[0]) == [
        "run_id",
        "label",
        "model.width",
        "objective.target",
        "status",
        "diverged_at",
        "metric",
        "seconds",
        "steps",
        "error",
    ]
    assert rows[1]["error"] == "RuntimeError: boom at width 1" and rows[1]["metric"] == ""
    assert rows[2]["diverged_at"] == "3" and rows[2]["steps"] == "3" and rows[3]["metric"] == "20.0"
    record = json.loads((out / "runs" / "width2__boom" / "result.json").read_text())
    assert "Traceback" in record["traceback"] and "boom at width 2" in record["traceback"]
    assert _calls(out) == 7 and len(result.ran) == 7
    # Rerun: finished and diverged runs are skipped, the two errors are retried.
    again = run_study(study, run_fn=toy_run, validate_fn=accept, out_dir=out, workers=1, progress=False)
    assert _calls(out) == 9
    assert again.ran == ["width1__boom", "width2__boom"] and len(again.skipped) == 5
    assert [r["status"] for r in again.rows] == [r["status"] for r in rows]


def test_interrupt_then_resume(tmp_path):
    study = _toy(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "interrupt-once").write_text("")
    with pytest.raises(KeyboardInterrupt):
        run_study(study, run_fn=interrupting_run, validate_fn=accept, out_dir=out, workers=1, progress=False)
    done = sorted(p.parent.name for p in out.glob("runs/*/result.json"))
    assert done == ["width1__eps__s0", "width1__eps__s1"]
    assert (out / "runs" / "width1__v__s0" / "config.json").is_file()  # started, not finished
    assert not (out / "results.csv").exists()
    result = run_study(
        study, run_fn=interrupting_run, validate_fn=accept, out_dir=out, workers=1, progress=False
    )
    assert result.skipped == ["width1__eps__s0", "width1__eps__s1"]
    assert len(result.ran) == 7 and result.ran[0] == "width1__v__s0"
    assert _calls(out) == 3 + 7  # two finished, one interrupted, then only the seven remaining
    assert all(r["status"] == "finished" for r in result.rows)


def test_dry_run_and_validation_write_nothing(tmp_path, capsys):
    study = _toy(tmp_path)
    out = tmp_path / "out"
    result = run_study(study, run_fn=toy_run, validate_fn=accept, out_dir=out, dry_run=True, progress=False)
    assert not out.exists()
    assert [r["status"] for r in result.rows] == ["planned"] * 9
    assert result.rows[2] == {
        "run_id": "width1__v__s0",
        "model.width": 1,
        "objective.target": "v",
        "train.seed": 0,
        "status": "planned",
    }
    printed = capsys.readouterr().out
    assert "9 runs" in printed and "oracle__eps" in printed
    with pytest.raises(ValueError, match=r"run 'width1__v__s0': target v is not allowed"):
        run_study(study, run_fn=toy_run, validate_fn=reject_v, out_dir=out, progress=False)
    assert not out.exists()


def test_unwritable_output_and_changed_config(tmp_path):
    study = _toy(tmp_path)
    blocker = tmp_path / "afile"
    blocker.write_text("")
    for bad in (blocker, blocker / "sub"):
        with pytest.raises(StudyError, match="output directory"):
            run_study(study, run_fn=toy_run, validate_fn=accept, out_dir=bad, progress=False)
    out = tmp_path / "out"
    run_study(study, run_fn=toy_run, validate_fn=accept, out_dir=out, workers=1, progress=False)
    changed = apply_overrides(study, ["train.steps=8"])
    with pytest.raises(StudyError, match="different config"):
        run_study(changed, run_fn=toy_run, validate_fn=accept, out_dir=out, workers=1, progress=False)
    with pytest.raises(StudyError, match="workers"):
        run_study(study, run_fn=toy_run, validate_fn=accept, out_dir=out, workers=0, progress=False)


def test_two_spawn_workers(tmp_path):
    text = '[study]\nname = "par"\n[axes]\n"model.width" = [1, 2, 3, 4]\n'
    out = tmp_path / "out"
    study = _toy(tmp_path, text)
    result = run_study(study, run_fn=fast_run, validate_fn=accept, out_dir=out, workers=2, progress=False)
    assert sorted(result.ran) == ["width1", "width2", "width3", "width4"]
    assert [r["metric"] for r in result.rows] == [1, 2, 3, 4]
    pids = {p.name.split("-")[1] for p in out.glob("runs/*/call-*")}
    assert str(os.getpid()) not in pids and 1 <= len(pids) <= 2
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert all(r["threads"] == max(1, cores // 2) for r in result.rows)
