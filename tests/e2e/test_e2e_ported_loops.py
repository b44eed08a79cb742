"""Training loops written for the official SDK, run unchanged through both SDKs.

The scripts in ``tests/e2e/ported/`` use only the official ``tinker`` API, the way published
recipes do (a supervised loop with checkpoint resume, an RL loop that builds datums
incrementally from reused token lists, a DPO loop with an official-signature torch loss).
Each runs in its own process against the same local backend over HTTP: once with the
official SDK, once with ``tinkex_jax.install_as_tinker()`` making ``import tinker`` resolve
to tinkex_jax. Both must give the same results to float tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.official]
pytest.importorskip("tinker")
pytest.importorskip("torch")

PORTED = Path(__file__).resolve().parent / "ported"
REPO = Path(__file__).resolve().parents[2]
TINY = "tinkex-jax/tiny"

_AS_TINKER = (
    "import runpy, sys, tinkex_jax\n"
    "tinkex_jax.install_as_tinker()\n"
    "script, sys.argv = sys.argv[1], sys.argv[1:]\n"
    "runpy.run_path(script, run_name='__main__')\n"
    "assert sys.modules['tinker'] is tinkex_jax, 'the script did not run on tinkex_jax'\n"
)


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    from tinkex_jax.local import serve

    with serve(base_models=[TINY]) as running:
        yield running


def run(server: Any, sdk: str, script: str, *args: str) -> dict[str, Any]:
    """Run a ported script in a fresh process with `sdk` behind ``import tinker``."""
    env = {**os.environ, "TINKER_BASE_URL": server.base_url, "TINKER_API_KEY": server.api_key,
           "TINKER_TELEMETRY": "0", "PYTHONPATH": str(REPO)}
    path = str(PORTED / script)
    command = ([sys.executable, path, *args] if sdk == "official"
               else [sys.executable, "-c", _AS_TINKER, path, *args])
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, f"{sdk} {script} failed:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def assert_close(a: Any, b: Any, path: str = "") -> None:
    """Equal structure; numbers equal to float tolerance."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=path)
    else:
        assert a == b, path


def test_supervised_loop_with_checkpoint_resume(server: Any, tmp_path: Path) -> None:
    results = {}
    for sdk in ("official", "tinkex_jax"):
        log_dir = str(tmp_path / sdk)
        first = run(server, sdk, "supervised_resume.py", log_dir, "4")  # "crashes" after 4 steps
        resumed = run(server, sdk, "supervised_resume.py", log_dir)
        assert first["start_step"] == 0 and first["steps"] == [0, 1, 2, 3]
        assert resumed["start_step"] == 4 and resumed["steps"] == [4, 5]
        assert resumed["final_nll"] < first["train_mean_nll"][0]  # it learned across the resume
        results[sdk] = {"first": first, "resumed": resumed}
    assert_close(results["official"], results["tinkex_jax"])


@pytest.mark.parametrize("loss_fn", ["importance_sampling", "stable_reinforce"])
def test_rl_loop_building_datums_incrementally(server: Any, loss_fn: str) -> None:
    official = run(server, "official", "rl_incremental.py", loss_fn)
    ours = run(server, "tinkex_jax", "rl_incremental.py", loss_fn)
    for step in ours["history"]:  # flushed chunks kept their tokens: nothing trained on empty
        assert step["num_datums"] > 0 and step["chunks"] >= step["num_tokens"] / 4
    assert_close(official, ours)


def test_dpo_loop_with_an_official_signature_torch_loss(server: Any) -> None:
    official = run(server, "official", "dpo_custom_loss.py")
    ours = run(server, "tinkex_jax", "dpo_custom_loss.py")
    history = ours["history"]
    assert history[0]["dpo_loss"] == pytest.approx(np.log(2), abs=1e-4)  # policy = reference
    assert history[-1]["margin"] > history[0]["margin"]
    assert_close(official, ours)
