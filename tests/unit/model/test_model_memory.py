"""Memory savers (remat, chunked attention, chunked logprobs, micro-batching) change the
compiled memory, not the results.

Results are compared with the default path on the shared random model; memory is compared
with XLA's compiled memory analysis (compile only, nothing allocated) on configs shaped to
make each saver matter.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.support.model_testlib import CFG, cross_entropy, reversal_datum
from tinkex_jax.local.model import (
    LoraSpec,
    Model,
    ModelConfig,
    Sampler,
    forward,
    forward_backward,
    init_lora,
    init_params,
    make_batch,
    runtime,
    split_outputs,
)
from tinkex_jax.local.model.decoder import causal_attention
from tinkex_jax.local.model.options import RunOptions

WORDS = ["cat", "horse", "zebra", "ab", "python", "lizard", "owl", "mouse"]

SAVERS = {
    "remat_full": RunOptions(remat="full"),
    "remat_dots": RunOptions(remat="dots"),
    "chunked_attention": RunOptions(attention="chunked"),
    "chunked_logits": RunOptions(logits_chunk_bytes=CFG.vocab_size * 4 * 7),
    "micro_batches": RunOptions(token_budget=32),
    "all": RunOptions(remat="full", attention="chunked", token_budget=64,
                      logits_chunk_bytes=CFG.vocab_size * 4 * 5),
}


@pytest.fixture(scope="module")
def data():
    return make_batch([reversal_datum(w) for w in WORDS])


@pytest.fixture(scope="module")
def reference(model, lora, data):
    return forward_backward(model, lora, data[0], cross_entropy)


@pytest.mark.parametrize("name", sorted(SAVERS))
def test_savers_give_the_same_loss_logprobs_and_gradients(model, lora, data, reference, name):
    ref_out, ref_grads = reference
    saver = Model(model.params, model.config, SAVERS[name])
    out, grads = forward_backward(saver, lora, data[0], cross_entropy)
    np.testing.assert_allclose(float(out.loss), float(ref_out.loss), rtol=1e-5)
    for got, want in zip(split_outputs(out, data[1]), split_outputs(ref_out, data[1])):
        np.testing.assert_allclose(got["logprobs"], want["logprobs"], atol=1e-5)
        np.testing.assert_allclose(got["elementwise_loss"], want["elementwise_loss"],
                                   atol=1e-5)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4,
                                   atol=1e-5 * float(jnp.max(jnp.abs(r))))
    fwd = forward(saver, lora, data[0], cross_entropy)
    np.testing.assert_allclose(float(fwd.loss), float(ref_out.loss), rtol=1e-5)


def test_micro_batch_split_follows_the_token_budget():
    def n(budget, shape):
        return runtime.micro_batches(Model({}, CFG, RunOptions(token_budget=budget)), shape)

    assert n(0, (64, 512)) == 1                  # no budget: one pass
    assert n(1024, (8, 64)) == 1                 # fits
    assert n(256, (8, 64)) == 2                  # 4 rows of 64 per micro-batch
    assert n(100, (8, 64)) == 8                  # one row per micro-batch
    assert n(10, (4, 64)) == 4                   # a row longer than the budget is not split


def test_chunked_and_dense_attention_agree_with_a_causal_mask():
    cfg = ModelConfig(vocab_size=16, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=16)
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (2, 256, 4, 8))
    k = jax.random.normal(keys[1], (2, 256, 2, 8))
    v = jax.random.normal(keys[2], (2, 256, 2, 8))
    dense = causal_attention(q, k, v, cfg, "dense")
    chunked = causal_attention(q, k, v, cfg, "chunked")
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(dense), atol=2e-5)
    # causality: changing the last key/value changes only the last position
    k2, v2 = k.at[:, -1].add(1.0), v.at[:, -1].add(1.0)
    moved = causal_attention(q, k2, v2, cfg, "chunked").reshape(2, 256, -1)
    np.testing.assert_allclose(np.asarray(moved[:, :-1]),
                               np.asarray(chunked.reshape(2, 256, -1)[:, :-1]), atol=2e-5)


def _temp_bytes(config, options, batch_rows, seq, rank=8):
    params = jax.eval_shape(lambda: init_params(config))
    lora = jax.eval_shape(lambda: init_lora(config, LoraSpec(rank=rank)))

    def struct(dt):
        return jax.ShapeDtypeStruct((batch_rows, seq), dt)

    batch = runtime.Batch(struct(jnp.int32), struct(jnp.int32), struct(jnp.float32),
                          {"weights": struct(jnp.float32)})
    compiled = runtime._forward_backward_jit.lower(
        Model(params, config, options), lora, batch, cross_entropy, {}).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_chunked_logprobs_never_hold_a_full_float32_logits_tensor():
    cfg = ModelConfig(vocab_size=8192, d_model=64, n_layers=1, n_heads=4, n_kv_heads=2,
                      d_ff=128)
    rows, seq = 16, 64  # short rows: attention scores stay small next to the logits
    full_logits = rows * seq * cfg.vocab_size * 4  # 32 MiB
    off = _temp_bytes(cfg, RunOptions(remat="off", logits_chunk_bytes=1 << 40), rows, seq)
    on = _temp_bytes(cfg, RunOptions(remat="off", logits_chunk_bytes=1 << 20), rows, seq)
    assert off >= full_logits          # the unchunked step holds [B, T, V] float32 (and more)
    assert on < full_logits / 2        # the chunked one never does (1 MiB logits blocks; the
    assert on < off / 3                # rest is attention scores and embedding transposes)


def test_remat_and_chunked_attention_cut_activation_memory():
    def config(layers):
        return ModelConfig(vocab_size=64, d_model=64, n_layers=layers, n_heads=4,
                           n_kv_heads=2, d_ff=128)

    rows, seq = 2, 1024
    scores_per_layer = rows * 4 * seq * seq * 4  # one layer's float32 attention scores

    def temp(layers, remat, attention):
        return _temp_bytes(config(layers), RunOptions(remat=remat, attention=attention),
                           rows, seq)

    dense4, dense8 = temp(4, "off", "dense"), temp(8, "off", "dense")
    both4, both8 = temp(4, "full", "chunked"), temp(8, "full", "chunked")
    remat8, chunked8 = temp(8, "full", "dense"), temp(8, "off", "chunked")
    # Without savers every layer keeps its T^2 scores for the backward pass ...
    assert dense8 - dense4 >= 4 * scores_per_layer
    # ... with remat an extra layer costs only its saved input, and with chunked attention
    # no layer keeps a T^2 tensor either.
    assert both8 - both4 < scores_per_layer / 8
    assert remat8 < dense8 / 3 and chunked8 < dense8 / 3 and both8 < dense8 / 7


def test_micro_batching_cuts_activation_memory():
    cfg = ModelConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                      d_ff=128)
    whole = _temp_bytes(cfg, RunOptions(remat="off"), 16, 256)
    micro = _temp_bytes(cfg, RunOptions(remat="off", token_budget=1024), 16, 256)
    assert micro < whole / 2


@pytest.mark.parametrize("mode", ["shared", "stacked"])
def test_samplers_sharing_the_base_sample_like_a_merged_copy(model, lora, mode):
    prompt = [5, 6, 7, 8, 9]
    merged = Sampler(Model(model.params, model.config, RunOptions(sampler_weights="merged")),
                     lora)
    shared = Sampler(Model(model.params, model.config, RunOptions(sampler_weights=mode)),
                     lora)
    assert shared.mode == mode
    a = merged.sample(prompt, num_samples=3, max_tokens=10, seed=4, prompt_logprobs=True,
                      topk_prompt_logprobs=3)
    b = shared.sample(prompt, num_samples=3, max_tokens=10, seed=4, prompt_logprobs=True,
                      topk_prompt_logprobs=3)
    assert [s.tokens for s in a.sequences] == [s.tokens for s in b.sequences]
    for x, y in zip(a.sequences, b.sequences):
        np.testing.assert_allclose(x.logprobs, y.logprobs, atol=1e-4)
    np.testing.assert_allclose(a.prompt_logprobs[1:], b.prompt_logprobs[1:], atol=1e-5)
    np.testing.assert_allclose(merged.logprob_table(prompt), shared.logprob_table(prompt),
                               atol=1e-5)


def test_shared_samplers_read_one_copy_of_the_base(model, lora):
    from tinkex_jax.local.model.sampler import shared_decode_base

    opts = RunOptions(sampler_weights="shared")
    first = Sampler(Model(model.params, model.config, opts), lora)
    second = Sampler(Model(model.params, model.config, opts), None)
    assert first.weights.base is second.weights.base is shared_decode_base(model.params)
    assert first.weights.base["embed"] is model.params["embed"]
    stacked = Sampler(Model(model.params, model.config, RunOptions(sampler_weights="stacked")),
                      lora)
    assert stacked.weights.base is model.params
