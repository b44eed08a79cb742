"""What the local backend does on a GPU or TPU that a CPU cannot show; prints a JSON report.

On an accelerator host (a few minutes on one GPU) it reports:

* ``devices``: platform, count, kinds, memory per device and the nominal bfloat16 peak;
* ``plans``: ``tinkex plan`` for the targets of docs/local-backend.md (Qwen3-0.6B at 8,192
  tokens on a 16 GB device, Qwen3-8B at 4,096 on an 80 GB one, Qwen3-1.7B at 2,048 on a TPU
  v2-8 when 8 TPU devices are there), compiled for this platform;
* ``training``: a few LoRA steps of a random Qwen3-0.6B-shaped model in bfloat16 and float32:
  step time, tokens/s, the loss going down, and model FLOP utilisation (model FLOPs by the
  usual "6N" convention: 3 x the forward pass's matmul and attention FLOPs per token) against
  the device's nominal bfloat16 peak and against a bfloat16 matmul measured here;
* ``memory_vs_plan``: the real peak device memory of a training step and of sampling (each in
  a fresh process, from the device's ``peak_bytes_in_use``) against `plan_memory`'s
  prediction, for a couple of shapes;
* ``sharded_step``: one training step on a mesh over every device against one device (needs
  two or more devices);
* ``cudnn_attention``: whether ``jax.nn.dot_product_attention`` gets cuDNN's fused kernel for
  these shapes, its agreement with XLA's attention, and a training step with
  ``attention="cudnn"`` against ``"chunked"`` (GPU only);
* ``sampler``: new tokens/s of merged, shared and stacked sampler weights at batch 1 and 8.

On a CPU-only host the accelerator parts say why they were skipped and the rest runs on
small shapes. ``--fast`` uses small shapes everywhere (a quick smoke run); ``--all`` runs the
accelerator parts on CPU too (to test this script; their numbers mean nothing there).

Run::

    python scripts/accelerator_check.py [--fast] [--all] [--out report.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from tinkex_jax.local.model import runtime
from tinkex_jax.local.model.config import LoraSpec, ModelConfig
from tinkex_jax.local.model.decoder import init_params
from tinkex_jax.local.model.hf import config_from_hf
from tinkex_jax.local.model.lora import init_lora
from tinkex_jax.local.model.options import RunOptions
from tinkex_jax.local.model.sampler import Sampler

QWEN3: dict[str, dict[str, Any]] = {
    # Published shapes of the Qwen3 family (config.json fields); weights are random here.
    "Qwen3-0.6B": {"hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16,
                   "num_key_value_heads": 8, "intermediate_size": 3072,
                   "tie_word_embeddings": True},
    "Qwen3-1.7B": {"hidden_size": 2048, "num_hidden_layers": 28, "num_attention_heads": 16,
                   "num_key_value_heads": 8, "intermediate_size": 6144,
                   "tie_word_embeddings": True},
    "Qwen3-8B": {"hidden_size": 4096, "num_hidden_layers": 36, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "intermediate_size": 12288,
                 "tie_word_embeddings": False},
}
QWEN3_COMMON = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
                "vocab_size": 151936, "head_dim": 128, "rope_theta": 1_000_000.0,
                "rms_norm_eps": 1e-6, "max_position_embeddings": 40960,
                "torch_dtype": "bfloat16"}
SMALL = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 1024,
         "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 32, "intermediate_size": 384,
         "tie_word_embeddings": True, "max_position_embeddings": 4096,
         "torch_dtype": "bfloat16"}

BF16_PEAK = {  # nominal dense bfloat16 FLOP/s per device, by a substring of device_kind
    "H200": 989e12, "H100": 989e12, "GH200": 989e12, "A100": 312e12, "L40S": 362e12,
    "L4": 121e12, "A10": 125e12, "T4": 65e12, "V100": 125e12,
    "TPU v6": 918e12, "TPU v5p": 459e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12,
    "TPU v4": 275e12, "TPU v3": 61.5e12, "TPU v2": 23e12,
}


def qwen3(name: str, layers: int | None = None) -> dict[str, Any]:
    """The config.json of a Qwen3 model (optionally with fewer layers)."""
    hf = {**QWEN3_COMMON, **QWEN3[name]}
    if layers is not None:
        hf["num_hidden_layers"] = layers
    return hf


def ce(lp: jax.Array, inputs: Any, mask: jax.Array, config: Any) -> jax.Array:
    return -lp * inputs["weights"] * mask


def timed(fn: Callable[[], Any], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - start)
    return out


def skipped(reason: str) -> dict[str, Any]:
    return {"skipped": reason}


def guarded(name: str, fn: Callable[[], Any]) -> Any:
    """Runs one part; a failure becomes its report entry instead of ending the script."""
    start = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:  # a report, not a crash: the other parts still run
        result = {"error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()[-2000:]}
    if isinstance(result, dict):
        result.setdefault("seconds", round(time.perf_counter() - start, 1))
    print(f"[accelerator_check] {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr,
          flush=True)
    return result


# ---------------------------------------------------------------------- parts


def devices_report() -> dict[str, Any]:
    devs = jax.devices()
    kind = devs[0].device_kind
    memory = None
    with contextlib.suppress(Exception):
        memory = (devs[0].memory_stats() or {}).get("bytes_limit")
    return {"platform": devs[0].platform, "count": len(devs),
            "kinds": sorted({d.device_kind for d in devs}), "jax": jax.__version__,
            "bytes_per_device": memory, "bf16_peak_flops": peak_flops(kind)}


def peak_flops(kind: str) -> float | None:
    for key, value in BF16_PEAK.items():
        if key.lower() in kind.lower():
            return value
    return None


def plans_report(fast: bool, platform: str, count: int, tmp: Path) -> dict[str, Any]:
    """``tinkex plan --json`` for the documented targets (in this process)."""
    from tinkex_jax.cli import main

    targets: list[tuple[str, dict[str, Any], int, str, list[str]]]
    if fast:
        targets = [("small", SMALL, 512, "t4", [])]
    else:
        targets = [("Qwen3-0.6B", qwen3("Qwen3-0.6B"), 8192, "t4", []),
                   ("Qwen3-8B", qwen3("Qwen3-8B"), 4096, "h100", [])]
        if platform == "tpu" and count >= 8:
            targets.append(("Qwen3-1.7B", qwen3("Qwen3-1.7B"), 2048, "tpu-v2-8",
                            ["--mesh", "fsdp=8"]))
    out: dict[str, Any] = {}
    for name, hf, seq, device, extra in targets:
        path = tmp / f"{name}.json"
        path.write_text(json.dumps(hf))
        buf = io.StringIO()
        argv = ["plan", "--config", str(path), "--seq-len", str(seq), "--dtype", "bfloat16",
                "--device", device, "--json", *extra]
        if platform != "tpu":
            argv += ["--devices", "1"]
        with contextlib.redirect_stdout(buf):
            code = main(argv)
        if code != 0:
            out[name] = {"error": f"tinkex plan exited {code}", "argv": argv}
            continue
        plan = json.loads(buf.getvalue())
        out[name] = {"seq_len": seq, "device": device, "fits": plan["fits"],
                     "train_peak_gib": gib(plan["train_peak_bytes_per_device"]),
                     "sample_peak_gib": gib(plan["sample_peak_bytes_per_device"]),
                     "params_gib": gib(plan["params_bytes_per_device"]),
                     "remat": plan["remat"], "attention": plan["attention"],
                     "sampler_weights": plan["sampler_weights"], "platform": plan["platform"]}
    return out


def gib(n: float) -> float:
    return round(n / 2**30, 3)


def random_batch(config: ModelConfig, batch: int, seq: int, seed: int = 0) -> runtime.Batch:
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, config.vocab_size, size=(batch, seq + 1)).astype(np.int32)
    datums = [(t[:-1], {"target_tokens": t[1:], "weights": np.ones(seq, np.float32)})
              for t in toks]
    b, _ = runtime.make_batch(datums)
    return b


def setup_training(hf: dict[str, Any], dtype: str, seq: int, batch: int,
                   options: RunOptions, rank: int = 32) -> dict[str, Any]:
    config = config_from_hf(hf)
    params = init_params(config, dtype=jnp.dtype(dtype))
    if options.mesh is not None:
        from tinkex_jax.local.model.sharding import shard_params

        params = shard_params(params, options.mesh)
    model = runtime.Model(params, config, options)
    lora = init_lora(config, LoraSpec(rank=rank, seed=0), mesh=options.mesh)
    return {"config": config, "model": model, "lora": lora,
            "opt": runtime.init_optimizer(lora), "batch": random_batch(config, batch, seq)}


def train_steps(state: dict[str, Any], steps: int, lr: float = 1e-3) -> tuple[list[float],
                                                                              list[float]]:
    """`steps` LoRA steps on one fixed batch: (losses, step times; the first compiles)."""
    hp = {"learning_rate": lr}
    losses, times = [], []
    for _ in range(steps):
        start = time.perf_counter()
        out, grads = runtime.forward_backward(state["model"], state["lora"], state["batch"],
                                              ce, {})
        state["lora"], state["opt"], _ = runtime.optim_step(state["lora"], state["opt"],
                                                            grads, hp)
        jax.block_until_ready(state["lora"])
        times.append(time.perf_counter() - start)
        losses.append(float(out.loss))
    return losses, times


def model_flops(config: ModelConfig, seq: int, tokens: int) -> float:
    """"6N" model FLOPs of a training step: 3 x (matmul + attention) forward FLOPs."""
    d, q, kv, f = config.d_model, config.q_dim, config.kv_dim, config.d_ff
    n_matmul = config.n_layers * (d * q + 2 * d * kv + q * d + 3 * d * f) \
        + d * config.vocab_size
    attention = config.n_layers * 4 * seq * q
    return 3.0 * (2.0 * n_matmul + attention) * tokens


def matmul_tflops(dtype: str, n: int) -> float:
    a = jnp.ones((n, n), dtype)
    fn = jax.jit(lambda x: x @ x)
    fn(a).block_until_ready()
    t = statistics.median(timed(lambda: fn(a), 5))
    return 2 * n**3 / t / 1e12


def training_report(fast: bool, accelerator: bool, peak: float | None) -> dict[str, Any]:
    hf = SMALL if fast else qwen3("Qwen3-0.6B")
    seq, batch, steps = (128, 2, 4) if fast else (2048, 8, 6)
    dtypes = ["bfloat16", "float32"] if accelerator else ["float32"]
    out: dict[str, Any] = {"model": "small" if fast else "Qwen3-0.6B (random weights)",
                           "seq_len": seq, "batch": batch, "rank": 32}
    if accelerator:
        size = 8192 if jax.default_backend() != "cpu" and not fast else 512
        out["matmul_bf16_tflops"] = round(matmul_tflops("bfloat16", size), 3)
    for dtype in dtypes:
        state = setup_training(hf, dtype, seq, batch, RunOptions())
        losses, times = train_steps(state, steps)
        step = statistics.median(times[1:])
        flops = model_flops(state["config"], seq, seq * batch)
        entry = {"compile_and_first_step_s": round(times[0], 2), "step_s": round(step, 4),
                 "tokens_per_s": round(seq * batch / step), "loss_first": losses[0],
                 "loss_last": losses[-1], "loss_went_down": losses[-1] < losses[0],
                 "model_tflops_per_s": round(flops / step / 1e12, 2)}
        if peak:
            entry["mfu_vs_nominal_bf16_peak"] = round(flops / step / peak, 3)
        if "matmul_bf16_tflops" in out:
            entry["mfu_vs_measured_bf16_matmul"] = round(
                flops / step / 1e12 / out["matmul_bf16_tflops"], 3)
        out[dtype] = entry
        del state
    if "bfloat16" in out and "float32" in out:
        out["bf16_speedup"] = round(out["float32"]["step_s"] / out["bfloat16"]["step_s"], 2)
    return out


MEASURE_FLAG = "--measure-peak"


def measure_peak(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: the device's peak memory over one training step or one sample."""
    options = RunOptions()
    state = setup_training(spec["hf"], spec["dtype"], spec["seq"], spec["batch"], options,
                           rank=spec["rank"])
    device = jax.devices()[0]
    if spec["phase"] == "train":
        train_steps(state, 2)
    else:
        sampler = Sampler(state["model"], state["lora"])
        prompt = list(range(1, spec["seq"] // 2))
        sampler.sample(prompt, num_samples=1, max_tokens=spec["seq"] - len(prompt),
                       temperature=1.0, seed=0)
    stats = device.memory_stats() or {}
    return {"peak_bytes": stats.get("peak_bytes_in_use"),
            "in_use_bytes": stats.get("bytes_in_use")}


def memory_report(fast: bool, tmp: Path) -> dict[str, Any]:
    from tinkex_jax.local.model.plan import plan_memory

    if fast:
        shapes = [("small", SMALL, 256), ("small", SMALL, 1024)]
    else:
        shapes = [("Qwen3-0.6B, 8 layers", qwen3("Qwen3-0.6B", 8), 2048),
                  ("Qwen3-0.6B", qwen3("Qwen3-0.6B"), 8192)]
    rows = []
    for name, hf, seq in shapes:
        plan = plan_memory(hf, seq_len=seq, batch=1, rank=32, dtype="bfloat16")
        row: dict[str, Any] = {"model": name, "seq_len": seq, "dtype": "bfloat16"}
        for phase, predicted in (("train", plan.train_peak_bytes_per_device),
                                 ("sample", plan.sample_peak_bytes_per_device)):
            spec = {"hf": hf, "seq": seq, "batch": 1, "rank": 32, "dtype": "bfloat16",
                    "phase": phase}
            proc = subprocess.run([sys.executable, __file__, MEASURE_FLAG, json.dumps(spec)],
                                  capture_output=True, text=True, timeout=900, check=False)
            if proc.returncode != 0:
                row[phase] = {"error": proc.stderr[-1500:]}
                continue
            real = json.loads(proc.stdout.strip().splitlines()[-1])
            entry: dict[str, Any] = {"planned_gib": gib(predicted)}
            if real["peak_bytes"] is None:
                entry["real"] = "this device does not report peak_bytes_in_use"
            else:
                entry["real_gib"] = gib(real["peak_bytes"])
                entry["real_over_planned"] = round(real["peak_bytes"] / predicted, 3)
            row[phase] = entry
        rows.append(row)
    return {"shapes": rows}


def sharded_report(fast: bool) -> dict[str, Any]:
    from tinkex_jax.local.model.sharding import make_mesh

    n = jax.device_count()
    hf = SMALL if fast else qwen3("Qwen3-0.6B", 8)
    seq, batch = (256, 2 * n) if fast else (2048, 2 * n)
    dtype = "float32"  # exact comparison; bf16 speed is measured in `training`
    one = setup_training(hf, dtype, seq, batch, RunOptions())
    mesh = make_mesh(fsdp=n)
    many = setup_training(hf, dtype, seq, batch, RunOptions(mesh=mesh))
    l1, t1 = train_steps(one, 3)
    ln, tn = train_steps(many, 3)
    return {"devices": n, "mesh": {"fsdp": n, "tp": 1}, "seq_len": seq, "batch": batch,
            "losses_one_device": l1, "losses_mesh": ln,
            "largest_relative_loss_difference": float(max(
                abs(a - b) / max(abs(a), 1e-12) for a, b in zip(l1, ln))),
            "step_s_one_device": round(statistics.median(t1[1:]), 4),
            "step_s_mesh": round(statistics.median(tn[1:]), 4)}


CUDNN_CALL = "__cudnn$fmha"
"""Prefix of the custom calls JAX emits for cuDNN's fused attention (in the lowered program)."""


def cudnn_report(fast: bool) -> dict[str, Any]:
    B, T, H, KV, h = (1, 256, 4, 2, 64) if fast else (4, 2048, 16, 8, 128)
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (B, T, H, h), jnp.bfloat16)
    k = jax.random.normal(keys[1], (B, T, KV, h), jnp.bfloat16)
    v = jax.random.normal(keys[2], (B, T, KV, h), jnp.bfloat16)
    out: dict[str, Any] = {"shape": {"batch": B, "tokens": T, "heads": H, "kv_heads": KV,
                                     "head_dim": h}}

    def attention(impl: Literal["xla", "cudnn"]) -> Any:
        return jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, is_causal=True, implementation=impl))

    xla = attention("xla")
    ref = xla(q, k, v)
    out["xla_ms"] = round(1e3 * statistics.median(timed(lambda: xla(q, k, v), 10)), 3)
    try:
        cud = attention("cudnn")
        got = cud(q, k, v)
        out["kernel_used"] = CUDNN_CALL in cud.lower(q, k, v).as_text()
        out["max_abs_difference_vs_xla"] = float(jnp.max(jnp.abs(
            got.astype(jnp.float32) - ref.astype(jnp.float32))))
        out["cudnn_ms"] = round(1e3 * statistics.median(timed(lambda: cud(q, k, v), 10)), 3)
    except Exception as exc:  # cuDNN refused: the model layer falls back to "chunked"
        out["kernel_used"] = False
        out["refused"] = f"{type(exc).__name__}: {str(exc)[:300]}"

    # The model layer's own choice: the compiled training step with attention="cudnn".
    hf = SMALL if fast else qwen3("Qwen3-0.6B", 8)
    seq, batch = (256, 2) if fast else (2048, 4)
    steps = {}
    for impl in ("cudnn", "chunked"):
        state = setup_training(hf, "bfloat16", seq, batch, RunOptions(attention=impl))
        lowered = runtime._forward_backward_jit.lower(
            state["model"], state["lora"], state["batch"], ce, {})
        losses, times = train_steps(state, 3)
        steps[impl] = {"loss_first": losses[0], "step_s": round(statistics.median(times[1:]), 4),
                       "cudnn_in_step": CUDNN_CALL in lowered.as_text()}
    out["training_step"] = steps
    out["training_loss_relative_difference"] = abs(
        steps["cudnn"]["loss_first"] - steps["chunked"]["loss_first"]) / abs(
        steps["chunked"]["loss_first"])
    return out


