"""End to end: rank-8 LoRA on the shipped ``tinkex-jax/tiny`` learns string reversal.

The same recipe as the README demo (``scripts/reversal_lora.py`` measures all seeds).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.model_testlib import cross_entropy
from tinkex_jax.local.model import (
    LoraSpec,
    Sampler,
    forward_backward,
    init_lora,
    init_optimizer,
    load_preset,
    make_batch,
    optim_step,
)
from tinkex_jax.local.model.tasks import reversal_example, words_for


def _datum(word: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    prompt, completion = (s.encode() for s in reversal_example(word))
    seq = list(prompt + completion)
    weights = [0.0] * (len(prompt) - 1) + [1.0] * len(completion)
    return np.array(seq[:-1]), {"target_tokens": np.array(seq[1:]),
                                "weights": np.array(weights, np.float32)}


@pytest.mark.slow
def test_lora_rank8_learns_reversal_on_tiny():
    base = load_preset("tinkex-jax/tiny")
    model = base.model
    rng = np.random.default_rng(0)
    heldout = words_for(rng, 64, 3, 8)
    lora = init_lora(model.config, LoraSpec(rank=8, seed=0))
    state = init_optimizer(lora)
    adam = {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8,
            "grad_clip_norm": 1.0}
    for _ in range(200):
        words = [w for w in words_for(rng, 40, 3, 8) if w not in heldout][:32]
        batch, _ = make_batch([_datum(w) for w in words])
        _, grads = forward_backward(model, lora, batch, cross_entropy)
        lora, state, _ = optim_step(lora, state, grads, adam)
    sampler = Sampler(model, lora)
    hits = 0
    for w in heldout:
        prompt, completion = reversal_example(w)
        out = sampler.sample(list(prompt.encode()), max_tokens=len(completion) + 2,
                             temperature=0.0, stop_token_ids=[ord("\n")])
        hits += out.sequences[0].tokens == list(completion.encode())
    assert hits / len(heldout) >= 0.9, hits
