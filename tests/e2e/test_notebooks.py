"""Every notebook in notebooks/ runs top to bottom against the embedded local backend.

The code cells of one notebook run in order in one namespace, as a kernel would run them
(including showing the value of a cell's last expression), with matplotlib on the
non-interactive Agg backend. The install cell is a no-op here (the package is installed),
and each notebook's own closing cells assert what it claims.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def code_cells(path: Path) -> list[str]:
    notebook = json.loads(path.read_text())
    return ["".join(cell["source"]) for cell in notebook["cells"]
            if cell["cell_type"] == "code"]


def run_cell(source: str, name: str, namespace: dict[str, object]) -> object:
    """Run a cell as a kernel does; return what it would show (its last expression's value,
    None when it ends with a statement)."""
    tree = ast.parse(source)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, name, "exec"), namespace)
    if last is None:
        return None
    return eval(compile(ast.Expression(last.value), name, "eval"), namespace)


def test_there_are_notebooks() -> None:
    assert len(NOTEBOOKS) >= 3
    for path in NOTEBOOKS:
        notebook = json.loads(path.read_text())
        assert (notebook["nbformat"], notebook["nbformat_minor"]) >= (4, 5)
        assert all(not cell.get("outputs") for cell in notebook["cells"]
                   if cell["cell_type"] == "code"), f"{path.name} is committed with outputs"
        # nbformat 4.5 requires a unique id per cell (made of letters, digits, - and _)
        ids = [cell.get("id") for cell in notebook["cells"]]
        assert all(isinstance(i, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", i)
                   for i in ids), f"{path.name}: cell ids {ids}"
        assert len(set(ids)) == len(ids), f"{path.name}: duplicate cell ids {ids}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"notebook_{path.stem}"}
    shown: list[object] = []
    try:
        for i, cell in enumerate(code_cells(path)):
            shown.append(run_cell(cell, f"{path.name}[cell {i}]", namespace))
        # a kernel shows a cell's last value: no stray values (such as the False a context
        # manager's __exit__ returns) at the end of a notebook or anywhere else
        assert shown[-1] is None, f"{path.name} ends by showing {shown[-1]!r}"
        assert not [v for v in shown if isinstance(v, bool | int | float | str)], shown
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")
        service = namespace.get("service")
        if service is not None and hasattr(service, "close"):
            service.close()  # closing twice is a no-op
        context = namespace.get("server_context")
        if context is not None and hasattr(context, "__exit__"):
            context.__exit__(None, None, None)  # a finished context exits as a no-op
