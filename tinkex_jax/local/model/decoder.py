"""A Llama / Mistral / Qwen2 / Qwen3-family decoder in plain JAX.

Parameters are a plain pytree (nested dicts of arrays). Weights are stored ``[in, out]`` so a
projection is ``x @ w``; the Hugging Face loader transposes from PyTorch's ``[out, in]``.

Base parameter layout (``L`` layers, ``d`` model width, ``q = n_heads * head``,
``kv = n_kv_heads * head``, ``f`` MLP width, ``V`` vocabulary)::

    {"embed": [V, d],
     "layers": {"attn_norm": [L, d], "wq": [L, d, q], "wk": [L, d, kv], "wv": [L, d, kv],
                "wo": [L, q, d], "mlp_norm": [L, d], "w_gate": [L, d, f], "w_up": [L, d, f],
                "w_down": [L, f, d],
                "q_norm": [L, head], "k_norm": [L, head],    # only when config.qk_norm
                "bq": [L, q], "bk": [L, kv], "bv": [L, kv]},  # only when config.attention_bias
     "final_norm": [d],
     "unembed": [d, V]}                                       # only when not tie_embeddings

Layers are stacked on a leading axis and run with ``lax.scan`` for training (one compiled
block, fast compiles), optionally rematerialised per layer. Decoding uses per-layer KV caches
updated in place and reads weights either from a merged per-layer copy (`DecodeWeights`) or
straight from the shared stacked base with the adapter applied on the fly (`SharedWeights`).
Activations stay 2-D (``[B*T, d]``) around every projection: XLA:CPU emits transposes for the
weight gradients of ``[B, T, d] @ W`` that cost more than the matmuls at these sizes.

Precision: activations run in the base's dtype (float32, or bfloat16 for a bfloat16 base);
float32 adapter weights are cast to it inside each projection (their gradients stay float32);
norms, softmax statistics, attention scores and logits are computed in float32. The
`RunOptions` of a model choose remat, the attention implementation and the logits chunk size.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import jax
import jax.numpy as jnp
import numpy as np

from tinkex_jax.errors import invalid

from .config import ModelConfig
from .options import RunOptions, attention_block, remat_policy, resolve_attention

__all__ = [
    "ATTN_BIASES",
    "ATTN_WEIGHTS",
    "MLP_WEIGHTS",
    "ROPE_TYPES",
    "DecodeSource",
    "DecodeWeights",
    "KVCache",
    "Params",
    "SharedWeights",
    "block_inputs",
    "causal_attention",
    "decode_logits",
    "decode_step",
    "final_hidden",
    "hidden_logprobs",
    "init_params",
    "logits",
    "logits_chunk_rows",
    "map_row_chunks",
    "prefill",
    "rms_norm",
    "rope_attention_factor",
    "rope_inv_freq",
    "target_logprobs",
    "unembed_matrix",
    "unstack_layers",
]

Params = dict[str, Any]
"""A base-parameter pytree (see the module docstring for the layout)."""

ATTN_WEIGHTS = ("wq", "wk", "wv", "wo")
"""Attention projections (``train_attn`` puts LoRA adapters on these)."""

MLP_WEIGHTS = ("w_gate", "w_up", "w_down")
"""MLP projections (``train_mlp`` puts LoRA adapters on these)."""

ATTN_BIASES = {"bq": "wq", "bk": "wk", "bv": "wv"}
"""Attention biases (``config.attention_bias``) and the projection each is added to."""

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")
"""Supported ``rope_scaling["rope_type"]`` values (Hugging Face names)."""

_NEG = -1e30  # masked attention score; finite so a fully masked row cannot produce NaN

_DEFAULT_OPTIONS = RunOptions()


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
    if c.attention_bias:  # zeros: no new random draws, so other weights keep their values
        layers["bq"] = jnp.zeros((L, q), dtype)
        layers["bk"] = jnp.zeros((L, kv), dtype)
        layers["bv"] = jnp.zeros((L, kv), dtype)
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

    Supports the `ROPE_TYPES` of Hugging Face configs: no scaling (``"default"``),
    ``"linear"`` (frequencies divided by ``factor``), ``"dynamic"`` (NTK scaling that
    transformers applies only to sequences longer than ``max_position_embeddings``; ours never
    exceed ``max_seq_len``, which the loader sets to that length, so its frequencies are the
    default ones), ``"llama3"`` (Llama 3.1 smoothing between ``low_freq_factor`` and
    ``high_freq_factor``) and ``"yarn"`` (YaRN's ramp between interpolated and extrapolated
    frequencies; its cos/sin multiplier is `rope_attention_factor`).

    Raises:
        ValidationError: An unsupported ``rope_type``, a missing or non-numeric parameter, or
            ``partial_rotary_factor`` other than 1.

    Example:
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> cfg = ModelConfig(vocab_size=8, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1,
        ...                   d_ff=8, rope_theta=100.0)
        >>> rope_inv_freq(cfg).tolist()
        [1.0, 0.1]
    """
    return _rope(config)[0]


