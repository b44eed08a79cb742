"""Benchmark of the embedded local backend (a script, not a test).

Measures, for each preset:

* training tokens/s of one LoRA step (forward_backward + optim_step) directly through the
  jitted runtime and end to end through the HTTP server;
* the training step's achieved FLOP/s as a fraction of this machine's float32 matmul rate
  (a jitted 2048³ matmul measured in the same process). Model FLOPs are counted
  analytically, as in LOCAL_BACKEND_NOTES.md: forward = 2·N_matmul + attention (QKᵀ and AV
  over the full padded length) per token; "6N" = 3 × forward (the usual MFU convention);
  "needed" = forward + input gradients = 2 × matmul forward + 3 × attention (LoRA computes
  no gradient for the frozen base weights);
* sampling new tokens/s through the KV-cache sampler and through HTTP.

Run:  python tests/benchmarks/bench_local_backend.py [--presets tiny small] [--quick]
        [--json out.json]

Timings are medians over repeated runs after warm-up; this VM is noisy (see
LOCAL_BACKEND_NOTES.md), so compare runs made back to back.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".jax_cache"))
os.environ.setdefault("TINKER_TELEMETRY", "0")

import httpx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from tinkex_jax.local import serve  # noqa: E402
from tinkex_jax.local._jax_backend import JaxBackend  # noqa: E402
from tinkex_jax.local.model import runtime  # noqa: E402
from tinkex_jax.local.model.config import LoraSpec, ModelConfig  # noqa: E402
from tinkex_jax.local.model.hf import LoadedModel  # noqa: E402
from tinkex_jax.local.model.lora import init_lora  # noqa: E402
from tinkex_jax.local.model.sampler import Sampler  # noqa: E402
from tinkex_jax.types import (  # noqa: E402
    Datum,
    ForwardBackwardRequest,
    ModelInput,
)
from tinkex_jax.wire import encode_forward_backward_request  # noqa: E402

RANDOM_INIT: set[str] = set()


def load(name: str) -> LoadedModel:
    """The preset, or a random-init model of its shape when its files are missing."""
    from tinkex_jax.local.model.presets import PRESET_CONFIGS, PRESETS_DIR, resolve_base_model

    bare = name.split("/", 1)[-1]
    if (PRESETS_DIR / f"{bare}.safetensors").exists():
        return resolve_base_model(name)
    from tinkex_jax.local.model.decoder import init_params
    from tinkex_jax.local.model.tokenizer import build_byte_tokenizer

    RANDOM_INIT.add(name)
    cfg = PRESET_CONFIGS[bare]
    return LoadedModel(name=name, model=runtime.Model(init_params(cfg, 0), cfg),
                       tokenizer=build_byte_tokenizer(), source=PRESETS_DIR)


def median_time(fn: Callable[[], Any], *, warmup: int, runs: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_fn() -> tuple[Callable[[], Any], float]:
    """A jitted f32 2048³ matmul (blocking) and its FLOP count."""
    n = 2048
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(jnp.matmul)
    return (lambda: mm(a, b).block_until_ready()), 2.0 * n**3


def matmul_gflops(runs: int) -> float:
    fn, flops = matmul_fn()
    return flops / median_time(fn, warmup=2, runs=runs) / 1e9


def interleaved(a: Callable[[], Any], b: Callable[[], Any], rounds: int
                ) -> tuple[list[float], list[float]]:
    """Time `a` and `b` alternately (after one warm-up each), so that both see the same
    machine load: this VM is shared and its speed drifts by 2× within minutes."""
    a()
    b()
    ta, tb = [], []
    for _ in range(rounds):
        for fn, out in ((a, ta), (b, tb)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return ta, tb


def flops_per_token(cfg: ModelConfig, seq: int) -> tuple[float, float]:
    """(forward matmul FLOPs, attention FLOPs) per token at padded length `seq`."""
    d, q, kv, f = cfg.d_model, cfg.q_dim, cfg.kv_dim, cfg.d_ff
    n_matmul = cfg.n_layers * (d * q + 2 * d * kv + q * d + 3 * d * f) + d * cfg.vocab_size
    attention = cfg.n_layers * 4 * seq * q  # QK^T and AV, 2 FLOPs per multiply-add
    return 2.0 * n_matmul, float(attention)


def ce(lp: jax.Array, inputs: Any, mask: jax.Array, config: Any) -> jax.Array:
    return -lp * inputs["weights"] * mask


def random_tokens(rng: np.random.Generator, batch: int, seq: int) -> np.ndarray:
    return rng.integers(32, 127, size=(batch, seq + 1)).astype(np.int32)


def bench_training_runtime(loaded: LoadedModel, batch: int, seq: int, runs: int
                           ) -> dict[str, float]:
    """One LoRA step (forward_backward + optim_step) on a prepared batch, interleaved with
    the reference matmul; fractions are medians of per-round ratios."""
    model = loaded.model
    toks = random_tokens(np.random.default_rng(0), batch, seq)
    datums = [(t[:-1], {"target_tokens": t[1:], "weights": np.ones(seq, np.float32)})
              for t in toks]
    b, _ = runtime.make_batch(datums)
    b = jax.device_put(b)
    state: dict[str, Any] = {"lora": init_lora(model.config, LoraSpec(rank=32, seed=0))}
    state["opt"] = runtime.init_optimizer(state["lora"])
    hp = {"learning_rate": 1e-4}

    def step() -> None:
        _, grads = runtime.forward_backward(model, state["lora"], b, ce, {})
        state["lora"], state["opt"], metrics = runtime.optim_step(state["lora"], state["opt"],
                                                                 grads, hp)
        jax.block_until_ready((state["lora"], metrics))

    mm, mm_flops = matmul_fn()
    t_step, t_mm = interleaved(step, mm, runs)
    fwd_matmul, attention = flops_per_token(model.config, seq)
    tokens = batch * seq
    flops_6n = 3 * (fwd_matmul + attention) * tokens
    flops_needed = (2 * fwd_matmul + 3 * attention) * tokens
    t = statistics.median(t_step)
    return {"step_s": t, "tokens_per_s": tokens / t,
            "gflops_6n": flops_6n / t / 1e9, "gflops_needed": flops_needed / t / 1e9,
            "matmul_gflops": mm_flops / statistics.median(t_mm) / 1e9,
            "fraction_6n": statistics.median(
                (flops_6n / ts) / (mm_flops / tm) for ts, tm in zip(t_step, t_mm)),
            "fraction_needed": statistics.median(
                (flops_needed / ts) / (mm_flops / tm) for ts, tm in zip(t_step, t_mm))}


def bench_sampling_runtime(loaded: LoadedModel, num_samples: int, max_tokens: int,
                           runs: int) -> dict[str, float]:
    sampler = Sampler(loaded.model, None)
    prompt = list(b"abc=abc\nxyz=xyz\n")

    def go() -> None:
        sampler.sample(prompt, num_samples=num_samples, max_tokens=max_tokens,
                       temperature=1.0, seed=0, stop_token_ids=())

    t = median_time(go, warmup=1, runs=runs)
    return {"seconds": t, "new_tokens_per_s": num_samples * max_tokens / t}


class Http:
    """A bare client for the server (our own codecs; no SDK shell in the measurement)."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=600,
                                 headers={"X-API-Key": api_key})

    def ok(self, path: str, body: Any) -> Any:
        r = self.http.post(f"/api/v1/{path}", json=body)
        r.raise_for_status()
        return r.json()

    def wait(self, request_id: str) -> Any:
        while True:
            r = self.http.post("/api/v1/retrieve_future", json={"request_id": request_id})
            r.raise_for_status()
            if "x-protobuf" in r.headers["content-type"]:
                return r.content
            body = r.json()
            if body.get("type") != "try_again":
                assert "error" not in body, body
                return body


