"""The learning-curve figure groups the seeds of one arm: one colour and one legend entry per arm."""

from __future__ import annotations

from matplotlib.colors import to_hex

from difflab.experiments.common import figures


def _curves() -> dict[str, dict[str, list[float]]]:
    out = {}
    for arm, level in (("eps__nelbo", 0.1), ("x0__nelbo", 1.0)):
        for seed in range(3):
            out[f"{arm}__s{seed}"] = {
                "step": [500, 1000, 2000],
                "seconds": [1.0, 2.0, 4.0],
                "value": [level * 4, level * 2, level + 0.01 * seed],
                "se": [0.01, 0.01, 0.01],
            }
    return out


def _captured(monkeypatch, tmp_path, **kw):
    saved = {}

    def fake_save(fig, path, dpi=120):
        saved["fig"] = fig
        return path

    monkeypatch.setattr(figures, "_save", fake_save)
    figures.plot_learning_curves(_curves(), tmp_path / "c.png", "kl", {"oracle": 0.001}, **kw)
    return saved["fig"]


def test_seeds_of_an_arm_share_colour_and_legend_entry(monkeypatch, tmp_path):
    fig = _captured(monkeypatch, tmp_path, groupby=lambda label: label.rsplit("__", 1)[0])
    ax = fig.axes[1]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["eps__nelbo", "x0__nelbo", "oracle"]
    colours = [to_hex(line.get_color()) for line in ax.get_lines()[:6]]
    assert len(set(colours[:3])) == 1 and len(set(colours[3:])) == 1 and colours[0] != colours[3]
    # without grouping: one entry and one colour per run (the figure before the change)
    fig = _captured(monkeypatch, tmp_path)
    ax = fig.axes[1]
    assert len(ax.get_legend().get_texts()) == 7
    assert len({to_hex(line.get_color()) for line in ax.get_lines()[:6]}) == 6
