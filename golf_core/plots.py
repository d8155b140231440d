"""The report's figures: one function per figure, tidy pandas table in, matplotlib Figure out.

Every function takes a long ("tidy") DataFrame whose columns it names in its docstring, checks
them (a missing column raises ValueError naming it), and returns a `matplotlib.figure.Figure`
drawn on the Agg canvas without touching pyplot's global state, so figures can be built in
tests, scripts and notebooks alike. `save_figure` writes `figures/<name>.png` and `.svg` plus a
sidecar `<name>.json` naming the runs behind the figure and the git commit of the code
(cookiecutter-data-science's `plots.py`).

Upstream references: the skip weights and resid_mix are the baseline `train_gpt.py` controls;
the 2x2 lane routing (`parallel_post_lambdas`, `parallel_resid_lambdas`) is PR #1204's.
"""

from __future__ import annotations

import datetime as _dt
import html
import io
import json
import os
import re
import subprocess
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from golf_core import paths

# One look for every figure: small tiny-model figures, readable at report width.
STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "svg.hashsalt": "golf-recurrence",  # stable SVG ids, so re-rendering gives the same file
}
# Colour-blind-safe qualitative palette (Okabe & Ito), assigned to labels in sorted order.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
DIVERGING = "RdBu_r"
LANE_KEYS = ("attn_to_attn", "attn_to_mlp", "mlp_to_attn", "mlp_to_mlp")


# ----------------------------------------------------------------------------- helpers


@contextmanager
def _style():
    with matplotlib.rc_context(STYLE):
        yield


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _legend_once(label: str, seen: set[str]) -> str | None:
    """`label` the first time a line of it is drawn, then None (no legend entry): one entry
    per label when each run (seed) is its own line."""
    if label in seen:
        return None
    seen.add(label)
    return label


def _require(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"{what}: table lacks column(s) {', '.join(map(repr, missing))}; "
            f"it has {list(df.columns)}"
        )
    if df.empty:
        raise ValueError(f"{what}: table is empty, nothing to plot")


def colors_for(labels: Iterable[str]) -> dict[str, str]:
    """A fixed colour per label (sorted order), so a variant has one colour in every figure."""
    return {lab: PALETTE[i % len(PALETTE)] for i, lab in enumerate(sorted(set(labels)))}


def _annotated_heatmap(ax: Axes, values: np.ndarray, xt: Sequence, yt: Sequence, vmax: float):
    im = ax.imshow(values, cmap=DIVERGING, vmin=-vmax, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(xt)), [str(x) for x in xt])
    ax.set_yticks(range(len(yt)), [str(y) for y in yt])
    ax.grid(False)
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            dark = abs(v) > 0.6 * vmax
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")
    return im


