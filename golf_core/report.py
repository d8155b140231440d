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
from golf_core.experiments import scale_settings
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
