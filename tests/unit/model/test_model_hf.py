"""Hugging Face directory loader/writer, byte tokenizer, and the built-in presets."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import tokenizers
from hypothesis import given, settings, strategies as st
from safetensors.numpy import save_file

from tests.support.model_testlib import jit_logits
from tinkex_jax.errors import ValidationError
from tinkex_jax.local.model import (
    BYTE_VOCAB_SIZE,
    EOS_ID,
    Model,
    ModelConfig,
    Sampler,
    build_byte_tokenizer,
    init_params,
    load_hf_directory,
    load_preset,
    preset_names,
    resolve_base_model,
    save_hf_directory,
)
from tinkex_jax.local.model.pretrain import heldout_loss

_logits = jit_logits


# --------------------------------------------------------------------------------------------
# An independent numpy reference of the Hugging Face Llama / Qwen3 forward pass, reading the
# transformers tensor names directly ([out, in] weights, rotate-half rotary).
# --------------------------------------------------------------------------------------------


def _rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * w


def _rope(x, theta):  # x [T, heads, hd]
    T, _, hd = x.shape
    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    ang = np.arange(T)[:, None] * inv[None]
    cos = np.concatenate([np.cos(ang)] * 2, -1)[:, None]
    sin = np.concatenate([np.sin(ang)] * 2, -1)[:, None]
    rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
    return x * cos + rot * sin


def hf_reference_logits(t, hf, tokens):
    """Logits [T, V] of a HF-format checkpoint ``t`` (name -> array) with config ``hf``."""
    H, KV = hf["num_attention_heads"], hf["num_key_value_heads"]
    hd, eps = hf["head_dim"], hf["rms_norm_eps"]
    x = t["model.embed_tokens.weight"][tokens].astype(np.float64)
    T = len(tokens)
    for i in range(hf["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms(x, t[p + "input_layernorm.weight"], eps)
        q = (h @ t[p + "self_attn.q_proj.weight"].T).reshape(T, H, hd)
        k = (h @ t[p + "self_attn.k_proj.weight"].T).reshape(T, KV, hd)
        v = (h @ t[p + "self_attn.v_proj.weight"].T).reshape(T, KV, hd)
        if p + "self_attn.q_norm.weight" in t:
            q = _rms(q, t[p + "self_attn.q_norm.weight"], eps)
            k = _rms(k, t[p + "self_attn.k_norm.weight"], eps)
        q, k = _rope(q, hf["rope_theta"]), _rope(k, hf["rope_theta"])
        k, v = np.repeat(k, H // KV, axis=1), np.repeat(v, H // KV, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)
        s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", a, v).reshape(T, H * hd)
        x = x + o @ t[p + "self_attn.o_proj.weight"].T
        h = _rms(x, t[p + "post_attention_layernorm.weight"], eps)
        g = h @ t[p + "mlp.gate_proj.weight"].T
        u = h @ t[p + "mlp.up_proj.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * u) @ t[p + "mlp.down_proj.weight"].T
    x = _rms(x, t["model.norm.weight"], eps)
    head = t.get("lm_head.weight", t["model.embed_tokens.weight"])
    return x @ head.T


def _hand_built_checkpoint(arch, tied, rng):
    """A random checkpoint written with transformers' names, not with our writer."""
    d, V, L, H, KV, hd, F = 24, 50, 2, 4, 2, 8, 40
    hf = {"architectures": [arch], "model_type": "qwen3" if "Qwen3" in arch else "llama",
          "vocab_size": V, "hidden_size": d, "intermediate_size": F, "num_hidden_layers": L,
          "num_attention_heads": H, "num_key_value_heads": KV, "head_dim": hd,
          "rms_norm_eps": 1e-6, "rope_theta": 500.0, "tie_word_embeddings": tied,
          "max_position_embeddings": 128, "hidden_act": "silu", "torch_dtype": "float32",
          "bos_token_id": 1, "eos_token_id": [2, 3]}
    t = {"model.embed_tokens.weight": rng.normal(0, 0.5, (V, d)),
         "model.norm.weight": rng.uniform(0.5, 1.5, d)}
    for i in range(L):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = rng.uniform(0.5, 1.5, d)
        t[p + "post_attention_layernorm.weight"] = rng.uniform(0.5, 1.5, d)
        for name, shape in [("self_attn.q_proj", (H * hd, d)), ("self_attn.k_proj", (KV * hd, d)),
                            ("self_attn.v_proj", (KV * hd, d)), ("self_attn.o_proj", (d, H * hd)),
                            ("mlp.gate_proj", (F, d)), ("mlp.up_proj", (F, d)),
                            ("mlp.down_proj", (d, F))]:
            t[p + name + ".weight"] = rng.normal(0, shape[1] ** -0.5, shape)
        if "Qwen3" in arch:
            t[p + "self_attn.q_norm.weight"] = rng.uniform(0.5, 1.5, hd)
            t[p + "self_attn.k_norm.weight"] = rng.uniform(0.5, 1.5, hd)
    if not tied:
        t["lm_head.weight"] = rng.normal(0, d**-0.5, (V, d))
    return hf, {k: v.astype(np.float32) for k, v in t.items()}


