"""Issue 11 item 2 (range checks at validation time, in one schema) and item 9 (small CLI fixes).

Every bad value is refused by ``difflab train --dry-run`` with exit code 2 and one message naming the key,
before any file is written; the values just inside each domain are accepted (the test of the test).
"""

from __future__ import annotations

import dataclasses
import os
import typing

import pytest
import torch

from difflab.cli import main
from difflab.experiments.common.configs import describe_config, field_domain
from difflab.experiments.images.config import ImageRunConfig
from difflab.experiments.toy2d.config import RunConfig

from .conftest import snapshot, write_tiny

TOY_BAD = [
    ("model.hidden=0", "model.hidden: must be >= 1, got 0"),
    ("model.layers=0", "model.layers: must be >= 1, got 0"),
    ("model.embed_dim=0", "model.embed_dim: must be >= 2, got 0"),
    ("model.embed_dim=5", "model.embed_dim must be an even number >= 4, got 5"),
    ("train.log_every=0", "train.log_every: must be >= 1, got 0"),
    ("train.time_bins=0", "train.time_bins: must be >= 1, got 0"),
    ("train.lr=nan", "train.lr: expected a finite number, got nan"),
    ("train.lr=inf", "train.lr: expected a finite number, got inf"),
    ("train.weight_decay=-0.1", "train.weight_decay: must be >= 0, got -0.1"),
    ("train.warmup=-1", "train.warmup: must be >= 0, got -1"),
    ("train.grad_clip=-1", "train.grad_clip: must be >= 0, got -1.0"),
    ("train.epochs=0", "train.epochs: must be > 0, got 0.0"),
    ("train.epochs=0.001", "train.epochs = 0.001 gives"),  # rounded to 0 steps, used to train 1 step
    ("train.batch_size=301", "train.batch_size (301) exceeds data.n_train (300)"),  # was clamped silently
    ("data.n_train=0", "data.n_train: must be >= 2, got 0"),
    ("data.n_test=0", "data.n_test: must be >= 2, got 0"),
    ("eval.n_samples=0", "eval.n_samples: must be >= 2, got 0"),
    ("eval.steps=0", "eval.steps: must be >= 1, got 0"),
    ("eval.n_nelbo=0", "eval.n_nelbo: must be >= 1, got 0"),
    ("eval.nelbo_t_draws=0", "eval.nelbo_t_draws: must be >= 1, got 0"),
    ("eval.n_nll=0", "eval.n_nll: must be >= 1, got 0"),
    ("eval.kde_n_eval=0", "eval.kde_n_eval: must be >= 1, got 0"),
    ("eval.score_error_n=0", "eval.score_error_n: must be >= 1, got 0"),
    ("eval.score_error_bins=0", "eval.score_error_bins: must be >= 1, got 0"),
    ("eval.nll_rtol=0", "eval.nll_rtol: must be > 0 and <= 0.01, got 0.0"),
    ("eval.nll_rtol=-1e-5", "eval.nll_rtol: must be > 0 and <= 0.01, got -1e-05"),
    ("eval.nll_rtol=0.5", "eval.nll_rtol: must be > 0 and <= 0.01, got 0.5"),
    ("eval.kde_h_raw=0", "eval.kde_h_raw: must be > 0, got 0.0"),
    ('eval.kde_bandwidth="foo"', "eval.kde_bandwidth: expected one of scott, silverman, loo, got 'foo'"),
    ("model.options.latent_dim=3", "model.options ['latent_dim'] would be ignored: model 'mlp'"),
    ("process.options.logsnr_max=1e6", "log sigma_t = -inf at t = 0"),
    ("process.name=ou process.options.horizon=1e4", "t_max=1, horizon=10000) is unusable"),
    ("process.name=linear_vp process.options.beta_max=1e5", "beta_max=100000) is unusable: log alpha_t"),
    ("process.name=ddpm process.options.T=1", "T (steps of the DDPM chain) must be >= 2, got 1"),
]

