"""Check that rank-8 LoRA on ``tinkex-jax/tiny`` learns string reversal quickly.

The README demo does this through the server; this script drives the model layer directly
(`make_batch` → `forward_backward` → `optim_step`, exactly what the server calls) and reports
wall time and held-out greedy exact match per seed.

Task: ``"abc="`` → ``"cba\\n"`` for random lowercase words of 3–8 letters; the loss is
cross-entropy on the completion tokens only (summed, Tinker semantics). 256 held-out words
never appear in training. Exact match is measured teacher-forced (argmax at every
completion position equals the target, which is equivalent to greedy decoding) every
``--eval-every`` steps, and confirmed at the end with the real KV-cache `Sampler`.

Usage::

    JAX_COMPILATION_CACHE_DIR=.jax_cache python scripts/reversal_lora.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tinkex_jax.local.model import (
    LoraSpec,
    Sampler,
    forward_backward,
    init_lora,
    init_optimizer,
    load_preset,
    logits,
    make_batch,
    optim_step,
)
from tinkex_jax.local.model.tasks import reversal_example, words_for


def cross_entropy(lp: jax.Array, inputs: Any, mask: jax.Array, config: Any) -> jax.Array:
    return -lp * inputs["weights"] * mask


def datum(word: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    prompt, completion = (s.encode() for s in reversal_example(word))
    seq = list(prompt + completion)
    weights = [0.0] * (len(prompt) - 1) + [1.0] * len(completion)
    return np.array(seq[:-1]), {"target_tokens": np.array(seq[1:]),
                                "weights": np.array(weights, np.float32)}


def run(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    base = load_preset(args.preset)
    model = base.model
    rng = np.random.default_rng(seed)
    heldout = words_for(rng, 256, 3, 8)
    held = set(heldout)
    eval_batch, _ = make_batch([datum(w) for w in heldout])
    eval_logits = jax.jit(logits, static_argnames=("config",))

    def exact_match(lora: Any) -> float:
        lg = eval_logits(model.params, lora, eval_batch.tokens, config=model.config)
        pred = np.asarray(jnp.argmax(lg, -1))
        w = eval_batch.inputs["weights"] > 0
        ok = np.all((pred == eval_batch.targets) | ~w, axis=1)[:len(heldout)]
        return float(ok.mean())

    spec = LoraSpec(rank=args.rank, seed=seed, alpha=args.alpha)
    lora = init_lora(model.config, spec)
    state = init_optimizer(lora)
    adam = {"learning_rate": args.lr, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8,
            "weight_decay": 0.0, "grad_clip_norm": args.clip}
    print(f"  seed {seed} step    0 heldout EM {exact_match(lora):.1%} (the base before LoRA)",
          flush=True)
    t0 = time.perf_counter()
    first: dict[float, tuple[int, float]] = {}
    em = 0.0
    train_s = 0.0
    step = 0
    for step in range(1, args.steps + 1):
        ts = time.perf_counter()
        words: list[str] = []
        while len(words) < args.batch:
            w = words_for(rng, 1, 3, 8)[0]
            if w not in held:
                words.append(w)
        batch, _ = make_batch([datum(w) for w in words])
        out, grads = forward_backward(model, lora, batch, cross_entropy)
        lora, state, _ = optim_step(lora, state, grads, adam)
        jax.block_until_ready(lora)
        train_s += time.perf_counter() - ts
        if step % args.eval_every == 0:
            em = exact_match(lora)
            elapsed = time.perf_counter() - t0
            print(f"  seed {seed} step {step:4d} loss/datum {float(out.loss) / args.batch:.3f} "
                  f"heldout EM {em:.1%} wall {elapsed:5.1f}s train {train_s:5.1f}s", flush=True)
            for target in (0.9, 0.95):
                if em >= target and target not in first:
                    first[target] = (step, elapsed)
            if em >= args.stop_at:
                break
    sampler = Sampler(model, lora)
    hits = 0
    for w in heldout:
        prompt, completion = reversal_example(w)
        res = sampler.sample(list(prompt.encode()), max_tokens=len(completion),
                             temperature=0.0, stop_token_ids=[10])
        hits += res.sequences[0].tokens == list(completion.encode())
    return {"seed": seed, "steps": step, "wall_s": time.perf_counter() - t0,
            "train_s": train_s, "step_ms": 1000 * train_s / step, "teacher_forced_em": em,
            "sampler_em": hits / len(heldout), "first": first}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tinkex-jax/tiny")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=32.0)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--stop-at", type=float, default=0.95)
    args = parser.parse_args()
    print(f"recipe: rank {args.rank} alpha {args.alpha} lr {args.lr} clip {args.clip} "
          f"batch {args.batch}")
    results = [run(seed, args) for seed in args.seeds]
    for r in results:
        firsts = ", ".join(f">={int(k * 100)}% at step {s} ({t:.1f}s)"
                           for k, (s, t) in sorted(r["first"].items()))
        print(f"seed {r['seed']}: {r['steps']} steps, {r['wall_s']:.1f}s wall "
              f"({r['train_s']:.1f}s in train steps, {r['step_ms']:.0f} ms/step); "
              f"held-out EM teacher-forced {r['teacher_forced_em']:.1%}, "
              f"sampler {r['sampler_em']:.1%}; {firsts or 'never reached 90%'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
