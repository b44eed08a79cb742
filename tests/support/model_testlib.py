"""Helpers shared by the model-layer tests (imported by conftest.py and the test files)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from tinkex_jax.local.model import ModelConfig, logits

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                  max_seq_len=256)
"""A random model small enough to compile in about a second per function."""

jit_logits = jax.jit(logits, static_argnames=("config",))
"""``logits(params, lora, tokens, config=...)``, jitted once for all test files."""


def _expand(mask: jax.Array, like: jax.Array) -> jax.Array:
    return mask.reshape(mask.shape + (1,) * (like.ndim - mask.ndim))


def cross_entropy(lp: jax.Array, inputs: Any, mask: jax.Array, config: Any) -> jax.Array:
    """The test loss: ``-logprob * weights``, zero at padding (also for [B, T, K] targets)."""
    return -lp * inputs["weights"] * _expand(mask, lp)


def scaled_cross_entropy(lp: jax.Array, inputs: Any, mask: jax.Array,
                         config: Any) -> jax.Array:
    """Cross-entropy times a traced hyperparameter ``config["scale"]``."""
    return -lp * inputs["weights"] * _expand(mask, lp) * config["scale"]


def perturb(lora: Any, seed: int, std: float = 0.02) -> Any:
    """A copy of an adapter with every matrix moved randomly (so B != 0)."""
    leaves, treedef = jax.tree.flatten(lora)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(treedef, [x + std * jax.random.normal(k, x.shape)
                                        for x, k in zip(leaves, keys)])


def reversal_datum(word: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``word=`` → reversed word + newline, weights on the completion only (byte ids % 64)."""
    prompt, completion = f"{word}=".encode(), f"{word[::-1]}\n".encode()
    seq = [b % 64 for b in prompt + completion]
    weights = [0.0] * (len(prompt) - 1) + [1.0] * len(completion)
    return np.array(seq[:-1]), {"target_tokens": np.array(seq[1:]),
                                "weights": np.array(weights, np.float32)}
