"""Notebook parameters: the unknown-parameter check papermill lacks.

papermill injects `-p name value` pairs as a cell of plain assignments right after the cell
tagged `parameters`, and only *warns* when a name is not declared there, so a typo such as
`-p iteration 50` silently runs the defaults. Our notebooks declare every knob as
`name: type = value  # help` in the tagged cell (so `papermill --help-notebook` documents them),
and their next cell calls `check_parameters()`, which reads both cells back from the kernel's
input history and raises `ParameterError` naming any injected name the notebook does not
declare, or a value whose type disagrees with the declaration. `report.py` runs the same check
before it starts a kernel (`check_notebook_parameters`).
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# The comment papermill writes at the top of the cell it injects (papermill.parameterize).
INJECTED_MARKER = "# Parameters"
_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
}


class ParameterError(ValueError):
    """A notebook was given a parameter it does not declare, or a value of the wrong type."""


def declared_parameters(source: str) -> dict[str, str]:
    """`{name: type name}` of the `name: type = value` lines of a parameters cell.

    A plain `name = value` line (no annotation) is also a declaration, typed "any"."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ParameterError(f"parameters cell is not valid Python: {e}") from None
    out: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = ast.unparse(node.annotation)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out.setdefault(target.id, "any")
    return out


def injected_names(source: str) -> list[str]:
    """Names assigned by a papermill-injected cell, in order."""
    tree = ast.parse(source)
    return [t.id for node in tree.body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)]


def check_names(given: Sequence[str], declared: Mapping[str, str], *, where: str) -> None:
    """Raise ParameterError naming every name in `given` that `declared` lacks."""
    unknown = [name for name in given if name not in declared]
    if unknown:
        raise ParameterError(
            f"{where}: unknown parameter(s) {', '.join(map(repr, unknown))}; "
            f"declared parameters are: {', '.join(declared) or '(none)'}"
        )


def check_types(values: Mapping[str, Any], declared: Mapping[str, str], *, where: str) -> None:
    """Raise ParameterError for a value whose type disagrees with its declared type name
    (an int is accepted for a float; "any" and unknown type names are not checked)."""
    for name, value in values.items():
        allowed = _TYPES.get(declared.get(name, "any"))
        if allowed is None:
            continue
        wrong_bool = isinstance(value, bool) and bool not in allowed
        if wrong_bool or not isinstance(value, allowed):
            raise ParameterError(
                f"{where}: parameter {name!r} is declared {declared[name]} but was given "
                f"{value!r} ({type(value).__name__})"
            )


def check_injected(parameters_source: str, injected_source: str,
                   namespace: Mapping[str, Any], *, where: str = "notebook") -> None:
    """The kernel-side check on the two cells' sources and the kernel's namespace."""
    declared = declared_parameters(parameters_source)
    names = injected_names(injected_source)
    check_names(names, declared, where=where)
    check_types({n: namespace[n] for n in names if n in namespace}, declared, where=where)


def check_parameters(history: Sequence[str] | None = None,
                     namespace: Mapping[str, Any] | None = None) -> None:
    """Call in the cell right after the `parameters` cell. Under papermill the kernel's input
    history ends with [..., parameters cell, injected cell, this cell]; without an injected
    cell (interactive use, or papermill with no `-p`) there is nothing to check."""
    if history is None or namespace is None:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is None:
            raise RuntimeError("check_parameters() runs inside a notebook kernel")
        namespace = shell.user_ns if namespace is None else namespace
        history = namespace["In"] if history is None else history
    cells = [c for c in history if c.strip()]
    # cells[-1] is the cell calling us; the injected cell (if any) is the one before it.
    if len(cells) < 3 or not cells[-2].lstrip().startswith(INJECTED_MARKER):
        return
    check_injected(cells[-3], cells[-2], namespace, where="papermill parameters")


def notebook_parameters(path: str | Path) -> dict[str, dict[str, Any]]:
    """The declared parameters of a notebook file, as papermill infers them
    (`{name: {"name", "inferred_type_name", "default", "help"}}`)."""
    import papermill

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such notebook")
    return {k: dict(v) for k, v in papermill.inspect_notebook(str(path)).items()}


def check_notebook_parameters(path: str | Path, values: Mapping[str, Any]) -> None:
    """Before executing `path`: every key of `values` must be declared, with a matching type."""
    declared = {k: v["inferred_type_name"] for k, v in notebook_parameters(path).items()}
    where = Path(path).name
    check_names(list(values), declared, where=where)
    check_types(values, declared, where=where)
