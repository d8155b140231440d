"""Shared test setup: the upstream golden fixtures (../shared/fixtures) and a tmp project root."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("GOLF_FIXTURES", REPO.parent / "shared" / "fixtures"))


def fixture_dir(name: str) -> Path:
    """A folder of ../shared/fixtures, or skip (saying why) where the folder is absent."""
    path = FIXTURES / name
    if not path.is_dir():
        pytest.skip(f"upstream fixtures not found at {path} (they live in ../shared/fixtures)")
    return path


def expected(name: str) -> dict:
    return json.loads((fixture_dir(name) / "expected.json").read_text())


@pytest.fixture
def golf_root(tmp_path, monkeypatch):
    """A throwaway project root: data/, runs/, figures/ go under tmp_path."""
    monkeypatch.setenv("GOLF_ROOT", str(tmp_path))
    return tmp_path
