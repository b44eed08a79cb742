"""Run the notebooks' install cell in fresh environments that stand in for Colab.

Each mode makes a new virtual environment, preinstalls a stack the way Colab ships one
(jax, jaxlib, numpy, protobuf and matplotlib at versions other than the newest, inside
tinkex_jax's ranges), runs the first code cell of the notebooks exactly as written, then
checks that:

- tinkex_jax imports, with its local model, its protobuf module and a jit-compiled step;
- every preinstalled package of the stack is still at its version (none was upgraded);
- a second run of the cell installs nothing (the cell is a no-op where tinkex_jax is).

Modes (the cell picks its source by itself; each mode sets up what it looks for):

- ``checkout``: the cell runs in this repository's notebooks/ folder: an editable install.
- ``wheel``: the cell runs in a folder holding a wheel built from this checkout.
- ``index``: the cell runs in an empty folder and falls back to the package index name
  ``tinkex-jax``; since the package is not published yet, ``PIP_FIND_LINKS`` points pip at
  the built wheel, standing in for the index's copy (everything else comes from the index).
- ``unpublished``: as ``index`` without the stand-in: the cell must fail with its message
  saying that tinkex-jax is not on the index yet and what to do instead.
- ``outside``: as ``wheel``, with jax and jaxlib preinstalled below tinkex_jax's range: the
  cell says so and pip replaces them, while the rest of the stack is kept.

In the ``wheel`` mode a control comes first: what a plain ``pip install <wheel>`` (no
constraints) would change in the stack (``pip install --dry-run``), reported beside the result.

It needs the network (the package index) and takes a few minutes; docs/colab.md records a
run. Usage::

    python scripts/check_colab_install.py                      # all modes
    python scripts/check_colab_install.py --modes wheel index  # some of them
    python scripts/check_colab_install.py --modes wheel --stack jax==0.9.2 jaxlib==0.9.2 \
        numpy==2.1.3 protobuf==6.33.6 matplotlib==3.9.4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
KEPT = ("jax", "jaxlib", "numpy", "protobuf", "matplotlib")
#: A Colab-like stack: inside tinkex_jax's ranges, older than the newest releases
#: (tests/unit/test_install_cell.py checks that it stays inside the ranges).
STACK = ["jax==0.8.1", "jaxlib==0.8.1", "numpy==2.0.2", "protobuf==5.29.5",
         "matplotlib==3.10.0"]
#: For ``outside``: jax and jaxlib below tinkex_jax's range, the rest as in STACK.
OUTSIDE_STACK = ["jax==0.7.2", "jaxlib==0.7.2", *STACK[2:]]
MODES = ("checkout", "wheel", "index", "unpublished", "outside")
#: What is imported and run once installed: the SDK, the local model (jax), the protobuf
#: module (its generated code checks the protobuf runtime) and one jit-compiled step.
SMOKE = """
import importlib.metadata as md
import jax, jax.numpy as jnp
import tinkex_jax, tinkex_jax.local.model, tinkex_jax.wire._proto, losses, regularizers
print("tinkex_jax", md.version("tinkex-jax"), "from", tinkex_jax.__file__)
print("jit:", float(jax.jit(lambda x: (x * x).sum())(jnp.arange(4.0))))
"""


def install_cell() -> str:
    """The first code cell of the notebooks (the same in every one of them)."""
    cells = []
    for path in NOTEBOOKS:
        notebook = json.loads(path.read_text())
        first = next(c for c in notebook["cells"] if c["cell_type"] == "code")
        cells.append("".join(first["source"]))
    if not cells or any(c != cells[0] for c in cells):
        raise SystemExit("the notebooks' first code cells differ: they should be one cell")
    return cells[0]


def sh(command: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
       check: bool = True) -> subprocess.CompletedProcess[str]:
    print("  $", " ".join(c if "\n" not in c else "'...'" for c in command), flush=True)
    done = subprocess.run(command, cwd=cwd, env=env, text=True, capture_output=True)
    if check and done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def versions(python: Path) -> dict[str, str | None]:
    code = ("import importlib.metadata as m, json, sys\n"
            "def v(n):\n    try: return m.version(n)\n    except m.PackageNotFoundError: "
            "return None\n"
            "print(json.dumps({n: v(n) for n in sys.argv[1:]}))")
    return json.loads(sh([str(python), "-c", code, *KEPT]).stdout)


def fresh_env(folder: Path, stack: list[str]) -> Path:
    sh([sys.executable, "-m", "venv", str(folder / "venv")])
    python = folder / "venv" / "bin" / "python"
    if stack:
        sh([str(python), "-m", "pip", "install", "-q", *stack])
    return python


def plain_pip_changes(python: Path, content: Path, before: dict[str, str | None]
                      ) -> dict[str, str]:
    """What a plain `pip install <wheel>` would do to the stack: {name: new version}."""
    wheel = next(content.glob("*.whl"))
    said = sh([str(python), "-m", "pip", "install", "--dry-run", str(wheel)]).stdout
    line = next((x for x in said.splitlines() if x.startswith("Would install")), "")
    changes = {}
    for item in line.removeprefix("Would install").split():
        name, _, version = item.rpartition("-")
        name = name.lower().replace("_", "-")
        if name in before and before[name] is not None and before[name] != version:
            changes[name] = version
    return changes


def cell_env(find_links: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TINKEX_JAX_SOURCE", "VIRTUAL_ENV", "PYTHONPATH")}
    if find_links is not None:
        env["PIP_FIND_LINKS"] = str(find_links)
    return env


def check_mode(mode: str, work: Path, dist: Path, cell: Path) -> dict[str, object]:
    started = time.monotonic()
    folder = work / mode
    content = folder / "content"  # the notebook's working folder (/content on Colab)
    content.mkdir(parents=True)
    stack = [] if mode == "unpublished" else OUTSIDE_STACK if mode == "outside" else STACK
    python = fresh_env(folder, stack)
    before = versions(python)
    cwd, find_links = content, None
    if mode == "checkout":
        cwd = REPO / "notebooks"
    elif mode in ("wheel", "outside"):
        for wheel in dist.glob("*.whl"):
            shutil.copy(wheel, content)
    elif mode == "index":
        find_links = dist
    run = sh([str(python), str(cell)], cwd=cwd, env=cell_env(find_links), check=False)
    result: dict[str, object] = {"mode": mode, "before": before}
    if mode == "wheel":
        result["plain_pip_would_change"] = plain_pip_changes(python, content, before)
    if mode == "unpublished":
        said = run.stdout + run.stderr
        ok = run.returncode != 0 and "not on the package index yet" in said
        result.update(ok=ok, seconds=round(time.monotonic() - started, 1),
                      message=said.strip().splitlines()[-1] if said.strip() else "")
        return result
    if run.returncode != 0:
        raise SystemExit(f"{mode}: the install cell failed:\n{run.stdout}\n{run.stderr}")
    after = versions(python)
    smoke = sh([str(python), "-c", SMOKE], cwd=work, env=cell_env(None))
    again = sh([str(python), str(cell)], cwd=cwd, env=cell_env(find_links))
    if mode == "outside":
        replaced = ("jax", "jaxlib")
        kept = (all(after[k] == v for k, v in before.items() if k not in replaced)
                and all(after[k] != before[k] for k in replaced))
    else:
        kept = after == before
    result.update(ok=kept and not again.stdout.strip(), after=after,
                  said=run.stdout.strip().splitlines(), smoke=smoke.stdout.strip().splitlines(),
                  second_run=again.stdout.strip(), seconds=round(time.monotonic() - started, 1))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="which set-ups to check (default: all)")
    parser.add_argument("--stack", nargs="+", metavar="REQ",
                        help=f"the preinstalled stack (default: {' '.join(STACK)})")
    parser.add_argument("--work", type=Path,
                        help="folder for the environments (default: a new temporary folder, "
                             "removed afterwards)")
    args = parser.parse_args(argv)
    if args.stack:
        STACK[:] = args.stack
    work = args.work or Path(tempfile.mkdtemp(prefix="colab-check-"))
    if work.resolve().is_relative_to(REPO):
        parser.error("--work must lie outside the checkout (the cell would find the checkout)")
    work.mkdir(parents=True, exist_ok=True)
    cell = work / "install_cell.py"
    cell.write_text(install_cell())
    dist = work / "dist"
    if {"wheel", "index", "outside"} & set(args.modes):
        print("building the wheel", flush=True)
        sh([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist),
            str(REPO)])
    results = []
    for mode in args.modes:
        print(f"== {mode}", flush=True)
        results.append(check_mode(mode, work, dist, cell))
        print(json.dumps(results[-1], indent=1), flush=True)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    print("\n| mode | result | seconds |\n|---|---|---|")
    for r in results:
        print(f"| {r['mode']} | {'ok' if r['ok'] else 'FAILED'} | {r['seconds']} |")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
