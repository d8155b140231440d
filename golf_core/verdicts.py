"""The findings the writeup states, and the Markdown tables and figure panels it shows them in.

Takes `RunSpec`s of the run matrix (golf_core.experiments) whose runs have finished and reads
their files (through golf_core.results and golf_core.reanalysis); returns DataFrames and
Markdown text for the notebooks to display, and writes nothing:

* `findings(specs)`: the published claims against our runs, one row each (FINDINGS_COLUMNS):
  paired claims of golf_core.stats.CLAIMS with the mean paired difference, its 95% interval
  and the verdict of the stated rule, and descriptive rows (error growth, skip-weight init,
  lane routing); `study_specs()` / `study_findings()` / `study_status_markdown()` the same for
  the committed study scale (results/study/), `verdict_summary_markdown(table)` in sentences;
* `paired_table`, `spread_by_eval`, `gap_table`, `growth_table`, `stack_table`: the per-seed
  and per-arm tables behind them; `scale_markdown(specs)`: one paragraph on the runs' scale;
* `markdown_table(df)`: a DataFrame as a Markdown pipe table (golf_core.site reads it back
  for the index page); `figure_panel(*names)`: saved figures with their provenance, as
  IPython displays.
"""

from __future__ import annotations

import html
import json
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from golf_core import experiments, paths, reanalysis, results, site, stats

INTERVAL = ("ci_low", "ci_high")  # a pair of columns markdown_table prints as one cell
INTERVAL_HEADER = "95% CI"


def nowrap(text: str) -> str:
    """`text` in a span the report's stylesheet keeps on one line (an interval, a number)."""
    return f'<span class="golf-nowrap">{text}</span>'


def _whole(values: Any) -> bool:
    """Whether a column's numbers (NaN aside) are all whole: printed as integers (n, seeds)."""
    nums = [v for v in values if isinstance(v, float) and v == v]
    return bool(nums) and all(v.is_integer() and abs(v) < 1e15 for v in nums) and \
        all(isinstance(v, float) for v in values)


def _numeric(values: Any) -> bool:
    """Whether a column holds numbers only (NaN included): aligned right."""
    return bool(len(values)) and all(isinstance(v, numbers.Number) and not isinstance(v, bool)
                                     for v in values)


def markdown_table(df: Any, digits: int = 4) -> str:
    """A DataFrame as a Markdown pipe table: floats at `digits` decimals (a column of whole
    numbers as integers; columns of numbers aligned right), a `ci_low`/`ci_high` pair as one
    "95% CI" column of "[low, high]" cells that do not wrap, "PR #N" in a `source` column
    linked to the pull request (`golf_core.site.pr_links`)."""
    cols = list(df.columns)
    rows = [list(r) for r in df.itertuples(index=False)]
    if all(c in cols for c in INTERVAL):
        lo, hi = cols.index(INTERVAL[0]), cols.index(INTERVAL[1])

        def interval(a: Any, b: Any) -> str:
            if not (isinstance(a, float) and isinstance(b, float)) or a != a or b != b:
                return ""
            return nowrap(f"[{a:.{digits}f}, {b:.{digits}f}]")

        rows = [[interval(r[lo], r[hi]) if i == lo else v for i, v in enumerate(r) if i != hi]
                for r in rows]
        cols = [INTERVAL_HEADER if i == lo else c for i, c in enumerate(cols) if i != hi]
    whole = [_whole([r[i] for r in rows]) for i in range(len(cols))]
    numeric = [c == INTERVAL_HEADER or _numeric([r[i] for r in rows])
               for i, c in enumerate(cols)]

    def cell(v: Any, col: str, whole: bool) -> str:
        if isinstance(v, float):
            if v != v:
                return ""
            return f"{v:.0f}" if whole else f"{v:.{digits}f}"
        text = str(v).replace("|", "\\|").replace("\n", " ")
        return site.pr_links(text) if col == "source" else text

    header = "| " + " | ".join(map(str, cols)) + " |"
    rule = "|" + "|".join("---:" if num else "---" for num in numeric) + "|"  # numbers right
    body = ["| " + " | ".join(cell(v, str(c), w) for v, c, w in zip(row, cols, whole)) + " |"
            for row in rows]
    return "\n".join([header, rule, *body])


