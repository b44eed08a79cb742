"""Memory plans from compiled memory analyses, without weights."""

from __future__ import annotations

import json

import pytest

from tinkex_jax.errors import ValidationError
from tinkex_jax.local.model.options import RunOptions
from tinkex_jax.local.model.plan import DEVICE_MEMORY, plan_memory

QWEN3_LIKE = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 4096,
    "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
    "tie_word_embeddings": True, "max_position_embeddings": 8192, "torch_dtype": "bfloat16",
}


def test_plan_of_a_preset_counts_what_training_and_sampling_hold():
    plan = plan_memory("tinkex-jax/tiny", seq_len=200, batch=3, rank=8)
    assert (plan.seq_len, plan.batch, plan.platform) == (256, 4, "cpu")
    assert plan.dtype == "float32" and plan.remat == "off" and plan.sampler_weights == "merged"
    assert plan.params_bytes_per_device == plan.config.num_params() * 4
    steps = plan.steps
    assert set(steps) == {"forward_backward", "optim_step", "sample_prefill", "sample_decode"}
    assert all(step["temp"] >= 0 and step["argument"] > 0 for step in steps.values())
    # training holds the base, the adapter, its gradient and two AdamW moments at least
    assert plan.train_peak_bytes_per_device > (plan.params_bytes_per_device
                                               + 4 * plan.lora_bytes_per_device)
    assert plan.sample_peak_bytes_per_device > plan.params_bytes_per_device
    data = plan.to_json()
    assert data["train_peak_bytes_per_device"] == plan.train_peak_bytes_per_device
    assert data["config"]["hidden_size"] == 128
    json.dumps(data)  # JSON-ready


def test_plan_from_a_config_dict_follows_dtype_length_and_savers():
    f32 = plan_memory(QWEN3_LIKE, seq_len=1024, batch=2)
    bf16 = plan_memory(QWEN3_LIKE, seq_len=1024, batch=2, dtype="checkpoint")
    assert f32.dtype == "float32" and bf16.dtype == "bfloat16"  # CPU default vs stored
    assert bf16.params_bytes_per_device * 2 == f32.params_bytes_per_device
    assert f32.attention == "chunked"
    longer = plan_memory(QWEN3_LIKE, seq_len=2048, batch=2)
    assert longer.train_peak_bytes_per_device > f32.train_peak_bytes_per_device
    remat = plan_memory(QWEN3_LIKE, seq_len=2048, batch=2, options=RunOptions(remat="full"))
    assert remat.remat == "full"
    assert remat.train_peak_bytes_per_device < longer.train_peak_bytes_per_device


def test_fits_compares_both_peaks_with_the_usable_memory():
    plan = plan_memory("tinkex-jax/tiny", seq_len=64)
    devices, per_device = DEVICE_MEMORY["t4"]
    assert devices == 1 and plan.fits(per_device)
    peak = max(plan.train_peak_bytes_per_device, plan.sample_peak_bytes_per_device)
    assert not plan.fits(peak) and plan.fits(peak, usable=1.0)


def test_bad_plan_requests_fail_clearly():
    with pytest.raises(ValidationError, match="seq_len"):
        plan_memory("tinkex-jax/tiny", seq_len=0)
    with pytest.raises(ValidationError, match="preset name"):
        plan_memory("no/such-model", seq_len=16)
    with pytest.raises(ValidationError, match="visible devices"):
        plan_memory("tinkex-jax/tiny", seq_len=16, mesh="fsdp=64")
