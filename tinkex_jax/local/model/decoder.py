"""A Llama / Qwen3-family decoder in plain JAX.

Parameters are a plain pytree (nested dicts of arrays). Weights are stored ``[in, out]`` so a
projection is ``x @ w``; the Hugging Face loader transposes from PyTorch's ``[out, in]``.

Base parameter layout (``L`` layers, ``d`` model width, ``q = n_heads * head``,
``kv = n_kv_heads * head``, ``f`` MLP width, ``V`` vocabulary)::

    {"embed": [V, d],
     "layers": {"attn_norm": [L, d], "wq": [L, d, q], "wk": [L, d, kv], "wv": [L, d, kv],
                "wo": [L, q, d], "mlp_norm": [L, d], "w_gate": [L, d, f], "w_up": [L, d, f],
                "w_down": [L, f, d],
                "q_norm": [L, head], "k_norm": [L, head]},   # only when config.qk_norm
     "final_norm": [d],
     "unembed": [d, V]}                                       # only when not tie_embeddings

Layers are stacked on a leading axis and run with ``lax.scan`` for training (one compiled
block, fast compiles). Decoding uses per-layer weights (`DecodeWeights`) and per-layer KV
caches updated in place, which avoids copying stacked weights and caches on every step.
Activations stay 2-D (``[B*T, d]``) around every projection: XLA:CPU emits transposes for the
weight gradients of ``[B, T, d] @ W`` that cost more than the matmuls at these sizes.

Example:
    >>> import jax.numpy as jnp
    >>> from tinkex_jax.local.model.config import ModelConfig
    >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1,
    ...                   d_ff=16)
    >>> params = init_params(cfg, seed=0)
    >>> logits(params, None, jnp.zeros((2, 5), jnp.int32), cfg).shape
    (2, 5, 16)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypedDict

import jax
import jax.numpy as jnp
import numpy as np

from .config import ModelConfig

__all__ = [
    "ATTN_WEIGHTS",
    "MLP_WEIGHTS",
    "DecodeWeights",
    "KVCache",
    "Params",
    "block_inputs",
    "decode_step",
    "final_hidden",
    "init_params",
    "logits",
    "prefill",
    "rms_norm",
    "rope_inv_freq",
    "target_logprobs",
    "unembed_matrix",
]

Params = dict[str, Any]
"""A base-parameter pytree (see the module docstring for the layout)."""

ATTN_WEIGHTS = ("wq", "wk", "wv", "wo")
"""Attention projections (``train_attn`` puts LoRA adapters on these)."""

MLP_WEIGHTS = ("w_gate", "w_up", "w_down")
"""MLP projections (``train_mlp`` puts LoRA adapters on these)."""

_NEG = -1e30  # masked attention score; finite so a fully masked row cannot produce NaN


class DecodeWeights(TypedDict):
    """Per-layer (unstacked) weights for decoding, LoRA already merged in.

    ``layers`` is a list with one dict per layer (same keys as the stacked ``layers`` of the
    base, without the leading axis); ``unembed`` is ``[d, V]`` even for tied embeddings.
    """

    embed: jax.Array
    layers: list[dict[str, jax.Array]]
    final_norm: jax.Array
    unembed: jax.Array


KVCache = list[tuple[jax.Array, jax.Array]]
"""One ``(keys, values)`` pair per layer, each ``[B, n_kv_heads, S, head]`` (after rotary)."""


# --------------------------------------------------------------------------------------------
# Initialisation
# --------------------------------------------------------------------------------------------


def init_params(config: ModelConfig, seed: int = 0, *, dtype: Any = jnp.float32) -> Params:
    """Random base parameters (for pretraining from scratch and for tests).

    Projections are ``N(0, 1/d_in)``; the two residual outputs (``wo``, ``w_down``) are further
    scaled by ``1/sqrt(2 * n_layers)``; the embedding is ``N(0, 1/d_model)`` so that tied
    logits start with unit scale; norms start at 1. Jitted (one compile per config); the
    seed is used modulo ``2**32``.

    Args:
        config: The model shape.
        seed: PRNG seed; the same seed gives the same parameters.
        dtype: Parameter dtype.

    Returns:
        The base parameter pytree.

    Example:
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1,
        ...                   d_ff=16)
        >>> init_params(cfg)["layers"]["wk"].shape
        (1, 8, 4)
    """
    return _init_params_jit(config, np.uint32(int(seed) % (1 << 32)), np.dtype(dtype))


def _init_params_impl(config: ModelConfig, seed: jax.Array | int, dtype: Any) -> Params:
    c = config
    key = jax.random.key(seed)
    names = ["embed", "wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down", "unembed"]
    keys = dict(zip(names, jax.random.split(key, len(names))))
    out_scale = 1.0 / math.sqrt(2 * c.n_layers)

    def normal(name: str, shape: tuple[int, ...], std: float) -> jax.Array:
        return (jax.random.normal(keys[name], shape, jnp.float32) * std).astype(dtype)

    L, d, q, kv, f = c.n_layers, c.d_model, c.q_dim, c.kv_dim, c.d_ff
    layers = {
        "attn_norm": jnp.ones((L, d), dtype),
        "wq": normal("wq", (L, d, q), d**-0.5),
        "wk": normal("wk", (L, d, kv), d**-0.5),
        "wv": normal("wv", (L, d, kv), d**-0.5),
        "wo": normal("wo", (L, q, d), q**-0.5 * out_scale),
        "mlp_norm": jnp.ones((L, d), dtype),
        "w_gate": normal("w_gate", (L, d, f), d**-0.5),
        "w_up": normal("w_up", (L, d, f), d**-0.5),
        "w_down": normal("w_down", (L, f, d), f**-0.5 * out_scale),
    }
    if c.qk_norm:
        layers["q_norm"] = jnp.ones((L, c.head_size), dtype)
        layers["k_norm"] = jnp.ones((L, c.head_size), dtype)
    params: Params = {
        "embed": normal("embed", (c.vocab_size, d), d**-0.5),
        "layers": layers,
        "final_norm": jnp.ones((d,), dtype),
    }
    if not c.tie_embeddings:
        params["unembed"] = normal("unembed", (d, c.vocab_size), d**-0.5)
    return params


_init_params_jit = jax.jit(_init_params_impl, static_argnames=("config", "dtype"))


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm over the last axis, computed in float32.

    Example:
        >>> import jax.numpy as jnp
        >>> [round(float(v), 3) for v in rms_norm(jnp.array([3.0, 4.0]), jnp.ones(2), 0.0)]
        [0.849, 1.131]
    """
    x32 = x.astype(jnp.float32)
    inv = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (x32 * inv * weight.astype(jnp.float32)).astype(x.dtype)


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """Rotary inverse frequencies ``[head/2]`` (float64 numpy), with optional rope scaling.

    Supports no scaling, ``"linear"`` and ``"llama3"`` scaling as in Hugging Face configs.

    Example:
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> cfg = ModelConfig(vocab_size=8, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1,
        ...                   d_ff=8, rope_theta=100.0)
        >>> rope_inv_freq(cfg).tolist()
        [1.0, 0.1]
    """
    hd = config.head_size
    inv = 1.0 / (config.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    if not config.rope_scaling:
        return inv
    scaling = dict(config.rope_scaling)
    kind = str(scaling.get("rope_type", scaling.get("type", "default")))
    if kind == "default":
        return inv
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv / factor
    if kind == "llama3":
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old = float(scaling.get("original_max_position_embeddings", 8192))
        wavelen = 2 * np.pi / inv
        scaled = np.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / high) & (wavelen <= old / low)
        return np.where(medium, smoothed, scaled)
    raise ValueError(
        f"ModelConfig.rope_scaling: unsupported rope_type {kind!r} (supported: 'default', "
        "'linear', 'llama3'). Fix: use a checkpoint without this scaling, or add it here."
    )


