"""`make report`: execute every notebook with papermill, then render the executed copies.

    python -m golf_core.report [--scale cpu|ci|gpu] [--data-path DIR --tokenizer-path FILE]
                               [--nproc N] [--only NAME ...]

(`REPORT_SCALE=gpu make report` also picks the scale.) Steps:
  1. every notebook of `NOTEBOOKS`, in order, runs under papermill with the parameters of the
     scale (`notebook_parameters`); the first prepares the data (golf_core.corpus.prepare), the
     second trains the run matrix (golf_core.experiments / golf_core.launch), the others read
     the runs and write figures to `figures/`. Executed copies go to
     `runs/notebooks/<scale>/`. Parameters are checked against each notebook's declared ones
     before a kernel starts (papermill itself only warns on an unknown name).
  2. the executed copies (not re-executed: each number is the recorded one)
     are rendered into `report/` by golf_core.site: `report.html` (the writeup, code hidden),
     one page per notebook (code shown) and `index.html` (question, scale, findings, wall
     times, the command), all sharing `style.css`, figures inline as SVG, nothing from a CDN.
     Kernels draw figures as SVG (`KERNEL_ARGUMENTS`).
A failing notebook stops the report with a non-zero exit naming the notebook and the error
(its executed copy, with papermill's error banner, is kept). Wall time per notebook is printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from golf_core import paths, site
from golf_core.nbparams import ParameterError, check_notebook_parameters

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = (
    "00_prepare_data",
    "01_train",
    "02_skip_weights_resid_mix",
    "03_parallel_lanes",
    "04_flat_vs_looped",
    "05_quantization_recurrence",
    "06_test_time_depth",
    "07_explore_routing",
    "08_study",
    "09_regime",
    "99_report",
)
WRITEUP = "99_report"
TITLES = {
    "00_prepare_data": "Data: corpus, tokenizer, shards",
    "01_train": "Training the run matrix",
    "02_skip_weights_resid_mix": "U-Net skip weights and resid_mix",
    "03_parallel_lanes": "Parallel lane routing (PR #1204)",
    "04_flat_vs_looped": "Flat vs looped (PR #363)",
    "05_quantization_recurrence": "Quantization error through recurrence",
    "06_test_time_depth": "Test-time depth (PR #54)",
    "07_explore_routing": "Routing explorer (interactive in JupyterLab)",
    "08_study": "The study: findings that decide",
    "09_regime": "The regime map: where recurrence starts to pay",
    "99_report": "Report",
}
UPSTREAM_LOG = "parallel_resid_mini_recur_seed1337.log"  # PR #1204's seed-1337 record log
# matplotlib's inline backend in the kernels draws SVG (pasted inline into the pages: crisp at
# any zoom); the files in figures/ stay PNG + SVG (golf_core.plots.save_figure)
KERNEL_ARGUMENTS = ("--InlineBackend.figure_formats=svg",)


class ReportError(RuntimeError):
    """A notebook failed or was given bad parameters; the message names the notebook."""


def default_upstream_log() -> str:
    """PR #1204's seed-1337 log from the golden vectors (GOLF_FIXTURES, else tests/golden/ of
    this checkout), or ""."""
    root = Path(os.environ.get("GOLF_FIXTURES", REPO / "tests" / "golden"))
    path = root / "upstream_logs" / UPSTREAM_LOG
    return str(path) if path.is_file() else ""


def notebook_parameters(scale: str, *, data_path: str = "", tokenizer_path: str = "",
                        nproc: int = 1, upstream_log: str | None = None
                        ) -> dict[str, dict[str, Any]]:
    """The papermill parameters of every notebook for one scale."""
    common = {"scale": scale, "data_path": data_path, "tokenizer_path": tokenizer_path}
    log = default_upstream_log() if upstream_log is None else upstream_log
    return {
        "00_prepare_data": {"scale": scale, "data_path": data_path},
        "01_train": {**common, "nproc": nproc},
        "02_skip_weights_resid_mix": dict(common),
        "03_parallel_lanes": {**common, "upstream_log": log},
        "04_flat_vs_looped": dict(common),
        "05_quantization_recurrence": dict(common),
        "06_test_time_depth": dict(common),
        "07_explore_routing": dict(common),
        "08_study": {"upstream_log": log},
        "09_regime": {},
        "99_report": {**common, "upstream_log": log},
    }


@contextmanager
def _kernel_env() -> Iterator[None]:
    """Kernels inherit our environment: make golf_core importable in them for the duration."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), old) if p)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def execute_notebook(name: str, parameters: Mapping[str, Any], out_dir: Path, *,
                     check: bool = True, stream: bool = True) -> Path:
    """Run notebooks/<name>.ipynb under papermill into `out_dir/<name>.ipynb`.

    `check`: refuse parameters the notebook does not declare before starting a kernel (the
    notebook's own check cell refuses them too). Raises ReportError naming the notebook."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    source = NOTEBOOK_DIR / f"{name}.ipynb"
    if not source.is_file():
        raise ReportError(f"notebook {name}: {source} not found")
    if check:
        try:
            check_notebook_parameters(source, parameters)
        except ParameterError as e:
            raise ReportError(f"notebook {name}: {e}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / f"{name}.ipynb"
    try:
        with _kernel_env():
            papermill.execute_notebook(
                str(source), str(output), parameters=dict(parameters), kernel_name="python3",
                cwd=str(NOTEBOOK_DIR), progress_bar=False,
                extra_arguments=list(KERNEL_ARGUMENTS),
                stdout_file=sys.stdout if stream else None,
                stderr_file=sys.stderr if stream else None,
            )
    except PapermillExecutionError as e:
        raise ReportError(
            f"notebook {name} failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
            f"executed copy with the error: {output}"
        ) from None
    return output


def render_html(executed: Path, out: Path, *, hide_code: bool = False) -> Path:
    """An executed notebook -> one HTML page (golf_core.site.render_html, titled from TITLES)."""
    name = Path(executed).stem
    return site.render_html(executed, out, title=TITLES.get(name, name),
                            scale=Path(executed).parent.name, hide_code=hide_code)


def reproduce_command(scale: str, *, data_path: str = "", tokenizer_path: str = "",
                      nproc: int = 1) -> str:
    """The `make report` line that reruns this report."""
    args = [f"--data-path {data_path}"] * bool(data_path) + \
        [f"--tokenizer-path {tokenizer_path}"] * bool(tokenizer_path) + \
        [f"--nproc {nproc}"] * (nproc != 1)
    extra = f' REPORT_ARGS="{" ".join(args)}"' if args else ""
    return f"make report REPORT_SCALE={scale}{extra}"


def render_site(executed_dir: Path, report_dir: Path, scale: str, *,
                command: str = "") -> dict[str, Path]:
    """Render every executed copy in `executed_dir` that ran to the end (this invocation's
    and earlier ones': a `--only` run keeps the other pages), the stylesheet and the index.
    Returns {notebook: page}, the writeup first."""
    report_dir.mkdir(parents=True, exist_ok=True)
    site.copy_stylesheet(report_dir)
    pages = {}
    for name in sorted(NOTEBOOKS, key=lambda n: (n != WRITEUP, NOTEBOOKS.index(n))):
        executed = executed_dir / f"{name}.ipynb"
        if not executed.is_file() or not site.completed(executed):
            continue
        page = "report.html" if name == WRITEUP else f"{name}.html"
        pages[name] = render_html(executed, report_dir / page, hide_code=name == WRITEUP)
    site.write_index(pages, site.load_times(executed_dir), scale, report_dir / "index.html",
                     titles=TITLES, writeup=executed_dir / f"{WRITEUP}.ipynb",
                     command=command or reproduce_command(scale))
    return pages


def run_report(scale: str = "cpu", *, data_path: str = "", tokenizer_path: str = "",
               nproc: int = 1, only: Sequence[str] | None = None,
               upstream_log: str | None = None, stream: bool = True) -> dict[str, Any]:
    """Execute the notebooks (all, or `only`), then render the HTML report.

    Returns {"executed": {name: path}, "pages": {name: html path}, "index": path,
    "seconds": {name: wall seconds}}."""
    from golf_core.experiments import scale_settings

    scale_settings(scale)  # unknown scale: ValueError before anything runs
    params = notebook_parameters(scale, data_path=data_path, tokenizer_path=tokenizer_path,
                                 nproc=nproc, upstream_log=upstream_log)
    names = list(only) if only else list(NOTEBOOKS)
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ReportError(f"unknown notebook(s) {unknown}; known: {', '.join(NOTEBOOKS)}")
    executed_dir = paths.runs_dir() / "notebooks" / scale
    executed, seconds = {}, {}
    for name in names:
        print(f"[report] {name}: running ({scale} scale)", flush=True)
        t0 = time.perf_counter()
        executed[name] = execute_notebook(name, params[name], executed_dir, stream=stream)
        seconds[name] = time.perf_counter() - t0
        print(f"[report] {name}: done in {seconds[name]:.1f} s", flush=True)
    site.save_times(executed_dir, seconds)
    command = reproduce_command(scale, data_path=data_path, tokenizer_path=tokenizer_path,
                                nproc=nproc)
    pages = render_site(executed_dir, paths.report_dir(), scale, command=command)
    index = paths.report_dir() / "index.html"
    print(f"[report] wrote {index} ({sum(seconds.values()):.0f} s of notebooks)", flush=True)
    for name, s in seconds.items():
        print(f"[report]   {name:<28} {s:7.1f} s", flush=True)
    return {"executed": executed, "pages": pages, "index": index, "seconds": seconds}


# ----------------------------------------------------------------------------- writeup
# What the writeup notebook calls: tables and sentences built from the runs' files.


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
    import numbers

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
    import html
    import json

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
    from golf_core.experiments import load_runs

    runs = load_runs(specs)
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
    from golf_core import stats

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
    import pandas as pd

    from golf_core import experiments as ex
    from golf_core import stats

    summary = ex.summary_table(specs)
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
        descriptive.append((_skip_row(ex.select(specs, group="routing"), by),
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
    from golf_core import experiments as ex

    return [s for s in ex.run_matrix("study") if s.is_complete()]


def study_findings(*, upstream_log: str = "") -> Any:
    """`findings` of the committed study (results/study/): the verdicts the writeup states.
    An empty table (with FINDINGS_COLUMNS) when the study has not run."""
    import pandas as pd

    specs = study_specs()
    if not specs:
        return pd.DataFrame(columns=list(FINDINGS_COLUMNS))
    return findings(specs, upstream_log=upstream_log)


def study_status_markdown(specs: Sequence[Any]) -> str:
    """How much of the study matrix has finished (results/study/), and the command that
    trains the rest."""
    from golf_core import experiments as ex

    total = ex.run_matrix("study")
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
    from golf_core import experiments as ex

    s = ex.summary_table(specs)
    cols = ["val_bpb", "gap_int8", "gap_int6", "gap_int5"]
    out = s.groupby("label", sort=False)[cols].mean()
    out.insert(0, "seeds", s.groupby("label", sort=False)["seed"].nunique())
    return out[out[cols[1:]].notna().any(axis=1)].reset_index()


def growth_table(specs: Sequence[Any]) -> Any:
    """Per arm with a loop core and per precision: mean, min and max over seeds of the
    hidden-state error growth from the first to the last loop-core layer."""
    from golf_core import experiments as ex

    errors = ex.stored_quant_error(specs)
    if errors.empty:
        import pandas as pd

        return pd.DataFrame()
    g = ex.error_growth(errors)
    out = g.groupby(["label", "bits"], sort=False)["growth"].agg(["size", "mean", "min", "max"])
    return out.rename(columns={"size": "seeds"}).reset_index()


# the 2x2 of the stack question: label -> (recurrence, extras)
STACK_CELLS = {"pr1204-always-on": ("on", "on"), "pr1204-norecur": ("off", "on"),
               "pr1204-bare": ("on", "off"), "pr1204-bare-norecur": ("off", "off")}


def stack_table(specs: Sequence[Any]) -> Any:
    """The 2x2 as a table: mean val_bpb (and seeds, steps) per cell, extras by row and
    mini recurrence by column."""
    from golf_core import experiments as ex

    s = ex.summary_table([x for x in specs if x.label in STACK_CELLS])
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
    import pandas as pd

    from golf_core import experiments as ex
    from golf_core import stats

    summary = ex.summary_table(specs)
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
    import pandas as pd

    from golf_core import experiments as ex
    from golf_core import stats

    curves = ex.curves(specs).query("kind == 'val' and step > 0").sort_values("step")
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
    import pandas as pd

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
    from golf_core import experiments as ex

    errors = ex.stored_quant_error(specs)
    if errors.empty:
        errors = ex.recurrence_error_table(specs[:1], bits=6).assign(seed=specs[0].seed)
    growth = ex.error_growth(errors)
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
    from golf_core import experiments as ex

    hist = ex.routing_history([s for s in specs if s.label in ("unet", "unet-zeros")])
    final = ex.final_rows(hist["skip_weights"]).groupby("label")["mean"].mean()
    ones, zeros = by["unet"]["val_bpb"], by["unet-zeros"]["val_bpb"]
    return ["skip weights start at ones (code) or zeros (one article)", "upstream baseline",
            "explainers disagree; the code uses ones",
            f"final mean skip weight {final['unet']:.3f} (ones) vs {final['unet-zeros']:.3f} "
            f"(zeros); bpb {_bpb(ones)} vs {_bpb(zeros)}", "descriptive"]


def _lanes_row(specs: Sequence[Any], upstream_log: str) -> list[str]:
    from golf_core import experiments as ex

    lanes = ex.lane_table(specs, upstream_log)
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m golf_core.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", default=os.environ.get("REPORT_SCALE", "cpu"),
                   help="cpu (default; this machine), ci (tiny, seconds) or gpu (upstream "
                   "sizes; needs --data-path/--tokenizer-path). Env: REPORT_SCALE")
    p.add_argument("--data-path", default="", help="directory of fineweb_{train,val}_*.bin "
                   "shards (default: the corpus the scale prepares)")
    p.add_argument("--tokenizer-path", default="", help="SentencePiece model of the shards "
                   "(default: <data-path>/tokenizer.model)")
    p.add_argument("--nproc", type=int, default=1, help="processes per training run (torchrun)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these notebooks")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        run_report(args.scale, data_path=args.data_path, tokenizer_path=args.tokenizer_path,
                   nproc=args.nproc, only=args.only)
    except (ReportError, ValueError) as e:
        print(f"make report failed: {e}", file=sys.stderr, flush=True)
        return 1
    print(f"[report] total wall time {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
