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


def _make_env(cpu_isa: str) -> tuple[int, str]:
    """What `make CPU_ISA=...` exports to a recipe (make -n prints, runs nothing)."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    proc = subprocess.run(
        ["make", "-s", "-f", "Makefile", "-f", "-", f"CPU_ISA={cpu_isa}", "show-isa"],
        input="show-isa:\n\t@echo $$ATEN_CPU_CAPABILITY/$$ONEDNN_MAX_CPU_ISA/"
              "$$MKL_ENABLE_INSTRUCTIONS\n",
        cwd=REPO, capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout.strip() + proc.stderr.strip()


def test_make_cpu_isa_avx2_caps_every_kernel_library_and_refuses_other_values():
    from golf_core.runs import ISA_LIMITS

    rc, out = _make_env("avx2")
    assert rc == 0 and out == "avx2/AVX2/AVX2", out
    assert len(ISA_LIMITS) == out.count("/") + 1  # the three the Makefile sets, all recorded
    rc, out = _make_env("avx3")
    assert rc != 0 and "CPU_ISA=avx3: only avx2 is supported" in out


def test_capped_kernels_are_recorded_and_get_their_own_results_file(monkeypatch):
    from golf_core import runs

    for k in runs.ISA_LIMITS:
        monkeypatch.delenv(k, raising=False)
    native = runs.machine_slug("Intel(R) Xeon(R) Processor")
    assert native == "Intel-R--Xeon-R--Processor" and "(" not in runs.cpu_isa()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert runs.cpu_isa().endswith("(ONEDNN_MAX_CPU_ISA=AVX2)")
    assert runs.machine_slug("Intel(R) Xeon(R) Processor").startswith(native + "-as-")
