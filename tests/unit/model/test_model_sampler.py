"""KV-cache sampler: determinism, filtering, stops, logprobs, fixed shapes."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.support.jax_traces import count_traces
from tests.support.model_testlib import CFG, jit_logits
from tinkex_jax.errors import ValidationError
from tinkex_jax.local.model import Sampler, find_stop_string

PROMPT = [5, 17, 3, 42, 8]


def letters(ids: list[int]) -> str:
    """A toy detokenizer: id -> one lowercase letter."""
    return "".join(chr(97 + i % 26) for i in ids)


@pytest.fixture(scope="module")
def sampler(model, lora):
    return Sampler(model, lora)


@pytest.fixture(scope="module")
def next_logits(model, lora):
    """Full-forward logits of the token after PROMPT (the reference distribution)."""
    return np.asarray(jit_logits(model.params, lora, jnp.array([PROMPT]), config=CFG)[0, -1])


def test_same_seed_same_samples_and_seeds_differ(sampler):
    kw = dict(num_samples=3, max_tokens=12, temperature=1.0)
    a = sampler.sample(PROMPT, seed=123, **kw)
    b = sampler.sample(PROMPT, seed=123, **kw)
    c = sampler.sample(PROMPT, seed=124, **kw)
    big = sampler.sample(PROMPT, seed=123 + 2**40, **kw)
    assert a.sequences == b.sequences
    assert a.sequences != c.sequences and a.sequences != big.sequences
    assert len({tuple(s.tokens) for s in a.sequences}) > 1  # rows draw independently
    # the batch bucket does not change a row's draw (logprobs agree to float rounding)
    one = sampler.sample(PROMPT, seed=123, num_samples=1, max_tokens=12).sequences[0]
    assert one.tokens == a.sequences[0].tokens
    assert one.logprobs == pytest.approx(a.sequences[0].logprobs, abs=1e-5)


def test_greedy_follows_full_forward_argmax(model, lora, sampler):
    out = sampler.sample(PROMPT, max_tokens=10, temperature=0.0).sequences[0]
    seq = PROMPT + out.tokens
    lg = jit_logits(model.params, lora, jnp.array([seq]), config=CFG)[0]
    assert out.tokens == np.asarray(jnp.argmax(lg[len(PROMPT) - 1:-1], -1)).tolist()
    logp = jax.nn.log_softmax(lg, -1)
    ref = [float(logp[len(PROMPT) - 1 + i, t]) for i, t in enumerate(out.tokens)]
    np.testing.assert_allclose(out.logprobs, ref, atol=1e-4)
    assert out.stop_reason == "length"


def _first_tokens(sampler, n_calls=24, **kw):
    toks = []
    for seed in range(n_calls):
        res = sampler.sample(PROMPT, num_samples=32, max_tokens=1, seed=seed, **kw)
        toks += [s.tokens[0] for s in res.sequences]
    return np.array(toks)


def test_temperature_top_k_top_p(sampler, next_logits):
    order = np.argsort(-next_logits)
    # top_k = 1 and a tiny top_p are greedy whatever the temperature
    assert set(_first_tokens(sampler, 2, temperature=2.0, top_k=1)) == {order[0]}
    assert set(_first_tokens(sampler, 2, temperature=2.0, top_p=1e-6)) == {order[0]}
    # top_k = 3: only the three most likely tokens appear, all of them do
    assert set(_first_tokens(sampler, 4, temperature=3.0, top_k=3)) == set(order[:3])
    # top_p: only the nucleus of the temperature-scaled distribution appears
    t = 1.5
    probs = np.exp((next_logits - next_logits.max()) / t)
    probs /= probs.sum()
    cum = np.cumsum(probs[order])
    nucleus = set(order[:int(np.searchsorted(cum, 0.6) + 1)])
    got = set(_first_tokens(sampler, 4, temperature=t, top_p=0.6))
    assert got <= nucleus and len(got) >= 1
    # plain sampling matches the softmax (loosely) and temperature sharpens it
    hot = _first_tokens(sampler, 24, temperature=1.0)
    p1 = np.exp(next_logits - next_logits.max())
    p1 /= p1.sum()
    freq = np.bincount(hot, minlength=CFG.vocab_size) / hot.size
    assert np.abs(freq - p1).max() < 0.06
    cold = _first_tokens(sampler, 8, temperature=0.3)
    assert np.mean(cold == order[0]) > np.mean(hot == order[0])


def test_stop_tokens_end_inside_the_loop(sampler):
    free = sampler.sample(PROMPT, num_samples=2, max_tokens=20, seed=9).sequences
    stop = free[0].tokens[4]
    cut = free[0].tokens.index(stop) + 1
    res = sampler.sample(PROMPT, num_samples=2, max_tokens=20, seed=9,
                         stop_token_ids=[stop]).sequences
    assert res[0].tokens == free[0].tokens[:cut] and res[0].stop_reason == "stop"
    assert res[0].logprobs == pytest.approx(free[0].logprobs[:cut], abs=1e-6)
    if stop not in free[1].tokens:
        assert res[1] == free[1]


@pytest.mark.parametrize("chunk_size", [1, 3, 32])
def test_stop_strings_truncate_after_the_match(sampler, chunk_size):
    free = sampler.sample(PROMPT, num_samples=2, max_tokens=24, seed=5).sequences
    text = letters(free[0].tokens)
    stop = text[6:8]
    k = find_stop_string(free[0].tokens, [stop], letters)
    assert k is not None and stop in letters(free[0].tokens[:k])
    assert stop not in letters(free[0].tokens[:k - 1])
    res = sampler.sample(PROMPT, num_samples=2, max_tokens=24, seed=5, stop_strings=[stop],
                         decode=letters, chunk_size=chunk_size).sequences
    assert res[0].tokens == free[0].tokens[:k] and res[0].stop_reason == "stop"
    assert letters(res[0].tokens).endswith(stop)
    k1 = find_stop_string(free[1].tokens, [stop], letters)
    assert res[1].tokens == free[1].tokens[:k1 or 24]


def test_prompt_logprobs_and_topk(model, lora, sampler):
    res = sampler.sample(PROMPT, max_tokens=2, prompt_logprobs=True, topk_prompt_logprobs=4,
                         seed=0)
    lp = res.prompt_logprobs
    assert lp is not None and len(lp) == len(PROMPT) and math.isnan(lp[0])
    lg = jit_logits(model.params, lora, jnp.array([PROMPT]), config=CFG)[0]
    logp = jax.nn.log_softmax(lg, -1)
    ref = [float(logp[i - 1, PROMPT[i]]) for i in range(1, len(PROMPT))]
    np.testing.assert_allclose(lp[1:], ref, atol=1e-4)
    top = res.topk_prompt_logprobs
    assert top is not None and top[0] is None and len(top) == len(PROMPT)
    for i in range(1, len(PROMPT)):
        ids = [t for t, _ in top[i]]
        vals = [v for _, v in top[i]]
        assert ids == np.argsort(-np.asarray(logp[i - 1]))[:4].tolist()
        np.testing.assert_allclose(vals, np.asarray(logp[i - 1])[ids], atol=1e-4)
    # prompt scoring alone (max_tokens = 0), and a one-token prompt
    only, _ = sampler.prompt_scores(PROMPT)
    np.testing.assert_allclose(only[1:], lp[1:], atol=1e-6)
    single = sampler.sample([7], max_tokens=3, prompt_logprobs=True, seed=1)
    assert single.prompt_logprobs is not None and math.isnan(single.prompt_logprobs[0])
    assert len(single.sequences[0].tokens) == 3


def test_no_recompilation_inside_a_bucket(sampler):
    sampler.sample([1, 2, 3], max_tokens=8, seed=0)  # warm the (B=1, S=16) bucket
    with count_traces("_decode_impl") as traces:
        for prompt, kw in [([4, 5, 6, 7, 8], dict(temperature=0.5, top_k=4, seed=1)),
                           ([9] * 7, dict(temperature=0.0, seed=2)),
                           ([2, 3], dict(top_p=0.3, max_tokens=5, seed=2**63)),
                           ([1, 2, 3, 4], dict(stop_token_ids=[3, 4, 5], seed=3))]:
            sampler.sample(prompt, **{"max_tokens": 8, **kw})
    for name in ("_prefill_impl", "_start_impl", "_decode_impl"):
        assert name not in traces.names, name


def test_validation_errors(sampler):
    with pytest.raises(ValidationError, match="top_p"):
        sampler.sample(PROMPT, top_p=0.0)
    with pytest.raises(ValidationError, match="decode"):
        sampler.sample(PROMPT, stop_strings=["x"])
    with pytest.raises(ValidationError, match="token ids"):
        sampler.sample([CFG.vocab_size])
    with pytest.raises(ValidationError, match="max_seq_len"):
        sampler.sample(PROMPT, max_tokens=CFG.max_seq_len)
