"""Launch the training runs of a run matrix: one subprocess per run, progress streamed.

What the train notebook calls. Each `RunSpec` (golf_core.experiments) becomes
`python -m golf_core.train ...` (one process) or
`python -m torch.distributed.run --standalone --nproc_per_node=N -m golf_core.train ...`
(torchrun, N processes: gloo on CPU, NCCL on GPU, chosen by train.py). The run's output lines
are passed to `echo` as they arrive (in a notebook: printed into the cell while it runs). A run
whose directory already holds `summary.json` is skipped; a run directory without one (a killed
run) is continued with `--resume`. A failed run raises `LaunchError` with its last lines.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from golf_core import experiments, regime
from golf_core.distributed import usable_cores
from golf_core.experiments import RunSpec

REPO = Path(__file__).resolve().parent.parent
TAIL_LINES = 40  # lines of a failed run's output quoted in the error


class LaunchError(RuntimeError):
    """A training run exited non-zero; the message names it and quotes its last lines."""


def child_env() -> dict[str, str]:
    """The environment of a training subprocess: ours, unbuffered, golf_core importable."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def train_command(spec: RunSpec, *, nproc: int = 1, resume: bool = False, threads: int = 0,
                  python: str = sys.executable) -> list[str]:
    """The command line that trains `spec` with `nproc` processes (`threads` > 0: torch
    threads per process; 0 leaves train.py's cores / processes)."""
    if nproc < 1:
        raise ValueError(f"nproc={nproc}: must be >= 1")
    if nproc == 1:
        head = [python, "-m", "golf_core.train"]
    else:
        head = [python, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={nproc}", "-m", "golf_core.train"]
    extra = ["--set", f"threads={threads}"] if threads > 0 else []
    return head + spec.train_args() + extra + (["--resume"] if resume else [])


def run_one(spec: RunSpec, *, nproc: int = 1, threads: int = 0,
            echo: Callable[[str], None] = print) -> float:
    """Train one run, streaming its output to `echo`; returns its wall seconds."""
    resume = spec.run_dir.is_dir() and any(spec.run_dir.iterdir())
    cmd = train_command(spec, nproc=nproc, resume=resume, threads=threads)
    echo(f"=== {spec.name}: {'resuming' if resume else 'starting'} ({nproc} process(es))")
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    t0 = time.perf_counter()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1, env=child_env(), cwd=REPO) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                echo(line)
        except BaseException:  # e.g. the notebook's kernel interrupted: stop the run too
            proc.terminate()  # torchrun forwards SIGTERM to its workers
            raise
        rc = proc.wait()
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise LaunchError(
            f"training run {spec.name} failed (exit code {rc}) after {seconds:.0f} s; "
            f"command: {' '.join(cmd)}\nlast lines:\n" + "\n".join(tail)
        )
    if not spec.is_complete():
        raise LaunchError(f"training run {spec.name} exited 0 but wrote no "
                          f"{spec.run_dir / 'summary.json'}")
    return seconds


def launch(specs: Sequence[RunSpec], *, nproc: int = 1, jobs: int = 1,
           echo: Callable[[str], None] = print) -> pd.DataFrame:
    """Train every spec not yet complete, in order, `jobs` at a time (each run then gets
    cores / (jobs * nproc) threads; its lines are prefixed with its name); one row per spec:
    name, label, seed, status (`trained` / `skipped: complete`) and wall seconds of this
    launch. The first failure stops new runs, lets the running ones finish, and is raised."""
    if jobs < 1:
        raise ValueError(f"jobs={jobs}: must be >= 1")
    rows: dict[int, dict[str, object]] = {}
    todo = []
    for i, spec in enumerate(specs):
        if spec.is_complete():
            echo(f"=== [{i + 1}/{len(specs)}] {spec.name}: complete, skipped")
            rows[i] = {**_row(spec), "status": "skipped: complete", "seconds": 0.0}
        else:
            todo.append(i)
    threads = max(1, usable_cores() // (jobs * nproc)) if jobs > 1 else 0
    lock = threading.Lock()
    failures: list[BaseException] = []

    def one(i: int) -> None:
        spec = specs[i]
        if failures:
            return
        prefix = f"[{spec.label} s{spec.seed}] " if jobs > 1 else ""

        def say(line: str) -> None:
            with lock:
                echo(prefix + line)

        say(f"=== [{i + 1}/{len(specs)}]")
        try:
            seconds = run_one(spec, nproc=nproc, threads=threads, echo=say)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, first one wins
            failures.append(exc)
            return
        rows[i] = {**_row(spec), "status": "trained", "seconds": round(seconds, 1)}

    if jobs == 1:
        for i in todo:
            one(i)
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(one, todo))
    if failures:
        raise failures[0]
    return pd.DataFrame([rows[i] for i in sorted(rows)])


def _row(spec: RunSpec) -> dict[str, object]:
    return {"name": spec.name, "label": spec.label, "seed": spec.seed}


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m golf_core.launch --scale study`: prepare the scale's data and train its
    whole matrix (`make study`; `--scale regime`: the regime ladder, `make regime`);
    resumable: finished runs are skipped, a killed one resumes."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m golf_core.launch", description=main.__doc__)
    p.add_argument("--scale", default="study", help="a golf_core.experiments scale")
    p.add_argument("--jobs", type=int, default=0, help="runs at a time (0: the scale's)")
    p.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun > 1)")
    p.add_argument("--groups", default="all", help="comma-separated run groups, or all")
    args = p.parse_args(argv)
    try:
        cfg = experiments.scale_settings(args.scale)
        if cfg.get("ladder"):  # `make regime`: the ladder lays out its own runs

            specs = regime.ladder()
        else:
            specs = experiments.run_matrix(args.scale, groups=args.groups)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    experiments.prepare_data(args.scale)
    t0 = time.perf_counter()
    try:
        table = launch(specs, nproc=args.nproc, jobs=args.jobs or cfg.get("jobs", 1))
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(table.to_string(index=False))
    print(f"[launch] {args.scale}: {len(specs)} runs, {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
