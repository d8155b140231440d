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
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

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


def train_command(spec: RunSpec, *, nproc: int = 1, resume: bool = False,
                  python: str = sys.executable) -> list[str]:
    """The command line that trains `spec` with `nproc` processes."""
    if nproc < 1:
        raise ValueError(f"nproc={nproc}: must be >= 1")
    if nproc == 1:
        head = [python, "-m", "golf_core.train"]
    else:
        head = [python, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={nproc}", "-m", "golf_core.train"]
    return head + spec.train_args() + (["--resume"] if resume else [])


def run_one(spec: RunSpec, *, nproc: int = 1, echo: Callable[[str], None] = print) -> float:
    """Train one run, streaming its output to `echo`; returns its wall seconds."""
    resume = spec.run_dir.is_dir() and any(spec.run_dir.iterdir())
    cmd = train_command(spec, nproc=nproc, resume=resume)
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


def launch(specs: Sequence[RunSpec], *, nproc: int = 1,
           echo: Callable[[str], None] = print) -> pd.DataFrame:
    """Train every spec not yet complete, in order; one row per spec: name, label, seed,
    status (`trained` / `skipped: complete`) and wall seconds of this launch."""
    rows = []
    for i, spec in enumerate(specs, 1):
        if spec.is_complete():
            echo(f"=== [{i}/{len(specs)}] {spec.name}: complete, skipped")
            rows.append({**_row(spec), "status": "skipped: complete", "seconds": 0.0})
            continue
        echo(f"=== [{i}/{len(specs)}]")
        seconds = run_one(spec, nproc=nproc, echo=echo)
        rows.append({**_row(spec), "status": "trained", "seconds": round(seconds, 1)})
    return pd.DataFrame(rows)


def _row(spec: RunSpec) -> dict[str, object]:
    return {"name": spec.name, "label": spec.label, "seed": spec.seed}
