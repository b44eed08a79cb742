"""Decoder and LoRA: shapes, cache consistency, adapter semantics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.support.model_testlib import CFG, jit_logits, perturb
from tinkex_jax.errors import ValidationError
from tinkex_jax.local.model import (
    LoraSpec,
    ModelConfig,
    init_lora,
    init_params,
    lora_from_arrays,
    lora_num_params,
    lora_to_arrays,
    merge_for_decoding,
    merge_lora,
)
from tinkex_jax.local.model.decoder import decode_step, prefill

_logits = jit_logits
_prefill = jax.jit(prefill, static_argnames=("cache_len", "config"))
_decode_step = jax.jit(decode_step, static_argnames=("config",))


def test_shapes_and_param_count(model):
    tokens = jnp.zeros((3, 7), jnp.int32)
    assert _logits(model.params, None, tokens, config=CFG).shape == (3, 7, CFG.vocab_size)
    n = sum(x.size for x in jax.tree.leaves(model.params))
    assert n == CFG.num_params()


def test_config_validation_messages():
    with pytest.raises(ValidationError, match="n_kv_heads"):
        ModelConfig(vocab_size=8, d_model=8, n_layers=1, n_heads=3, n_kv_heads=2, d_ff=8)
    with pytest.raises(ValidationError, match="at least one"):
        LoraSpec(rank=4, train_attn=False, train_mlp=False, train_unembed=False)
    with pytest.raises(ValidationError, match="rank"):
        LoraSpec(rank=0)


def test_causality(model):
    """Changing a later token never changes earlier logits."""
    a = jnp.array([[1, 2, 3, 4, 5, 6]])
    b = a.at[0, 4].set(9)
    la, lb = _logits(model.params, None, a, config=CFG), _logits(model.params, None, b,
                                                                  config=CFG)
    np.testing.assert_allclose(la[0, :4], lb[0, :4], atol=1e-6)
    assert not np.allclose(la[0, 4:], lb[0, 4:])


@pytest.mark.parametrize("variant", ["llama_tied", "qwen3_untied"])
def test_kv_cache_decoding_matches_full_forward(variant):
    if variant == "llama_tied":
        cfg = CFG
    else:
        cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=1,
                          d_ff=48, head_dim=16, qk_norm=True, architecture="qwen3",
                          tie_embeddings=False, rope_theta=1e6)
    params = init_params(cfg, seed=3)
    lora = perturb(init_lora(cfg, LoraSpec(rank=2, seed=1)), seed=2)
    seq = jnp.array([[5, 9, 1, 33, 2, 8, 61, 7, 7, 0]])
    full = _logits(merge_lora(params, lora), None, seq, config=cfg)[0]
    weights = merge_for_decoding(params, lora)
    P, S = 4, 16
    _, cache = _prefill(weights, seq[:, :P], cache_len=S, config=cfg)
    for pos in range(P, seq.shape[1]):
        step_logits, cache = _decode_step(weights, cache, seq[:, pos], jnp.int32(pos),
                                          config=cfg)
        np.testing.assert_allclose(step_logits[0], full[pos], atol=1e-4, rtol=1e-4)


def test_lora_is_identity_at_init(model):
    tokens = jnp.array([[3, 1, 4, 1, 5, 9, 2, 6]])
    fresh = init_lora(CFG, LoraSpec(rank=8, seed=5))
    np.testing.assert_array_equal(_logits(model.params, fresh, tokens, config=CFG),
                                  _logits(model.params, None, tokens, config=CFG))
    a = np.asarray(fresh.weights["layers"]["wq"]["a"])
    assert a.std() == pytest.approx(CFG.d_model**-0.5, rel=0.15)  # N(0, 1/d_in)
    assert not np.asarray(fresh.weights["layers"]["wq"]["b"]).any()


def test_lora_init_is_deterministic_per_seed():
    a = lora_to_arrays(init_lora(CFG, LoraSpec(rank=4, seed=7)))
    b = lora_to_arrays(init_lora(CFG, LoraSpec(rank=4, seed=7)))
    c = lora_to_arrays(init_lora(CFG, LoraSpec(rank=4, seed=8)))
    big = lora_to_arrays(init_lora(CFG, LoraSpec(rank=4, seed=2**63 + 7)))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["layers.wq.a"], c["layers.wq.a"])
    assert not np.array_equal(a["layers.wq.a"], big["layers.wq.a"])  # all 64 bits count


@pytest.mark.parametrize(
    ("flags", "layer_keys", "unembed"),
    [
        ({"train_attn": True, "train_mlp": False, "train_unembed": False},
         {"wq", "wk", "wv", "wo"}, False),
        ({"train_attn": False, "train_mlp": True, "train_unembed": False},
         {"w_gate", "w_up", "w_down"}, False),
        ({"train_attn": False, "train_mlp": False, "train_unembed": True}, set(), True),
        ({}, {"wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"}, True),
    ],
)
def test_lora_flags_select_adapted_weights(flags, layer_keys, unembed):
    lora = init_lora(CFG, LoraSpec(rank=3, **flags))
    assert set(lora.weights.get("layers", {})) == layer_keys
    assert ("unembed" in lora.weights) == unembed
    if unembed:
        assert lora.weights["unembed"]["a"].shape == (CFG.d_model, 3)
        assert lora.weights["unembed"]["b"].shape == (3, CFG.vocab_size)
    for name in layer_keys:
        ad = lora.weights["layers"][name]
        assert ad["a"].shape[:1] == (CFG.n_layers,) and ad["a"].shape[-1] == 3


def test_unembed_adapter_changes_only_the_output_projection(model):
    lora = perturb(init_lora(CFG, LoraSpec(rank=2, train_attn=False, train_mlp=False)), 4)
    tokens = jnp.array([[1, 2, 3]])
    delta = _logits(model.params, lora, tokens, config=CFG) - _logits(model.params, None,
                                                                      tokens, config=CFG)
    merged = merge_lora(model.params, lora)
    # the merged model has an untied unembedding; its embedding is untouched
    np.testing.assert_array_equal(merged["embed"], model.params["embed"])
    assert "unembed" in merged and float(jnp.abs(delta).max()) > 1e-3


def test_merge_lora_matches_unmerged_forward(model, lora):
    tokens = jnp.array([[7, 3, 9, 1, 0, 5]])
    merged = merge_lora(model.params, lora)
    np.testing.assert_allclose(_logits(merged, None, tokens, config=CFG),
                               _logits(model.params, lora, tokens, config=CFG), atol=1e-4)


def test_lora_arrays_round_trip(lora):
    arrays = lora_to_arrays(lora)
    back = lora_from_arrays(arrays, scale=lora.scale, config=CFG)
    assert back.scale == lora.scale and lora_num_params(back) == lora_num_params(lora)
    for k, v in lora_to_arrays(back).items():
        np.testing.assert_array_equal(v, arrays[k])
    with pytest.raises(ValidationError, match="layers"):
        lora_from_arrays({"bogus": arrays["unembed.a"]}, scale=1.0)
    bad = dict(arrays)
    bad["unembed.b"] = np.zeros((4, 5), np.float32)
    with pytest.raises(ValidationError, match="unembed"):
        lora_from_arrays(bad, scale=1.0, config=CFG)
