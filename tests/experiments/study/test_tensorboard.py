"""``difflab tensorboard``: a real tiny study's curves, losses and hyperparameters read back from the event
files equal the study's own records; bad input is one message, exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from difflab.cli import main

pytest.importorskip("tensorboard")  # in the test extra; the export itself is the optional tensorboard extra
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

TINY = """
[study]
name = "tb"
[fixed]
"data.name" = "mixture8"
"data.n_train" = 512
"data.n_test" = 256
"model.hidden" = 16
"model.layers" = 2
"train.steps" = 40
"train.batch_size" = 64
"train.log_every" = 5
"train.checkpoint_every" = 5
"eval.n_samples" = 128
"eval.steps" = 8
"eval.n_nll" = 16
"eval.also_ancestral" = false
"eval.n_nelbo" = 64
"eval.nelbo_t_draws" = 2
"eval.kde_n_eval" = 128
"objective.weighting" = "nelbo"
[axes]
"objective.target" = ["eps", "v"]
"""


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tb")
    (root / "tb.toml").write_text(TINY)
    out = root / "study"
    assert main(["study", str(root / "tb.toml"), "--out", str(out), "--workers", "1"]) == 0
    return out


def _load(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _hparams(acc: EventAccumulator) -> dict[str, object]:
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    out: dict[str, object] = {}
    for key, value in data.session_start_info.hparams.items():
        kind = value.WhichOneof("kind")
        out[key] = getattr(value, kind)
    return out


def test_export_reads_back_the_curves_losses_and_hparams(study_dir, capsys):
    assert main(["tensorboard", str(study_dir)]) == 0
    assert "tensorboard --logdir" in capsys.readouterr().out
    tb = study_dir / "tensorboard"
    rows = {r["run_id"]: r for r in json.loads((study_dir / "results.json").read_text())["rows"]}
    assert sorted(p.name for p in tb.iterdir()) == sorted(rows) == ["eps", "v"]
    for run_id, row in rows.items():
        acc = _load(tb / run_id)
        curve = json.loads((study_dir / "runs" / run_id / "curves.json").read_text())["points"]
        assert len(curve) >= 3
        for name in ("kl", "nelbo"):
            events = acc.Scalars(f"curve/{name}")
            assert [e.step for e in events] == [p["step"] for p in curve]
            for e, p in zip(events, curve, strict=True):
                assert e.value == pytest.approx(p["metrics"][name], rel=1e-6)
                assert e.wall_time == pytest.approx(p["train_seconds"], abs=1e-3)
        hist = json.loads((study_dir / "runs" / run_id / "history.json").read_text())
        losses = acc.Scalars("train/loss")
        assert [e.step for e in losses] == hist["steps"] and len(losses) == 8  # 40 steps, logged every 5
        assert [e.value for e in losses] == pytest.approx(hist["loss"], rel=1e-6)
        hp = _hparams(acc)
        assert hp["objective.target"] == run_id and hp["run_id"] == run_id
        assert acc.Scalars("final/kl")[0].value == pytest.approx(row["kl"], rel=1e-6)


def test_export_again_replaces_the_previous_export(study_dir):
    out = study_dir / "tb-twice"
    for _ in range(2):
        assert main(["tensorboard", str(study_dir), "--out", str(out)]) == 0
    for run in out.iterdir():  # one export's events, not two
        assert len(_load(run).Scalars("train/loss")) == 8


def test_not_a_study_is_exit_2_and_writes_nothing(tmp_path, capsys):
    assert main(["tensorboard", str(tmp_path)]) == 2
    assert "no results.json" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_missing_tensorboard_names_the_extra(study_dir, tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "torch.utils.tensorboard":
            raise ImportError("TensorBoard logging requires TensorBoard")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    out = tmp_path / "tb"
    assert main(["tensorboard", str(study_dir), "--out", str(out)]) == 2
    assert "pip install 'difflab[tensorboard]'" in capsys.readouterr().err
    assert not out.exists()
