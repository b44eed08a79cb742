"""Every ```python block of the README and of docs/*.md runs, so the guides stay true.

Blocks of one file run in order in one namespace (a guide can build on its earlier blocks).
A block whose first line is ``# not run`` is shown to readers only (e.g. hosted-service
code that needs a real API key).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(text: str) -> list[str]:
    return [b for b in BLOCK.findall(text) if not b.startswith("# not run")]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(page.read_text())
    if not blocks:
        pytest.skip(f"{page.name} has no runnable python block")
    monkeypatch.chdir(tmp_path)
    environment = dict(os.environ)  # a guide may set TINKER_* variables
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    try:
        for i, block in enumerate(blocks):
            code = compile(block, f"{page.name}[block {i}]", "exec")
            exec(code, namespace)
    finally:
        os.environ.clear()
        os.environ.update(environment)


def test_the_guides_have_examples() -> None:
    assert len(PAGES) >= 5
    assert sum(len(python_blocks(p.read_text())) for p in PAGES) >= 8