def sampler_report(fast: bool, accelerator: bool) -> dict[str, Any]:
    hf = SMALL if fast else qwen3("Qwen3-0.6B")
    dtype = "bfloat16" if accelerator else "float32"
    new = 16 if fast else 128
    state = setup_training(hf, dtype, 64, 1, RunOptions())
    out: dict[str, Any] = {"model": "small" if fast else "Qwen3-0.6B (random weights)",
                           "dtype": dtype, "new_tokens": new, "prompt_tokens": 32}
    prompt = list(range(1, 33))
    for mode in ("merged", "shared") if fast else ("merged", "shared", "stacked"):
        model = replace(state["model"], options=RunOptions(sampler_weights=mode))
        sampler = Sampler(model, state["lora"])
        entry = {}
        for samples in (1, 8):
            def run(sampler: Sampler = sampler, samples: int = samples) -> int:
                res = sampler.sample(prompt, num_samples=samples, max_tokens=new,
                                     temperature=1.0, seed=0)
                return sum(len(s.tokens) for s in res.sequences)

            run()  # compile
            start = time.perf_counter()
            tokens = run()
            entry[f"tokens_per_s_batch_{samples}"] = round(tokens / (time.perf_counter()
                                                                     - start))
        out[mode] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="small shapes (a smoke run)")
    parser.add_argument("--all", action="store_true",
                        help="run the accelerator parts on CPU too (tests this script)")
    parser.add_argument("--out", default=None, help="also write the report to this file")
    parser.add_argument(MEASURE_FLAG, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_peak:
        print(json.dumps(measure_peak(json.loads(args.measure_peak))))
        return 0
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="accelerator-check-"))
    devices = devices_report()
    platform, count = devices["platform"], devices["count"]
    accelerator = platform != "cpu"
    run_all = accelerator or args.all
    no_acc = "no GPU or TPU here (platform cpu); run this script on an accelerator host"
    report: dict[str, Any] = {"devices": devices, "fast": args.fast}
    report["plans"] = guarded("plans", lambda: plans_report(args.fast, platform, count, tmp))
    report["training"] = guarded("training", lambda: training_report(
        args.fast, run_all, devices["bf16_peak_flops"]))
    report["memory_vs_plan"] = (guarded("memory", lambda: memory_report(args.fast, tmp))
                                if run_all else skipped(no_acc))
    report["sharded_step"] = (
        guarded("sharded", lambda: sharded_report(args.fast)) if count > 1
        else skipped(f"one {platform} device; on CPU simulate several with "
                     "XLA_FLAGS=--xla_force_host_platform_device_count=4"))
    report["cudnn_attention"] = (guarded("cudnn", lambda: cudnn_report(args.fast))
                                 if platform == "gpu" or args.all
                                 else skipped(f"cuDNN is GPU only (platform {platform})"))
    report["sampler"] = guarded("sampler", lambda: sampler_report(args.fast, run_all))
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TINKER_TELEMETRY", "0")
    raise SystemExit(main())
