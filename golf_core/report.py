"""`make report`: execute every notebook with papermill, then render the executed copies.

    python -m golf_core.report [--scale cpu|ci|gpu] [--data-path DIR --tokenizer-path FILE]
                               [--nproc N] [--only NAME ...]

(`REPORT_SCALE=gpu make report` also picks the scale.) Steps:
  1. every notebook of `NOTEBOOKS`, in order, runs under papermill with the parameters of the
     scale (`notebook_parameters`); the first prepares the data (golf_core.data.prepare), the
     second trains the run matrix (golf_core.experiments / golf_core.launch), the others read
     the runs and write figures to `figures/`. Executed copies go to
     `runs/notebooks/<scale>/`. Parameters are checked against each notebook's declared ones
     before a kernel starts (papermill itself only warns on an unknown name).
  2. the executed copies (not re-executed: each number is the recorded one; STYLE.md item 10)
     are rendered with nbconvert's HTMLExporter, images embedded as base64, into `report/`:
     `report.html` (the writeup, code hidden), one page per notebook and `index.html`.
A failing notebook stops the report with a non-zero exit naming the notebook and the error
(its executed copy, with papermill's error banner, is kept). Wall time per notebook is printed.
"""

from __future__ import annotations

import argparse
import html
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from golf_core import paths
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
    "99_report": "Report",
}
UPSTREAM_LOG = "parallel_resid_mini_recur_seed1337.log"  # PR #1204's seed-1337 record log


class ReportError(RuntimeError):
    """A notebook failed or was given bad parameters; the message names the notebook."""


def default_upstream_log() -> str:
    """PR #1204's seed-1337 log from the shared fixtures (GOLF_FIXTURES or ../shared), or ""."""
    root = Path(os.environ.get("GOLF_FIXTURES", REPO.parent / "shared" / "fixtures"))
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
    """An executed notebook -> one self-contained HTML page (images inline as base64)."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(embed_images=True, exclude_input=hide_code,
                            exclude_input_prompt=hide_code, exclude_output_prompt=hide_code)
    body, _ = exporter.from_notebook_node(nbformat.read(executed, as_version=4))
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, out)
    return out


def write_index(pages: Mapping[str, Path], times: Mapping[str, float], scale: str,
                out: Path) -> Path:
    """index.html: the writeup first, then a link per notebook page with its wall time."""
    items = "\n".join(
        f'<li><a href="{html.escape(p.name)}">{html.escape(TITLES.get(n, n))}</a> '
        f"<small>({html.escape(n)}.ipynb, {times.get(n, 0.0):.0f} s)</small></li>"
        for n, p in pages.items()
    )
    body = (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>golf-recurrence report"
            f"</title></head><body>\n<h1>golf-recurrence: depth recurrence in parameter-golf "
            f"GPTs</h1>\n<p>Scale: <b>{html.escape(scale)}</b>. Each page is rendered from the "
            f"papermill-executed notebook.</p>\n<ul>\n{items}\n</ul>\n</body></html>\n")
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, out)
    return out


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
    report_dir = paths.report_dir()
    report_dir.mkdir(parents=True, exist_ok=True)
    pages = {}
    for name in sorted(executed, key=lambda n: (n != WRITEUP, n)):
        page = "report.html" if name == WRITEUP else f"{name}.html"
        pages[name] = render_html(executed[name], report_dir / page, hide_code=name == WRITEUP)
    index = write_index(pages, seconds, scale, report_dir / "index.html")
    print(f"[report] wrote {index} ({sum(seconds.values()):.0f} s of notebooks)", flush=True)
    for name, s in seconds.items():
        print(f"[report]   {name:<28} {s:7.1f} s", flush=True)
    return {"executed": executed, "pages": pages, "index": index, "seconds": seconds}


# ----------------------------------------------------------------------------- writeup
# What the writeup notebook calls: tables and sentences built from the runs' files.


def markdown_table(df: Any, digits: int = 4) -> str:
    """A DataFrame as a Markdown pipe table (floats to `digits` significant places)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if v != v else f"{v:.{digits}g}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def figure_panel(*names: str) -> list[Any]:
    """IPython displays of saved figures (PNG embedded) each with a caption from its sidecar
    (runs and commit); a missing figure is an error naming it."""
    import json

    from IPython.display import Image, Markdown

    out: list[Any] = []
    for name in names:
        png, meta = paths.figures_dir() / f"{name}.png", paths.figures_dir() / f"{name}.json"
        if not png.is_file() or not meta.is_file():
            raise FileNotFoundError(f"figure {name!r}: {png} or its sidecar is missing; "
                                    "execute the notebook that draws it first")
        info = json.loads(meta.read_text())
        runs = ", ".join(f"`{r if '/' not in r else Path(r).name}`" for r in info["runs"])
        out.append(Image(filename=str(png)))
        out.append(Markdown(f"*Figure `{name}`* (commit `{str(info['commit'])[:10]}`; "
                            f"runs: {runs})"))
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