TOY_GOOD = [  # just inside each domain: none may be refused
    "model.hidden=1",
    "model.embed_dim=4",
    "train.warmup=0",
    "train.grad_clip=0",
    "train.weight_decay=0",
    "train.batch_size=300",
    "eval.nll_rtol=0.01",
    "eval.kde_bandwidth=silverman",
    "data.n_train=2 train.batch_size=2",
    "process.options.logsnr_max=20",
    "process.name=ou process.options.horizon=20",
    "process.name=ddpm process.options.T=2",
    "train.epochs=0.2",
]

IMAGE_BAD = [
    ("model.channels=0", "model.channels: must be >= 1, got 0"),
    ("model.channel_mults=[]", "model.channel_mults: expected >= 1 and at least 1 entries, got []"),
    ("model.channel_mults=[1,0]", "model.channel_mults[1]: must be >= 1, got 0"),
    ("model.dropout=1", "model.dropout: must be >= 0 and < 1, got 1.0"),
    ("train.log_every=0", "train.log_every: must be >= 1, got 0"),
    ("train.lr=nan", "train.lr: expected a finite number, got nan"),
    ("train.warmup=-5", "train.warmup: must be >= 0, got -5"),
    ("data.n_train=1", "data.n_train: must be >= 2, got 1"),
    ("data.n_train=10 train.batch_size=11", "train.batch_size (11) exceeds data.n_train (10)"),
    ("eval.n_bpd=0", "eval.n_bpd: must be >= 1, got 0"),
    ("eval.n_pf_ode=0", "eval.n_pf_ode: must be >= 1, got 0"),
    ("eval.pf_ode_rtol=0", "eval.pf_ode_rtol: must be > 0 and <= 0.01, got 0.0"),
    ("eval.classifier_epochs=0", "eval.classifier_epochs: must be >= 1, got 0"),
    ("train.precision=fp16", "unknown precision 'fp16'; valid precisions: bf16, fp32, fp64"),
    ("process.options.T=1", "T (steps of the DDPM chain) must be >= 2, got 1"),
]


def _dry_run(tmp_path, sets: str, image: bool = False) -> list[str]:
    cfg = tmp_path / "c.toml"
    if image:
        cfg.write_text('kind = "images"\n[train]\nsteps = 2\n')
    else:
        write_tiny(cfg)
    args = ["train", str(cfg), "--dry-run", "--out", str(tmp_path / "out")]
    for item in sets.split():
        args += ["--set", item]
    return args