def rope_attention_factor(config: ModelConfig) -> float:
    """The multiplier of the rotary cos/sin tables: YaRN's attention factor, else 1.

    YaRN scales queries and keys by it (attention logits by its square): the configured
    ``attention_factor``, or ``0.1 * ln(factor) + 1`` (with ``mscale`` / ``mscale_all_dim``:
    the ratio of that expression computed with each), as in transformers.

    Example:
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> cfg = ModelConfig(vocab_size=8, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1,
        ...                   d_ff=8, rope_scaling=(("factor", 4.0), ("rope_type", "yarn")))
        >>> round(rope_attention_factor(cfg), 4)
        1.1386
    """
    return _rope(config)[1]


def _rope(config: ModelConfig) -> tuple[np.ndarray, float]:
    """``(inverse frequencies, cos/sin multiplier)`` of `config` (see `rope_inv_freq`)."""
    hd = config.head_size
    base = 1.0 / (config.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    if not config.rope_scaling:
        return base, 1.0
    scaling = dict(config.rope_scaling)
    kind = str(scaling.get("rope_type", scaling.get("type", "default")))
    where = "ModelConfig.rope_scaling"
    if kind not in ROPE_TYPES:
        raise invalid(f"{where}.rope_type", f"one of {list(ROPE_TYPES)}", kind,
                      "use a checkpoint without this rope scaling (e.g. longrope is not "
                      "supported)")

    def num(key: str, default: float | None = None) -> float:
        value = scaling.get(key, default)
        if value is None or isinstance(value, str):
            raise invalid(f"{where}[{key!r}]", f"a number (rope_type {kind!r} needs it)",
                          "<missing>" if value is None else value,
                          "add it to the rope_scaling / rope_parameters of config.json")
        return float(value)

    if num("partial_rotary_factor", 1.0) != 1.0:
        raise invalid(f"{where}['partial_rotary_factor']", "1.0 (rotary on the whole head)",
                      scaling["partial_rotary_factor"], "partial rotary is not supported")
    if kind == "default":
        return base, 1.0
    if kind == "dynamic":
        num("factor")
        return base, 1.0  # equal to the default up to max_position_embeddings (= max_seq_len)
    if kind == "linear":
        return base / num("factor"), 1.0
    if kind == "llama3":
        factor = num("factor")
        low = num("low_freq_factor", 1.0)
        high = num("high_freq_factor", 4.0)
        old = num("original_max_position_embeddings", config.max_seq_len)
        wavelen = 2 * np.pi / base
        scaled = np.where(wavelen > old / low, base / factor, base)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / high) & (wavelen <= old / low)
        return np.where(medium, smoothed, scaled), 1.0
    # yarn: interpolate the low frequencies, keep the high ones, with a linear ramp between
    # the dimensions that turn beta_fast and beta_slow times over the original context.
    old = num("original_max_position_embeddings", config.max_seq_len)
    factor = num("factor", config.max_seq_len / old)
    factor = factor or config.max_seq_len / old

    def log_scale(m: float) -> float:
        return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0

    attn = scaling.get("attention_factor")
    if attn is None:
        m, m_all = float(scaling.get("mscale") or 0), float(scaling.get("mscale_all_dim") or 0)
        attn = log_scale(m) / log_scale(m_all) if m and m_all else log_scale(1.0)
    fast = float(scaling.get("beta_fast") or 32)
    slow = float(scaling.get("beta_slow") or 1)

    def dim_of(turns: float) -> float:  # the dimension index that turns `turns` times
        return hd * math.log(old / (turns * 2 * math.pi)) / (2 * math.log(config.rope_theta))

    lo, hi = dim_of(fast), dim_of(slow)
    if scaling.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, hd - 1)
    if lo == hi:
        hi += 1e-3
    ramp = np.clip((np.arange(hd // 2, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    return base / factor * ramp + base * (1.0 - ramp), float(attn)


def _rope_tables(config: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``cos, sin`` of shape ``positions.shape + [head/2]`` (times YaRN's attention factor)."""
    inv, mult = _rope(config)
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv, jnp.float32)
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    if mult != 1.0:
        cos, sin = cos * mult, sin * mult
    return cos, sin


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
    """``x @ w`` plus an optional LoRA term ``scale * (x @ a) @ b``; ``x`` is 2-D.

    Everything runs in ``x``'s dtype (the compute dtype: the base's); float32 adapter
    weights are cast to it, so their gradients come back in float32.
    """
    y = x @ w.astype(x.dtype)
    if adapter is not None:
        a, b = adapter["a"].astype(x.dtype), adapter["b"].astype(x.dtype)
        y = y + ((x @ a) @ b) * scale
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

    Returns ``q [B, T, H, head]``, ``k, v [B, T, KV, head]`` with biases (when the config
    has them), q/k-norm and rotary applied
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

    def project(w: str, bias: str, heads: int) -> jax.Array:
        y = _proj(h, lw[w], ad.get(w), scale)
        if c.attention_bias:  # static: nothing traced for configs without biases
            y = y + lw[bias].astype(y.dtype)
        return y.reshape(batch, -1, heads, c.head_size)

    q = project("wq", "bq", c.n_heads)
    k = project("wk", "bk", c.n_kv_heads)
    v = project("wv", "bv", c.n_kv_heads)
    if c.qk_norm:
        q = rms_norm(q, lw["q_norm"], c.rms_norm_eps)
        k = rms_norm(k, lw["k_norm"], c.rms_norm_eps)
    return _apply_rope(q, cos, sin), _apply_rope(k, cos, sin), v


def _window(config: ModelConfig, length: int) -> int | None:
    """The sliding window when it hides something in sequences of `length` keys, else None
    (then the mask is plain causal and no extra work is traced)."""
    w = config.sliding_window
    return w if w is not None and w < length else None


def _dense_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                     config: ModelConfig) -> jax.Array:
    """Causal GQA over full sequences with one ``[B, KV, G, T, T]`` score tensor."""
    c = config
    B, T = q.shape[0], q.shape[1]
    q = q.reshape(B, T, c.n_kv_heads, c.group_size, c.head_size)
    s = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32)
    s = s * (c.head_size**-0.5)
    causal = jnp.tril(jnp.ones((T, T), jnp.bool_))
    window = _window(c, T)
    if window is not None:  # query i sees keys i - window < j <= i
        causal = causal & ~jnp.tril(jnp.ones((T, T), jnp.bool_), -window)
    s = jnp.where(causal, s, _NEG)
    p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    o = jnp.einsum("bkgts,bskh->bkgth", p, v)  # natural output order, then one transpose
    return o.transpose(0, 3, 1, 2, 4).reshape(B * T, c.q_dim)


def _chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array, config: ModelConfig,
                       block: int) -> jax.Array:
    """Causal GQA computed for `block` query rows at a time.

    Each block sees every key (exact softmax, no running statistics) and is wrapped in
    ``jax.checkpoint``, so neither the forward nor the backward pass holds more than one
    ``[B, KV, G, block, T]`` score tensor.
    """
    c = config
    B, T = q.shape[0], q.shape[1]
    n = T // block
    qb = q.reshape(B, n, block, c.n_kv_heads, c.group_size, c.head_size)
    qb = jnp.moveaxis(qb, 1, 0)  # [n, B, block, KV, G, h]
    key_pos = jnp.arange(T)
    window = _window(c, T)

    @jax.checkpoint
    def one(args: tuple[jax.Array, jax.Array]) -> jax.Array:
        qi, i = args
        s = jnp.einsum("bckgh,bskh->bkgcs", qi, k, preferred_element_type=jnp.float32)
        s = s * (c.head_size**-0.5)
        query_pos = i * block + jnp.arange(block)
        seen = query_pos[:, None] >= key_pos[None, :]
        if window is not None:
            seen = seen & (query_pos[:, None] - key_pos[None, :] < window)
        s = jnp.where(seen, s, _NEG)
        p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
        return jnp.einsum("bkgcs,bskh->bckgh", p, v)  # [B, block, KV, G, h]

    o = jax.lax.map(one, (qb, jnp.arange(n)))  # [n, B, block, KV, G, h]
    return jnp.moveaxis(o, 0, 1).reshape(B * T, c.q_dim)


def _cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                     config: ModelConfig) -> jax.Array | None:
    """cuDNN fused attention, or None when cuDNN refuses (shapes, dtype, version)."""
    window = _window(config, q.shape[1])
    local = None if window is None else (window - 1, 0)  # keys q - (window - 1) .. q
    try:
        o = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn",
                                         local_window_size=local)
    except Exception:  # raised at trace time when cuDNN cannot run these shapes
        return None
    B, T = q.shape[0], q.shape[1]
    return o.reshape(B * T, config.q_dim)


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, config: ModelConfig,
                     impl: str = "dense") -> jax.Array:
    """Causal grouped-query attention over full sequences; returns ``[B*T, H*head]``.

    With ``config.sliding_window`` ``W``, query ``i`` sees keys ``i - W < j <= i``.

    Args:
        q: ``[B, T, H, head]`` queries (after rotary).
        k, v: ``[B, T, KV, head]`` keys (after rotary) and values.
        config: The model shape.
        impl: ``"dense"``, ``"chunked"`` or ``"cudnn"`` (see `RunOptions.attention`);
            all three compute the same function.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1,
        ...                   d_ff=16)
        >>> q = jax.random.normal(jax.random.key(0), (1, 128, 2, 4))
        >>> k = v = jax.random.normal(jax.random.key(1), (1, 128, 1, 4))
        >>> a = causal_attention(q, k, v, cfg, "dense")
        >>> b = causal_attention(q, k, v, cfg, "chunked")
        >>> a.shape, bool(jnp.allclose(a, b, atol=1e-5))
        ((128, 8), True)
    """
    if impl == "cudnn":
        out = _cudnn_attention(q, k, v, config)
        if out is not None:
            return out
        impl = "chunked"
    if impl == "chunked":
        block = attention_block(q.shape[1]) or (q.shape[1] // 2 if q.shape[1] % 2 == 0
                                                else 0)
        if block:
            return _chunked_attention(q, k, v, config, block)
    return _dense_attention(q, k, v, config)