def _verdict(a: Any, b: Any, noise: float = 0.0) -> str:
    """Claim: mean(a) < mean(b) (lower bpb is better). Seeds' ranges decide how sure; with a
    single seed on either side the difference is held against `noise` (the seed spread of
    the seeded labels, `seed_noise`), and the verdict says so."""
    if min(len(a), len(b)) < 2:
        diff = b.mean() - a.mean()
        if abs(diff) <= noise:
            return (f"no difference beyond seed noise ({diff:+.5f} bpb; 1 seed, seeds of "
                    f"other variants differ by up to {noise:.4f})")
        same = a.mean() < b.mean()
        return ("same direction" if same else "opposite direction") + \
            f" ({diff:+.4f} bpb; 1 seed, beyond the {noise:.4f} seed spread of other variants)"
    if a.mean() < b.mean():
        return "reproduced" if a.max() < b.min() else "same direction, within seed spread"
    return "not reproduced" if a.min() > b.max() else "opposite direction, within seed spread"


def _bpb(values: Any) -> str:
    return (f"{values.mean():.4f}" if len(values) == 1 else
            f"{values.mean():.4f} (n={len(values)}, {values.min():.4f}-{values.max():.4f})")


def findings(specs: Sequence[Any], *, upstream_log: str = "") -> Any:
    """The published claims (DESIGN.md section 3) against our runs: one row each with the
    claim, its source, the published numbers, ours (read from the runs) and a verdict."""
    import pandas as pd

    from golf_core import experiments as ex

    summary = ex.summary_table(specs)
    by = {lab: grp for lab, grp in summary.groupby("label")}
    rows = [_looped_row(by), _flat_row(by), _quant_rows(ex.select(specs, group="quant"), by),
            _qat_row(by), _skip_row(ex.select(specs, group="routing"), by),
            _lanes_row(ex.select(specs, group="lanes"), upstream_log),
            _delay_row(by, seed_noise(summary))]
    return pd.DataFrame(rows, columns=["claim", "source", "published", "ours", "verdict"])


def _looped_row(by: Mapping[str, Any]) -> list[str]:
    a, b = by["looped-3x3"]["val_bpb"], by["looped-2x5"]["val_bpb"]
    return ["looped 3x3 beats 2x5", "PR #363", "3x3 better",
            f"3x3 {_bpb(a)} vs 2x5 {_bpb(b)} bpb", _verdict(a, b)]


def _flat_row(by: Mapping[str, Any]) -> list[str]:
    flat, loop = by["flat"], by["looped-3x3"]
    gap = loop["val_bpb"].mean() - flat["val_bpb"].mean()
    return ["looped trails flat at equal compute", "PR #363", "1.1894 vs 1.1648 (gap 0.025)",
            f"3x3 {_bpb(loop['val_bpb'])} vs flat {_bpb(flat['val_bpb'])} at "
            f"{int(flat['steps'].iloc[0])} steps (gap {gap:+.4f}; "
            f"{loop['ms_per_step'].mean():.0f} vs {flat['ms_per_step'].mean():.0f} ms/step)",
            _verdict(flat["val_bpb"], loop["val_bpb"])]


def _quant_rows(specs: Sequence[Any], by: Mapping[str, Any]) -> list[str]:
    from golf_core import experiments as ex

    base = [s for s in specs if s.label == "looped-3x3"][:1]
    err = ex.recurrence_error_table(base, bits=6)
    core = err[err["shared"]].sort_values("virtual_layer")
    first, last = core["rel_error"].iloc[0], core["rel_error"].iloc[-1]
    ratio = last / first if first > 0 else float("nan")
    return ["int6 quantization error grows through the repeats", "PR #363",
            "~900x over 3 cycles", f"x{ratio:.2f} from the first to the last layer of the "
            f"loop core ({first:.2e} -> {last:.2e}; every matrix int6)",
            "reproduced (growth)" if ratio > 1 else "not reproduced"]


def _qat_row(by: Mapping[str, Any]) -> list[str]:
    off, on = by["looped-3x3"], by["looped-3x3-noisy-qat"]
    seed = on["seed"].iloc[0]
    off_gap = off[off["seed"] == seed]["bpb_gap"].iloc[0]
    on_gap = on["bpb_gap"].iloc[0]
    verdict = ("same direction" if on_gap < off_gap else "opposite direction") + \
        " (1 seed, no spread)"
    return ["noisy QAT on the loop core cuts the quantization gap", "PR #363",
            "gap 0.37 -> 0.002 bpb", f"gap {off_gap:+.4f} -> {on_gap:+.4f} bpb (seed {seed})",
            verdict]


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

    lanes = ex.lane_table([s for s in specs if s.label == "mini+parallel"], upstream_log)
    ours = lanes[lanes["source"].str.startswith("ours")].sort_values("layer")
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


def _delay_row(by: Mapping[str, Any], noise: float) -> list[str]:
    a, b = by["mini+parallel"]["val_bpb"], by["mini+parallel-always-on"]["val_bpb"]
    return ["delayed recurrence beats always-on", "PR #1204", "1.1153 vs 1.1163",
            f"delayed {_bpb(a)} vs always-on {_bpb(b)} (1 seed)", _verdict(a, b, noise)]


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
