"""The notebooks follow the conventions (committed with outputs cleared, one tagged parameters
cell of `name: type = value  # help` lines followed by the unknown-parameter check, no logic
in cells), and the parameter check refuses what papermill would only warn about."""

from __future__ import annotations

import ast

import nbformat
import pytest

from conftest import REPO
from golf_core import nbparams
from golf_core.report import NOTEBOOKS, notebook_parameters

NOTEBOOK_FILES = sorted((REPO / "notebooks").glob("*.ipynb"))


def _read(path):
    return nbformat.read(path, as_version=4)


def test_the_report_runs_every_notebook_in_the_folder_and_no_other():
    assert [p.stem for p in NOTEBOOK_FILES] == sorted(NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_notebooks_are_committed_with_outputs_cleared(path):
    nb = _read(path)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs: clear them"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
    assert "papermill" not in nb.metadata, f"{path.name} is an executed copy"


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_each_notebook_has_one_documented_parameters_cell_then_the_check(path):
    cells = _read(path).cells
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: want exactly one cell tagged 'parameters'"
    source = cells[tagged[0]].source
    for line in source.splitlines():
        node = ast.parse(line).body[0]
        assert isinstance(node, ast.AnnAssign), f"{path.name}: {line!r} is not `name: type = v`"
        assert "  # " in line, f"{path.name}: parameter line {line!r} has no help comment"
    following = cells[tagged[0] + 1]
    assert following.cell_type == "code"
    assert following.source.startswith("nbparams.check_parameters()"), (
        f"{path.name}: the cell after the parameters must call nbparams.check_parameters()")


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_code_cells_only_call_the_package_no_definitions_or_loops(path):
    for i, cell in enumerate(_read(path).cells):
        if cell.cell_type != "code":
            continue
        python = "\n".join(ln for ln in cell.source.splitlines() if not ln.startswith("%"))
        for node in ast.walk(ast.parse(python)):
            assert not isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Lambda, ast.For,
                                         ast.While)), f"{path.name} cell {i}: logic in a cell"
        for node in ast.walk(ast.parse(python)):
            if isinstance(node, ast.ImportFrom):
                assert node.module in ("golf_core", "IPython.display"), (
                    f"{path.name} cell {i}: imports {node.module}")


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_notebooks_have_prose_before_code(path):
    cells = _read(path).cells
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# ")
    assert "**Question.**" in cells[0].source or path.stem == "99_report"


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_paths_come_from_the_package_not_from_the_working_directory(path):
    for cell in _read(path).cells:
        if cell.cell_type == "code":
            for bad in ("open(", "Path(", "os.getcwd", "../", "./"):
                assert bad not in cell.source, f"{path.name}: {bad!r} in a cell"


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_papermill_sees_every_declared_parameter_with_its_help(path):
    cells = _read(path).cells
    (source,) = [c.source for c in cells if "parameters" in c.metadata.get("tags", [])]
    inferred = nbparams.notebook_parameters(path)  # what `papermill --help-notebook` prints
    assert list(inferred) == list(nbparams.declared_parameters(source))
    for name, p in inferred.items():
        assert p["help"], f"{path.name}: papermill finds no help for {name!r}"
        assert p["inferred_type_name"] in ("str", "int", "float", "bool"), (name, p)


def test_the_report_passes_only_parameters_each_notebook_declares():
    for name, values in notebook_parameters("ci", upstream_log="").items():
        nbparams.check_notebook_parameters(REPO / "notebooks" / f"{name}.ipynb", values)


# ----------------------------------------------------------------------------- nbparams

PARAMS = 'scale: str = "cpu"  # the scale\nsteps: int = 3  # steps\nlr: float = 0.1  # rate'


def test_declared_parameters_are_read_with_their_types():
    assert nbparams.declared_parameters(PARAMS) == {"scale": "str", "steps": "int",
                                                    "lr": "float"}


def test_an_injected_unknown_name_is_refused_naming_it():
    with pytest.raises(nbparams.ParameterError,
                       match=r"unknown parameter\(s\) 'step'; declared parameters are: "
                             r"scale, steps, lr"):
        nbparams.check_injected(PARAMS, "# Parameters\nstep = 5\n", {"step": 5},
                                where="notebook")


def test_an_injected_value_of_the_wrong_type_is_refused():
    with pytest.raises(nbparams.ParameterError, match=r"'steps' is declared int but was given "
                                                      r"'5' \(str\)"):
        nbparams.check_injected(PARAMS, '# Parameters\nsteps = "5"\n', {"steps": "5"})


def test_an_int_is_a_valid_float_but_a_bool_is_not_an_int():
    nbparams.check_injected(PARAMS, "# Parameters\nlr = 1\n", {"lr": 1})
    with pytest.raises(nbparams.ParameterError, match="declared int"):
        nbparams.check_injected(PARAMS, "# Parameters\nsteps = True\n", {"steps": True})


def test_the_kernel_check_reads_the_parameters_and_injected_cells_from_the_history():
    history = ["", "from golf_core import nbparams", PARAMS, "# Parameters\nsteps = 7\n",
               "nbparams.check_parameters()"]
    nbparams.check_parameters(history, {"steps": 7})
    bad = [*history[:3], "# Parameters\nsetps = 7\n", history[-1]]
    with pytest.raises(nbparams.ParameterError, match="'setps'"):
        nbparams.check_parameters(bad, {"setps": 7})


def test_without_an_injected_cell_there_is_nothing_to_check():
    nbparams.check_parameters(["", PARAMS, "nbparams.check_parameters()"], {})


def test_the_runner_check_refuses_an_unknown_parameter_before_any_kernel_starts():
    with pytest.raises(nbparams.ParameterError, match=r"06_test_time_depth.ipynb: unknown "
                                                      r"parameter\(s\) 'max_K'"):
        nbparams.check_notebook_parameters(REPO / "notebooks" / "06_test_time_depth.ipynb",
                                           {"scale": "ci", "max_K": 3})