@pytest.mark.parametrize(("sets", "message"), TOY_BAD)
def test_toy2d_bad_values_refused_before_any_file(tmp_path, capsys, sets, message):
    args = _dry_run(tmp_path, sets)
    before = snapshot(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("difflab: error:") == 1 and message in err, err
    assert snapshot(tmp_path) == before and not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize(("sets", "message"), IMAGE_BAD)
def test_image_bad_values_refused_before_any_file(tmp_path, capsys, sets, message):
    assert main(_dry_run(tmp_path, sets, image=True)) == 2
    err = capsys.readouterr().err
    assert err.count("difflab: error:") == 1 and message in err, err
    assert sorted(os.listdir(tmp_path)) == ["c.toml"]


@pytest.mark.parametrize("sets", TOY_GOOD)
def test_values_inside_the_domains_pass(tmp_path, capsys, sets):
    assert main(_dry_run(tmp_path, sets)) == 0, capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_refused(tmp_path, capsys):
    assert main(_dry_run(tmp_path, 'train.device="cuda"')) == 2
    assert "train.device = 'cuda' but this machine has 0 CUDA device(s)" in capsys.readouterr().err


def test_empty_config_file_is_an_error(tmp_path, capsys):
    (tmp_path / "empty.toml").write_text("# nothing\n")
    assert main(["train", str(tmp_path / "empty.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "empty.toml is empty: every key would take its default" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")


@pytest.mark.parametrize("cls", [RunConfig, ImageRunConfig])
def test_every_field_declares_its_domain(cls):
    """The schema is one place: each leaf field of both kinds is declared with its domain (a new field
    that forgets it fails here), and every int/float field but the seeds has a bound."""

    def leaves(c, where=""):
        hints = typing.get_type_hints(c)
        for f in dataclasses.fields(c):
            if dataclasses.is_dataclass(hints[f.name]):
                yield from leaves(hints[f.name], f"{where}{f.name}.")
            else:
                yield f"{where}{f.name}", f, hints[f.name]

    for key, f, hint in leaves(cls):
        if key in ("kind", "label"):
            continue
        dom = field_domain(f)
        assert dom is not None and dom.doc, f"{key} has no domain/description"
        numeric = hint in (int, float) or hint in (int | None, float | None)
        if numeric and not key.endswith("seed"):
            assert dom.text(), f"{key} is a number without a range"


def test_help_config_lists_keys_types_defaults_and_ranges(capsys):
    assert main(["train", "--help-config"]) == 0
    out = capsys.readouterr().out
    assert "train.lr (float) = 0.002  [> 0]  peak learning rate" in out
    assert "eval.nll_rtol (float) = 1e-05  [> 0 and <= 0.01]" in out
    assert len(out.splitlines()) == len(describe_config(RunConfig))


# --------------------------------------------------------------------------------------------- item 9


@pytest.mark.parametrize("flag", [["--steps", "0"], ["--steps", "-1"], ["--n", "0"], ["--n", "-5"]])
def test_sample_counts_must_be_positive(trained, capsys, flag):
    _, run = trained
    before = snapshot(run)
    with pytest.raises(SystemExit) as exc:
        main(["sample", str(run), *flag])
    assert exc.value.code == 2
    assert f"argument {flag[0]}: must be >= 1" in capsys.readouterr().err
    assert snapshot(run) == before


def test_sample_discrete_grid_on_a_continuous_process(trained, capsys):
    _, run = trained
    before = snapshot(run)
    assert main(["sample", str(run), "--sampler", "ddim", "--grid", "discrete", "--steps", "3"]) == 2
    assert "grid 'discrete' needs a DiscreteChain process" in capsys.readouterr().err
    assert snapshot(run) == before


@pytest.mark.parametrize("out", ["dir", "file", "file.npz"])
def test_sample_out_prints_the_path_it_wrote(trained, tmp_path, capsys, out):
    _, run = trained
    target = tmp_path / out
    if out == "dir":
        target.mkdir()
    assert main(["sample", str(run), "--n", "5", "--steps", "2", "--out", str(target)]) == 0
    printed = capsys.readouterr().out.split(" to ")[1].strip()
    assert os.path.isfile(printed) and printed.endswith(".npz")
    expected = target / "samples_ancestral_2.npz" if out == "dir" else tmp_path / "file.npz"
    assert printed == str(expected)


def test_unknown_name_plural(tmp_path, capsys):
    assert main(_dry_run(tmp_path, "process.name=foo")) == 2
    assert "valid processes:" in capsys.readouterr().err


def test_empty_key_part_in_set(tmp_path, capsys):
    assert main(_dry_run(tmp_path, "train..steps=3")) == 2
    assert "empty key part in 'train..steps'" in capsys.readouterr().err


def test_directory_as_config(tmp_path, capsys):
    assert main(["train", str(tmp_path), "--dry-run"]) == 2
    assert f"{tmp_path} is a directory, not a TOML config file" in capsys.readouterr().err


def test_data_errors_leave_no_config_json(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'kind = "images"\n[data]\nname = "mnist"\nroot = "{tmp_path / "nodata"}"\n')
    out = tmp_path / "out"
    assert main(["train", str(cfg), "--out", str(out)]) == 2
    assert "data (mnist" in capsys.readouterr().err
    assert not out.exists()