def figure_panel(*names: str) -> list[Any]:
    """IPython displays of saved figures (the SVG file: the page inlines it), each followed by
    a short caption (its name) and a collapsed provenance block: the commit and the runs from
    its sidecar (figures/<name>.json). A missing figure is an error naming it."""
    from IPython.display import HTML, SVG

    out: list[Any] = []
    for name in names:
        svg, meta = paths.figures_dir() / f"{name}.svg", paths.figures_dir() / f"{name}.json"
        if not svg.is_file() or not meta.is_file():
            raise FileNotFoundError(f"figure {name!r}: {svg} or its sidecar is missing; "
                                    "execute the notebook that draws it first")
        info = json.loads(meta.read_text())
        runs = [r if "/" not in r else Path(r).name for r in info["runs"]]
        items = "".join(f"<li><code>{html.escape(r)}</code></li>" for r in runs)
        out.append(SVG(filename=str(svg)))
        out.append(HTML(
            f"<p class='golf-caption'><em>Figure <code>{html.escape(name)}</code></em></p>"
            "<details class='golf-provenance'><summary>provenance</summary>"
            f"<p>commit <code>{html.escape(str(info['commit'])[:10])}</code>; "
            f"{len(runs)} run{'s' * (len(runs) != 1)} (also in "
            f"<code>figures/{html.escape(name)}.json</code>):</p><ul>{items}</ul></details>"))
    return out


def scale_markdown(specs: Sequence[Any]) -> str:
    """One paragraph on the scale of the runs, from their config and summary files."""
    runs = results.load_runs(specs)
    train = [r.config["train"] for r in runs]
    model = [r.config["model"] for r in runs]
    params = [r.summary["params"]["unique"] for r in runs]
    seconds = sum(r.summary["train_seconds"] for r in runs)
    steps = sorted({r.summary["steps"] for r in runs})
    return (
        f"**{len(runs)} training runs** at the `{specs[0].scale}` scale: width "
        f"{_join(m['model_dim'] for m in model)}, {_join(steps)} steps of "
        f"{_join(t['train_batch_tokens'] for t in train)} tokens "
        f"(sequences of {_join(t['train_seq_len'] for t in train)}), "
        f"{min(params):,}-{max(params):,} unique parameters, "
        f"{seconds / 60:.1f} minutes of training in all; data `{Path(train[0]['data_path']).name}`."
    )


def _join(values: Any) -> str:
    return "/".join(str(v) for v in sorted(set(values)))


def seed_noise(summary: Any) -> float:
    """The widest val_bpb range between seeds of one label: the run-to-run noise these runs
    show at this scale (0 when no label has two seeds)."""
    spread = summary.groupby("label")["val_bpb"].agg(lambda v: v.max() - v.min())
    counts = summary.groupby("label")["val_bpb"].count()
    return float(spread[counts >= 2].max()) if (counts >= 2).any() else 0.0


def _bpb(values: Any) -> str:
    return (f"{values.mean():.4f}" if len(values) == 1 else
            f"{values.mean():.4f} (n={len(values)}, {values.min():.4f}-{values.max():.4f})")


FINDINGS_COLUMNS = ("claim", "source", "published", "ours", "n", "diff", "ci_low", "ci_high",
                    "delta", "verdict", "notebook")
# which notebook shows each paired claim of golf_core.stats.CLAIMS
_CLAIM_NOTEBOOK = {"3x3-vs-2x5": "04_flat_vs_looped", "looped-vs-flat": "04_flat_vs_looped",
                   "looped-vs-flat-gap": "05_quantization_recurrence",
                   "noisy-qat-gap": "05_quantization_recurrence",
                   "delayed-vs-always-on": "03_parallel_lanes"}


def scale_claims(labels: Any) -> list[Any]:
    """The claims of golf_core.stats.CLAIMS whose arms all are among `labels` (a scale runs
    the arms of some claims only: the 2x2 and matched-QAT arms at the study scale)."""
    have = set(labels)
    return [c for c in stats.CLAIMS if {c.arm_a, c.arm_b, *(c.minus or ())} <= have]


