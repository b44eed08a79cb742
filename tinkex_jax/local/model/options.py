"""How the model layer runs on the hardware: precision, memory savers and the device mesh.

`RunOptions` is a frozen (hashable) dataclass carried by every `Model` as static data, so the
jitted training and sampling functions specialise on it. Each ``"auto"`` value is resolved
per platform, model size or shape when a function is traced:

=======================  ======================================================================
option                   ``"auto"`` means
=======================  ======================================================================
``remat``                ``"full"`` (recompute each layer in the backward pass) for models of
                         at least `REMAT_AUTO_MIN_PARAMS` parameters, else ``"off"``
``attention``            ``"cudnn"`` (flash attention) on GPU for bfloat16/float16 activations;
                         elsewhere ``"chunked"`` from `CHUNKED_ATTENTION_MIN_SEQ` tokens on,
                         else ``"dense"``
``sampler_weights``      ``"merged"`` (one merged copy per sampler, fastest decoding) for
                         bases under `SHARED_SAMPLER_MIN_BYTES`, else ``"shared"`` (one
                         per-layer copy of the base for all samplers, LoRA on the fly)
=======================  ======================================================================

The parameter dtype is chosen when weights are loaded (`resolve_param_dtype`): float32 on CPU
(XLA:CPU runs bfloat16 matmuls no faster), the checkpoint's dtype on GPU and TPU.

Example:
    >>> opts = RunOptions(remat="off", token_budget=4096)
    >>> opts.remat, opts.token_budget, RunOptions() == RunOptions()
    ('off', 4096, True)
    >>> resolve_param_dtype("auto", "bfloat16", platform="cpu")
    dtype('float32')
    >>> str(resolve_param_dtype("auto", "bfloat16", platform="gpu"))
    'bfloat16'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from tinkex_jax.errors import invalid

if TYPE_CHECKING:
    from jax.sharding import Mesh

    from .config import ModelConfig

__all__ = [
    "CHUNKED_ATTENTION_MIN_SEQ",
    "DTYPE_NAMES",
    "DEFAULT_LOGITS_CHUNK_BYTES",
    "REMAT_AUTO_MIN_PARAMS",
    "SHARED_SAMPLER_MIN_BYTES",
    "AttentionImpl",
    "RematPolicy",
    "RunOptions",
    "SamplerWeights",
    "attention_block",
    "default_param_dtype",
    "platform_of",
    "remat_policy",
    "resolve_attention",
    "resolve_param_dtype",
    "resolve_sampler_weights",
]

RematPolicy = Literal["auto", "off", "full", "dots"]
"""``"off"``: keep every activation for the backward pass (fastest, most memory).
``"full"``: keep only each layer's input and recompute the layer in the backward pass
(about one extra forward pass; activation memory of one layer instead of all of them).
``"dots"``: keep the projection outputs, recompute the rest (attention scores, norms,
activations): between the two."""

AttentionImpl = Literal["auto", "dense", "chunked", "cudnn"]
"""``"dense"``: one ``[B, H, T, T]`` score tensor per layer (fast for short sequences).
``"chunked"``: query blocks of at most 512 rows, each recomputed in the backward pass, so
memory grows with ``T * 512`` instead of ``T**2``. ``"cudnn"``: ``jax.nn.dot_product_attention``
with cuDNN's fused (flash) kernel; GPU only, bfloat16/float16 only (falls back to ``"chunked"``
when cuDNN refuses the shapes)."""

SamplerWeights = Literal["auto", "merged", "shared", "stacked"]
"""``"merged"``: each sampler keeps its own per-layer copy of the base with the LoRA folded in
(no extra work per token; one full copy per sampler). ``"shared"``: every sampler of a base
reads one per-layer copy of it, built once, and applies its LoRA on the fly (a few extra small
matmuls per token). ``"stacked"``: samplers read the trainer's stacked arrays (no copy at all;
each decoding step slices every layer, which XLA:CPU does by copying, about 3x slower per
token on CPU)."""

REMAT_AUTO_MIN_PARAMS = 100_000_000
"""``remat="auto"`` turns rematerialisation on from this many base parameters."""

CHUNKED_ATTENTION_MIN_SEQ = 1024
"""``attention="auto"`` uses query-chunked attention (off GPU) from this padded length on."""

ATTENTION_BLOCK = 512
"""Query rows per block of the chunked attention."""

DEFAULT_LOGITS_CHUNK_BYTES = 128 << 20
"""Default size of the float32 logits block computed at once (``[rows, V]``)."""

SHARED_SAMPLER_MIN_BYTES = 256 << 20
"""``sampler_weights="auto"`` shares the base from this many bytes of base parameters on."""

DTYPE_NAMES = ("float32", "bfloat16", "float16")
"""Parameter dtypes the loader accepts (plus ``"auto"`` and ``"checkpoint"``)."""

_REMAT = ("auto", "off", "full", "dots")
_ATTENTION = ("auto", "dense", "chunked", "cudnn")
_SAMPLER = ("auto", "merged", "shared", "stacked")


@dataclass(frozen=True)
class RunOptions:
    """Execution options of one base model (static: part of every compiled function's key).

    Attributes:
        remat: Per-layer rematerialisation policy (`RematPolicy`).
        attention: Attention implementation (`AttentionImpl`).
        logits_chunk_bytes: Largest float32 logits block ``[rows, V]`` computed at once when
            scoring targets; longer batches are scored in row chunks, each recomputed in the
            backward pass, so no ``[B, T, V]`` float32 tensor is ever materialised.
        token_budget: Most tokens (``batch * padded length``) in one micro-batch of a
            training call; a larger batch is split into micro-batches whose gradients are
            summed inside the same compiled step. 0 means no splitting.
        sampler_weights: How samplers hold their weights (`SamplerWeights`).
        mesh: A ``jax.sharding.Mesh`` with axes ``("fsdp", "tp")`` to shard parameters and
            batches over (see `tinkex_jax.local.model.sharding`), or None for one device.

    Example:
        >>> RunOptions(attention="chunked").attention
        'chunked'
        >>> RunOptions(remat="sometimes")
        Traceback (most recent call last):
        ...
        tinkex_jax.ValidationError: RunOptions.remat: expected one of ('auto', 'off', 'full', \
'dots'), got 'sometimes'. Fix: 'auto' picks by model size
    """

    remat: RematPolicy = "auto"
    attention: AttentionImpl = "auto"
    logits_chunk_bytes: int = DEFAULT_LOGITS_CHUNK_BYTES
    token_budget: int = 0
    sampler_weights: SamplerWeights = "auto"
    mesh: Mesh | None = None

    def __post_init__(self) -> None:
        if self.remat not in _REMAT:
            raise invalid("RunOptions.remat", f"one of {_REMAT}", self.remat,
                          "'auto' picks by model size")
        if self.attention not in _ATTENTION:
            raise invalid("RunOptions.attention", f"one of {_ATTENTION}", self.attention)
        if self.sampler_weights not in _SAMPLER:
            raise invalid("RunOptions.sampler_weights", f"one of {_SAMPLER}",
                          self.sampler_weights)
        for name in ("logits_chunk_bytes", "token_budget"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise invalid(f"RunOptions.{name}", "an int >= 0", value)
        if self.logits_chunk_bytes == 0:
            raise invalid("RunOptions.logits_chunk_bytes", "a positive number of bytes", 0,
                          f"the default is {DEFAULT_LOGITS_CHUNK_BYTES}")
        if self.mesh is not None:
            names = tuple(self.mesh.axis_names)
            if names != ("fsdp", "tp"):
                raise invalid("RunOptions.mesh", "a Mesh with axes ('fsdp', 'tp')", names,
                              "build it with tinkex_jax.local.model.sharding.make_mesh")


def platform_of(options: RunOptions | None = None) -> str:
    """The platform the model runs on: the mesh's devices, else JAX's default backend.

    Example:
        >>> platform_of()
        'cpu'
    """
    if options is not None and options.mesh is not None:
        return str(options.mesh.devices.flat[0].platform)
    import jax

    return str(jax.default_backend())


def default_param_dtype(platform: str, checkpoint_dtype: Any = None) -> np.dtype[Any]:
    """The default base-parameter dtype: float32 on CPU, the checkpoint's dtype elsewhere.

    Example:
        >>> default_param_dtype("tpu", "bfloat16").name, default_param_dtype("cpu").name
        ('bfloat16', 'float32')
    """
    if platform == "cpu" or checkpoint_dtype is None:
        return np.dtype(np.float32)
    return _as_dtype(checkpoint_dtype, "checkpoint dtype")


def resolve_param_dtype(requested: Any, checkpoint_dtype: Any, *,
                        platform: str | None = None) -> np.dtype[Any]:
    """The dtype to load base parameters in.

    Args:
        requested: ``"auto"`` (or None; see `default_param_dtype`), ``"checkpoint"`` (the
            stored dtype), or a dtype name / numpy dtype among float32, bfloat16, float16.
        checkpoint_dtype: The dtype the checkpoint stores (None when unknown).
        platform: ``"cpu"``, ``"gpu"``, ``"tpu"`` (default: JAX's default backend).

    Raises:
        ValidationError: An unknown dtype name.

    Example:
        >>> resolve_param_dtype("checkpoint", "float16", platform="cpu").name
        'float16'
        >>> resolve_param_dtype("bfloat16", "float32", platform="cpu").name
        'bfloat16'
    """
    if requested is None or (isinstance(requested, str) and requested == "auto"):
        return default_param_dtype(platform or platform_of(), checkpoint_dtype)
    if isinstance(requested, str) and requested == "checkpoint":
        if checkpoint_dtype is None:
            return np.dtype(np.float32)
        return _as_dtype(checkpoint_dtype, "checkpoint dtype")
    return _as_dtype(requested, "dtype")


def _as_dtype(value: Any, where: str) -> np.dtype[Any]:
    import ml_dtypes

    names = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
             "float16": np.dtype(np.float16), "bf16": np.dtype(ml_dtypes.bfloat16),
             "fp16": np.dtype(np.float16), "fp32": np.dtype(np.float32),
             "f32": np.dtype(np.float32)}
    if isinstance(value, str):
        key = value.lower().removeprefix("torch.")
        if key in names:
            return names[key]
        raise invalid(where, f"one of 'auto', 'checkpoint', {', '.join(map(repr, DTYPE_NAMES))}",
                      value)
    try:
        dt = np.dtype(value)
    except TypeError as exc:
        raise invalid(where, f"one of {DTYPE_NAMES}", repr(value)) from exc
    if dt not in names.values():
        raise invalid(where, f"one of {DTYPE_NAMES}", dt.name)
    return dt


def remat_policy(options: RunOptions, config: ModelConfig) -> Any:
    """The ``jax.checkpoint`` policy for the layer scan, or None when remat is off.

    ``"full"`` gives ``nothing_saveable``, ``"dots"`` ``dots_with_no_batch_dims_saveable``.

    Example:
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1,
        ...                   d_ff=16)
        >>> remat_policy(RunOptions(), cfg) is None
        True
        >>> remat_policy(RunOptions(remat="full"), cfg).__name__
        'nothing_saveable'
    """
    import jax

    mode = options.remat
    if mode == "auto":
        mode = "full" if config.num_params() >= REMAT_AUTO_MIN_PARAMS else "off"
    if mode == "off":
        return None
    if mode == "dots":
        return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    return jax.checkpoint_policies.nothing_saveable


def resolve_attention(options: RunOptions, dtype: Any, seq_len: int) -> str:
    """The attention implementation for activations of `dtype` at padded length `seq_len`.

    Example:
        >>> import numpy as np
        >>> resolve_attention(RunOptions(), np.float32, 256)
        'dense'
        >>> resolve_attention(RunOptions(), np.float32, 4096)
        'chunked'
    """
    mode = options.attention
    if mode == "auto":
        half = np.dtype(dtype).itemsize == 2
        if platform_of(options) == "gpu" and half:
            mode = "cudnn"
        elif seq_len >= CHUNKED_ATTENTION_MIN_SEQ:
            mode = "chunked"
        else:
            mode = "dense"
    if mode == "chunked" and attention_block(seq_len) == 0:
        return "dense"
    return mode


def attention_block(seq_len: int) -> int:
    """Query rows per block of chunked attention at `seq_len` (0: no usable block size).

    Example:
        >>> attention_block(1536), attention_block(4096), attention_block(100)
        (512, 512, 0)
    """
    block = math.gcd(seq_len, ATTENTION_BLOCK)
    return block if block >= 64 and block < seq_len else 0


def resolve_sampler_weights(options: RunOptions, base_bytes: int) -> str:
    """``"merged"`` or ``"shared"`` for a base of `base_bytes` bytes.

    Example:
        >>> resolve_sampler_weights(RunOptions(), 10 << 20), resolve_sampler_weights(
        ...     RunOptions(), 1 << 30)
        ('merged', 'shared')
    """
    if options.sampler_weights != "auto":
        return options.sampler_weights
    return "shared" if base_bytes >= SHARED_SAMPLER_MIN_BYTES else "merged"