@pytest.mark.parametrize(("arch", "tied", "sharded"),
                         [("LlamaForCausalLM", True, False), ("Qwen3ForCausalLM", False, True)])
def test_loader_reads_transformers_names(tmp_path, arch, tied, sharded):
    hf, tensors = _hand_built_checkpoint(arch, tied, np.random.default_rng(0))
    (tmp_path / "config.json").write_text(json.dumps(hf))
    if sharded:
        names = sorted(tensors)
        half = len(names) // 2
        files = {"model-00001-of-00002.safetensors": names[:half],
                 "model-00002-of-00002.safetensors": names[half:]}
        for fname, keys in files.items():
            save_file({k: tensors[k] for k in keys}, str(tmp_path / fname))
        index = {"weight_map": {k: f for f, ks in files.items() for k in ks}}
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    else:
        save_file(tensors, str(tmp_path / "model.safetensors"))
    build_byte_tokenizer().save(str(tmp_path / "tokenizer.json"))

    loaded = load_hf_directory(tmp_path)
    cfg = loaded.config
    assert cfg.architecture == ("qwen3" if "Qwen3" in arch else "llama")
    assert cfg.qk_norm == ("Qwen3" in arch) and cfg.tie_embeddings == tied
    assert cfg.eos_token_ids == (2, 3) and cfg.bos_token_id == 1
    assert loaded.tokenizer.encode("ok").ids == [111, 107]
    tokens = [3, 17, 42, 8, 0, 49, 21]
    ours = np.asarray(_logits(loaded.model.params, None, np.array([tokens]), config=cfg)[0])
    np.testing.assert_allclose(ours, hf_reference_logits(tensors, hf, tokens), atol=2e-4)


@pytest.mark.parametrize(("dtype", "atol"), [("float32", 0.0), ("bfloat16", 5e-2),
                                              ("float16", 5e-3)])
def test_writer_round_trip(tmp_path, dtype, atol):
    cfg = ModelConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=32,
                      architecture="qwen3", qk_norm=True, tie_embeddings=False,
                      eos_token_ids=(7,))
    model = Model(init_params(cfg, seed=4), cfg)
    out = save_hf_directory(tmp_path / "m", model, build_byte_tokenizer(), dtype=dtype,
                            max_shard_bytes=4000)
    assert (out / "model.safetensors.index.json").exists()
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Qwen3ForCausalLM"]
    loaded = load_hf_directory(out)
    assert loaded.config == cfg
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(loaded.model.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=atol, rtol=atol)
    # the writer's names are the ones transformers uses: the reference reads them directly
    from safetensors.numpy import load_file
    tensors = {}
    for f in sorted(out.glob("*.safetensors")):
        tensors.update({k: v.astype(np.float32) for k, v in load_file(str(f)).items()})
    hf = json.loads((out / "config.json").read_text())
    ref = hf_reference_logits(tensors, hf, [1, 2, 3, 4])
    np.testing.assert_allclose(np.asarray(_logits(loaded.model.params, None,
                                                  np.array([[1, 2, 3, 4]]), config=cfg)[0]),
                               ref, atol=2e-4)


