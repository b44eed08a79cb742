"""The notebooks' install cell: one cell, a no-op where tinkex_jax is installed, a clear error
where no source can be found, and a Colab stand-in inside the dependency ranges.

The installs themselves (checkout, wheel, index name beside a preinstalled stack) need the
package index: scripts/check_colab_install.py runs them, and docs/colab.md records a run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pip
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _first_code_cell(path: Path) -> dict[str, object]:
    notebook = json.loads(path.read_text())
    return next(c for c in notebook["cells"] if c["cell_type"] == "code")


def _cell_source() -> str:
    return "".join(_first_code_cell(NOTEBOOKS[0])["source"])  # type: ignore[arg-type]


def _script() -> object:
    spec = importlib.util.spec_from_file_location(
        "check_colab_install", REPO / "scripts" / "check_colab_install.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ranges() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {r.name: r for r in map(Requirement, project["dependencies"])}


def test_every_notebook_starts_with_the_same_install_cell() -> None:
    assert len(NOTEBOOKS) >= 3
    cells = [_first_code_cell(p) for p in NOTEBOOKS]
    assert all(c["id"] == "install" for c in cells), [c["id"] for c in cells]
    assert len({"".join(c["source"]) for c in cells}) == 1  # type: ignore[arg-type]
    source = _cell_source()
    assert "git+" not in source  # no unchecked repository address as a default
    assert "--upgrade " not in source and '"-U"' not in source


def test_the_cell_does_nothing_where_tinkex_jax_is_installed(tmp_path: Path) -> None:
    cell = tmp_path / "cell.py"
    cell.write_text(_cell_source())
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull)
    done = subprocess.run([sys.executable, str(cell)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # it installed nothing and said nothing


def test_without_a_source_the_cell_says_the_package_is_not_on_the_index(tmp_path: Path) -> None:
    # a fresh environment without tinkex_jax; pip (and nothing else of ours) on its path; an
    # offline pip, so the index name cannot be found, as while tinkex-jax is unpublished
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")],
                   check=True, timeout=120)
    content = tmp_path / "content"
    content.mkdir()
    (content / "cell.py").write_text(_cell_source())
    env = {k: v for k, v in os.environ.items() if k not in ("TINKEX_JAX_SOURCE", "VIRTUAL_ENV")}
    env.update(PYTHONPATH=str(Path(pip.__file__).parents[1]), PIP_NO_INDEX="1",
               PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS=str(content))
    done = subprocess.run([str(tmp_path / "venv" / "bin" / "python"), "cell.py"], cwd=content,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("RuntimeError: pip could not get 'tinkex-jax'"), done.stderr
    assert "not on the package index yet" in message
    assert "tinkex_jax-*.whl" in message and "TINKEX_JAX_SOURCE" in message


def test_the_colab_stand_in_lies_inside_the_ranges_and_the_outside_one_does_not() -> None:
    script = _script()
    ranges = _ranges()
    stack = dict(s.split("==") for s in script.STACK)  # type: ignore[attr-defined]
    outside = dict(s.split("==") for s in script.OUTSIDE_STACK)  # type: ignore[attr-defined]
    assert set(stack) == set(script.KEPT)  # type: ignore[attr-defined]
    for name, version in stack.items():
        if name in ranges:
            assert ranges[name].specifier.contains(version), (name, version, ranges[name])
    assert stack["jaxlib"] == stack["jax"]
    assert not ranges["jax"].specifier.contains(outside["jax"])
    assert {k: v for k, v in outside.items() if k not in ("jax", "jaxlib")} == {
        k: v for k, v in stack.items() if k not in ("jax", "jaxlib")}