def _block(x: jax.Array, lw: Mapping[str, jax.Array], lora: Mapping[str, Any] | None,
           scale: float, config: ModelConfig, cos: jax.Array, sin: jax.Array,
           batch: int, attention: str = "dense",
           ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """One decoder block on 2-D ``x``; also returns the block's (post-rotary) keys/values."""
    ad = lora or {}
    q, k, v = block_inputs(x, lw, lora, scale, config, cos, sin, batch)
    o = causal_attention(q, k, v, config, attention)
    x = x + _proj(o, lw["wo"], ad.get("wo"), scale)
    h = rms_norm(x, lw["mlp_norm"], config.rms_norm_eps)
    return x + _swiglu(h, lw, lora, scale), (k, v)


def _constrain_rows(x: jax.Array, options: RunOptions) -> jax.Array:
    """Keeps 2-D activations split by rows over the data axis when a mesh is in use."""
    mesh = options.mesh
    if mesh is None:
        return x
    from .sharding import DATA_AXIS, batch_sharding, mesh_shape

    if x.shape[0] % mesh_shape(mesh)[DATA_AXIS]:
        return x
    return jax.lax.with_sharding_constraint(x, batch_sharding(mesh, x.ndim))


# --------------------------------------------------------------------------------------------
# Full-sequence forward (training, scoring)
# --------------------------------------------------------------------------------------------


def final_hidden(base: Params, lora_layers: Mapping[str, Any] | None, scale: float,
                 tokens: jax.Array, config: ModelConfig,
                 options: RunOptions | None = None) -> jax.Array:
    """Final (normed) hidden states ``[B*T, d]`` for ``tokens [B, T]`` (positions from 0).

    Layers run under ``lax.scan`` over the stacked weights, each layer wrapped in
    ``jax.checkpoint`` when `options` asks for rematerialisation. Activations are in the
    base's dtype. ``lora_layers`` is the stacked ``layers`` part of a LoRA tree
    (``{name: {"a": [L, in, r], "b": [L, r, out]}}``) or None.

    Example:
        >>> import jax.numpy as jnp
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1,
        ...                   d_ff=16)
        >>> final_hidden(init_params(cfg), None, 1.0, jnp.zeros((3, 4), jnp.int32), cfg).shape
        (12, 8)
    """
    opts = options or _DEFAULT_OPTIONS
    B, T = tokens.shape
    x = _constrain_rows(jnp.take(base["embed"], tokens.reshape(-1), axis=0), opts)
    cos, sin = _rope_tables(config, jnp.arange(T))
    attention = resolve_attention(opts, x.dtype, T)

    def body(x: jax.Array, layer: tuple[Any, Any]) -> tuple[jax.Array, None]:
        lw, ll = layer
        x, _ = _block(x, lw, ll, scale, config, cos, sin, B, attention)
        return _constrain_rows(x, opts), None

    policy = remat_policy(opts, config)
    if policy is not None:
        body = jax.checkpoint(body, policy=policy, prevent_cse=False)
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
    """Float32 logits ``[N, V]`` of 2-D hidden states (products accumulated in float32)."""
    f32 = jnp.float32
    if "unembed" in base:
        out = jnp.dot(h, base["unembed"].astype(h.dtype), preferred_element_type=f32)
    else:
        out = jax.lax.dot_general(h, base["embed"].astype(h.dtype), (((1,), (1,)), ((), ())),
                                  preferred_element_type=f32)
    if lora_unembed is not None:
        t = jnp.dot(h, lora_unembed["a"].astype(h.dtype), preferred_element_type=f32)
        out = out + (t @ lora_unembed["b"].astype(f32)) * scale
    return out


def logits(base: Params, lora: Any, tokens: jax.Array, config: ModelConfig,
           options: RunOptions | None = None) -> jax.Array:
    """Full logits ``[B, T, V]`` (float32) for ``tokens [B, T]``; ``lora`` is a `Lora` or None.

    Materialises every logit: use `target_logprobs` to score targets in bounded memory.

    Example:
        >>> import jax.numpy as jnp
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1,
        ...                   d_ff=16)
        >>> logits(init_params(cfg), None, jnp.ones((1, 3), jnp.int32), cfg).shape
        (1, 3, 16)
    """
    weights, scale = _split_lora(lora)
    h = final_hidden(base, weights.get("layers"), scale, tokens, config, options)
    out = _unembed(h, base, weights.get("unembed"), scale)
    return out.reshape(tokens.shape[0], tokens.shape[1], -1)


def _split_lora(lora: Any) -> tuple[dict[str, Any], float]:
    if lora is None:
        return {}, 1.0
    return lora.weights, lora.scale


def logits_chunk_rows(vocab_size: int, options: RunOptions | None = None) -> int:
    """Rows of float32 logits computed at once under `options.logits_chunk_bytes`.

    Example:
        >>> logits_chunk_rows(151936, RunOptions(logits_chunk_bytes=64 << 20))
        110
    """
    opts = options or _DEFAULT_OPTIONS
    return max(1, opts.logits_chunk_bytes // (4 * vocab_size))


def map_row_chunks(fn: Callable[..., Any], rows: Sequence[jax.Array], chunk: int) -> Any:
    """``fn(*rows)`` computed `chunk` rows at a time (rows padded, results cut back).

    Each chunk runs under ``jax.checkpoint``, so a backward pass recomputes it instead of
    keeping its intermediates. With at most `chunk` rows, `fn` runs once on the whole input.

    Example:
        >>> import jax.numpy as jnp
        >>> x = jnp.arange(10.0).reshape(5, 2)
        >>> map_row_chunks(lambda a: a.sum(-1), [x], 2).tolist()
        [1.0, 5.0, 9.0, 13.0, 17.0]
    """
    n_rows = rows[0].shape[0]
    if n_rows <= chunk:
        return fn(*rows)
    n = -(-n_rows // chunk)
    size = -(-n_rows // n)
    pad = n * size - n_rows
    blocks = [jnp.pad(r, [(0, pad)] + [(0, 0)] * (r.ndim - 1)).reshape(n, size, *r.shape[1:])
              for r in rows]
    body = jax.checkpoint(lambda xs: fn(*xs))
    out = jax.lax.map(body, tuple(blocks))
    return jax.tree.map(lambda o: o.reshape(n * size, *o.shape[2:])[:n_rows], out)


def hidden_logprobs(hidden: jax.Array, base: Params, lora_unembed: Mapping[str, Any] | None,
                    scale: float, targets: jax.Array, chunk: int) -> jax.Array:
    """Float32 ``log p(targets)`` for 2-D hidden states ``[N, d]`` and targets ``[N, K]``,
    computing the logits `chunk` rows at a time (see `map_row_chunks`).

    Example:
        >>> import jax.numpy as jnp
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1,
        ...                   d_ff=16)
        >>> p = init_params(cfg)
        >>> h, t = jnp.ones((6, 8)), jnp.ones((6, 1), jnp.int32)
        >>> bool(jnp.allclose(hidden_logprobs(h, p, None, 1.0, t, 2),
        ...                   hidden_logprobs(h, p, None, 1.0, t, 100)))
        True
    """

    def block(h: jax.Array, tgt: jax.Array) -> jax.Array:
        lg = _unembed(h, base, lora_unembed, scale)
        lse = jax.nn.logsumexp(lg, axis=-1, keepdims=True)
        return jnp.take_along_axis(lg, tgt, axis=-1) - lse

    result: jax.Array = map_row_chunks(block, [hidden, targets.astype(jnp.int32)], chunk)
    return result


def target_logprobs(base: Params, lora: Any, tokens: jax.Array, targets: jax.Array,
                    config: ModelConfig, options: RunOptions | None = None) -> jax.Array:
    """``log p(targets | prefix)`` for every position: ``[B, T]``, or ``[B, T, K]`` for 2-D.

    Position ``t`` scores ``targets[:, t]`` under the model's next-token distribution after
    ``tokens[:, :t+1]`` (Tinker's convention: targets are the inputs shifted by one). The
    float32 logits are computed in row chunks of at most ``options.logits_chunk_bytes``.

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
    h = final_hidden(base, weights.get("layers"), scale, tokens, config, options)
    tgt = targets.reshape(B * T, -1)
    picked = hidden_logprobs(h, base, weights.get("unembed"), scale, tgt,
                             logits_chunk_rows(config.vocab_size, options))
    return picked.reshape(targets.shape)


# --------------------------------------------------------------------------------------------
# Decoding: prefill and one cached step, on merged per-layer weights or on the shared base
# --------------------------------------------------------------------------------------------


def _unstack_layers_impl(layers: Mapping[str, jax.Array]) -> list[dict[str, jax.Array]]:
    n = next(iter(layers.values())).shape[0]
    return [{k: v[i] for k, v in layers.items()} for i in range(n)]


unstack_layers = jax.jit(_unstack_layers_impl)
unstack_layers.__doc__ = """Per-layer copies ``[{name: array}] * L`` of stacked layer weights.

Decoding reads per-layer arrays much faster than slices of stacked ones (XLA:CPU copies a
slice on every step). Jitted; shardings carry over (the layer axis is never split).

Example:
    >>> from tinkex_jax.local.model.config import ModelConfig
    >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1,
    ...                   d_ff=16)
    >>> per_layer = unstack_layers(init_params(cfg)["layers"])
    >>> len(per_layer), per_layer[0]["wq"].shape
    (2, (8, 8))
"""


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class SharedWeights:
    """Decoding weights that reference base weights shared with other samplers and apply an
    optional LoRA adapter on the fly.

    Attributes:
        base: Base parameters, either the stacked tree the trainer uses (``"layers"`` a dict
            of ``[L, ...]`` arrays: no copy at all, but each step slices every layer, which
            XLA:CPU does by copying) or a per-layer form (``"layers"`` a list of dicts, see
            `unstack_layers`) built once and shared by all samplers of that base.
        lora: ``Lora.weights`` of the adapter, or None.
        scale: The adapter's ``alpha / rank`` (static).
    """

    base: Params
    lora: dict[str, Any] | None = None
    scale: float = field(default=1.0, metadata={"static": True})


DecodeSource = DecodeWeights | SharedWeights
"""What `prefill` and `decode_step` read weights from."""


def _layer_weights(weights: DecodeSource, i: int, barrier: Any = None,
                   ) -> tuple[Mapping[str, jax.Array], Mapping[str, Any] | None]:
    """Layer `i`'s weights and adapter. With `barrier` (a value that changes on every loop
    iteration), shared stacked weights are sliced per iteration instead of hoisted out of the
    loop, which would build a transient unstacked copy of the whole base."""
    if not isinstance(weights, SharedWeights):
        return weights["layers"][i], None
    layers = weights.base["layers"]
    ad_layers = (weights.lora or {}).get("layers")
    if barrier is not None and not isinstance(layers, list):
        layers, ad_layers, _ = jax.lax.optimization_barrier((layers, ad_layers, barrier))
    lw = layers[i] if isinstance(layers, list) else {k: v[i] for k, v in layers.items()}
    ad = None if ad_layers is None else {n: {"a": p["a"][i], "b": p["b"][i]}
                                         for n, p in ad_layers.items()}
    return lw, ad


def _decode_parts(weights: DecodeSource) -> tuple[jax.Array, jax.Array, int, float]:
    if isinstance(weights, SharedWeights):
        layers = weights.base["layers"]
        n = len(layers) if isinstance(layers, list) else layers["wq"].shape[0]
        return weights.base["embed"], weights.base["final_norm"], n, weights.scale
    return weights["embed"], weights["final_norm"], len(weights["layers"]), 1.0


def decode_logits(weights: DecodeSource, hidden: jax.Array) -> jax.Array:
    """Float32 logits ``[N, V]`` of final hidden states ``[N, d]`` (with the adapter's
    unembedding term for shared weights).

    Example:
        >>> import jax.numpy as jnp
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1,
        ...                   d_ff=16)
        >>> decode_logits(SharedWeights(init_params(cfg)), jnp.ones((2, 8))).shape
        (2, 16)
    """
    if isinstance(weights, SharedWeights):
        return _unembed(hidden, weights.base, (weights.lora or {}).get("unembed"),
                        weights.scale)
    return jnp.dot(hidden, weights["unembed"].astype(hidden.dtype),
                   preferred_element_type=jnp.float32)


def prefill(weights: DecodeSource, tokens: jax.Array, cache_len: int,
            config: ModelConfig, options: RunOptions | None = None,
            ) -> tuple[jax.Array, KVCache]:
    """Runs ``tokens [B, P]`` (positions 0..P-1) and builds a KV cache of length `cache_len`.

    Returns the final normed hidden states ``[B*P, d]`` (for prompt logprobs) and the cache,
    with the prompt's keys/values at positions ``0..P-1`` and zeros after. Padding positions
    at the end of ``tokens`` write garbage that decoding overwrites before reading it. The
    cache has the weights' dtype.

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
    opts = options or _DEFAULT_OPTIONS
    B, P = tokens.shape
    embed, final_norm, n_layers, scale = _decode_parts(weights)
    x = jnp.take(embed, tokens.reshape(-1), axis=0)
    cos, sin = _rope_tables(config, jnp.arange(P))
    attention = resolve_attention(opts, x.dtype, P)
    cache: KVCache = []
    for i in range(n_layers):
        lw, ad = _layer_weights(weights, i)
        x, (k, v) = _block(x, lw, ad, scale, config, cos, sin, B, attention)
        pad = ((0, 0), (0, 0), (0, cache_len - P), (0, 0))
        cache.append((jnp.pad(k.transpose(0, 2, 1, 3), pad),
                      jnp.pad(v.transpose(0, 2, 1, 3), pad)))
    return rms_norm(x, final_norm, config.rms_norm_eps), cache


def decode_step(weights: DecodeSource, cache: KVCache, token: jax.Array, pos: jax.Array,
                config: ModelConfig) -> tuple[jax.Array, KVCache]:
    """One cached step: feeds ``token [B]`` at position ``pos`` (a scalar), returns logits.

    Keys/values of this position are written into each layer's cache in place
    (``dynamic_update_slice``); attention reads positions ``<= pos``. With `SharedWeights`
    the adapter is applied on the fly and each layer's weights are sliced from the stacked
    base inside the step (no unstacked copy of the base is ever built).

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
    embed, final_norm, _, scale = _decode_parts(weights)
    x = jnp.take(embed, token, axis=0)  # [B, d]
    cos, sin = _rope_tables(c, pos[None])  # [1, head/2]
    visible = jnp.arange(S) <= pos
    window = _window(c, S)
    if window is not None:
        visible = visible & (jnp.arange(S) > pos - window)
    new_cache: KVCache = []
    for i, (kc, vc) in enumerate(cache):
        lw, ad = _layer_weights(weights, i, barrier=pos)
        ad_o = None if ad is None else ad.get("wo")
        q, k, v = block_inputs(x, lw, ad, scale, c, cos, sin, B)  # q [B,1,H,h], k/v [B,1,KV,h]
        kc = jax.lax.dynamic_update_slice(kc, k.transpose(0, 2, 1, 3).astype(kc.dtype),
                                          (0, 0, pos, 0))
        vc = jax.lax.dynamic_update_slice(vc, v.transpose(0, 2, 1, 3).astype(vc.dtype),
                                          (0, 0, pos, 0))
        qg = q.reshape(B, c.n_kv_heads, c.group_size, c.head_size)
        s = jnp.einsum("bkgh,bksh->bkgs", qg, kc, preferred_element_type=jnp.float32)
        s = jnp.where(visible, s * (c.head_size**-0.5), _NEG)
        p = jax.nn.softmax(s, axis=-1).astype(vc.dtype)
        o = jnp.einsum("bkgs,bksh->bkgh", p, vc).reshape(B, c.q_dim)
        x = x + _proj(o, lw["wo"], ad_o, scale)
        h = rms_norm(x, lw["mlp_norm"], c.rms_norm_eps)
        x = x + _swiglu(h, lw, ad, scale)
        new_cache.append((kc, vc))
    h = rms_norm(x, final_norm, c.rms_norm_eps)
    return decode_logits(weights, h), new_cache