def findings(specs: Sequence[Any], *, upstream_log: str = "") -> Any:
    """The published claims against our runs, one row each: FINDINGS_COLUMNS.

    Paired claims (golf_core.stats.CLAIMS whose arms the scale runs, with paired seeds) give
    n seeds, the mean paired difference a - b with its 95% t-interval, the equivalence
    margin delta and the verdict of the stated rule (`stats.RULE`); descriptive rows (error
    growth, skip-weight init, lane routing) leave those columns empty. `published`/`ours`
    say the same in words, with the published source. Works on runs without checkpoints
    (results/study/): their routing.json and quant_error.json hold the final tables."""
    summary = results.summary_table(specs)
    table = stats.findings_table(_with_flops_references(summary, specs),
                                 scale_claims(summary["label"]), details=True)
    rows = [_paired_row(r) for r in table.to_dict("records") if r["n"]]
    labels = set(summary["label"])
    by = {lab: grp for lab, grp in summary.groupby("label")}
    nan = float("nan")
    descriptive = []
    if "pr363-3x3" in labels:
        descriptive.append((_quant_row([s for s in specs if s.label == "pr363-3x3"]),
                            "05_quantization_recurrence"))
    if {"unet", "unet-zeros"} <= labels:
        descriptive.append((_skip_row(experiments.select(specs, group="routing"), by),
                            "02_skip_weights_resid_mix"))
    if "pr1204" in labels:
        descriptive.append((_lanes_row([s for s in specs if s.label == "pr1204"],
                                       upstream_log), "03_parallel_lanes"))
    for row, notebook in descriptive:
        claim, source, published, ours, verdict = row  # descriptive: no paired difference
        rows.append([claim, source, published, ours, nan, nan, nan, nan, nan, verdict,
                     notebook])
    return pd.DataFrame(rows, columns=list(FINDINGS_COLUMNS))


def study_specs() -> list[Any]:
    """The finished runs of the study scale's matrix (results/study/, committed), in matrix
    order; empty when none has finished on this machine or in this checkout."""
    return [s for s in experiments.run_matrix("study") if s.is_complete()]


def study_findings(*, upstream_log: str = "") -> Any:
    """`findings` of the committed study (results/study/): the verdicts the writeup states.
    An empty table (with FINDINGS_COLUMNS) when the study has not run."""
    specs = study_specs()
    if not specs:
        return pd.DataFrame(columns=list(FINDINGS_COLUMNS))
    return findings(specs, upstream_log=upstream_log)


def study_status_markdown(specs: Sequence[Any]) -> str:
    """How much of the study matrix has finished (results/study/), and the command that
    trains the rest."""
    total = experiments.run_matrix("study")
    seeds = sorted({s.seed for s in specs})
    if not specs:
        return ("**The study has not run in this checkout** (no finished run under "
                "`results/study/`). `make study` trains it (resumable), then `make report`.")
    done = "all" if len(specs) == len(total) else f"{len(specs)} of {len(total)}"
    return (f"**{done} study runs finished** (`results/study/`; seeds "
            f"{', '.join(map(str, seeds))}). `make study` trains what is missing and skips "
            "what is there; a verdict uses the seeds both of its arms have.")


def verdict_summary_markdown(table: Any) -> str:
    """The findings table in sentences: per paired claim its verdict, mean difference and
    95% interval, and what the interval's half-width allows; then the descriptive rows."""
    if not len(table):
        return "No finding: the study has not run."
    lines = []
    for r in table.to_dict("records"):
        if r["n"] == r["n"] and r["n"] < 2:
            lines.append(f"- **{r['verdict']}**: {r['claim']}: mean a - b {r['diff']:+.4f} "
                         "from one paired seed: no interval yet.")
        elif r["n"] == r["n"]:  # a paired claim
            hw = (r["ci_high"] - r["ci_low"]) / 2
            lines.append(f"- **{r['verdict']}**: {r['claim']}: mean a - b {r['diff']:+.4f} "
                         f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] over {int(r['n'])} "
                         f"paired seeds (half-width {hw:.4f}, delta {r['delta']:g}).")
        else:
            lines.append(f"- **{r['verdict']}**: {r['claim']}: {r['ours']} (published: "
                         f"{r['published']}).")
    return "\n".join(lines)


def gap_table(specs: Sequence[Any]) -> Any:
    """Per arm: seeds, mean val_bpb and mean post-export gap at int8 / int6 / int5."""
    s = results.summary_table(specs)
    cols = ["val_bpb", "gap_int8", "gap_int6", "gap_int5"]
    out = s.groupby("label", sort=False)[cols].mean()
    out.insert(0, "seeds", s.groupby("label", sort=False)["seed"].nunique())
    return out[out[cols[1:]].notna().any(axis=1)].reset_index()


