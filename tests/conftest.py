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