def test_loader_errors_are_explicit(tmp_path):
    hf, tensors = _hand_built_checkpoint("LlamaForCausalLM", True, np.random.default_rng(1))
    (tmp_path / "config.json").write_text(json.dumps({**hf, "architectures": ["GPT2LMHeadModel"]}))
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValidationError, match=r"LlamaForCausalLM.*Qwen3ForCausalLM"):
        load_hf_directory(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(hf))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValidationError, match=r"mlp\.up_proj"):
        load_hf_directory(tmp_path)
    with pytest.raises(ValidationError, match="directory"):
        load_hf_directory(tmp_path / "nope")
    with pytest.raises(ValidationError, match="preset"):
        resolve_base_model("meta-llama/Llama-3.2-1B")


@settings(max_examples=200, deadline=None)
@given(st.text().filter(lambda t: not any(s in t for s in ("<|bos|>", "<|eos|>", "<|pad|>"))))
def test_byte_tokenizer_round_trips_any_text(text):
    tok = build_byte_tokenizer()
    ids = tok.encode(text).ids
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text


def test_special_token_text_encodes_to_the_special_id():
    # as with Hugging Face tokenizers: the literal "<|pad|>" in a text is the pad token
    # (hypothesis found this case for the round-trip property above)
    tok = build_byte_tokenizer()
    assert tok.encode("a<|pad|>b<|eos|>").ids == [97, 258, 98, 257]


def test_byte_tokenizer_file_and_special_ids(tmp_path):
    tok = build_byte_tokenizer()
    tok.save(str(tmp_path / "tokenizer.json"))
    again = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert again.get_vocab_size() == BYTE_VOCAB_SIZE
    assert [again.token_to_id(t) for t in ("<|bos|>", "<|eos|>", "<|pad|>")] == [256, 257, 258]
    assert again.encode("a<|eos|>").ids == [97, EOS_ID]
    assert again.decode([97, EOS_ID], skip_special_tokens=True) == "a"


@pytest.mark.parametrize("name", ["tinkex-jax/tiny", "tinkex-jax/small"])
def test_presets_are_pretrained(name):
    if name not in preset_names():
        pytest.fail(f"{name} weights are missing; run scripts/pretrain_presets.py")
    loaded = resolve_base_model(name)
    assert loaded is load_preset(name)  # one shared frozen base
    cfg = loaded.config
    assert cfg.vocab_size == BYTE_VOCAB_SIZE and cfg.eos_token_ids == (EOS_ID,)
    assert loaded.tokenizer.decode(loaded.tokenizer.encode("héllo").ids) == "héllo"
    random_init = init_params(cfg, seed=123)
    kw = dict(batches=1, batch=8, seq=64)
    trained = heldout_loss(loaded.model.params, cfg, **kw)
    baseline = heldout_loss(random_init, cfg, **kw)
    assert baseline > 5.0
    assert trained < 0.5 * baseline, (trained, baseline)
    # it copies after "=" (the skill the reversal demo builds on)
    out = _logits(loaded.model.params, None, np.array([list(b"hello=hel")]), config=cfg)
    assert int(np.argmax(out[0, -1])) == ord("l")


def test_preset_sampler_with_tokenizer_stop_strings():
    loaded = load_preset("tinkex-jax/tiny")
    sampler = Sampler(loaded.model, tokenizer=loaded.tokenizer)
    full = sampler.sample(list(b"abcd="), max_tokens=5, temperature=0.0).sequences[0]
    assert full.tokens == list(b"abcd\n")
    cut = sampler.sample(list(b"abcd="), max_tokens=5, temperature=0.0,
                         stop_strings=["bc"]).sequences[0]
    assert cut.tokens == list(b"abc") and cut.stop_reason == "stop"