def growth_table(specs: Sequence[Any]) -> Any:
    """Per arm with a loop core and per precision: mean, min and max over seeds of the
    hidden-state error growth from the first to the last loop-core layer."""
    errors = results.stored_quant_error(specs)
    if errors.empty:
        return pd.DataFrame()
    g = results.error_growth(errors)
    out = g.groupby(["label", "bits"], sort=False)["growth"].agg(["size", "mean", "min", "max"])
    return out.rename(columns={"size": "seeds"}).reset_index()


# the 2x2 of the stack question: label -> (recurrence, extras)
STACK_CELLS = {"pr1204-always-on": ("on", "on"), "pr1204-norecur": ("off", "on"),
               "pr1204-bare": ("on", "off"), "pr1204-bare-norecur": ("off", "off")}


def stack_table(specs: Sequence[Any]) -> Any:
    """The 2x2 as a table: mean val_bpb (and seeds, steps) per cell, extras by row and
    mini recurrence by column."""
    s = results.summary_table([x for x in specs if x.label in STACK_CELLS])
    if s.empty:
        return s
    s = s.assign(recurrence=s["label"].map(lambda v: STACK_CELLS[v][0]),
                 extras=s["label"].map(lambda v: STACK_CELLS[v][1]))
    return s.pivot_table(index="extras", columns="recurrence",
                         values=["val_bpb", "steps", "seed"],
                         aggfunc={"val_bpb": "mean", "steps": "mean", "seed": "nunique"})


