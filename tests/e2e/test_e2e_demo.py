"""The README's main job, ``tinkex demo``, run as a user runs it (a separate process)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_learns_reversal_and_writes_the_loss_curve(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-m", "tinkex_jax.cli", "demo", "--seed", "11", "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    text = run.stdout
    before, after = (float(x) for x in
                     re.findall(r"held-out exact match ([0-9.]+)%", text))
    assert before < 10.0 and after >= 90.0, text
    assert "samples (prompt -> before | after)" in text
    steps = re.findall(r"\] +(\d+)/500 loss ([0-9.]+)", text)
    assert steps and steps[-1][0] == "500"
    assert float(steps[-1][1]) < float(steps[0][1]) / 10  # the loss fell a lot
    tracked = re.search(r"l2 value .* contribution ([-+0-9.e]+) .* entropy value .* "
                        r"contribution ([-+0-9.e]+)", text)
    assert tracked, text
    png = out / "loss_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_demo_rejects_bad_arguments() -> None:
    run = subprocess.run([sys.executable, "-m", "tinkex_jax.cli", "demo", "--steps", "0"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "--steps" in run.stderr


def test_quick_demo_says_what_it_compiles_and_still_learns(tmp_path: Path) -> None:
    out = tmp_path / "quick"
    run = subprocess.run(
        [sys.executable, "-m", "tinkex_jax.cli", "demo", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    compiling = [i for i, line in enumerate(lines)
                 if "0/120 compiling the training step (first step only)" in line]
    first_step = next(i for i, line in enumerate(lines) if re.search(r"\] +1/120 loss", line))
    assert compiling and compiling[0] < first_step  # said before the first step, not after
    assert any("the first call compiles the sampler" in line for line in lines)
    before, after = (float(x) for x in
                     re.findall(r"held-out exact match ([0-9.]+)%", run.stdout))
    assert before < 10.0 and after >= 50.0, run.stdout
    assert "64 words never trained on" in run.stdout
    # the demo reports its own waits; the SDK's wait notices stay out of its output
    assert "tinkex_jax:" not in run.stderr
