"""The install story: pyproject and environment.yml agree, CI calls the README's test command."""

from __future__ import annotations

import re

import pytest

from conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["dev"]
    wanted = {_name(r): r for r in reqs}
    text = (REPO / "environment.yml").read_text()
    pip_lines = re.findall(r"^\s+- (\S.*)$", text.split("- pip:", 1)[1], flags=re.M)
    listed = {_name(r): r for r in pip_lines if not r.startswith("-e")}
    assert listed.keys() == wanted.keys(), (
        f"only in pyproject: {sorted(wanted.keys() - listed.keys())}; "
        f"only in environment.yml: {sorted(listed.keys() - wanted.keys())}"
    )
    for name, req in wanted.items():
        assert listed[name].replace(" ", "") == req.replace(" ", ""), (name, req, listed[name])


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO / ".ci" / "run").read_text()
    assert "make test" in (REPO / "README.md").read_text()