def paired_table(specs: Sequence[Any]) -> Any:
    """Every seed's paired difference of every claim the runs can decide: claim, metric,
    budget, seed, a, b, diff (a - b; for an interaction the two contrasts and theirs), with
    the claim's n, mean, ci_low, ci_high, delta and verdict (what the forest plot draws)."""
    summary = results.summary_table(specs)
    table = _with_flops_references(summary, specs)
    frames = []
    for claim in scale_claims(summary["label"]):
        pairs = stats.paired_differences(table, claim)
        if pairs.empty:
            continue
        res = stats.decide(pairs, claim)
        frames.append(pairs[["seed", "a", "b", "diff"]].assign(
            claim=claim.name, metric=claim.metric, budget=claim.budget, n=res["n"],
            mean=res["diff"], ci_low=res["ci_low"], ci_high=res["ci_high"],
            delta=claim.delta, verdict=res["verdict"]))
    cols = ["claim", "metric", "budget", "seed", "a", "b", "diff", "n", "mean", "ci_low",
            "ci_high", "delta", "verdict"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def spread_by_eval(specs: Sequence[Any]) -> Any:
    """The pilot question, from the runs' own validation curves: per val_bpb claim and per
    evaluation (k-th of each run: the same fraction of its budget, equal-FLOPs arms included),
    the paired differences' n, mean, sd and 95% half-width. Does the spread shrink with
    training, and by how much?"""
    curves = results.curves(specs).query("kind == 'val' and step > 0").sort_values("step")
    curves = curves.assign(k=curves.groupby("name").cumcount() + 1)
    budget = {s.name: s.budget for s in specs}
    rows = []
    for k, at in curves.groupby("k"):
        steps = at.groupby("label")["step"].first()
        tab = _with_flops_references(at.assign(budget=at["name"].map(budget))[
            ["label", "seed", "budget", "val_bpb", "step"]], specs)
        for claim in scale_claims(tab["label"]):
            if claim.metric != "val_bpb":
                continue
            res = stats.decide(stats.paired_differences(tab, claim), claim)
            if res["n"]:
                rows.append({"claim": claim.name, "eval": int(k),
                             "step_a": int(steps.get(claim.arm_a, -1)), "n": res["n"],
                             "diff": res["diff"], "sd": res["sd"],
                             "half_width": res["half_width"], "verdict": res["verdict"]})
    return pd.DataFrame(rows)


def _with_flops_references(summary: Any, specs: Sequence[Any]) -> Any:
    """The summary plus, for each equal-FLOPs comparison, the reference arm's runs again
    under budget "flops" (its own steps are the FLOPs budget the others were matched to)."""
    refs = {s.match for s in specs if s.budget == "flops"}
    extra = summary[(summary["label"].isin(refs)) & (summary["budget"] == "steps")]
    return pd.concat([summary, extra.assign(budget="flops")], ignore_index=True)


def _paired_row(r: Mapping[str, Any]) -> list[Any]:
    arm_a, arm_b = r["arm_a"], r["arm_b"]
    published = r["published_text"] or "direction only"
    if r["published_a"] == r["published_a"]:  # not NaN
        published = f"{arm_a} {r['published_a']:.4f} vs {arm_b} {r['published_b']:.4f}"
    steps = (f"({r['budget']}: {r.get('steps_a', float('nan')):.0f} vs "
             f"{r.get('steps_b', float('nan')):.0f} steps)")
    if r.get("minus"):  # an interaction: the means are its two contrasts
        c, d = r["minus"]
        ours = (f"({arm_a} - {arm_b}) {r['mean_a']:+.4f} vs ({c} - {d}) {r['mean_b']:+.4f} "
                f"{r['metric']}")
    else:
        ours = f"{arm_a} {r['mean_a']:.4f} vs {arm_b} {r['mean_b']:.4f} {r['metric']} {steps}"
    claim = f"{r['question']} [{r['claim']}]"
    notebook = _CLAIM_NOTEBOOK.get(r["claim"].split("/")[0], "99_report")
    return [claim, r["published_source"], published, ours, r["n"], r["diff"], r["ci_low"],
            r["ci_high"], r["delta"], r["verdict"], notebook]


def _quant_row(specs: Sequence[Any]) -> list[str]:
    """Error growth through the loop core: from the runs' quant_error.json (every seed, each
    precision) where they wrote one, else recomputed at int6 from the first run's weights."""
    errors = results.stored_quant_error(specs)
    if errors.empty:
        errors = reanalysis.recurrence_error_table(specs[:1], bits=6).assign(seed=specs[0].seed)
    growth = results.error_growth(errors)
    per_bits = growth.groupby("bits")["growth"].agg(["mean", "min", "max", "size"])
    parts = [f"int{b}: x{r['mean']:.2f} (seeds {r['min']:.2f}-{r['max']:.2f}, "
             f"n={int(r['size'])})"
             for b, r in per_bits.sort_index(ascending=False).iterrows()]
    grows = bool((per_bits["min"] > 1).all())
    return ["quantization error grows through the repeats", "PR #363",
            "~900x over 3 cycles (int6)", "first -> last loop-core layer, hidden-state error "
            "of the quantized copy (every matrix quantized): " + "; ".join(parts),
            "reproduced (growth)" if grows else "not reproduced"]


def _skip_row(specs: Sequence[Any], by: Mapping[str, Any]) -> list[str]:
    hist = reanalysis.routing_history([s for s in specs if s.label in ("unet", "unet-zeros")])
    final = reanalysis.final_rows(hist["skip_weights"]).groupby("label")["mean"].mean()
    ones, zeros = by["unet"]["val_bpb"], by["unet-zeros"]["val_bpb"]
    return ["skip weights start at ones (code) or zeros (one article)", "upstream baseline",
            "explainers disagree; the code uses ones",
            f"final mean skip weight {final['unet']:.3f} (ones) vs {final['unet-zeros']:.3f} "
            f"(zeros); bpb {_bpb(ones)} vs {_bpb(zeros)}", "descriptive"]


def _lanes_row(specs: Sequence[Any], upstream_log: str) -> list[str]:
    lanes = reanalysis.lane_table(specs, upstream_log)
    ours = (lanes[lanes["source"].str.startswith("ours")]  # the seeds' mean per layer
            .groupby("layer", as_index=False).mean(numeric_only=True).sort_values("layer"))
    theirs = lanes[~lanes["source"].str.startswith("ours")].sort_values("layer")
    fmt = ", ".join
    published = (f"mlp_to_attn {fmt(f'{v:.3f}' for v in theirs['mlp_to_attn'])} "
                 f"(layers {fmt(map(str, theirs['layer']))})" if len(theirs) else
                 "mlp_to_attn small, shrinking with depth (log not given)")
    m2a = ours["mlp_to_attn"].to_numpy()
    others = ours[["attn_to_attn", "attn_to_mlp", "mlp_to_mlp"]].to_numpy().mean()
    shrinks, small = m2a[-1] < m2a[0], m2a.mean() < others
    verdict = ("reproduced" if shrinks and small else
               "partly: " + ("shrinks with depth" if shrinks else "smallest entry")
               if shrinks or small else "not reproduced")
    return ["MLP->attention lane routing is small and shrinks with depth", "PR #1204",
            published, f"mlp_to_attn {fmt(f'{v:.3f}' for v in m2a)} (layers "
            f"{fmt(map(str, ours['layer']))}); mean of the other entries {others:.3f}", verdict]
