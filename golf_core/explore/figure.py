"""The explorer's figure: every routing table of a snapshot as one panel, a second snapshot
overlaid (lines dashed, bars as hollow markers, the lane matrix as A - B)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from golf_core import plots

LANE_ROWS = ("attn_to_attn", "attn_to_mlp", "mlp_to_attn", "mlp_to_mlp", "attn_resid",
             "mlp_resid")


# ----------------------------------------------------------------------------- the figure


def _empty(ax: Axes, title: str, text: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _skip_panel(ax: Axes, a: pd.DataFrame, b: pd.DataFrame | None) -> None:
    title = "skip weights (mean, bar: std over dims)"
    if a.empty:
        return _empty(ax, title, "no U-Net skip weights in this model")
    ax.bar(a["skip"], a["mean"], yerr=a["std"], color=plots.PALETTE[0], alpha=0.75,
           capsize=2, label="A")
    if b is not None and not b.empty:
        ax.scatter(b["skip"], b["mean"], marker="D", facecolors="none", zorder=3,
                   edgecolors=plots.PALETTE[1], label="B")
        ax.legend(loc="best")
    labels = [f"{s}\n{e}->{d}" if pd.notna(e) else str(s)
              for s, e, d in zip(a["skip"], a["encoder_layer"], a["decoder_layer"])]
    ax.set_xticks(list(a["skip"]), labels)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("skip (encoder layer -> decoder layer)")
    ax.set_title(title)


def _mix_panel(ax: Axes, a: pd.DataFrame, b: pd.DataFrame | None) -> None:
    title = "resid_mix per virtual layer (x = mix[0] x + mix[1] x0)"
    if a.empty:
        return _empty(ax, title, "no resid_mix in this model")
    _shade(ax, a.loc[a["cycle"] > 0, "layer"])
    for col, color, name in (("x_coef_mean", plots.PALETTE[0], "x"),
                             ("x0_coef_mean", plots.PALETTE[1], "x0")):
        ax.plot(a["layer"], a[col], marker="o", ms=3, color=color, label=f"A: {name}",
                gid=plots.tooltip(f"A {name}: " + _values(a[col])))
        if b is not None and not b.empty:
            ax.plot(b["layer"], b[col], marker="o", ms=3, ls="--", mfc="none", color=color,
                    label=f"B: {name}", gid=plots.tooltip(f"B {name}: " + _values(b[col])))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("virtual layer (shaded: a repeated block)")
    ax.set_ylabel("coefficient (mean over dims)")
    ax.legend(loc="best", ncol=2)
    ax.set_title(title)


def _shade(ax: Axes, layers: pd.Series) -> None:
    """Grey bands over the given layer indices, one band per run of consecutive layers."""
    xs = sorted(int(v) for v in layers)
    start = prev = None
    for x in [*xs, None]:
        if start is not None and (x is None or x != prev + 1):
            ax.axvspan(start - 0.5, prev + 0.5, color="grey", alpha=0.1, lw=0)
            start = None
        if x is not None and start is None:
            start = x
        prev = x


def _values(s: pd.Series) -> str:
    return " ".join(f"{v:.3f}" for v in s)


def _lanes_panel(fig: Figure, ax: Axes, a: pd.DataFrame, b: pd.DataFrame | None) -> None:
    title = "lane lambdas (PR #1204)"
    if a.empty:
        return _empty(ax, title, "no parallel residual lanes in this model")
    a = a.drop_duplicates("physical").sort_values("physical")
    values = a[list(LANE_ROWS)].to_numpy(dtype=float).T  # (6, lane layers)
    if b is not None and not b.empty:
        other = b.drop_duplicates("physical").set_index("physical").reindex(a["physical"])
        values = values - other[list(LANE_ROWS)].to_numpy(dtype=float).T
        title += ": A - B"
    xt = [f"{lay}\n(p{p})" for lay, p in zip(a["layer"], a["physical"])]
    im = plots._annotated_heatmap(ax, values, xt, list(LANE_ROWS), plots._sym_limit(values))
    if title.endswith("A - B"):  # differences can be tiny: two significant digits, not 0.00
        for text, v in zip(ax.texts, values[np.isfinite(values)]):
            text.set_text(f"{v:.2g}")
    ax.set_xlabel("virtual layer (physical block)")
    fig.colorbar(im, ax=ax, shrink=0.9)
    ax.set_title(title)


def _embeddings_panel(ax: Axes, a: pd.DataFrame, b: pd.DataFrame | None) -> None:
    title = "loop / iteration embeddings (rms)"
    if a.empty:
        return _empty(ax, title, "no repeat or iteration embeddings in this model")
    x = np.arange(len(a))
    ax.bar(x, a["rms"], color=plots.PALETTE[2], alpha=0.75, label="A")
    if b is not None and not b.empty:
        other = b.set_index(["name", "index"]).reindex(list(zip(a["name"], a["index"])))
        ax.scatter(x, other["rms"], marker="D", facecolors="none",
                   edgecolors=plots.PALETTE[1], zorder=3, label="B")
        ax.legend(loc="best")
    _category_ticks(ax, x, [f"{n} {i}" for n, i in zip(a["name"], a["index"])])
    ax.set_ylabel("rms over dims")
    ax.set_title(title)


def _quant_panel(ax: Axes, a: pd.DataFrame, b: pd.DataFrame | None) -> None:
    if a.empty:
        why = a.attrs.get("unavailable", "no hidden states")
        return _empty(ax, "quantization error per virtual layer",
                      "not available for this model:\n" + textwrap.fill(why, 60))
    title = f"int{int(a['bits'].iloc[0])} error per virtual layer ({a['batch'].iloc[0]})"
    _shade(ax, a.loc[a["shared"], "virtual_layer"])
    for df, name, ls in ((a, "A", "-"), (b, "B", "--")):
        if df is None or df.empty:
            continue
        gap = df.attrs.get("loss_gap")
        label = name + (f" (loss gap {gap:+.4f} nats)" if gap is not None else "")
        ax.plot(df["virtual_layer"], df["rel_error"], marker="o", ms=3, ls=ls,
                color=plots.PALETTE[0 if name == "A" else 1], label=label,
                gid=plots.tooltip(f"{name} rel_error: " + " ".join(
                    f"{v:.2e}" for v in df["rel_error"])))
    positive = a["rel_error"][a["rel_error"] > 0]
    if len(positive) and positive.max() > 10 * positive.min():  # log only over a decade
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("virtual layer (shaded: a block that runs more than once)")
    ax.set_ylabel("||h_q - h|| / ||h||")
    ax.legend(loc="best")
    ax.set_title(title)


def _generic_panel(ax: Axes, key: str, a: pd.DataFrame, b: pd.DataFrame | None) -> None:
    """A table this module does not know (a family's extra): its float columns per row,
    joined by lines when the rows are numbered (layers), as points when they are names."""
    floats = [c for c in a.columns if pd.api.types.is_float_dtype(a[c])][:4]
    if a.empty or not floats:
        return _empty(ax, key, "(no numeric columns: see the table)")
    labels = [c for c in a.columns if c not in floats][:2]
    ordered = bool(labels) and pd.api.types.is_integer_dtype(a[labels[0]])
    x = np.arange(len(a))
    for i, col in enumerate(floats):
        color = plots.PALETTE[i % len(plots.PALETTE)]
        ax.plot(x, a[col], marker="o", ms=4, ls="-" if ordered else "", color=color, label=col,
                gid=plots.tooltip(f"A {col}: " + _values(a[col])))
        if b is not None and col in b and len(b) == len(a):
            ax.plot(x, b[col], marker="o", ms=4, ls="--" if ordered else "", mfc="none",
                    color=color)
    if labels:
        _category_ticks(ax, x, a[labels].astype(str).agg(" ".join, axis=1).tolist())
    ax.legend(loc="best")
    ax.set_title(f"{key} (B dashed)" if b is not None else key)


def _category_ticks(ax: Axes, x: np.ndarray, names: list[str]) -> None:
    """Tick labels that stay legible: slanted when there are many or they are long."""
    slant = len(names) > 6 or max(map(len, names), default=0) > 8
    ax.set_xticks(x, names, rotation=25 if slant else 0, ha="right" if slant else "center",
                  fontsize=7 if slant else None)


def panel_keys(tables: Mapping[str, pd.DataFrame]) -> list[str]:
    """The panels a figure of `tables` draws, in order: the five known ones, then every extra
    table (a family's own) except `params`."""
    known = ["skip_weights", "resid_mix", "lanes", "embeddings", "quant_error"]
    return known + [k for k in tables if k not in known and k != "params"]


def snapshot_figure(tables: Mapping[str, pd.DataFrame],
                    other: Mapping[str, pd.DataFrame] | None = None, *,
                    title: str = "", other_title: str = "") -> Figure:
    """Every table of a snapshot as one panel (two columns), B = `other` overlaid where
    given: lines dashed, bars as hollow markers, the lane matrix as A - B. A table missing
    from `tables` draws an empty panel saying so."""
    keys = panel_keys(tables)
    empty = pd.DataFrame()
    with matplotlib.rc_context(plots.STYLE):
        rows = (len(keys) + 1) // 2
        fig = Figure(figsize=(11.0, 3.1 * rows + 0.4), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(rows, 2, squeeze=False).ravel()
        for ax, key in zip(axes, keys):
            a = tables.get(key, empty)
            b = other.get(key) if other is not None else None
            if key == "lanes":
                _lanes_panel(fig, ax, a, b)
            elif key in ("skip_weights", "resid_mix", "embeddings", "quant_error"):
                {"skip_weights": _skip_panel, "resid_mix": _mix_panel,
                 "embeddings": _embeddings_panel, "quant_error": _quant_panel}[key](ax, a, b)
            else:
                _generic_panel(ax, key, a, b)
        for ax in axes[len(keys):]:
            ax.set_visible(False)
        head = f"A: {title}" if title else ""
        if other is not None:
            head += f"   vs   B: {other_title}"
        if head:
            fig.suptitle(head, fontsize=10, fontweight="bold")
    return fig


