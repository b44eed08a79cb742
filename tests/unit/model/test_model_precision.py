"""Mixed precision: a bfloat16 base with a float32 adapter trains, in float32 where it matters.

Tolerances against the float32 run were measured on this random config (relative loss
difference 4.6e-4, largest logprob difference 0.049, largest relative gradient difference
4.4e-2) and are set a few times above them.
"""

from __future__ import annotations

import tempfile

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from tests.support.model_testlib import CFG, cross_entropy, reversal_datum
from tinkex_jax.errors import ValidationError
from tinkex_jax.local.model import (
    LoraSpec,
    Model,
    Sampler,
    forward_backward,
    init_lora,
    init_optimizer,
    load_hf_directory,
    make_batch,
    optim_step,
    save_hf_directory,
)
from tinkex_jax.local.model.options import default_param_dtype, resolve_param_dtype

WORDS = ["cat", "horse", "zebra", "python", "lizard", "owl", "mouse", "eagle"]


def _bf16(params):
    return jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)


@pytest.fixture(scope="module")
def batch():
    return make_batch([reversal_datum(w) for w in WORDS])[0]


def test_bf16_base_with_f32_lora_matches_f32_within_measured_tolerance(model, lora, batch):
    ref, ref_grads = forward_backward(model, lora, batch, cross_entropy)
    half = Model(_bf16(model.params), model.config)
    out, grads = forward_backward(half, lora, batch, cross_entropy)
    assert out.logprobs.dtype == jnp.float32 and out.loss.dtype == jnp.float32
    assert {x.dtype for x in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
    assert abs(float(out.loss) - float(ref.loss)) / abs(float(ref.loss)) < 3e-3
    assert float(jnp.max(jnp.abs(out.logprobs - ref.logprobs))) < 0.2
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        scale = float(jnp.max(jnp.abs(r)))
        assert float(jnp.max(jnp.abs(g - r))) <= 0.15 * scale


def test_bf16_base_trains_and_keeps_float32_state(model, batch):
    half = Model(_bf16(model.params), model.config)
    lora = init_lora(CFG, LoraSpec(rank=8, seed=0))
    state = init_optimizer(lora)
    losses = []
    for _ in range(15):
        out, grads = forward_backward(half, lora, batch, cross_entropy)
        losses.append(float(out.loss))
        lora, state, _ = optim_step(lora, state, grads, {"learning_rate": 3e-3})
    assert losses[-1] < 0.8 * losses[0]
    assert {x.dtype for x in jax.tree.leaves(lora)} == {jnp.dtype(jnp.float32)}
    moments = [x for x in jax.tree.leaves(state) if x.ndim > 0]
    assert moments and {x.dtype for x in moments} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(half.params)} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("mode", ["merged", "shared"])
def test_bf16_sampler_runs_in_bf16_and_reports_float32(model, lora, mode):
    from tinkex_jax.local.model.options import RunOptions

    half = Model(_bf16(model.params), model.config, RunOptions(sampler_weights=mode))
    sampler = Sampler(half, lora)
    res = sampler.sample([1, 2, 3, 4], num_samples=2, max_tokens=6, seed=0,
                         prompt_logprobs=True)
    assert all(len(s.tokens) == 6 and np.isfinite(s.logprobs).all() for s in res.sequences)
    assert np.isfinite(res.prompt_logprobs[1:]).all()
    assert sampler.logprob_table([1, 2, 3]).dtype == np.float32


def test_dtype_defaults_per_platform_and_explicit_choice():
    bf16 = np.dtype(ml_dtypes.bfloat16)
    assert default_param_dtype("cpu", "bfloat16") == np.float32
    assert default_param_dtype("gpu", "bfloat16") == bf16
    assert default_param_dtype("tpu", "float16") == np.float16
    assert resolve_param_dtype("auto", "bfloat16", platform="tpu") == bf16
    assert resolve_param_dtype("checkpoint", "bfloat16", platform="cpu") == bf16
    assert resolve_param_dtype("float32", "bfloat16", platform="gpu") == np.float32
    with pytest.raises(ValidationError, match="dtype"):
        resolve_param_dtype("float8", None, platform="cpu")


def test_loader_casts_tensor_by_tensor_to_the_requested_dtype(model):
    with tempfile.TemporaryDirectory() as tmp:
        save_hf_directory(tmp, model, dtype="bfloat16")
        auto = load_hf_directory(tmp)                      # CPU default: float32
        half = load_hf_directory(tmp, dtype="checkpoint")  # the stored bfloat16
        assert {x.dtype for x in jax.tree.leaves(auto.model.params)} == {jnp.dtype("float32")}
        assert {x.dtype for x in jax.tree.leaves(half.model.params)} == {
            jnp.dtype(jnp.bfloat16)}
        stored = jax.tree.map(lambda x: np.asarray(x.astype(jnp.float32)),
                              half.model.params)
        for a, b in zip(jax.tree.leaves(stored), jax.tree.leaves(auto.model.params)):
            np.testing.assert_array_equal(a, np.asarray(b))
