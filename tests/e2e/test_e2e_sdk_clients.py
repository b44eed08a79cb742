"""The four clients against the embedded local backend, over real HTTP on 127.0.0.1.

Also runs a training script written for the official SDK, with only its imports changed to
``tinkex_jax`` (and, as a control, unchanged with the official SDK).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinkex_jax as tinker
from tinkex_jax.builders import datum_from_prompt_completion

pytestmark = pytest.mark.slow

TINY = "tinkex-jax/tiny"
HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "official_style_training.py"
REPO = HERE.parents[1]


@pytest.fixture(scope="module")
def server():
    local = pytest.importorskip("tinkex_jax.local")
    with local.serve(base_models=[TINY]) as running:
        yield running


@pytest.fixture
def service(server):
    with tinker.ServiceClient(base_url=server.base_url, api_key=server.api_key,
                              telemetry=False) as service:
        yield service


def reverse_data() -> list[tinker.Datum]:
    return [datum_from_prompt_completion(list(p.encode()), list(c.encode()))
            for p, c in (("abc=", "cba\n"), ("xyz=", "zyx\n"))]


def test_training_sampling_and_checkpoints(service):
    tc = service.create_lora_training_client(TINY, rank=4).result(timeout=300)
    assert tc.get_info().model_data.model_name == TINY
    data = reverse_data()
    futures = []
    for _ in range(3):  # pipelined: both requests are in flight before we wait
        futures.append((tc.forward_backward(data, "cross_entropy"),
                        tc.optim_step(tinker.AdamParams(learning_rate=1e-3))))
    for fb, opt in futures:
        out = fb.result(timeout=300)
        assert len(out.loss_fn_outputs) == 2 and np.isfinite(out.metrics["loss:sum"])
        assert out.loss_fn_outputs[0]["logprobs"].shape == (
            data[0].loss_fn_inputs["target_tokens"].shape)
        opt.result(timeout=300)
    forward = tc.forward(data, "cross_entropy").result(timeout=300)
    assert forward.metrics["loss:sum"] > 0

    state = tc.save_state("e2e-state").result(timeout=300)
    assert state.path == f"tinker://{tc.model_id}/weights/e2e-state"
    sampler_path = tc.save_weights_for_sampler("e2e-sampler").result(timeout=300).path
    sampler = service.create_sampling_client(model_path=sampler_path).result(timeout=300)
    assert sampler.get_base_model() == TINY
    prompt = tinker.ModelInput.from_ints(list(b"abc="))
    out = sampler.sample(prompt, 3, tinker.SamplingParams(max_tokens=4, seed=1),
                         include_prompt_logprobs=True).result(timeout=300)
    assert len(out.sequences) == 3 and all(1 <= len(s.tokens) <= 4 for s in out.sequences)
    assert all(s.sequence_id for s in out.sequences)
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == 4
    logprobs = sampler.compute_logprobs(prompt).result(timeout=300)
    assert logprobs[0] is None and all(lp < 0 for lp in logprobs[1:])

    rest = service.create_rest_client()
    ids = {c.checkpoint_id for c in rest.list_checkpoints(tc.model_id).result(timeout=60)
           .checkpoints}
    assert {"weights/e2e-state", "sampler_weights/e2e-sampler"} <= ids
    run = rest.get_training_run_by_tinker_path(state.path).result(timeout=60)
    assert run.training_run_id == tc.model_id and run.base_model == TINY
    info = rest.get_weights_info_by_tinker_path(state.path).result(timeout=60)
    assert info.base_model == TINY and info.lora_rank == 4
    rest.delete_checkpoint_from_tinker_path(sampler_path).result(timeout=60)
    ids = {c.checkpoint_id for c in rest.list_checkpoints(tc.model_id).result(timeout=60)
           .checkpoints}
    assert "sampler_weights/e2e-sampler" not in ids

    resumed = service.create_training_client_from_state_with_optimizer(state.path).result(
        timeout=300)
    assert resumed.model_id.endswith(":train:1")
    assert resumed.forward(data, "cross_entropy").result(timeout=300).metrics["loss:sum"] > 0


def test_ephemeral_sampler_is_picklable_into_another_process(service, server):
    tc = service.create_lora_training_client(TINY, rank=4).result(timeout=300)
    sampler = tc.save_weights_and_get_sampling_client().result(timeout=300)
    payload = pickle.dumps(sampler)
    code = ("import pickle, sys, tinkex_jax as t\n"
            "s = pickle.loads(sys.stdin.buffer.read())\n"
            "out = s.sample(t.ModelInput.from_ints([97, 98]), 2,"
            " t.SamplingParams(max_tokens=3)).result(timeout=300)\n"
            "print(len(out.sequences), s.sampling_session_id)\n")
    env = {**os.environ, "TINKER_API_KEY": server.api_key, "TINKER_TELEMETRY": "0"}
    child = subprocess.run([sys.executable, "-c", code], input=payload, env=env,
                           capture_output=True, timeout=600)
    assert child.returncode == 0, child.stderr.decode()[-2000:]
    assert child.stdout.decode().split() == ["2", sampler.sampling_session_id]


def _ported_source() -> str:
    source = SCRIPT.read_text()
    ported = re.sub(r"^import tinker$", "import tinkex_jax as tinker", source, flags=re.M)
    ported = re.sub(r"^from tinker import ", "from tinkex_jax import ", ported, flags=re.M)
    changed = [(a, b) for a, b in zip(source.splitlines(), ported.splitlines()) if a != b]
    assert changed == [("import tinker", "import tinkex_jax as tinker"),
                       ("from tinker import types", "from tinkex_jax import types")]
    return ported


def _run_script(source: str, server, tmp_path: Path) -> dict:
    path = tmp_path / "train.py"
    path.write_text(source)
    env = {**os.environ, "TINKER_BASE_URL": server.base_url, "TINKER_API_KEY": server.api_key,
           "TINKER_TELEMETRY": "0", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(path)], env=env, capture_output=True,
                          timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def _check_summary(summary: dict) -> None:
    assert summary["finite"] and len(summary["losses"]) == 6
    assert len(summary["samples"]) == 2 and summary["async_samples"] == [2, 2]
    assert summary["scores"] == [True, False]
    assert summary["state_path"].endswith("/weights/final")
    assert summary["sampler_path"].endswith("/sampler_weights/final-sampler")
    assert {"weights/final", "sampler_weights/final-sampler"} <= set(summary["checkpoints"])
    assert summary["resumed_base_model"] == TINY


def test_official_style_script_runs_with_only_the_import_changed(server, tmp_path):
    summary = _run_script(_ported_source(), server, tmp_path)
    _check_summary(summary)
    assert "FutureWarning" not in json.dumps(summary)


@pytest.mark.official
def test_the_same_script_runs_unchanged_on_the_official_sdk(server, tmp_path):
    pytest.importorskip("tinker")
    _check_summary(_run_script(SCRIPT.read_text(), server, tmp_path))
