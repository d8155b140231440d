"""plots.py on synthetic tidy tables: each figure has labelled axes and drawn data, bad tables
are refused with the missing column named, and save_figure writes PNG + SVG + sidecar."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from golf_core import plots

LANE_VALUES = dict(attn_to_attn=1.77, attn_to_mlp=0.62, mlp_to_attn=0.31, mlp_to_mlp=1.24,
                   attn_resid=1.22, mlp_resid=1.77)


def _curves() -> pd.DataFrame:
    rows = [dict(label=lab, seed=seed, step=step, train_seconds=0.3 * step,
                 val_bpb=3.5 - 0.004 * step + 0.01 * seed + (0.05 if lab == "flat" else 0.0),
                 train_loss=6.0 - 0.01 * step)
            for lab in ("flat", "pr363-3x3") for seed in (0, 1) for step in range(0, 201, 25)]
    return pd.DataFrame(rows)


def _finals() -> pd.DataFrame:
    df = _curves().groupby(["label", "seed"]).last().reset_index()
    return df.assign(unique_params=np.where(df["label"] == "flat", 380_000, 120_000),
                     artifact_bytes=np.where(df["label"] == "flat", 300_000, 100_000),
                     roundtrip_val_bpb=df["val_bpb"] + 0.02)


def _skips() -> pd.DataFrame:
    return pd.DataFrame([dict(variant=v, step=step, skip=k, mean=init + 0.001 * step * (k + 1))
                         for v, init in (("unet", 1.0), ("unet-zeros", 0.0))
                         for step in (0, 50, 100) for k in range(4)])


def _lanes() -> pd.DataFrame:
    return pd.DataFrame([dict(source=src, layer=layer, **LANE_VALUES)
                         for src in ("ours", "PR #1204") for layer in (7, 8, 9, 10)])


def _recurrence() -> pd.DataFrame:
    cycles = [0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 0]
    return pd.DataFrame([dict(setting=s, virtual_layer=i, cycle=c, rel_error=f * 1.4 ** i)
                         for s, f in (("no QAT", 0.01), ("noisy QAT", 0.003))
                         for i, c in enumerate(cycles)])


FIGURES = {
    "skip_weights_evolution": lambda: plots.skip_weights_evolution(_skips()),
    "skip_weights_heatmap": lambda: plots.skip_weights_heatmap(_skips()),
    "resid_mix": lambda: plots.resid_mix_figure(pd.DataFrame(
        [dict(variant=v, layer=i, x=1 - 0.05 * i, x0=0.03 * i) for v in "ab" for i in range(9)])),
    "lane_routing": lambda: plots.lane_routing_figure(_lanes()),
    "val_bpb_step": lambda: plots.val_bpb_curves(_curves(), x="step"),
    "val_bpb_seconds": lambda: plots.val_bpb_curves(_curves(), x="train_seconds"),
    "train_loss": lambda: plots.train_loss_curves(_curves()),
    "bpb_vs_params": lambda: plots.bpb_vs_size(_finals(), x="unique_params"),
    "bpb_vs_bytes": lambda: plots.bpb_vs_size(_finals(), x="artifact_bytes"),
    "recurrence_error": lambda: plots.recurrence_error_figure(_recurrence()),
    "roundtrip_gap": lambda: plots.roundtrip_gap_figure(_finals()),
    "depth_sweep": lambda: plots.depth_sweep_figure(
        pd.DataFrame(dict(label="pr54", k=[1, 2, 3, 4], val_bpb=[3.0, 2.8, 2.7, 2.75])),
        trained_k=3),
}


def _data_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_every_figure_has_labelled_axes_and_draws_data(name):
    fig = FIGURES[name]()
    assert isinstance(fig, Figure)
    axes = _data_axes(fig)
    assert axes, "figure has no axes"
    for ax in axes:
        assert ax.get_xlabel() and ax.get_ylabel() or ax.images, f"{name}: unlabelled axes"
        assert ax.lines or ax.collections or ax.images or ax.patches, f"{name}: empty axes"


def test_curves_draw_one_line_per_seed_and_one_colour_per_label():
    ax = plots.val_bpb_curves(_curves(), x="step").axes[0]
    assert len(ax.lines) == 4  # 2 labels x 2 seeds
    assert len({line.get_color() for line in ax.lines}) == 2
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["flat", "pr363-3x3"]


def test_lane_heatmaps_show_the_routing_values_as_text():
    fig = plots.lane_routing_figure(_lanes())
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert {"1.77", "0.62", "0.31", "1.24"} <= texts
    heatmaps = [ax for ax in fig.axes if ax.images]
    assert len(heatmaps) == 8  # 2 sources x 4 layers
    np.testing.assert_allclose(heatmaps[0].images[0].get_array(), [[1.77, 0.62], [0.31, 1.24]])


def test_bpb_vs_size_marks_every_seed_and_the_mean():
    ax = plots.bpb_vs_size(_finals(), x="unique_params").axes[0]
    points = sum(len(c.get_offsets()) for c in ax.collections if hasattr(c, "get_offsets")
                 and len(c.get_offsets()) > 0 and c.get_offsets().shape[1] == 2)
    assert points >= 4  # every seed drawn
    assert any("n=2" in t.get_text() for t in ax.get_legend().get_texts())


def test_a_table_missing_a_column_is_refused_naming_the_column():
    with pytest.raises(ValueError, match=r"lacks column\(s\) 'val_bpb'"):
        plots.val_bpb_curves(_curves().drop(columns="val_bpb"))


def test_an_empty_table_is_refused():
    with pytest.raises(ValueError, match="empty"):
        plots.depth_sweep_figure(pd.DataFrame(columns=["label", "k", "val_bpb"]))


def test_labels_keep_their_colour_across_figures():
    a = plots.colors_for(["flat", "pr363-3x3", "pr363-2x5"])
    b = plots.colors_for(["pr363-2x5", "flat", "pr363-3x3", "flat"])
    assert a == b and len(set(a.values())) == 3


def test_save_figure_writes_png_svg_and_a_sidecar_naming_the_runs(tmp_path):
    fig = FIGURES["depth_sweep"]()
    png = plots.save_figure(fig, "depth", runs=["cpu-rqz-s1337-abc123"], out_dir=tmp_path)
    assert png == tmp_path / "depth.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "depth.svg").read_text().lstrip().startswith("<?xml")
    assert "cpu-rqz-s1337-abc123" in (tmp_path / "depth.svg").read_text()
    meta = json.loads((tmp_path / "depth.json").read_text())
    assert meta["runs"] == ["cpu-rqz-s1337-abc123"]
    assert meta["figure"] == "depth" and meta["files"] == ["depth.png", "depth.svg"]
    assert len(meta["commit"]) == 40 or meta["commit"] == "unknown"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["depth.json", "depth.png", "depth.svg"]


def test_save_figure_defaults_to_the_figures_dir_of_the_project_root(golf_root):
    plots.save_figure(FIGURES["train_loss"](), "loss", runs=["r"])
    assert (golf_root / "figures" / "loss.png").is_file()


@pytest.mark.parametrize("runs", [[], "run-a", [""]])
def test_save_figure_needs_the_run_ids_behind_the_figure(tmp_path, runs):
    with pytest.raises(ValueError, match="runs must be a non-empty list"):
        plots.save_figure(FIGURES["train_loss"](), "loss", runs=runs, out_dir=tmp_path)


def test_save_figure_refuses_a_name_that_is_a_path(tmp_path):
    with pytest.raises(ValueError, match="bad figure name"):
        plots.save_figure(FIGURES["train_loss"](), "../loss", runs=["r"], out_dir=tmp_path)


def test_recurrence_error_draws_one_line_per_run_and_one_legend_entry_per_setting():
    two_seeds = pd.concat([_recurrence().assign(name=lambda d, s=seed: d["setting"] + s)
                           for seed in ("-s1", "-s2")])
    fig = plots.recurrence_error_figure(two_seeds)
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 4  # 2 settings x 2 seeds, none joined across runs
    assert all(len(line.get_xdata()) == 11 for line in ax.get_lines())
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["no QAT", "noisy QAT"]


def test_skip_weight_evolution_draws_seeds_as_separate_lines():
    two_seeds = pd.concat([_skips().assign(seed=s) for s in (1337, 42)])
    fig = plots.skip_weights_evolution(two_seeds)
    # the data lines (axhline(0) is a 2-point line)
    lines = [ln for ln in fig.axes[0].get_lines() if len(ln.get_xdata()) > 2]
    assert len(lines) == 4 * 2  # 4 skips x 2 seeds
    assert all(list(ln.get_xdata()) == [0, 50, 100] for ln in lines)