def _rope_tables(config: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``cos, sin`` of shape ``positions.shape + [head/2]``."""
    inv = jnp.asarray(rope_inv_freq(config), jnp.float32)
    angles = positions.astype(jnp.float32)[..., None] * inv
    return jnp.cos(angles), jnp.sin(angles)


def _apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half rotary embedding (the Hugging Face Llama convention).

    ``x`` is ``[..., heads, head]``; ``cos``/``sin`` broadcast against ``[..., 1, head/2]``.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[..., None, :], sin[..., None, :]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x.dtype)


def _proj(x: jax.Array, w: jax.Array, adapter: Mapping[str, jax.Array] | None,
          scale: float) -> jax.Array:
    """``x @ w`` plus an optional LoRA term ``scale * (x @ a) @ b``; ``x`` is 2-D."""
    y = x @ w
    if adapter is not None:
        y = y + ((x @ adapter["a"]) @ adapter["b"]) * scale
    return y


def _swiglu(h: jax.Array, lw: Mapping[str, jax.Array], lora: Mapping[str, Any] | None,
            scale: float) -> jax.Array:
    ad = lora or {}
    gate = _proj(h, lw["w_gate"], ad.get("w_gate"), scale)
    up = _proj(h, lw["w_up"], ad.get("w_up"), scale)
    return _proj(jax.nn.silu(gate) * up, lw["w_down"], ad.get("w_down"), scale)


def block_inputs(x: jax.Array, lw: Mapping[str, jax.Array], lora: Mapping[str, Any] | None,
                 scale: float, config: ModelConfig, cos: jax.Array, sin: jax.Array,
                 batch: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Queries, keys and values of one block for 2-D input ``x`` ``[batch*T, d]``.

    Returns ``q [B, T, H, head]``, ``k, v [B, T, KV, head]`` with q/k-norm and rotary applied
    (``cos``/``sin`` are ``[T, head/2]`` or ``[B, T, head/2]``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1,
        ...                   d_ff=16)
        >>> lw = jax.tree.map(lambda x: x[0], init_params(cfg)["layers"])
        >>> cos, sin = jnp.ones((3, 2)), jnp.zeros((3, 2))
        >>> q, k, v = block_inputs(jnp.ones((6, 8)), lw, None, 1.0, cfg, cos, sin, 2)
        >>> q.shape, k.shape
        ((2, 3, 2, 4), (2, 3, 1, 4))
    """
    c = config
    ad = lora or {}
    h = rms_norm(x, lw["attn_norm"], c.rms_norm_eps)
    q = _proj(h, lw["wq"], ad.get("wq"), scale).reshape(batch, -1, c.n_heads, c.head_size)
    k = _proj(h, lw["wk"], ad.get("wk"), scale).reshape(batch, -1, c.n_kv_heads, c.head_size)
    v = _proj(h, lw["wv"], ad.get("wv"), scale).reshape(batch, -1, c.n_kv_heads, c.head_size)
    if c.qk_norm:
        q = rms_norm(q, lw["q_norm"], c.rms_norm_eps)
        k = rms_norm(k, lw["k_norm"], c.rms_norm_eps)
    return _apply_rope(q, cos, sin), _apply_rope(k, cos, sin), v


def _causal_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                      config: ModelConfig) -> jax.Array:
    """Causal GQA over full sequences; returns ``[B*T, H*head]``."""
    c = config
    B, T = q.shape[0], q.shape[1]
    q = q.reshape(B, T, c.n_kv_heads, c.group_size, c.head_size)
    s = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32)
    s = s * (c.head_size**-0.5)
    causal = jnp.tril(jnp.ones((T, T), jnp.bool_))
    s = jnp.where(causal, s, _NEG)
    p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    o = jnp.einsum("bkgts,bskh->bkgth", p, v)  # natural output order, then one transpose
    return o.transpose(0, 3, 1, 2, 4).reshape(B * T, c.q_dim)


