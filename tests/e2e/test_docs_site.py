"""The guides build as a static site with every page in the navigation and no broken link."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_the_docs_build_as_a_site(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(REPO / "mkdocs.yml"), "--site-dir", str(site)],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    pages = sorted(p.stem for p in (REPO / "docs").glob("*.md"))
    for page in pages:
        built = site / ("index.html" if page == "index" else f"{page}/index.html")
        assert built.is_file(), f"docs/{page}.md was not built"
    home = (site / "index.html").read_text()
    for page in pages:  # every guide is reachable from the navigation
        if page != "index":
            assert f'href="{page}/"' in home, f"docs/{page}.md is missing from mkdocs.yml nav"
