"""Benchmark: the client-side half of forward_backward_custom, JAX vs the official SDK's torch.

Workload: 128 datums x 2048 tokens. Starting from the forward pass's result (per-datum
logprobs, as each SDK holds it after decoding), evaluate a custom loss (weighted NLL) plus
three regularizers (L2, entropy bonus, KL to reference logprobs carried as a loss_fn_input),
differentiate it with respect to the logprobs and build the surrogate datums
(``weights = -grad``) that the backward phase sends.

* tinkex_jax: ``CustomLoss.prepare`` (pad into a bucket) + ``evaluate`` (one jit-compiled
  value_and_grad with per-term metrics) + ``surrogate_data``. Compile time is reported on
  its own (first call, persistent compilation cache off).
* official ``tinker==0.38.0``: its own ``TrainingClient._compute_custom_loss`` (tensors from
  the result, the user's torch loss written per datum as its docs show, ``backward()``,
  surrogate datums), with the same math, written per datum as its docs show and, as a
  second line, vectorised by hand (torch.stack, possible because the lengths are equal); needs ``pip install -e ".[bench]"`` (torch 2.13.0).

Both sides compute the same numbers: the script checks the loss and the gradients agree.

Run:  python tests/benchmarks/bench_custom_loss.py [--datums 128] [--tokens 2048] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)  # measure the real compile

import numpy as np

W_L2, W_ENTROPY, W_KL = 0.01, 0.05, 0.1


def make_arrays(n_datums: int, n_tokens: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    logprobs = [rng.uniform(-6.0, -0.01, n_tokens).astype(np.float32) for _ in range(n_datums)]
    return {
        "tokens": [rng.integers(0, 150_000, n_tokens + 1) for _ in range(n_datums)],
        "weights": [(rng.random(n_tokens) > 0.3).astype(np.float32) for _ in range(n_datums)],
        "reference": [(lp + rng.normal(0, 0.1, n_tokens)).astype(np.float32)
                      for lp in logprobs],
        "logprobs": logprobs,
    }


# ----------------------------------------------------------------------------- tinkex_jax


def jax_side(arrays: dict[str, list[np.ndarray]]) -> tuple[Callable[[], Any], Any]:
    import jax.numpy as jnp

    import losses
    from regularizers import entropy, kl, l2
    from tinkex_jax import Datum, ForwardBackwardOutput, ModelInput, TensorData
    from tinkex_jax.custom_loss import CustomLoss, surrogate_data, surrogate_forward_data

    data = [Datum(model_input=ModelInput.from_ints(tok[:-1]),
                  loss_fn_inputs={"target_tokens": tok[1:], "weights": w, "reference": ref})
            for tok, w, ref in zip(arrays["tokens"], arrays["weights"], arrays["reference"],
                                   strict=True)]
    forward = ForwardBackwardOutput(loss_fn_outputs=[
        {"logprobs": TensorData.from_numpy(lp)} for lp in arrays["logprobs"]])

    def nll(logprobs: Any, batch: Any) -> tuple[Any, dict[str, Any]]:
        return losses.cross_entropy(logprobs, batch.inputs["weights"], where=batch.mask,
                                    reduction="sum"), {}

    custom = CustomLoss(nll, [("l2", l2(), W_L2),
                              ("entropy", entropy(estimator="plugin"), W_ENTROPY),
                              ("kl", kl(reference="reference"), W_KL)])
    forward_data = surrogate_forward_data(data)

    def run() -> Any:
        prepared = custom.prepare([{k: v.to_numpy() for k, v in d.loss_fn_inputs.items()}
                                   for d in data])
        logprobs = [out["logprobs"].to_numpy() for out in forward.loss_fn_outputs]
        result = custom.evaluate(logprobs, prepared)
        return result, surrogate_data(forward_data, result.grads)

    def check_once() -> None:  # the pre-send check (traces, compiles nothing)
        custom.check(custom.prepare([{k: v.to_numpy() for k, v in d.loss_fn_inputs.items()}
                                     for d in data]))

    _ = jnp  # imported to include JAX's import in nothing that is timed
    return run, check_once


# ----------------------------------------------------------------------------- official


def official_side(arrays: dict[str, list[np.ndarray]]
                  ) -> tuple[Callable[[], Any], Callable[[], Any]]:
    import tinker
    import torch
    from tinker.lib.public_interfaces.training_client import TrainingClient

    data = [tinker.Datum(model_input=tinker.ModelInput.from_ints(tok[:-1].tolist()),
                         loss_fn_inputs={"target_tokens": tinker.TensorData.from_numpy(tok[1:]),
                                         "weights": tinker.TensorData.from_numpy(w),
                                         "reference": tinker.TensorData.from_numpy(ref)})
            for tok, w, ref in zip(arrays["tokens"], arrays["weights"], arrays["reference"],
                                   strict=True)]
    forward = tinker.ForwardBackwardOutput(
        loss_fn_output_type="ArrayRecord", metrics={"loss:sum": 0.0},
        loss_fn_outputs=[{"logprobs": tinker.TensorData.from_numpy(lp)}
                         for lp in arrays["logprobs"]])

    def loss_fn(data: list[Any], logprobs_list: list[Any]) -> tuple[Any, dict[str, float]]:
        nll = torch.zeros(())
        l2s, entropies, kls = [], [], []
        for datum, lp in zip(data, logprobs_list, strict=True):
            weights = datum.loss_fn_inputs["weights"].to_torch()
            reference = datum.loss_fn_inputs["reference"].to_torch()
            nll = nll - (lp * weights).sum()
            l2s.append((lp ** 2).mean())
            entropies.append(lp.mean())  # -H with H = mean(-lp): an entropy bonus
            log_ratio = reference - lp
            kls.append((torch.exp(log_ratio) - 1 - log_ratio).mean())  # k3, reverse KL
        l2, ent, kl = torch.stack(l2s).mean(), torch.stack(entropies).mean(), \
            torch.stack(kls).mean()
        loss = nll + W_L2 * l2 + W_ENTROPY * ent + W_KL * kl
        return loss, {"l2:mean": l2.item(), "entropy:mean": ent.item(), "kl:mean": kl.item()}

    def loss_fn_stacked(data: list[Any], logprobs_list: list[Any]
                        ) -> tuple[Any, dict[str, float]]:
        """The same loss vectorised by hand (possible here because every datum has the same
        length; ragged data would need padding and masks)."""
        lp = torch.stack(logprobs_list)
        weights = torch.stack([d.loss_fn_inputs["weights"].to_torch() for d in data])
        reference = torch.stack([d.loss_fn_inputs["reference"].to_torch() for d in data])
        log_ratio = reference - lp
        l2, ent = (lp ** 2).mean(dim=1).mean(), lp.mean(dim=1).mean()
        kl = (torch.exp(log_ratio) - 1 - log_ratio).mean(dim=1).mean()
        loss = -(lp * weights).sum() + W_L2 * l2 + W_ENTROPY * ent + W_KL * kl
        return loss, {"l2:mean": l2.item(), "entropy:mean": ent.item(), "kl:mean": kl.item()}

    def run() -> Any:
        return TrainingClient._compute_custom_loss(data, loss_fn, forward)

    def run_stacked() -> Any:
        return TrainingClient._compute_custom_loss(data, loss_fn_stacked, forward)

    return run, run_stacked


# ----------------------------------------------------------------------------- timing


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datums", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    arrays = make_arrays(args.datums, args.tokens)
    print(f"custom loss + 3 regularizers, {args.datums} datums x {args.tokens} tokens, "
          f"median of {args.repeats}")

    run_jax, check_once = jax_side(arrays)
    start = time.perf_counter()
    check_once()
    trace_s = time.perf_counter() - start
    start = time.perf_counter()
    run_jax()
    first_s = time.perf_counter() - start
    jax_s, (jax_result, _) = timed(run_jax, args.repeats)
    print(f"  tinkex_jax (jit)   : {jax_s * 1e3:9.1f} ms   (trace {trace_s * 1e3:.0f} ms, "
          f"first call incl. compile {first_s * 1e3:.0f} ms)")

    try:
        run_official, run_stacked = official_side(arrays)
    except ImportError as error:
        print(f"  official tinker    : skipped ({error}); pip install -e '.[bench]'")
        return
    run_official()  # warm-up
    official_s, official_result = timed(run_official, args.repeats)
    run_stacked()
    stacked_s, _ = timed(run_stacked, args.repeats)
    print(f"  official (torch)   : {official_s * 1e3:9.1f} ms   (loss per datum, as its docs show)")
    print(f"  official, stacked  : {stacked_s * 1e3:9.1f} ms   (loss vectorised by hand)")
    print(f"  ratio official/ours: {official_s / jax_s:9.2f}x   (stacked: "
          f"{stacked_s / jax_s:.2f}x)")

    official_grads = [-d.loss_fn_inputs["weights"].to_numpy() for d in official_result.data]
    diff = max(float(np.abs(a - b).max())
               for a, b in zip(jax_result.grads, official_grads, strict=True))
    print(f"  agreement          : loss {jax_result.loss:.3f} vs "
          f"{official_result.loss_sum:.3f}, max |grad diff| {diff:.2e}")


if __name__ == "__main__":
    main()
