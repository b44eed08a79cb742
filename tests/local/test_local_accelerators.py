"""The local backend on several devices and in mixed precision, through the real server.

A server started by ``tinkex serve --mesh fsdp=2,tp=2`` in a process with 4 simulated CPU
devices trains and samples through our SDK and the official one with the losses, logprobs
and tokens of a one-device server; its ``healthz`` says so. A bfloat16 server trains. The
flags of ``tinkex serve`` reach the server's settings, bad ones fail naming the flag, and the
compilation cache goes under the data directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jax
import numpy as np
import pytest

import tinkex_jax
from tests.support.local_support import TINY
from tinkex_jax.cli import main
from tinkex_jax.local import LocalServer, ServerConfig, serve
from tinkex_jax.local._jax_backend import (
    configure_compilation_cache,
    run_options,
    server_mesh,
)

REPO = Path(__file__).resolve().parents[2]
API_KEY = "tml-accelerator-tests"
TEXTS = ["abc=abc\nxyz=xyz\nqq", "hello world, hello!!", "def f(x): return x+1"]


def four_devices_env() -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "TINKER_TELEMETRY": "0",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}


# ---------------------------------------------------------------------- settings and flags


def test_serve_flags_reach_the_server_settings(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ServerConfig] = []
    monkeypatch.setattr("tinkex_jax.local.run_server",
                        lambda config, **kw: seen.append(config))
    code = main(["serve", "--data-dir", str(tmp_path), "--api-key", API_KEY,
                 "--mesh", "fsdp=1,tp=1", "--dtype", "bfloat16", "--remat", "dots", "--attention", "chunked",
                 "--token-budget", "4096", "--sampler-weights", "shared",
                 "--compilation-cache", "off"])
    assert code == 0
    (config,) = seen
    assert (config.mesh, config.dtype, config.remat, config.attention, config.token_budget,
            config.sampler_weights, config.compilation_cache) == (
        "fsdp=1,tp=1", "bfloat16", "dots", "chunked", 4096, "shared", "off")
    options = run_options(config)
    assert (options.remat, options.attention, options.token_budget, options.sampler_weights,
            options.mesh) == ("dots", "chunked", 4096, "shared", None)


@pytest.mark.parametrize(("argv", "flag"), [
    (["--mesh", "gpus=2"], "--mesh"),
    (["--token-budget", "-1"], "--token-budget"),
    (["--mesh", "fsdp=64"], "--mesh"),  # more devices than this host has
])
def test_bad_accelerator_flags_exit_2_naming_the_flag(
        tmp_path: Path, argv: list[str], flag: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tinkex_jax.local import _server

    # stop before uvicorn: build the app (which builds the backend) and return
    monkeypatch.setattr(_server, "_uvicorn_server",
                        lambda app, config, log_level: type("S", (), {"run": lambda s: None})())
    code = main(["serve", "--data-dir", str(tmp_path), "--api-key", API_KEY, "--no-warm-up",
                 *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert flag in err and "Fix:" in err


def test_server_mesh_on_one_device() -> None:
    assert server_mesh(None) is None and server_mesh("") is None
    assert server_mesh("fsdp=1") is None and server_mesh("tp=1") is None
    with pytest.raises(tinkex_jax.ValidationError, match="xla_force_host_platform_device_count=2"):
        server_mesh("fsdp=2")
    with pytest.raises(tinkex_jax.ValidationError, match="fsdp=N"):
        ServerConfig(data_dir=Path("unused"), mesh="data=2")
    with pytest.raises(tinkex_jax.ValidationError, match=r"ServerConfig\.dtype"):
        ServerConfig(data_dir=Path("unused"), dtype="int8")
    with pytest.raises(tinkex_jax.ValidationError, match=r"RunOptions\.remat"):
        ServerConfig(data_dir=Path("unused"), remat="sometimes")


@pytest.fixture
def restore_compilation_cache() -> Iterator[None]:
    from jax.experimental.compilation_cache import compilation_cache

    names = ("jax_compilation_cache_dir", "jax_enable_compilation_cache",
             "jax_persistent_cache_min_compile_time_secs")
    before = {name: jax_flag(name) for name in names}
    yield
    for name, value in before.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


def jax_flag(name: str) -> Any:
    return getattr(jax.config, name)


def test_compilation_cache_lives_under_the_data_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_compilation_cache: None
) -> None:
    env_dir = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if env_dir:  # the variable wins when set (as the tests set it)
        assert configure_compilation_cache(ServerConfig(data_dir=tmp_path)) == env_dir
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    where = configure_compilation_cache(ServerConfig(data_dir=tmp_path / "data"))
    assert where == str(tmp_path / "data" / "compilation-cache")
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.jit(lambda x: jnp_sin_plus(x, 1.2345))(np.arange(7.0)).block_until_ready()
    assert any(Path(where).iterdir()), "nothing was written to the cache"
    chosen = tmp_path / "chosen"
    assert configure_compilation_cache(ServerConfig(data_dir=tmp_path,
                                                    compilation_cache=str(chosen))) == str(chosen)
    assert configure_compilation_cache(ServerConfig(data_dir=tmp_path,
                                                    compilation_cache="off")) is None
    assert not jax_flag("jax_enable_compilation_cache")


def jnp_sin_plus(x: Any, c: float) -> Any:
    import jax.numpy as jnp

    return jnp.sin(x) * c + jnp.cos(x) / (c + 3.0)


def test_healthz_reports_the_devices(tmp_path: Path, jax_backend: Any) -> None:
    with serve(tmp_path / "data", base_models=[TINY], backend=jax_backend, warm_up=False,
               api_key=API_KEY) as server:
        body = httpx.get(f"{server.base_url}/api/v1/healthz").json()
        assert body == {"status": "ok", "devices": 1, "mesh": {"fsdp": 1, "tp": 1},
                        "platform": "cpu"}
        with tinkex_jax.ServiceClient(base_url=server.base_url, api_key=API_KEY) as service:
            health = service.create_rest_client().healthz().result()
        assert (health.status, health.devices, health.platform) == ("ok", 1, "cpu")
        assert dict(health.mesh or {}) == {"fsdp": 1, "tp": 1}


# ---------------------------------------------------------------------- real training


def train_and_sample(sdk: Any, base_url: str, api_key: str, steps: int = 3,
                     learning_rate: float = 1e-2) -> dict[str, Any]:
    """A few cross-entropy steps and a sample, with either SDK; returns what they gave."""
    T = sdk.types
    data = []
    for text in TEXTS:  # rows of different lengths: padding and an odd batch on the mesh
        toks = list(text.encode())
        data.append(T.Datum(model_input=T.ModelInput.from_ints(toks[:-1]),
                            loss_fn_inputs={"target_tokens": toks[1:],
                                            "weights": [1.0] * (len(toks) - 1)}))
    service = sdk.ServiceClient(base_url=base_url, api_key=api_key)
    try:  # the official client has no close(); ours does
        tc = service.create_lora_training_client(base_model=TINY, rank=4, seed=3).result()
        losses, logprobs = [], []
        for _ in range(steps):
            out = tc.forward_backward(data, "cross_entropy").result()
            losses.append(out.metrics["loss:sum"])
            logprobs.append([np.asarray(o["logprobs"].to_numpy())
                             for o in out.loss_fn_outputs])
            tc.optim_step(T.AdamParams(learning_rate=learning_rate)).result()
        sampler = tc.save_weights_and_get_sampling_client().result()
        res = sampler.sample(prompt=T.ModelInput.from_ints(list(b"abc=")), num_samples=2,
                             sampling_params=T.SamplingParams(max_tokens=6, temperature=1.0,
                                                              seed=11),
                             include_prompt_logprobs=True).result()
        return {"losses": losses, "logprobs": logprobs,
                "tokens": [list(s.tokens) for s in res.sequences],
                "sample_logprobs": [np.asarray(s.logprobs, np.float64)
                                    for s in res.sequences],
                "prompt_logprobs": np.asarray(res.prompt_logprobs[1:], np.float64)}
    finally:
        if sdk is tinkex_jax:
            service.close()


def assert_same_run(a: dict[str, Any], b: dict[str, Any], rtol: float) -> None:
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=rtol)
    for step_a, step_b in zip(a["logprobs"], b["logprobs"]):
        for x, y in zip(step_a, step_b):
            np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-5)
    assert a["tokens"] == b["tokens"]
    for x, y in zip(a["sample_logprobs"], b["sample_logprobs"]):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-5)
    np.testing.assert_allclose(a["prompt_logprobs"], b["prompt_logprobs"], rtol=rtol,
                               atol=1e-5)


@pytest.fixture(scope="module")
def four_device_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``tinkex serve --mesh fsdp=2,tp=2`` in a child process with 4 CPU devices."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    data = tmp_path_factory.mktemp("mesh-data")
    log = data.parent / "mesh-server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tinkex_jax.cli", "serve", "--port", str(port),
             "--data-dir", str(data), "--api-key", API_KEY, "--base-model", TINY,
             "--mesh", "fsdp=2,tp=2", "--long-poll-timeout", "5", "--log-level", "warning"],
            stdout=out, stderr=out, env=four_devices_env())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # a bound on start-up, not a measurement
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/api/v1/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def one_device_server(tmp_path_factory: pytest.TempPathFactory,
                      jax_backend: Any) -> Iterator[LocalServer]:
    with serve(tmp_path_factory.mktemp("one-device"), base_models=[TINY], backend=jax_backend,
               api_key=API_KEY, long_poll_timeout_s=5.0) as server:
        yield server


@pytest.mark.slow
def test_four_device_server_reports_its_mesh(four_device_server: str) -> None:
    body = httpx.get(f"{four_device_server}/api/v1/healthz").json()
    assert body == {"status": "ok", "devices": 4, "mesh": {"fsdp": 2, "tp": 2},
                    "platform": "cpu"}


@pytest.mark.slow
def test_four_device_server_trains_like_one_device_with_our_sdk(
        four_device_server: str, one_device_server: LocalServer) -> None:
    sharded = train_and_sample(tinkex_jax, four_device_server, API_KEY)
    single = train_and_sample(tinkex_jax, one_device_server.base_url, API_KEY)
    assert sharded["losses"][-1] < sharded["losses"][0]
    assert_same_run(sharded, single, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.official
def test_four_device_server_trains_like_one_device_with_the_official_sdk(
        four_device_server: str, one_device_server: LocalServer) -> None:
    tinker = pytest.importorskip("tinker")
    sharded = train_and_sample(tinker, four_device_server, API_KEY)
    single = train_and_sample(tinker, one_device_server.base_url, API_KEY)
    assert_same_run(sharded, single, rtol=1e-4)
    ours = train_and_sample(tinkex_jax, four_device_server, API_KEY)
    assert_same_run(sharded, ours, rtol=1e-6)


PLACEMENT = """
import json, tempfile
from pathlib import Path
import jax
from tinkex_jax.local import ServerConfig
from tinkex_jax.local._backend import AdapterSpec
from tinkex_jax.local._jax_backend import JaxBackend