def bench_http(name: str, backend: JaxBackend, batch: int, seq: int, runs: int,
               num_samples: int, max_tokens: int) -> dict[str, float]:
    toks = random_tokens(np.random.default_rng(1), batch, seq)
    data = [Datum(model_input=ModelInput.from_ints(t[:-1]),
                  loss_fn_inputs={"target_tokens": t[1:].astype(np.int64),
                                  "weights": np.ones(seq, np.float32)}) for t in toks]
    with tempfile.TemporaryDirectory() as tmp, serve(tmp, base_models=[name],
                                                     backend=backend) as server:
        c = Http(server.base_url, server.api_key)
        sid = c.ok("create_session", {"tags": [], "user_metadata": {}, "sdk_version": "b"})
        sid = sid["session_id"]
        fut = c.ok("create_model", {"session_id": sid, "model_seq_id": 0, "base_model": name,
                                    "lora_config": {"rank": 32, "seed": 0}})
        model = c.wait(fut["request_id"])["model_id"]
        seq_id = [0]

        def step() -> None:
            seq_id[0] += 1
            body = encode_forward_backward_request(ForwardBackwardRequest(
                model_id=model, seq_id=seq_id[0], data=data, loss_fn="cross_entropy"))
            fb = c.http.post("/api/v1/forward_backward", content=body,
                             headers={"Content-Type": "application/x-protobuf"}).json()
            seq_id[0] += 1
            opt = c.ok("optim_step", {"model_id": model, "seq_id": seq_id[0],
                                      "adam_params": {"learning_rate": 1e-4}})
            c.wait(fb["request_id"])
            c.wait(opt["request_id"])

        t_train = median_time(step, warmup=2, runs=runs)
        sampler = c.ok("create_sampling_session", {"session_id": sid,
                                                   "sampling_session_seq_id": 0,
                                                   "base_model": name})["sampling_session_id"]
        n = [0]

        def sample() -> None:
            n[0] += 1
            fut = c.ok("asample", {
                "sampling_session_id": sampler, "seq_id": n[0], "num_samples": num_samples,
                "prompt": {"chunks": [{"type": "encoded_text",
                                       "tokens": list(b"abc=abc\nxyz=xyz\n")}]},
                "sampling_params": {"max_tokens": max_tokens, "temperature": 1.0,
                                    "seed": 0, "stop": []}})
            c.wait(fut["request_id"])

        t_sample = median_time(sample, warmup=1, runs=runs)
    return {"train_step_s": t_train, "train_tokens_per_s": batch * seq / t_train,
            "sample_s": t_sample, "sample_new_tokens_per_s": num_samples * max_tokens / t_sample}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="fewer runs, shorter sequences")
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.seq, args.max_tokens = 3, 128, 64

    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "jax": jax.__version__,
                                           "device": str(jax.devices()[0])}}
    mm = matmul_gflops(args.runs * 2)
    results["matmul_2048_f32_gflops"] = mm
    print(f"f32 2048^3 matmul: {mm:.1f} GFLOP/s (median)")
    backend = JaxBackend(loader=load)
    for short in args.presets:
        name = f"tinkex-jax/{short}"
        loaded = backend._load(name)
        cfg = loaded.config
        note = " (random init: preset files missing)" if name in RANDOM_INIT else ""
        print(f"\n== {name}{note}: {cfg.num_params() / 1e6:.2f} M params, "
              f"{cfg.n_layers} layers, d {cfg.d_model}, LoRA rank 32")
        train = bench_training_runtime(loaded, args.batch, args.seq, args.runs)
        print(f"train (runtime) batch {args.batch} x {args.seq}: {train['step_s'] * 1e3:.0f} "
              f"ms/step, {train['tokens_per_s']:.0f} tok/s, {train['gflops_6n']:.1f} GFLOP/s "
              f"(6N), {train['gflops_needed']:.1f} (needed); interleaved matmul "
              f"{train['matmul_gflops']:.1f} GFLOP/s -> {100 * train['fraction_6n']:.1f} % (6N), "
              f"{100 * train['fraction_needed']:.1f} % (needed) of the matmul rate")
        samp = bench_sampling_runtime(loaded, args.samples, args.max_tokens, args.runs)
        samp1 = bench_sampling_runtime(loaded, 1, args.max_tokens, args.runs)
        print(f"sample (runtime): B={args.samples}: {samp['new_tokens_per_s']:.0f} new tok/s; "
              f"B=1: {samp1['new_tokens_per_s']:.0f} new tok/s ({args.max_tokens} tokens)")
        entry = {"params": cfg.num_params(), "random_init": name in RANDOM_INIT,
                 "train_runtime": train, "sample_runtime": samp, "sample_runtime_b1": samp1,
                 "train_fraction_of_matmul_6n": train["fraction_6n"],
                 "train_fraction_of_matmul_needed": train["fraction_needed"]}
        if not args.no_http:
            http = bench_http(name, backend, args.batch, args.seq, args.runs, args.samples,
                              args.max_tokens)
            print(f"HTTP: train {http['train_tokens_per_s']:.0f} tok/s "
                  f"({http['train_step_s'] * 1e3:.0f} ms/step); sample "
                  f"{http['sample_new_tokens_per_s']:.0f} new tok/s")
            entry["http"] = http
        results[name] = entry
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
