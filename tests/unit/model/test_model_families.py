"""Model families and rope scalings checked against Hugging Face ``transformers``.

Each case builds a tiny random ``transformers`` model (CPU torch, float32, every weight, bias
and norm drawn at random so each one matters), saves it with ``save_pretrained`` (safetensors,
transformers' own config.json), loads the directory with our loader and compares the logits of
a few token sequences: Llama (plain, and rope scaling ``llama3``, ``linear``, ``dynamic``,
``yarn`` with and without ``mscale``), Mistral (no window, and a sliding window shorter than the
sequences), Qwen2 (q/k/v biases, tied and untied) and Qwen3. Our writer's directory is read
back by transformers, cached decoding is checked against the full forward, and unsupported
settings raise errors that say what is supported.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.support.model_testlib import jit_logits, perturb
from tinkex_jax.errors import ValidationError
from tinkex_jax.local.model import LoraSpec, init_lora, load_hf_directory, save_hf_directory
from tinkex_jax.local.model.config import ModelConfig
from tinkex_jax.local.model.decoder import (
    SharedWeights,
    causal_attention,
    decode_step,
    init_params,
    logits,
    prefill,
)
from tinkex_jax.local.model.hf import SUPPORTED_ARCHITECTURES, config_from_hf, params_from_hf
from tinkex_jax.local.model.lora import merge_for_decoding
from tinkex_jax.local.model.options import RunOptions

REPO = Path(__file__).resolve().parents[3]

RTOL, ATOL = 1e-4, 1e-5
"""Float32 against float32: both sides differ only in reduction order and rope tables."""

TOKENS = np.array([[5, 17, 42, 8, 0, 63, 21, 9, 33, 2, 11, 50, 7, 19, 30, 1],
                   [60, 3, 3, 28, 44, 12, 5, 57, 39, 26, 14, 8, 49, 2, 36, 22]])
"""Two sequences of 16 tokens (longer than the sliding window below)."""

SHAPE = dict(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
             max_position_embeddings=128, bos_token_id=1, eos_token_id=2)

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
YARN_MSCALE = {**YARN, "mscale": 1.0, "mscale_all_dim": 0.5, "beta_fast": 16.0,
               "beta_slow": 2.0}

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaForCausalLM", {"rope_theta": 500.0}),
    "llama-tied": ("LlamaForCausalLM", {"rope_theta": 500.0, "tie_word_embeddings": True}),
    "llama3-rope": ("LlamaForCausalLM", {"rope_theta": 500.0, "rope_scaling": LLAMA3}),
    "linear-rope": ("LlamaForCausalLM", {"rope_theta": 500.0,
                                         "rope_scaling": {"rope_type": "linear",
                                                          "factor": 2.5}}),
    "dynamic-rope": ("LlamaForCausalLM", {"rope_theta": 500.0,
                                          "rope_scaling": {"rope_type": "dynamic",
                                                           "factor": 2.0}}),
    "yarn-rope": ("LlamaForCausalLM", {"rope_theta": 500.0, "rope_scaling": YARN}),
    "yarn-mscale": ("LlamaForCausalLM", {"rope_theta": 500.0, "rope_scaling": YARN_MSCALE}),
    "yarn-attention-factor": ("LlamaForCausalLM", {
        "rope_theta": 500.0, "rope_scaling": {**YARN, "attention_factor": 1.3,
                                              "truncate": False}}),
    "mistral": ("MistralForCausalLM", {"rope_theta": 1000.0, "sliding_window": None}),
    "mistral-window": ("MistralForCausalLM", {"rope_theta": 1000.0, "sliding_window": 5}),
    "qwen2": ("Qwen2ForCausalLM", {"rope_theta": 1000.0}),
    "qwen2-tied": ("Qwen2ForCausalLM", {"rope_theta": 1000.0, "tie_word_embeddings": True}),
    "qwen3": ("Qwen3ForCausalLM", {"rope_theta": 1000.0}),
}

_MEASURED: dict[str, float] = {}


def _libs() -> tuple[Any, Any]:
    """``(torch, transformers)``, or a skip when either is missing (the tests that do not
    compare with transformers still run)."""
    return pytest.importorskip("torch"), pytest.importorskip("transformers")


def _hf_model(arch: str, extra: dict[str, Any], seed: int = 0) -> Any:
    """A tiny random transformers model with every parameter drawn at random."""
    torch, transformers = _libs()
    family = arch.removesuffix("ForCausalLM")
    config = getattr(transformers, f"{family}Config")(**{**SHAPE, **extra})
    torch.manual_seed(seed)
    model = getattr(transformers, arch)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.5)
            else:
                p.normal_(0.0, p.shape[-1] ** -0.5)
    return model


def _hf_logits(model: Any, tokens: np.ndarray) -> np.ndarray:
    torch, _ = _libs()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens, dtype=torch.long))
    return out.logits.float().numpy()


def _save(model: Any, path: Path) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    return path


def _compare(ours: np.ndarray, ref: np.ndarray) -> float:
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=ATOL)
    return float(np.max(np.abs(ours - ref)))


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Path]]:
    out = {}
    for name, (arch, extra) in CASES.items():
        model = _hf_model(arch, extra)
        out[name] = (model, _save(model, tmp_path_factory.mktemp(name)))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(hf_dirs, case):
    model, path = hf_dirs[case]
    loaded = load_hf_directory(path)
    cfg = loaded.config
    arch = CASES[case][0]
    assert cfg.architecture == arch.removesuffix("ForCausalLM").lower()
    assert cfg.attention_bias == (arch == "Qwen2ForCausalLM")
    assert cfg.sliding_window == (5 if case == "mistral-window" else None)
    assert cfg.num_params() == sum(p.numel() for p in model.parameters())
    ours = np.asarray(jit_logits(loaded.model.params, None, jnp.asarray(TOKENS), config=cfg))
    _MEASURED[case] = _compare(ours, _hf_logits(model, TOKENS))
    # the other attention implementation computes the same function
    chunked = logits(loaded.model.params, None, jnp.asarray(TOKENS), cfg,
                     RunOptions(attention="chunked"))
    np.testing.assert_allclose(np.asarray(chunked), ours, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_report_measured_differences(hf_dirs):
    """Prints the max |logit difference| per case (run with -s to see it)."""
    missing = sorted(set(CASES) - set(_MEASURED))
    for case in missing:  # when run alone
        test_logits_match_transformers(hf_dirs, case)
    print("\nmax |ours - transformers| logits:",
          json.dumps({k: float(f"{v:.2e}") for k, v in sorted(_MEASURED.items())}))
    assert max(_MEASURED.values()) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("case", ["qwen2", "mistral-window", "yarn-mscale", "llama3-rope"])
def test_writer_round_trip_is_read_by_transformers(hf_dirs, tmp_path, case):
    model, path = hf_dirs[case]
    loaded = load_hf_directory(path)
    out = save_hf_directory(tmp_path / "ours", loaded.model, max_shard_bytes=40_000)
    again = load_hf_directory(out)
    assert again.config == loaded.config
    for a, b in zip(jax.tree.leaves(loaded.model.params), jax.tree.leaves(again.model.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    arch = CASES[case][0]
    theirs = getattr(_libs()[1], arch).from_pretrained(out).eval()
    _compare(_hf_logits(theirs, TOKENS), _hf_logits(model, TOKENS))


def test_legacy_and_v5_rope_keys_give_the_same_config():
    v5 = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **SHAPE,
          "rope_parameters": {"rope_theta": 500.0, **YARN_MSCALE}}
    legacy = {**{k: v for k, v in v5.items() if k != "rope_parameters"}, "rope_theta": 500.0,
              "rope_scaling": {**{k: v for k, v in YARN_MSCALE.items() if k != "rope_type"},
                               "type": "yarn"}}
    assert config_from_hf(v5) == config_from_hf(legacy)
    assert config_from_hf(v5).rope_theta == 500.0
    # llama3 without original_max_position_embeddings: transformers' default
    llama3 = {k: v for k, v in LLAMA3.items() if k != "original_max_position_embeddings"}
    cfg = config_from_hf({**legacy, "rope_scaling": llama3})
    assert dict(cfg.rope_scaling)["original_max_position_embeddings"] == 128


def _decode_all(weights, cfg, tokens):
    """Logits of every position after the first, from prefill(1 token) + decode steps."""
    run = jax.jit(prefill, static_argnames=("cache_len", "config"))
    _, cache = run(weights, tokens[:, :1], cache_len=tokens.shape[1], config=cfg)
    step = jax.jit(decode_step, static_argnames=("config",))
    out = []
    for pos in range(1, tokens.shape[1]):
        lg, cache = step(weights, cache, tokens[:, pos], jnp.int32(pos), config=cfg)
        out.append(lg)
    return np.stack([np.asarray(x) for x in out], axis=1)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["mistral-window", "qwen2"])
def test_cached_decoding_matches_the_full_forward(hf_dirs, case):
    loaded = load_hf_directory(hf_dirs[case][1])
    cfg, params = loaded.config, loaded.model.params
    tokens = jnp.asarray(TOKENS)
    lora = perturb(init_lora(cfg, LoraSpec(rank=4, seed=1)), seed=2, std=0.05)
    full = np.asarray(jit_logits(params, lora, tokens, config=cfg))
    assert not np.allclose(full, np.asarray(jit_logits(params, None, tokens, config=cfg)))
    for weights in (merge_for_decoding(params, lora),
                    SharedWeights(params, lora.weights, lora.scale)):
        np.testing.assert_allclose(_decode_all(weights, cfg, tokens), full[:, 1:],
                                   rtol=1e-4, atol=1e-4)


def test_sliding_window_mask_in_every_attention_path():
    cfg = ModelConfig(vocab_size=16, d_model=16, n_layers=1, n_heads=4, n_kv_heads=2,
                      d_ff=16, sliding_window=3)
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(kq, (2, 8, 4, 4))
    k = jax.random.normal(kk, (2, 8, 2, 4))
    v = jax.random.normal(kv, (2, 8, 2, 4))
    attend = jax.jit(causal_attention, static_argnames=("config", "impl"))
    dense = attend(q, k, v, cfg, "dense")
    np.testing.assert_allclose(attend(q, k, v, cfg, "chunked"), dense, atol=1e-6)
    # an explicit reference: query i sees keys i-2, i-1, i
    kr, vr = jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2)
    s = jnp.einsum("bthd,bshd->bhts", q, kr) / 2.0
    i, j = np.arange(8)[:, None], np.arange(8)[None]
    s = jnp.where((j <= i) & (j > i - 3), s, -jnp.inf)
    ref = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(s, -1), vr).reshape(16, 16)
    np.testing.assert_allclose(dense, ref, atol=1e-5)
    # the window the cuDNN path passes to jax.nn.dot_product_attention means the same
    xla = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla",
                                       local_window_size=(2, 0))
    np.testing.assert_allclose(xla.reshape(16, 16), ref, atol=1e-5)
    # a window as long as the sequence changes nothing
    wide = replace(cfg, sliding_window=8)
    full = replace(cfg, sliding_window=None)
    np.testing.assert_array_equal(attend(q, k, v, wide, "dense"),
                                  attend(q, k, v, full, "dense"))


def test_biases_load_with_a_mesh_and_lora_targets_the_same_projections():
    from tinkex_jax.local.model.hf import params_to_hf
    from tinkex_jax.local.model.sharding import make_mesh, param_shardings

    cfg = ModelConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1,
                      d_ff=32, architecture="qwen2", attention_bias=True)
    params = init_params(cfg, seed=3)
    params["layers"]["bq"] = params["layers"]["bq"] + 0.25
    names = params_to_hf(params, cfg)
    assert "model.layers.1.self_attn.k_proj.bias" in names
    assert "model.layers.1.self_attn.o_proj.bias" not in names
    mesh = make_mesh()
    loaded = params_from_hf(names, cfg, mesh=mesh)
    want = param_shardings(params, mesh)
    assert loaded["layers"]["bq"].sharding.is_equivalent_to(want["layers"]["bq"], 2)
    np.testing.assert_array_equal(np.asarray(loaded["layers"]["bq"]),
                                  np.asarray(params["layers"]["bq"]))
    lora = init_lora(cfg, LoraSpec(rank=2))
    assert sorted(lora.weights["layers"]) == sorted(
        ["wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"])
    # a config without biases has no bias parameters (no extra work per step)
    plain = init_params(replace(cfg, attention_bias=False, architecture="llama"), seed=3)
    assert not {"bq", "bk", "bv"} & set(plain["layers"])
    np.testing.assert_array_equal(np.asarray(plain["layers"]["wq"]),
                                  np.asarray(params["layers"]["wq"]))


def _base_hf(**extra: Any) -> dict[str, Any]:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **SHAPE, **extra}


@pytest.mark.parametrize(("hf", "match"), [
    (_base_hf(architectures=["GPT2LMHeadModel"]),
     r"LlamaForCausalLM.*MistralForCausalLM.*Qwen2ForCausalLM.*Qwen3ForCausalLM"),
    (_base_hf(attention_bias=True), r"attention_bias.*Qwen2ForCausalLM"),
    (_base_hf(mlp_bias=True), r"mlp_bias"),
    (_base_hf(sliding_window=8), r"sliding_window.*MistralForCausalLM"),
    (_base_hf(architectures=["Qwen2ForCausalLM"], use_sliding_window=True,
              sliding_window=16), r"use_sliding_window.*max_window_layers"),
    (_base_hf(rope_scaling={"rope_type": "longrope", "factor": 2.0}),
     r"rope_type.*'default', 'linear', 'dynamic', 'llama3', 'yarn'.*longrope"),
    (_base_hf(rope_scaling={"rope_type": "linear"}), r"factor.*missing"),
    (_base_hf(partial_rotary_factor=0.5), r"partial_rotary_factor"),
    (_base_hf(rope_parameters={"full_attention": {"rope_type": "default"}}),
     r"per-layer-type rope"),
])
def test_unsupported_settings_raise_clear_errors(hf, match):
    with pytest.raises(ValidationError, match=match) as info:
        config_from_hf(hf)
    assert "expected" in str(info.value)


def test_settings_transformers_ignores_are_accepted():
    assert config_from_hf(_base_hf(architectures=["Qwen2ForCausalLM"], use_sliding_window=False,
                                   sliding_window=16)).sliding_window is None
    # a window of at least max_position_embeddings hides nothing
    assert config_from_hf(_base_hf(architectures=["MistralForCausalLM"],
                                   sliding_window=4096)).sliding_window is None


def test_config_to_hf_refuses_what_the_architecture_cannot_say():
    from tinkex_jax.local.model.hf import config_to_hf

    cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=16)
    with pytest.raises(ValidationError, match=r"attention_bias.*'qwen2'"):
        config_to_hf(replace(cfg, attention_bias=True))
    with pytest.raises(ValidationError, match=r"sliding_window.*'mistral'"):
        config_to_hf(replace(cfg, sliding_window=4))
    hf = config_to_hf(replace(cfg, architecture="mistral", sliding_window=4))
    assert hf["architectures"] == ["MistralForCausalLM"] and hf["sliding_window"] == 4


def _architectures_in(text: str) -> set[str]:
    return set(re.findall(r"\b[A-Z][A-Za-z0-9]+ForCausalLM\b", text))


def test_docs_and_error_message_list_the_same_architectures():
    from tinkex_jax.local.model import hf as hf_module

    with pytest.raises(ValidationError) as info:
        config_from_hf(_base_hf(architectures=["GPT2LMHeadModel"]))
    in_error = _architectures_in(str(info.value))
    docs = (REPO / "docs" / "local-backend.md").read_text(encoding="utf-8")
    section = docs.split("### Supported model families", 1)[1].split("\n#", 1)[0]
    assert in_error == set(SUPPORTED_ARCHITECTURES)
    assert _architectures_in(section) == set(SUPPORTED_ARCHITECTURES)
    assert _architectures_in(hf_module.__doc__ or "") == set(SUPPORTED_ARCHITECTURES)


MESH_SCRIPT = '''
import json, sys
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, sys.argv[1])
from tinkex_jax.local.model import LoraSpec, Model, Sampler, init_lora, init_params, logits
from tinkex_jax.local.model.config import ModelConfig
from tinkex_jax.local.model.hf import params_from_hf, params_to_hf
from tinkex_jax.local.model.options import RunOptions
from tinkex_jax.local.model import sharding as shd

cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                  architecture="qwen2", attention_bias=True, sliding_window=5,
                  rope_scaling=(("factor", 4.0), ("original_max_position_embeddings", 32.0),
                                ("rope_type", "yarn")), max_seq_len=128)
params = init_params(cfg, seed=0)
keys = jax.random.split(jax.random.key(1), 3)
for k, name in zip(keys, ("bq", "bk", "bv")):
    params["layers"][name] = 0.3 * jax.random.normal(k, params["layers"][name].shape)
tokens = jnp.asarray(np.arange(32).reshape(2, 16) % 64)
ref = np.asarray(logits(params, None, tokens, cfg))
ref_sample = Sampler(Model(params, cfg), None).sample([5, 6, 7], num_samples=2, max_tokens=10,
                                                      seed=3)
mesh = shd.make_mesh(fsdp=2, tp=2)
loaded = params_from_hf(params_to_hf(params, cfg), cfg, mesh=mesh)
model = Model(loaded, cfg, RunOptions(mesh=mesh))
got = np.asarray(jax.jit(logits, static_argnames=("config", "options"))(
    loaded, None, tokens, config=cfg, options=model.options))
sample = Sampler(model, None).sample([5, 6, 7], num_samples=2, max_tokens=10, seed=3)
want = shd.param_shardings(params, mesh)
print(json.dumps({
    "devices": len(jax.devices()),
    "bias_spec": str(loaded["layers"]["bq"].sharding.spec),
    "shardings": all(x.sharding.is_equivalent_to(s, x.ndim) for x, s in
                     zip(jax.tree.leaves(loaded), jax.tree.leaves(want))),
    "logits_abs": float(np.max(np.abs(got - ref))),
    "tokens_equal": [s.tokens for s in sample.sequences]
                    == [s.tokens for s in ref_sample.sequences],
}))
'''


@pytest.mark.slow
def test_biases_and_window_on_a_four_device_mesh():
    """fsdp=2 x tp=2 on simulated CPU devices: the same logits and samples as one device."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", MESH_SCRIPT, str(REPO)], env=env,
                         capture_output=True, text=True, timeout=600, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["devices"] == 4 and report["shardings"], report
    assert report["logits_abs"] < 1e-4 and report["tokens_equal"], report