def _block(x: jax.Array, lw: Mapping[str, jax.Array], lora: Mapping[str, Any] | None,
           scale: float, config: ModelConfig, cos: jax.Array, sin: jax.Array,
           batch: int) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """One decoder block on 2-D ``x``; also returns the block's (post-rotary) keys/values."""
    ad = lora or {}
    q, k, v = block_inputs(x, lw, lora, scale, config, cos, sin, batch)
    o = _causal_attention(q, k, v, config)
    x = x + _proj(o, lw["wo"], ad.get("wo"), scale)
    h = rms_norm(x, lw["mlp_norm"], config.rms_norm_eps)
    return x + _swiglu(h, lw, lora, scale), (k, v)


# --------------------------------------------------------------------------------------------
# Full-sequence forward (training, scoring)
# --------------------------------------------------------------------------------------------


def final_hidden(base: Params, lora_layers: Mapping[str, Any] | None, scale: float,
                 tokens: jax.Array, config: ModelConfig) -> jax.Array:
    """Final (normed) hidden states ``[B*T, d]`` for ``tokens [B, T]`` (positions from 0).

    Layers run under ``lax.scan`` over the stacked weights. ``lora_layers`` is the stacked
    ``layers`` part of a LoRA tree (``{name: {"a": [L, in, r], "b": [L, r, out]}}``) or None.

    Example:
        >>> import jax.numpy as jnp
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1,
        ...                   d_ff=16)
        >>> final_hidden(init_params(cfg), None, 1.0, jnp.zeros((3, 4), jnp.int32), cfg).shape
        (12, 8)
    """
    B, T = tokens.shape
    x = jnp.take(base["embed"], tokens.reshape(-1), axis=0)
    cos, sin = _rope_tables(config, jnp.arange(T))

    def body(x: jax.Array, layer: tuple[Any, Any]) -> tuple[jax.Array, None]:
        lw, ll = layer
        x, _ = _block(x, lw, ll, scale, config, cos, sin, B)
        return x, None

    x, _ = jax.lax.scan(body, x, (base["layers"], lora_layers))
    return rms_norm(x, base["final_norm"], config.rms_norm_eps)


