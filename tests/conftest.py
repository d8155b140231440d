"""Shared test setup: the golden vectors of the PRs' scripts (tests/golden/), a tmp project root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The golden vectors made by the PRs' scripts ship in tests/golden/ (README there says which
# script and config made each); GOLF_FIXTURES points the tests at another copy.
FIXTURES = Path(os.environ.get("GOLF_FIXTURES", REPO / "tests" / "golden"))


def fixture_dir(name: str) -> Path:
    """A folder of tests/golden/, or skip (saying why) where the folder is absent."""
    path = FIXTURES / name
    if not path.is_dir():
        pytest.skip(f"golden vectors not found at {path} (they ship in tests/golden/)")
    return path


def expected(name: str) -> dict:
    return json.loads((fixture_dir(name) / "expected.json").read_text())


@pytest.fixture
def golf_root(tmp_path, monkeypatch):
    """A throwaway project root: data/, runs/, figures/ go under tmp_path."""
    monkeypatch.setenv("GOLF_ROOT", str(tmp_path))
    return tmp_path


def report_env(root: Path) -> dict[str, str]:
    """The environment of a `python -m golf_core.report` subprocess writing under `root`."""
    env = dict(os.environ, GOLF_ROOT=str(root), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.setdefault("MPLCONFIGDIR", str(root / ".mpl"))
    return env


@pytest.fixture(scope="session")
def ci_report(tmp_path_factory):
    """`python -m golf_core.report --scale ci` once per session, into a throwaway project
    root: (root, completed process). test_report.py and test_browser.py read it."""
    root = tmp_path_factory.mktemp("golf_root")
    for kind in ("study", "regime"):  # committed small files: notebooks 08, 09, 99 read them
        committed = REPO / "results" / kind
        if committed.is_dir():
            shutil.copytree(committed, root / "results" / kind,
                            ignore=shutil.ignore_patterns("checkpoints", "*.pt", "*.ptz"))
    proc = subprocess.run([sys.executable, "-m", "golf_core.report", "--scale", "ci"],
                          cwd=REPO, env=report_env(root), capture_output=True, text=True,
                          timeout=900)
    return root, proc


# --- Running the suite on several workers (`make test` runs `pytest -n auto`, pytest-xdist) ---
# Each worker is pinned to its own share of the cores, so torch in the worker and in every
# process it starts (training subprocesses, torchrun, notebook kernels) takes that share's
# threads (golf_core.distributed.usable_cores): two workers of two threads each on a 2-core
# machine would oversubscribe it (3-17x slower, benchmarks/results/optimizations.md).
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ... under xdist
if _WORKER and hasattr(os, "sched_setaffinity"):
    _cores = sorted(os.sched_getaffinity(0))
    _count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    _share = _cores[int(_WORKER[2:]) % _count::_count] if _count <= len(_cores) else []
    if _share:
        os.sched_setaffinity(0, _share)
        # inductor's parallel C++ compiles on one pinned core only add their pool's overhead
        # (a cold compile of PR #54's model: 151 s with one compile thread, 162 s with two)
        os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(len(_share)))
        import torch

        torch.set_num_threads(len(_share))

# Tests sharing an expensive fixture run on one worker: a module's tests share its module
# fixtures, and the report tests and the browser test share the ci report. The whole-model
# compiles of the four families run one after another on one worker, as do the baseline's
# block compiles: the families share many of their C++ kernels, so each later compile finds
# them in the on-disk inductor cache the earlier one wrote (measured: 134 + 86 + 77 + 102 s in
# a row against 119-199 s each cold, two at a time). (xdist's own `--dist loadgroup` reads
# its marks off a node id that pytest 9 no longer carries, so the groups are handed to
# xdist's scope scheduler here.)
_SHARED_GROUPS = {"test_report": "ci_report", "test_browser": "ci_report",
                  "test_precision": "compile_gpt", "test_speed_equivalence": "compile_gpt"}


def _group(nodeid: str) -> str:
    stem = Path(nodeid.split("::", 1)[0]).stem
    return _SHARED_GROUPS.get(stem, stem)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """xdist's scope scheduler over the groups above, in collection order (the groups with
    slow tests first, see below) instead of its largest-group-first order."""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid)

    config.option.loadscopereorder = False
    return GroupScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """The groups holding slow tests first, so the longest work starts at once instead of
    after the quick tests (a shorter wall time on several workers)."""
    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(_group(item.nodeid), []).append(item)
    slow = [g for g, its in groups.items() if any(i.get_closest_marker("slow") for i in its)]
    rest = [g for g in groups if g not in slow]
    items[:] = [item for g in slow + rest for item in groups[g]]
