"""Benchmark the model layer on the built-in presets: LoRA training steps and sampling.

Prints, per preset: the first-call time (compile, or load from the persistent cache), the
median step time and tokens/s of a LoRA rank-8 training step (``forward_backward`` +
``optim_step``, all weights adapted) at a few bucket shapes, a ``forward`` step, and KV-cache
sampling throughput (new tokens/s) at batch 1 and 8.

Usage::

    JAX_COMPILATION_CACHE_DIR=.jax_cache python scripts/bench_model.py [--presets tiny small]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import numpy as np

from tinkex_jax.local.model import (
    LoraSpec,
    Sampler,
    forward,
    forward_backward,
    init_lora,
    init_optimizer,
    load_preset,
    make_batch,
    optim_step,
)


def cross_entropy(lp: jax.Array, inputs: Any, mask: jax.Array, config: Any) -> jax.Array:
    return -lp * inputs["weights"] * mask


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(first call seconds, median of `repeats` later calls in seconds)."""
    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return first, statistics.median(times)


def _train_step(model: Any, state: dict[str, Any], batch: Any) -> Any:
    _, grads = forward_backward(model, state["lora"], batch, cross_entropy)
    state["lora"], state["opt"], metrics = optim_step(state["lora"], state["opt"], grads,
                                                      {"learning_rate": 1e-4})
    return metrics


def bench(name: str, repeats: int) -> None:
    base = load_preset(f"tinkex-jax/{name}")
    model = base.model
    rng = np.random.default_rng(0)
    print(f"\n== tinkex-jax/{name}: {base.config.num_params():,} params")
    for B, T in [(8, 128), (64, 24)]:
        data = [(rng.integers(0, 256, T), {"target_tokens": rng.integers(0, 256, T),
                                           "weights": np.ones(T, np.float32)})
                for _ in range(B)]
        batch, _ = make_batch(data)
        state: dict[str, Any] = {"lora": init_lora(model.config, LoraSpec(rank=8))}
        state["opt"] = init_optimizer(state["lora"])
        first, med = timed(partial(_train_step, model, state, batch), repeats)
        print(f"train  LoRA r8  B={B:3d} T={T:3d}: first call {first:5.2f}s, "
              f"step {med * 1e3:7.1f} ms, {B * T / med:9,.0f} tokens/s")
        first, med = timed(partial(forward, model, state["lora"], batch, cross_entropy),
                           repeats)
        print(f"forward         B={B:3d} T={T:3d}: first call {first:5.2f}s, "
              f"step {med * 1e3:7.1f} ms, {B * T / med:9,.0f} tokens/s")
    sampler = Sampler(model, init_lora(model.config, LoraSpec(rank=8)))
    prompt = list(rng.integers(0, 256, 16))
    for n in (1, 8):
        new = 128
        run = partial(sampler.sample, prompt, num_samples=n, max_tokens=new, temperature=0.8,
                      seed=0)
        first, med = timed(run, max(3, repeats // 2))
        print(f"sample          B={n:3d} new={new}: first call {first:5.2f}s, "
              f"{med * 1e3:7.1f} ms/request, {n * new / med:9,.0f} new tokens/s "
              f"({med / new * 1e3:.3f} ms/step)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    for name in args.presets:
        bench(name, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