def unembed_matrix(base: Params) -> jax.Array:
    """The output projection ``[d, V]`` (the transposed embedding when tied).

    Example:
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1,
        ...                   d_ff=16)
        >>> unembed_matrix(init_params(cfg)).shape
        (8, 16)
    """
    return base["unembed"] if "unembed" in base else base["embed"].T


def _unembed(h: jax.Array, base: Params, lora_unembed: Mapping[str, jax.Array] | None,
             scale: float) -> jax.Array:
    if "unembed" in base:
        out = h @ base["unembed"]
    else:
        out = jax.lax.dot_general(h, base["embed"], (((1,), (1,)), ((), ())))
    if lora_unembed is not None:
        out = out + ((h @ lora_unembed["a"]) @ lora_unembed["b"]) * scale
    return out.astype(jnp.float32)


def logits(base: Params, lora: Any, tokens: jax.Array, config: ModelConfig) -> jax.Array:
    """Full logits ``[B, T, V]`` (float32) for ``tokens [B, T]``; ``lora`` is a `Lora` or None.

    Example:
        >>> import jax.numpy as jnp
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1,
        ...                   d_ff=16)
        >>> logits(init_params(cfg), None, jnp.ones((1, 3), jnp.int32), cfg).shape
        (1, 3, 16)
    """
    weights, scale = _split_lora(lora)
    h = final_hidden(base, weights.get("layers"), scale, tokens, config)
    out = _unembed(h, base, weights.get("unembed"), scale)
    return out.reshape(tokens.shape[0], tokens.shape[1], -1)


def _split_lora(lora: Any) -> tuple[dict[str, Any], float]:
    if lora is None:
        return {}, 1.0
    return lora.weights, lora.scale


def target_logprobs(base: Params, lora: Any, tokens: jax.Array, targets: jax.Array,
                    config: ModelConfig) -> jax.Array:
    """``log p(targets | prefix)`` for every position: ``[B, T]``, or ``[B, T, K]`` for 2-D.

    Position ``t`` scores ``targets[:, t]`` under the model's next-token distribution after
    ``tokens[:, :t+1]`` (Tinker's convention: targets are the inputs shifted by one).

    Example:
        >>> import jax.numpy as jnp
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1,
        ...                   d_ff=16)
        >>> t = jnp.ones((2, 3), jnp.int32)
        >>> target_logprobs(init_params(cfg), None, t, t, cfg).shape
        (2, 3)
    """
    weights, scale = _split_lora(lora)
    B, T = tokens.shape
    h = final_hidden(base, weights.get("layers"), scale, tokens, config)
    lg = _unembed(h, base, weights.get("unembed"), scale)  # [B*T, V]
    lse = jax.nn.logsumexp(lg, axis=-1, keepdims=True)
    tgt = targets.reshape(B * T, -1).astype(jnp.int32)
    picked = jnp.take_along_axis(lg, tgt, axis=-1) - lse
    return picked.reshape(targets.shape)


# --------------------------------------------------------------------------------------------
# Decoding: prefill and one cached step on per-layer weights
# --------------------------------------------------------------------------------------------


