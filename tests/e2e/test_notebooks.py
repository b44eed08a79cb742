"""Every notebook in notebooks/ runs top to bottom against the embedded local backend.

The code cells of one notebook run in order in one namespace, as a kernel would run them,
with matplotlib on the non-interactive Agg backend. The install cell is a no-op here (the
package is installed), and each notebook's own closing cells assert what it claims.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def code_cells(path: Path) -> list[str]:
    notebook = json.loads(path.read_text())
    return ["".join(cell["source"]) for cell in notebook["cells"]
            if cell["cell_type"] == "code"]


def test_there_are_notebooks() -> None:
    assert len(NOTEBOOKS) >= 3
    for path in NOTEBOOKS:
        notebook = json.loads(path.read_text())
        assert notebook["nbformat"] == 4
        assert all(not cell.get("outputs") for cell in notebook["cells"]
                   if cell["cell_type"] == "code"), f"{path.name} is committed with outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"notebook_{path.stem}"}
    try:
        for i, cell in enumerate(code_cells(path)):
            exec(compile(cell, f"{path.name}[cell {i}]", "exec"), namespace)
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")
        service = namespace.get("service")
        if service is not None and hasattr(service, "close"):
            service.close()  # closing twice is a no-op
        context = namespace.get("server_context")
        if context is not None and hasattr(context, "__exit__"):
            context.__exit__(None, None, None)  # a finished context exits as a no-op
