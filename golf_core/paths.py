"""Project paths from one root.

`PROJECT_ROOT` is the repository (the parent of this package) unless `GOLF_ROOT` names another
directory; every default path (data, runs, figures, report) hangs off it, so notebooks and
scripts behave the same whatever directory they were launched from. Also the names of the
files a run directory holds.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The root all default paths hang off (`GOLF_ROOT` or the repository)."""
    env = os.environ.get("GOLF_ROOT")
    return Path(env).resolve() if env else Path(__file__).resolve().parent.parent


PROJECT_ROOT = project_root()


def shown(path: str | Path) -> str:
    """`path` as a table shows it: relative to the project root (or the repository) when
    under it, so a rendered page names no machine's directories even where a table cuts long
    strings short (where the page's own path scrubbing cannot find them)."""
    p = Path(path)
    for root in (project_root(), Path(__file__).resolve().parent.parent):
        if p.is_relative_to(root):
            return str(p.relative_to(root))
    return str(p)


def data_dir() -> Path:
    return project_root() / "data"


def default_dataset_dir() -> Path:
    """Shards + tokenizer + manifest made by `python -m golf_core.data prepare` (default corpus)."""
    return data_dir() / "sotu_sp1024"


def runs_dir() -> Path:
    return project_root() / "runs"


def results_dir() -> Path:
    """Committed run outputs (small files only): results/study/ holds the study scale's."""
    return project_root() / "results"


def figures_dir() -> Path:
    return project_root() / "figures"


def report_dir() -> Path:
    return project_root() / "report"


# The files of a run directory (golf_core.runs describes each)
CONFIG, ENV, METRICS, LOG, SUMMARY = (
    "config.json", "env.json", "metrics.jsonl", "train.log", "summary.json"
)
FINAL_MODEL, ARTIFACT_REPORT = "final_model.pt", "artifact_report.json"
# written at the end of a run beside summary.json: small, and kept where checkpoints are not
ROUTING, QUANT_ERROR = "routing.json", "quant_error.json"