def prefill(weights: DecodeWeights, tokens: jax.Array, cache_len: int,
            config: ModelConfig) -> tuple[jax.Array, KVCache]:
    """Runs ``tokens [B, P]`` (positions 0..P-1) and builds a KV cache of length `cache_len`.

    Returns the final normed hidden states ``[B*P, d]`` (for prompt logprobs) and the cache,
    with the prompt's keys/values at positions ``0..P-1`` and zeros after. Padding positions
    at the end of ``tokens`` write garbage that decoding overwrites before reading it.

    Example:
        >>> import jax.numpy as jnp
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> from tinkex_jax.local.model.lora import merge_for_decoding
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1,
        ...                   d_ff=16)
        >>> w = merge_for_decoding(init_params(cfg), None)
        >>> run = jax.jit(prefill, static_argnames=("cache_len", "config"))
        >>> hidden, cache = run(w, jnp.ones((1, 3), jnp.int32), cache_len=8, config=cfg)
        >>> hidden.shape, len(cache), cache[0][0].shape
        ((3, 8), 1, (1, 1, 8, 4))
    """
    B, P = tokens.shape
    x = jnp.take(weights["embed"], tokens.reshape(-1), axis=0)
    cos, sin = _rope_tables(config, jnp.arange(P))
    cache: KVCache = []
    for lw in weights["layers"]:
        x, (k, v) = _block(x, lw, None, 1.0, config, cos, sin, B)
        pad = ((0, 0), (0, 0), (0, cache_len - P), (0, 0))
        cache.append((jnp.pad(k.transpose(0, 2, 1, 3), pad),
                      jnp.pad(v.transpose(0, 2, 1, 3), pad)))
    return rms_norm(x, weights["final_norm"], config.rms_norm_eps), cache


def decode_step(weights: DecodeWeights, cache: KVCache, token: jax.Array, pos: jax.Array,
                config: ModelConfig) -> tuple[jax.Array, KVCache]:
    """One cached step: feeds ``token [B]`` at position ``pos`` (a scalar), returns logits.

    Keys/values of this position are written into each layer's cache in place
    (``dynamic_update_slice``); attention reads positions ``<= pos``.

    Returns:
        ``(logits [B, V] float32, updated cache)``.

    Example:
        >>> import jax.numpy as jnp
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> from tinkex_jax.local.model.lora import merge_for_decoding
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1,
        ...                   d_ff=16)
        >>> w = merge_for_decoding(init_params(cfg), None)
        >>> _, cache = prefill(w, jnp.ones((1, 2), jnp.int32), 8, cfg)
        >>> step = jax.jit(decode_step, static_argnames=("config",), donate_argnums=(1,))
        >>> lg, cache = step(w, cache, jnp.array([3]), jnp.int32(2), config=cfg)
        >>> lg.shape
        (1, 16)
    """
    c = config
    B = token.shape[0]
    S = cache[0][0].shape[2]
    x = jnp.take(weights["embed"], token, axis=0)  # [B, d]
    cos, sin = _rope_tables(c, pos[None])  # [1, head/2]
    visible = jnp.arange(S) <= pos
    new_cache: KVCache = []
    for lw, (kc, vc) in zip(weights["layers"], cache):
        q, k, v = block_inputs(x, lw, None, 1.0, c, cos, sin, B)  # q [B,1,H,h], k/v [B,1,KV,h]
        kc = jax.lax.dynamic_update_slice(kc, k.transpose(0, 2, 1, 3), (0, 0, pos, 0))
        vc = jax.lax.dynamic_update_slice(vc, v.transpose(0, 2, 1, 3), (0, 0, pos, 0))
        qg = q.reshape(B, c.n_kv_heads, c.group_size, c.head_size)
        s = jnp.einsum("bkgh,bksh->bkgs", qg, kc, preferred_element_type=jnp.float32)
        s = jnp.where(visible, s * (c.head_size**-0.5), _NEG)
        p = jax.nn.softmax(s, axis=-1).astype(vc.dtype)
        o = jnp.einsum("bkgs,bksh->bkgh", p, vc).reshape(B, c.q_dim)
        x = x + o @ lw["wo"]
        h = rms_norm(x, lw["mlp_norm"], c.rms_norm_eps)
        x = x + _swiglu(h, lw, None, 1.0)
        new_cache.append((kc, vc))
    h = rms_norm(x, weights["final_norm"], c.rms_norm_eps)
    return (h @ weights["unembed"]).astype(jnp.float32), new_cache
