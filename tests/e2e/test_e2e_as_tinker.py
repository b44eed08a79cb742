"""Code written for the official SDK, unchanged, on tinkex_jax through `install_as_tinker()`.

The script ``official_style_training.py`` (``import tinker``, ``from tinker import types``)
runs in a fresh interpreter whose only addition is the switch, against the local backend over
HTTP: it trains, samples, saves and resumes through ``import tinker``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TINY = "tinkex-jax/tiny"
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

RUNNER = """
import runpy, sys
import tinkex_jax
tinkex_jax.install_as_tinker()
runpy.run_path(sys.argv[1], run_name="__main__")
import tinker
assert tinker is tinkex_jax, tinker
print("tinker was", sys.modules["tinker"].__name__, file=sys.stderr)
"""


@pytest.fixture(scope="module")
def server():
    local = pytest.importorskip("tinkex_jax.local")
    with local.serve(base_models=[TINY]) as running:
        yield running


def test_an_unchanged_official_script_trains_through_import_tinker(server, tmp_path):
    env = {**os.environ, "TINKER_BASE_URL": server.base_url, "TINKER_API_KEY": server.api_key,
           "TINKER_TELEMETRY": "0", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", RUNNER, str(HERE / "official_style_training.py")],
                          env=env, capture_output=True, timeout=900, cwd=tmp_path, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tinker was tinkex_jax" in done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["finite"] and len(summary["losses"]) == 6
    assert summary["losses"][-1] < summary["losses"][0]
    assert len(summary["samples"]) == 2 and summary["async_samples"] == [2, 2]
    assert summary["state_path"].endswith("/weights/final")
    assert summary["resumed_base_model"] == TINY
    assert "FutureWarning" not in done.stderr