def spread(tree):
    return sorted({len(x.sharding.device_set) for x in jax.tree.leaves(tree)})

out = {}
for mesh in (None, "tp=2", "fsdp=1"):
    backend = JaxBackend.from_config(ServerConfig(data_dir=Path(tempfile.mkdtemp()),
                                                  mesh=mesh, compilation_cache="off"))
    adapter = backend.init_adapter("tinkex-jax/tiny", AdapterSpec(rank=4, seed=0))
    restored = backend.adapter_from_arrays("tinkex-jax/tiny", AdapterSpec(rank=4, seed=0),
                                           backend.adapter_to_arrays(adapter))
    out[str(mesh)] = {"topology": backend.topology(),
                      "params": spread(backend._model("tinkex-jax/tiny").params),
                      "adapter": spread(adapter), "restored": spread(restored),
                      "optimizer": spread(backend.init_optimizer("tinkex-jax/tiny", adapter))}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_by_default_every_device_holds_the_weights() -> None:
    """4 visible devices: the default mesh is fsdp=4; base, adapter (fresh and restored) and
    AdamW state live on all four; ``fsdp=1`` is the one-device path."""
    proc = subprocess.run([sys.executable, "-c", PLACEMENT], env=four_devices_env(),
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    default = out["None"]
    assert default["topology"] == {"devices": 4, "mesh": {"fsdp": 4, "tp": 1},
                                   "platform": "cpu"}
    for part in ("params", "adapter", "restored", "optimizer"):
        assert default[part] == [4], (part, default)
    assert out["tp=2"]["topology"]["mesh"] == {"fsdp": 2, "tp": 2}
    assert out["tp=2"]["adapter"] == [4]
    assert out["fsdp=1"]["topology"]["devices"] == 1
    assert out["fsdp=1"]["adapter"] == [1]


@pytest.mark.slow
def test_a_bfloat16_server_trains(tmp_path: Path) -> None:
    with serve(tmp_path / "data", base_models=[TINY], api_key=API_KEY, dtype="bfloat16",
               long_poll_timeout_s=5.0) as server:
        model = server.engine.core.backend._model(TINY)
        assert {str(x.dtype) for x in jax.tree.leaves(model.params)} == {"bfloat16"}
        run = train_and_sample(tinkex_jax, server.base_url, API_KEY, steps=6)
    losses = run["losses"]
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(lp.dtype == np.float64 and np.all(np.isfinite(lp))
               for lp in run["sample_logprobs"])


@pytest.mark.slow
def test_the_accelerator_check_runs_on_cpu(tmp_path: Path) -> None:
    """``scripts/accelerator_check.py --fast`` on this CPU host: the parts that need a GPU or
    TPU say why they were skipped; the others report real numbers."""
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "accelerator_check.py"),
                           "--fast", "--out", str(out)], capture_output=True, text=True,
                          timeout=900, check=False, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert json.loads(proc.stdout) == report
    assert report["devices"]["platform"] == "cpu" and report["devices"]["count"] >= 1
    for part in ("memory_vs_plan", "cudnn_attention"):
        assert "GPU" in report[part]["skipped"], report[part]
    if report["devices"]["count"] == 1:
        assert "xla_force_host_platform_device_count" in report["sharded_step"]["skipped"]
    plan = report["plans"]["small"]
    assert plan["fits"] is True and plan["train_peak_gib"] > plan["params_gib"] > 0
    training = report["training"]["float32"]
    assert training["loss_went_down"] and training["tokens_per_s"] > 0
    assert "bfloat16" not in report["training"]  # no fast bfloat16 on CPU: not measured
    for mode in ("merged", "shared"):
        assert report["sampler"][mode]["tokens_per_s_batch_8"] > 0
    assert not any("error" in v for v in report.values() if isinstance(v, dict))