def _sym_limit(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


# ----------------------------------------------------------------------------- routing


def skip_weights_evolution(df: pd.DataFrame) -> Figure:
    """U-Net skip weights (mean over dims) vs training step: one panel per variant, one colour
    per skip, one line per run (`seed`, when given: seeds are separate lines). Columns:
    `variant`, `step`, `skip`, `mean`, optionally `seed`."""
    _require(df, ["variant", "step", "skip", "mean"], "skip_weights_evolution")
    variants = sorted(df["variant"].unique())
    with _style():
        fig = _figure(3.2 * len(variants), 2.8)
        axes = fig.subplots(1, len(variants), sharey=True, squeeze=False)[0]
        skips = sorted(df["skip"].unique())
        cmap = matplotlib.colormaps["viridis"]
        for ax, variant in zip(axes, variants):
            sub = df[df["variant"] == variant]
            for k, skip in enumerate(skips):
                runs = sub[sub["skip"] == skip]
                groups = runs.groupby("seed") if "seed" in runs else [(None, runs)]
                for i, (_seed, s) in enumerate(groups):
                    s = s.sort_values("step")
                    ax.plot(s["step"], s["mean"], marker="o", ms=3,
                            color=cmap(k / max(1, len(skips) - 1)),
                            label=f"skip {skip}" if i == 0 else "_nolegend_")
            ax.axhline(0.0, color="grey", lw=0.8)
            ax.set_title(variant)
            ax.set_xlabel("training step")
            ax.set_ylabel("skip weight (mean over dims)")
        most = max(range(len(variants)),
                   key=lambda i: df[df["variant"] == variants[i]]["skip"].nunique())
        axes[most].legend(loc="best", ncol=2)
    return fig


def skip_weights_heatmap(df: pd.DataFrame) -> Figure:
    """Final skip weights as an annotated variant x skip heatmap (mean over dims; the std over
    dims in the title of each cell is left to the table). Columns: `variant`, `skip`, `mean`."""
    _require(df, ["variant", "skip", "mean"], "skip_weights_heatmap")
    table = df.pivot_table(index="variant", columns="skip", values="mean", aggfunc="mean")
    values = table.to_numpy(dtype=float)
    with _style():
        fig = _figure(1.0 + 0.9 * table.shape[1], 0.8 + 0.45 * table.shape[0])
        ax = fig.subplots()
        im = _annotated_heatmap(ax, values, list(table.columns), list(table.index),
                                _sym_limit(values))
        ax.set_xlabel("skip connection (encoder layer -> decoder layer, LIFO order)")
        ax.set_ylabel("variant")
        fig.colorbar(im, ax=ax, label="mean skip weight")
    return fig


def resid_mix_figure(df: pd.DataFrame) -> Figure:
    """resid_mix per layer: the coefficient on the running stream x and on the embedding x0
    (`x = mix[0]*x + mix[1]*x0`), one line per variant. Columns: `variant`, `layer`, `x`, `x0`."""
    _require(df, ["variant", "layer", "x", "x0"], "resid_mix_figure")
    colors = colors_for(df["variant"])
    with _style():
        fig = _figure(7.0, 2.8)
        axes = fig.subplots(1, 2, sharex=True)
        for ax, col, init in zip(axes, ("x", "x0"), (1.0, 0.0)):
            for variant, sub in df.groupby("variant"):
                s = sub.sort_values("layer")
                ax.plot(s["layer"], s[col], marker="o", ms=3, color=colors[variant],
                        label=variant)
            ax.axhline(init, color="grey", lw=0.8, ls="--")
            ax.set_xlabel("virtual layer")
            ax.set_ylabel(f"resid_mix coefficient on {col} (mean over dims)")
            ax.set_title(f"weight of {col} (init {init:g})")
        axes[1].legend(loc="best")
    return fig


def lane_routing_figure(df: pd.DataFrame) -> Figure:
    """Parallel-lane routing (PR #1204): per layer a 2x2 annotated heatmap of the post lambdas
    (rows: attention / MLP output, columns: lane it is written into), one row of panels per
    `source` (ours, upstream), and the resid lambdas per layer on the right.
    Columns: `source`, `layer`, attn_to_attn, attn_to_mlp, mlp_to_attn, mlp_to_mlp,
    `attn_resid`, `mlp_resid`."""
    cols = ["source", "layer", *LANE_KEYS, "attn_resid", "mlp_resid"]
    _require(df, cols, "lane_routing_figure")
    sources = list(dict.fromkeys(df["source"]))
    n_layers = int(df.groupby("source")["layer"].nunique().max())
    vmax = _sym_limit(df[list(LANE_KEYS)].to_numpy(dtype=float))
    with _style():
        fig = _figure(1.55 * n_layers + 3.2, 2.2 * len(sources))
        rows = np.atleast_1d(fig.subfigures(len(sources), 1))
        for sub_fig, source in zip(rows, sources):
            sub = df[df["source"] == source].sort_values("layer")
            sub_fig.suptitle(source, fontsize=9, fontweight="bold")
            axes = sub_fig.subplots(1, n_layers + 1,
                                    width_ratios=[1] * n_layers + [1.8], squeeze=False)[0]
            for ax in axes[len(sub):n_layers]:
                ax.set_visible(False)
            for ax, (_, row) in zip(axes, sub.iterrows()):
                values = np.array([[row["attn_to_attn"], row["attn_to_mlp"]],
                                   [row["mlp_to_attn"], row["mlp_to_mlp"]]], dtype=float)
                im = _annotated_heatmap(ax, values, ["attn", "mlp"], ["attn", "mlp"], vmax)
                ax.set_title(f"layer {row['layer']}", fontsize=8)
                ax.set_xlabel("into lane")
                ax.set_ylabel("output of")
            ax = axes[-1]
            ax.plot(sub["layer"], sub["attn_resid"], marker="o", label="attn lane")
            ax.plot(sub["layer"], sub["mlp_resid"], marker="s", label="mlp lane")
            ax.axhline(np.sqrt(1.1), color="grey", lw=0.8, ls="--", label="init sqrt(1.1)")
            ax.set_xlabel("layer")
            ax.set_ylabel("resid lambda")
            ax.legend(loc="best")
            sub_fig.colorbar(im, ax=list(axes[:-1]), shrink=0.8, label="post lambda")
    return fig


# ----------------------------------------------------------------------------- curves


def val_bpb_curves(df: pd.DataFrame, x: str = "step") -> Figure:
    """val_bpb against `x` (`step` or `train_seconds`): one line per run, one colour per
    label, so seeds of a label show their spread. Columns: `label`, `seed`, `x`, `val_bpb`."""
    _require(df, ["label", "seed", x, "val_bpb"], "val_bpb_curves")
    colors = colors_for(df["label"])
    with _style():
        fig = _figure(5.0, 3.3)
        ax = fig.subplots()
        seen: set[str] = set()
        for (label, seed), sub in df.groupby(["label", "seed"]):
            s = sub.dropna(subset=["val_bpb"]).sort_values(x)
            ax.plot(s[x], s["val_bpb"], marker="o", ms=2.5, lw=1.2, alpha=0.85,
                    color=colors[label], label=_legend_once(label, seen),
                    gid=tooltip(_last_value(f"{label} seed {seed}", s, x, "val_bpb")))
        ax.set_xlabel({"step": "training step", "train_seconds": "training seconds"}.get(x, x))
        ax.set_ylabel("validation bits per byte")
        ax.legend(loc="upper right", title="one line per seed")
    return fig


def train_loss_curves(df: pd.DataFrame) -> Figure:
    """Training loss vs step for every run (do the tiny models learn?). Columns: `label`,
    `seed`, `step`, `train_loss`."""
    _require(df, ["label", "seed", "step", "train_loss"], "train_loss_curves")
    colors = colors_for(df["label"])
    with _style():
        fig = _figure(5.5, 3.3)
        ax = fig.subplots()
        seen: set[str] = set()
        for (label, seed), sub in df.groupby(["label", "seed"]):
            s = sub.dropna(subset=["train_loss"]).sort_values("step")
            ax.plot(s["step"], s["train_loss"], lw=1.0, alpha=0.8, color=colors[label],
                    label=_legend_once(label, seen),
                    gid=tooltip(_last_value(f"{label} seed {seed}", s, "step", "train_loss")))
        ax.set_xlabel("training step")
        ax.set_ylabel("training loss (nats per token)")
        ax.legend(loc="upper right", ncol=2)
    return fig


def bpb_vs_size(df: pd.DataFrame, x: str) -> Figure:
    """Final val_bpb against a size (`unique_params` or `artifact_bytes`): each seed a point,
    each label's mean a larger marker with the min-max range as an error bar.
    Columns: `label`, `seed`, `x`, `val_bpb`."""
    _require(df, ["label", "seed", x, "val_bpb"], "bpb_vs_size")
    colors = colors_for(df["label"])
    xlabel = {"unique_params": "unique parameters",
              "artifact_bytes": "artifact bytes (quantized + compressed)"}.get(x, x)
    with _style():
        fig = _figure(5.0, 3.3)
        ax = fig.subplots()
        for label, sub in df.groupby("label"):
            ax.scatter(sub[x], sub["val_bpb"], s=14, alpha=0.6, color=colors[label])
            mean, lo, hi = sub["val_bpb"].mean(), sub["val_bpb"].min(), sub["val_bpb"].max()
            ax.errorbar(sub[x].mean(), mean, yerr=[[mean - lo], [hi - mean]], fmt="D", ms=6,
                        capsize=3, color=colors[label], label=f"{label} (n={len(sub)})")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("final validation bits per byte")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
        ax.legend(loc="best")
    return fig


# ----------------------------------------------------------------------------- quantization


def recurrence_error_figure(df: pd.DataFrame) -> Figure:
    """Relative hidden-state error of the quantized model, ||h_q - h|| / ||h||, per virtual
    layer, one colour per setting (e.g. noisy QAT off / on) and one line per run (`name`, when
    given: seeds are separate lines); the repeats of the shared core shaded. Columns:
    `setting`, `virtual_layer`, `cycle` (repeat index), `rel_error`, and optionally `name` and
    `shared` (the layer's block is re-used; else layers with cycle > 0 are shaded)."""
    _require(df, ["setting", "virtual_layer", "cycle", "rel_error"], "recurrence_error_figure")
    colors = colors_for(df["setting"])
    with _style():
        fig = _figure(5.5, 3.3)
        ax = fig.subplots()
        first = df[df["setting"] == sorted(df["setting"].unique())[0]]
        core = first[first["shared"]] if "shared" in first else first[first["cycle"] > 0]
        for cycle, sub in core.groupby("cycle"):
            ax.axvspan(sub["virtual_layer"].min() - 0.5, sub["virtual_layer"].max() + 0.5,
                       color="grey", alpha=0.08 * (1 + cycle % 2))
            ax.text(sub["virtual_layer"].mean(), 1.0, f"repeat {cycle + 1}", ha="center",
                    va="bottom", fontsize=7, transform=ax.get_xaxis_transform())
        runs = "name" if "name" in df else "setting"
        seen: set[str] = set()
        for (setting, run), sub in df.groupby(["setting", runs]):
            s = sub.sort_values("virtual_layer")
            ax.plot(s["virtual_layer"], s["rel_error"], marker="o", ms=3, color=colors[setting],
                    label=_legend_once(setting, seen),
                    gid=tooltip(_last_value(f"{setting} {run}", s, "virtual_layer",
                                            "rel_error")))
        positive = df["rel_error"] > 0
        if positive.any():
            ax.set_yscale("log")
        ax.set_xlabel("virtual layer")
        ax.set_ylabel("relative hidden-state error ||h_q - h|| / ||h||")
        ax.legend(loc="best")
    return fig


def claims_forest(df: pd.DataFrame) -> Figure:
    """Every claim's paired differences (golf_core.verdicts.paired_table): one row per claim,
    each seed a dot, the mean with its 95% t-interval as a bar, zero as a line and the
    equivalence margin +-delta shaded; the verdict written at the right. bpb claims and gap
    claims share the axis (both in bpb)."""
    _require(df, ["claim", "seed", "diff", "mean", "ci_low", "ci_high", "delta", "verdict"],
             "claims_forest")
    claims = list(dict.fromkeys(df["claim"]))
    with _style():
        fig = _figure(7.5, 0.42 * len(claims) + 1.0)
        ax = fig.subplots()
        for i, name in enumerate(claims):
            sub = df[df["claim"] == name]
            r = sub.iloc[0]
            y = len(claims) - 1 - i
            ax.add_patch(Rectangle((-r["delta"], y - 0.35), 2 * r["delta"], 0.7,
                                   color="grey", alpha=0.15, lw=0))
            ax.scatter(sub["diff"], [y] * len(sub), s=12, color="#4477aa", zorder=3,
                       gid=tooltip(f"{name}: " + ", ".join(
                           f"s{s} {d:+.4f}" for s, d in zip(sub["seed"], sub["diff"]))))
            if r["ci_low"] == r["ci_low"]:  # an interval from >= 2 seeds
                ax.plot([r["ci_low"], r["ci_high"]], [y, y], color="black", lw=1.5, zorder=4)
            ax.plot([r["mean"]], [y], marker="D", ms=5, color="black", zorder=5)
            ax.text(1.01, y, f"{r['verdict']} (n={int(r['n'])})", va="center", fontsize=7,
                    transform=ax.get_yaxis_transform())
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_yticks(range(len(claims)), claims[::-1], fontsize=7)
        ax.set_ylim(-0.7, len(claims) - 0.3)
        ax.set_xlabel("paired difference a - b per seed (bpb); bar: 95% t-interval; "
                      "shade: +-delta")
    return fig


def roundtrip_gap_figure(df: pd.DataFrame) -> Figure:
    """val_bpb before and after the quantize -> compress -> reload roundtrip, per label, with
    seeds as points. Columns: `label`, `seed`, `val_bpb`, `roundtrip_val_bpb`."""
    _require(df, ["label", "seed", "val_bpb", "roundtrip_val_bpb"], "roundtrip_gap_figure")
    labels = sorted(df["label"].unique())
    with _style():
        fig = _figure(1.4 + 1.1 * len(labels), 3.2)
        ax = fig.subplots()
        for i, label in enumerate(labels):
            sub = df[df["label"] == label]
            for dx, col, color, name in ((-0.17, "val_bpb", PALETTE[0], "float"),
                                         (0.17, "roundtrip_val_bpb", PALETTE[1], "roundtrip")):
                ax.bar(i + dx, sub[col].mean(), width=0.32, color=color, alpha=0.75,
                       label=name if i == 0 else None)
                ax.scatter(np.full(len(sub), i + dx), sub[col], s=10, color="black", zorder=3)
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
        ax.set_xlabel("variant (bars: mean over seeds; dots: seeds)")
        low = float(df[["val_bpb", "roundtrip_val_bpb"]].min().min())
        high = float(df[["val_bpb", "roundtrip_val_bpb"]].max().max())
        ax.set_ylim(low - 0.1 * (high - low + 1e-3), high + 0.1 * (high - low + 1e-3))
        ax.set_ylabel("validation bits per byte")
        ax.legend(loc="best")
    return fig


def depth_sweep_figure(df: pd.DataFrame, trained_k: int | None = None) -> Figure:
    """Test-time depth: val_bpb of the shared-layer model evaluated with K' iterations.
    Columns: `label`, `k`, `val_bpb`; `trained_k` marks the K it was trained with."""
    _require(df, ["label", "k", "val_bpb"], "depth_sweep_figure")
    colors = colors_for(df["label"])
    with _style():
        fig = _figure(4.8, 3.2)
        ax = fig.subplots()
        for label, sub in df.groupby("label"):
            s = sub.sort_values("k")
            ax.plot(s["k"], s["val_bpb"], marker="o", color=colors[label], label=label)
        if trained_k is not None:
            ax.axvline(trained_k, color="grey", ls="--", lw=0.8, label=f"trained K={trained_k}")
        ax.set_xlabel("iterations of the shared layer at evaluation (K')")
        ax.set_ylabel("validation bits per byte")
        ax.legend(loc="best")
    return fig


# ----------------------------------------------------------------------------- inline SVG
# The HTML report pastes figures into its pages as SVG markup (crisp at any zoom); the files in
# figures/ stay PNG + SVG. A line drawn with `gid=tooltip(text)` gets `text` as its <title>
# once inlined, so hovering a per-seed curve names the seed and its last value (no script).

_TIP = "tip-"
_SVG_ID = re.compile(r'\bid="([^"]+)"')


def tooltip(text: str) -> str:
    """An artist gid that `inline_svg` turns into a hover <title> showing `text`."""
    return _TIP + text.encode("utf-8").hex()


def _last_value(name: str, s: pd.DataFrame, x: str, y: str) -> str:
    """`name: y <last value> at x <its x>` for a line's tooltip (rows sorted by x)."""
    s = s.dropna(subset=[y])
    if s.empty:
        return name
    return f"{name}: {y} {s[y].iloc[-1]:.4g} at {x} {s[x].iloc[-1]:g}"


def figure_svg(fig: Figure) -> str:
    """The figure as an SVG document (the same renderer `save_figure` uses for `.svg`)."""
    buf = io.StringIO()
    with _style():
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()


def inline_svg(svg: str, prefix: str) -> str:
    """An SVG document as markup for an HTML page: the XML prolog dropped, every id prefixed
    with `prefix` (figures on one page must not share clip-path or glyph ids), the size made
    fluid (the column width, at most the figure's own), and each `tooltip` line given a
    <title>. Raises ValueError when `svg` holds no <svg> element."""
    start = svg.find("<svg")
    if start < 0:
        raise ValueError("inline_svg: the text holds no <svg> element")
    body = svg[start:]
    ids = set(_SVG_ID.findall(body))

    def ref(m: re.Match) -> str:
        name = m.group(2)
        return m.group(1) + (f"{prefix}-{name}" if name in ids else name) + m.group(3)

    body = _SVG_ID.sub(lambda m: f'id="{prefix}-{m.group(1)}"', body)
    body = re.sub(r"(url\(#)([^)]+)(\))", ref, body)
    body = re.sub(r'((?:xlink:)?href="#)([^"]+)(")', ref, body)
    body = re.sub(rf'(<g id="{re.escape(prefix)}-{_TIP}([0-9a-f]+)"[^>]*>)',
                  lambda m: f"{m.group(1)}<title>"
                            f"{html.escape(bytes.fromhex(m.group(2)).decode('utf-8'))}</title>",
                  body)
    root_end = body.index(">")
    root = body[:root_end]
    width = re.search(r'\swidth="([^"]+)"', root)
    root = re.sub(r'\s(width|height)="[^"]*"', "", root)
    style = f"max-width:{width.group(1)};" if width else ""
    root += f' width="100%" style="{style}height:auto" role="img"'
    return root + body[root_end:]


# ----------------------------------------------------------------------------- saving


def git_commit() -> dict[str, object]:
    """The commit of the code that drew a figure, and whether the tree was dirty."""
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=repo, capture_output=True, text=True, check=True,
                                timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def save_figure(fig: Figure, name: str, *, runs: Sequence[str],
                out_dir: str | Path | None = None) -> Path:
    """Write `<out_dir>/<name>.png`, `.svg` and the sidecar `<name>.json` (runs, commit, time);
    each file goes to a temp name first, then is renamed. Returns the PNG path.
    `out_dir` defaults to `paths.figures_dir()`; `runs` names the run ids (or upstream logs)
    whose data the figure shows."""
    if not name or "/" in name or name.startswith(".") or name != name.strip():
        raise ValueError(f"save_figure: bad figure name {name!r} (want a plain file stem)")
    if isinstance(runs, str) or not runs or not all(isinstance(r, str) and r for r in runs):
        raise ValueError(f"save_figure({name!r}): runs must be a non-empty list of run ids, "
                         f"got {runs!r}")
    out = Path(out_dir) if out_dir is not None else paths.figures_dir()
    out.mkdir(parents=True, exist_ok=True)
    meta = {"figure": name, "runs": list(runs), **git_commit(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "files": [f"{name}.png", f"{name}.svg"]}
    for ext in ("png", "svg"):
        tmp = out / f".{name}.tmp.{ext}"
        fig.savefig(tmp, format=ext, metadata=_file_metadata(ext, meta))
        os.replace(tmp, out / f"{name}.{ext}")
    tmp = out / f".{name}.tmp.json"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, out / f"{name}.json")
    return out / f"{name}.png"


def _file_metadata(ext: str, meta: dict) -> dict[str, str]:
    """Run ids and commit inside the image files themselves (PNG text chunks, SVG <metadata>)."""
    text = f"runs={','.join(meta['runs'])}; commit={meta['commit']}"
    if ext == "png":
        return {"Title": meta["figure"], "Description": text, "Software": "golf_core.plots"}
    return {"Title": meta["figure"], "Description": text, "Date": None}
