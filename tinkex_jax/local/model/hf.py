"""Load and save Hugging Face style Llama / Mistral / Qwen2 / Qwen3 checkpoints from local disk.

A directory holds ``config.json``, the weights as ``model.safetensors`` or as shards listed in
``model.safetensors.index.json``, and ``tokenizer.json`` (optional for loading). Tensor names
follow ``transformers`` (PyTorch layout ``[out, in]``)::

    model.embed_tokens.weight                        [V, d]
    model.layers.{i}.input_layernorm.weight          [d]
    model.layers.{i}.self_attn.{q,k,v,o}_proj.weight [out, in]
    model.layers.{i}.self_attn.{q,k,v}_proj.bias     [out]    (Qwen2)
    model.layers.{i}.self_attn.{q,k}_norm.weight     [head]   (Qwen3)
    model.layers.{i}.post_attention_layernorm.weight [d]
    model.layers.{i}.mlp.{gate,up,down}_proj.weight  [out, in]
    model.norm.weight                                [d]
    lm_head.weight                                   [V, d]   (absent when tied)

Supported ``architectures`` (`SUPPORTED_ARCHITECTURES`), each checked against the logits of
``transformers`` on tiny random models (tests/unit/model/test_model_families.py):

* ``LlamaForCausalLM`` (Llama 2 / 3.x),
* ``MistralForCausalLM`` (``sliding_window`` null, or a window applied as a mask; a window of
  at least ``max_position_embeddings`` is dropped since it hides nothing),
* ``Qwen2ForCausalLM`` (Qwen2 / Qwen2.5: biases on the q, k and v projections),
* ``Qwen3ForCausalLM`` (q/k RMSNorm).

Rope scaling (``rope_scaling``, or ``rope_parameters`` as transformers 5 writes it):
``rope_type`` ``"default"``, ``"linear"``, ``"dynamic"``, ``"llama3"`` and ``"yarn"`` (see
`decoder.rope_inv_freq`). Anything else (another architecture, ``hidden_act`` other than
silu, Llama / Qwen3 ``attention_bias`` or Llama ``mlp_bias``, Qwen's per-layer
``use_sliding_window``, another rope type such as ``"longrope"``, partial rotary) raises a
`ValidationError` that names the field, what is supported and how to fix it.

Example:
    >>> import tempfile
    >>> from tinkex_jax.local.model.config import ModelConfig
    >>> from tinkex_jax.local.model.decoder import init_params
    >>> from tinkex_jax.local.model.runtime import Model
    >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1,
    ...                   d_ff=16)
    >>> d = save_hf_directory(tempfile.mkdtemp(), Model(init_params(cfg), cfg))
    >>> load_hf_directory(d).model.config == cfg
    True
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jax
import numpy as np

from tinkex_jax.errors import invalid

from .config import ModelConfig
from .decoder import ATTN_BIASES, ROPE_TYPES, Params
from .options import RunOptions
from .runtime import Model

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "LoadedModel",
    "MappingSource",
    "SafetensorsSource",
    "TensorSource",
    "checkpoint_dtype",
    "config_from_hf",
    "config_to_hf",
    "hf_weight_files",
    "load_checkpoint_files",
    "load_hf_directory",
    "params_from_hf",
    "params_to_hf",
    "save_hf_directory",
]

_ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
                  "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}
_HF_ARCH = {v: k for k, v in _ARCHITECTURES.items()}

SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(sorted(_ARCHITECTURES))
"""The ``architectures`` values of ``config.json`` that the loader accepts."""

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "wq": "self_attn.q_proj",
    "wk": "self_attn.k_proj",
    "wv": "self_attn.v_proj",
    "wo": "self_attn.o_proj",
    "q_norm": "self_attn.q_norm",
    "k_norm": "self_attn.k_norm",
    "bq": "self_attn.q_proj",
    "bk": "self_attn.k_proj",
    "bv": "self_attn.v_proj",
    "mlp_norm": "post_attention_layernorm",
    "w_gate": "mlp.gate_proj",
    "w_up": "mlp.up_proj",
    "w_down": "mlp.down_proj",
}
_MATRICES = {"wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"}


def _layer_tensor(ours: str) -> str:
    """The transformers name of layer parameter `ours`, after ``model.layers.{i}.``."""
    return f"{_LAYER_NAMES[ours]}.{'bias' if ours in ATTN_BIASES else 'weight'}"

_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": "bfloat16"}


@dataclass(frozen=True)
class LoadedModel:
    """A model loaded from disk (a preset or a Hugging Face directory).

    Attributes:
        name: The preset name or the directory path it was loaded from.
        model: The base `Model` (parameters in the dtype asked for when loading).
        tokenizer: A ``tokenizers.Tokenizer``, or None when the directory has none.
        source: Where the files live.
    """

    name: str
    model: Model
    tokenizer: Any
    source: Path

    @property
    def config(self) -> ModelConfig:
        """The model's `ModelConfig`."""
        return self.model.config


def _np_dtype_any(name: str) -> Any:
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)


def _np_dtype(name: str) -> Any:
    if name not in _DTYPES:
        raise invalid("dtype", f"one of {sorted(_DTYPES)}", name)
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return _DTYPES[name]


# --------------------------------------------------------------------------------------------
# config.json
# --------------------------------------------------------------------------------------------


def _rope_from_hf(hf: Mapping[str, Any], where: str) -> tuple[float, tuple[Any, ...] | None]:
    """``(rope_theta, rope_scaling)`` from legacy ``rope_theta`` / ``rope_scaling`` keys or
    from transformers 5's ``rope_parameters`` (which wins where both are given)."""
    params: dict[str, Any] = {}
    for key in ("rope_scaling", "rope_parameters"):
        value = hf.get(key)
        if value is None:
            continue
        if not isinstance(value, Mapping) or any(isinstance(v, Mapping)
                                                 for v in value.values()):
            raise invalid(f"{where}: {key}", "null or one flat object (one rope for every "
                          "layer)", f"<{json.dumps(value, default=str)[:120]}>",
                          "per-layer-type rope parameters are not supported")
        params.update(value)
    theta = params.pop("rope_theta", None)
    theta = float(hf.get("rope_theta") or 10_000.0) if theta is None else float(theta)
    kind = str(params.pop("rope_type", None) or params.pop("type", None) or "default")
    params.pop("type", None)
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor"))
    if partial is not None and float(partial) != 1.0:
        raise invalid(f"{where}: partial_rotary_factor", "1.0 (rotary on the whole head)",
                      partial, "partial rotary embeddings are not supported")
    params.pop("partial_rotary_factor", None)
    if kind not in ROPE_TYPES:
        raise invalid(f"{where}: rope_scaling.rope_type", f"one of {list(ROPE_TYPES)}", kind,
                      "use a checkpoint without this rope scaling")
    if kind == "default":
        return theta, None
    if kind in ("llama3", "yarn") and params.get("original_max_position_embeddings") is None:
        # transformers' default: the pretraining context is max_position_embeddings
        params["original_max_position_embeddings"] = int(hf.get("max_position_embeddings",
                                                                2048))
    items: list[tuple[str, float | str]] = [("rope_type", kind)]
    for k, v in params.items():
        if v is None:
            continue
        if isinstance(v, str):
            items.append((str(k), v))
        elif isinstance(v, (bool, int, float)):
            items.append((str(k), float(v)))
        else:
            raise invalid(f"{where}: rope_scaling[{k!r}]", "a number or a string", v,
                          f"rope_type {kind!r} takes numeric parameters only")
    return theta, tuple(sorted(items))


def config_from_hf(hf: Mapping[str, Any], *, where: str = "config.json") -> ModelConfig:
    """A `ModelConfig` from a Hugging Face ``config.json`` dict.

    Raises:
        ValidationError: Unknown architecture or unsupported features (the message says what
            is supported).

    Example:
        >>> config_from_hf({"architectures": ["Qwen3ForCausalLM"], "vocab_size": 32,
        ...   "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        ...   "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8}).qk_norm
        True
        >>> config_from_hf({"architectures": ["Qwen2ForCausalLM"], "vocab_size": 32,
        ...   "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        ...   "num_attention_heads": 2, "num_key_value_heads": 1}).attention_bias
        True
    """
    archs = hf.get("architectures") or []
    model_type = hf.get("model_type")
    arch = next((_ARCHITECTURES[a] for a in archs if a in _ARCHITECTURES), None)
    if arch is None and not archs and model_type in _HF_ARCH:
        arch = model_type
    if arch is None:
        raise invalid(f"{where}: architectures", f"one of {list(SUPPORTED_ARCHITECTURES)}",
                      archs or model_type or "<missing>",
                      "the local backend runs Llama, Mistral, Qwen2 / Qwen2.5 and Qwen3 "
                      "decoders only; use such a checkpoint or a built-in preset "
                      "(tinkex-jax/tiny, tinkex-jax/small)")
    name = _HF_ARCH[arch]
    if arch in ("llama", "qwen3") and hf.get("attention_bias"):
        raise invalid(f"{where}: attention_bias", f"false for {name}", True,
                      f"{name} with attention_bias puts biases on q, k, v and o, which the "
                      "local backend does not run (Qwen2ForCausalLM's q/k/v biases it does)")
    if arch == "llama" and hf.get("mlp_bias"):
        raise invalid(f"{where}: mlp_bias", "false (no MLP biases)", True,
                      "biased MLP projections are not supported by the local backend")
    max_pos = int(hf.get("max_position_embeddings", 2048))
    window = hf.get("sliding_window")
    sliding_window = None
    if arch == "llama" and (hf.get("use_sliding_window") or window):
        raise invalid(f"{where}: sliding_window", f"null for {name}", window,
                      "Llama has no sliding window; for Mistral-style windows use "
                      "MistralForCausalLM")
    if arch in ("qwen2", "qwen3") and hf.get("use_sliding_window") and window is not None \
            and int(window) < max_pos:
        raise invalid(f"{where}: use_sliding_window", f"false for {name} (or a "
                      f"sliding_window of at least max_position_embeddings={max_pos})",
                      True, "per-layer sliding windows (max_window_layers) are not "
                      "supported; Qwen2.5 / Qwen3 checkpoints ship with it false")
    if arch == "mistral" and window is not None:
        if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
            raise invalid(f"{where}: sliding_window", "null or a positive int", window)
        sliding_window = window if window < max_pos else None  # a longer one hides nothing
    act = hf.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise invalid(f"{where}: hidden_act", "'silu' (SwiGLU MLP)", act)
    d = int(hf["hidden_size"])
    n_heads = int(hf["num_attention_heads"])
    eos = hf.get("eos_token_id")
    eos_ids = tuple(int(e) for e in eos) if isinstance(eos, list) else (
        () if eos is None else (int(eos),))
    rope_theta, rope_scaling = _rope_from_hf(hf, where)
    head_dim = int(hf.get("head_dim") or 0)
    if head_dim == d // n_heads and d % n_heads == 0:
        head_dim = 0
    cfg = ModelConfig(
        vocab_size=int(hf["vocab_size"]),
        d_model=d,
        n_layers=int(hf["num_hidden_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
        d_ff=int(hf["intermediate_size"]),
        head_dim=head_dim,
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qk_norm=arch == "qwen3",
        attention_bias=arch == "qwen2",
        sliding_window=sliding_window,
        max_seq_len=max_pos,
        architecture=arch,  # type: ignore[arg-type]
        bos_token_id=None if hf.get("bos_token_id") is None else int(hf["bos_token_id"]),
        eos_token_ids=eos_ids,
        pad_token_id=None if hf.get("pad_token_id") is None else int(hf["pad_token_id"]),
    )
    from .decoder import rope_inv_freq

    try:
        rope_inv_freq(cfg)  # raises on unsupported rope parameters
    except ValueError as exc:
        raise invalid(f"{where}: rope_scaling", "parameters the rope type needs",
                      dict(rope_scaling or ()), str(exc)) from exc
    return cfg


def _rope_scaling_to_hf(scaling: tuple[Any, ...] | None) -> dict[str, Any] | None:
    """``rope_scaling`` with the types transformers checks (an int context, a bool flag)."""
    if not scaling:
        return None
    out = dict(scaling)
    for key, kind in (("original_max_position_embeddings", int), ("truncate", bool)):
        if key in out:
            out[key] = kind(out[key])
    return out


def config_to_hf(config: ModelConfig, *, dtype: str = "float32") -> dict[str, Any]:
    """The Hugging Face ``config.json`` dict of a `ModelConfig`.

    Raises:
        ValidationError: A config that its architecture cannot express (q/k norms other than
            Qwen3's, attention biases other than Qwen2's, a sliding window other than
            Mistral's).

    Example:
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2,
        ...                   n_kv_heads=1, d_ff=16)
        >>> config_from_hf(config_to_hf(cfg)) == cfg
        True
    """
    c = config
    eos: Any = list(c.eos_token_ids) if len(c.eos_token_ids) > 1 else (
        c.eos_token_ids[0] if c.eos_token_ids else None)
    for field, value, owner in (("qk_norm", c.qk_norm, "qwen3"),
                                ("attention_bias", c.attention_bias, "qwen2"),
                                ("sliding_window", c.sliding_window is not None, "mistral")):
        if value != (c.architecture == owner):
            raise invalid(f"ModelConfig.{field}", f"{'set' if c.architecture == owner else 'unset'}"
                          f" for architecture {c.architecture!r} (Hugging Face derives it "
                          "from the architecture)", getattr(c, field),
                          f"set architecture={owner!r} for {field}")
    out: dict[str, Any] = {
        "architectures": [_HF_ARCH[c.architecture]],
        "model_type": c.architecture,
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "intermediate_size": c.d_ff,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_size,
        "hidden_act": "silu",
        "max_position_embeddings": c.max_seq_len,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "rope_scaling": _rope_scaling_to_hf(c.rope_scaling),
        "tie_word_embeddings": c.tie_embeddings,
        "attention_bias": c.attention_bias,
        "mlp_bias": False,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": eos,
        "pad_token_id": c.pad_token_id,
        "torch_dtype": dtype,
    }
    if c.architecture == "mistral":
        out["sliding_window"] = c.sliding_window
    if c.architecture in ("qwen2", "qwen3"):
        out["use_sliding_window"] = False
    return out


# --------------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------------


class TensorSource(Protocol):
    """Read access to named checkpoint tensors, one tensor (or one slice of it) at a time."""

    def __contains__(self, name: object) -> bool: ...

    def shape(self, name: str) -> tuple[int, ...]:
        """The stored shape of tensor `name`."""
        ...

    def dtype(self, name: str) -> np.dtype[Any]:
        """The stored dtype of tensor `name`."""
        ...

    def read(self, name: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
        """Tensor `name` (or ``tensor[index]``) as a host array in its stored dtype."""
        ...


class MappingSource:
    """A `TensorSource` over an in-memory ``{name: array}`` mapping.

    Example:
        >>> import numpy as np
        >>> src = MappingSource({"w": np.arange(6.0).reshape(2, 3)})
        >>> "w" in src, src.shape("w"), src.read("w", (slice(None), slice(1, 2))).tolist()
        (True, (2, 3), [[1.0], [4.0]])
    """

    def __init__(self, tensors: Mapping[str, Any]) -> None:
        self._tensors = tensors

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(np.shape(self._tensors[name]))

    def dtype(self, name: str) -> np.dtype[Any]:
        return np.asarray(self._tensors[name]).dtype

    def read(self, name: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
        arr = np.asarray(self._tensors[name])
        return arr if index is None else arr[index]


_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
              "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
              "BOOL": "bool"}


@dataclass(frozen=True)
class _Entry:
    path: Path
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    start: int  # absolute byte offset of the data in the file


class SafetensorsSource:
    """A `TensorSource` over ``.safetensors`` files that reads each tensor (or block of its
    rows) with plain file reads: nothing is memory-mapped, so the host holds only the block
    being read, never the files.

    Raises:
        ValidationError: A file that cannot be read or is not safetensors.

    Example:
        >>> import tempfile, numpy as np
        >>> from pathlib import Path
        >>> from safetensors.numpy import save_file
        >>> path = Path(tempfile.mkdtemp()) / "w.safetensors"
        >>> save_file({"w": np.arange(6, dtype=np.float16).reshape(3, 2)}, str(path))
        >>> with SafetensorsSource([path]) as src:
        ...     src.shape("w"), src.dtype("w").name, src.read("w", (slice(1, 3),)).tolist()
        ((3, 2), 'float16', [[2.0, 3.0], [4.0, 5.0]])
    """

    def __init__(self, files: Sequence[Path]) -> None:
        self._entries: dict[str, _Entry] = {}
        for f in files:
            self._entries.update(self._read_header(Path(f)))

    @staticmethod
    def _read_header(path: Path) -> dict[str, _Entry]:
        try:
            with open(path, "rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                if not 0 < size < (100 << 20):
                    raise ValueError(f"header size {size} is not plausible")
                header = json.loads(fh.read(size))
            entries = {}
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                code = info["dtype"]
                if code not in _ST_DTYPES:
                    raise ValueError(f"tensor {name!r} has unsupported dtype {code}")
                entries[name] = _Entry(path, np.dtype(_np_dtype_any(_ST_DTYPES[code])),
                                       tuple(int(d) for d in info["shape"]),
                                       8 + size + int(info["data_offsets"][0]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise invalid(str(path), "a readable .safetensors file",
                          f"<{type(exc).__name__}: {exc}>", "re-download or re-export it"
                          ) from exc
        return entries

    def __enter__(self) -> SafetensorsSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Forgets the files (no file stays open between reads)."""
        self._entries.clear()

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name].shape

    def dtype(self, name: str) -> np.dtype[Any]:
        return self._entries[name].dtype

    def read(self, name: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
        entry = self._entries[name]
        shape = entry.shape
        rows = index[0] if index else slice(None)
        r0, r1, step = rows.indices(shape[0]) if shape else (0, 0, 1)
        if not shape or step != 1:
            r0, r1 = 0, shape[0] if shape else 0
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * entry.dtype.itemsize
        out = np.empty((max(0, r1 - r0), *shape[1:]) if shape else (), entry.dtype)
        with open(entry.path, "rb") as fh:
            fh.seek(entry.start + r0 * row_bytes)
            got = fh.readinto(out.reshape(-1).view(np.uint8).data)
        if got != out.nbytes:
            raise invalid(f"{entry.path}: tensor {name!r}", f"{out.nbytes} bytes", f"<{got}>",
                          "the file is truncated; re-download it")
        if index is None:
            return out
        if not shape or step != 1:
            return out[index]
        return out[(slice(None), *index[1:])]


def checkpoint_dtype(source: TensorSource, config: ModelConfig) -> np.dtype[Any]:
    """The dtype the checkpoint stores its embedding in (float32 when unknown).

    Example:
        >>> import numpy as np
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2,
        ...                   n_kv_heads=1, d_ff=16)
        >>> checkpoint_dtype(MappingSource({"model.embed_tokens.weight":
        ...                                 np.zeros((16, 8), np.float16)}), cfg).name
        'float16'
    """
    for name in ("model.embed_tokens.weight", "embed_tokens.weight"):
        if name in source:
            return source.dtype(name)
    return np.dtype(np.float32)


def _to_device(arr: np.ndarray) -> jax.Array:
    out = jax.device_put(arr)
    out.block_until_ready()
    return out


def _full(index: tuple[slice, ...] | None, shape: Sequence[int]) -> tuple[slice, ...]:
    """A device's index from ``make_array_from_callback`` as one slice per dimension."""
    if index is None:
        return tuple(slice(None) for _ in shape)
    return tuple(index) + tuple(slice(None) for _ in shape[len(index):])


def params_from_hf(tensors: Mapping[str, Any] | TensorSource, config: ModelConfig, *,
                   where: str = "checkpoint", dtype: Any = np.float32,
                   mesh: Any = None) -> Params:
    """Base parameters (``[in, out]``, stacked layers) from HF-named tensors.

    Tensors are read one at a time with plain file reads (for a `SafetensorsSource`),
    transposed and cast to `dtype` on the host, and each parameter (one stacked ``[L, ...]``
    array or one matrix) is sent to its device before the next is read, so the host holds at
    most one parameter beyond what is already placed. With a `mesh`, each device's shard is
    read directly (``jax.make_array_from_callback``) with the shardings of
    `sharding.param_shardings`. Measured on CPU for a 665 MB checkpoint: host peak 1.20x the
    checkpoint (docs/local-backend.md).

    Args:
        tensors: ``{name: array}`` or a `TensorSource` (e.g. `SafetensorsSource`).
        config: The model shape.
        where: Where the tensors come from (for error messages).
        dtype: The parameter dtype (a numpy dtype or a name such as ``"bfloat16"``).
        mesh: A ``("fsdp", "tp")`` mesh to shard over, or None for the default device.

    Raises:
        ValidationError: A missing tensor or a tensor of the wrong shape (the message names
            it and the expected shape).

    Example:
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> from tinkex_jax.local.model.decoder import init_params
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2,
        ...                   n_kv_heads=1, d_ff=16)
        >>> p = params_from_hf(params_to_hf(init_params(cfg), cfg), cfg)
        >>> p["layers"]["w_down"].shape, p["embed"].dtype
        ((1, 16, 8), dtype('float32'))
    """
    from .decoder import init_params
    from .options import resolve_param_dtype

    src: TensorSource = MappingSource(tensors) if isinstance(tensors, Mapping) else tensors
    target = resolve_param_dtype(dtype, None, platform="cpu")
    template = jax.eval_shape(lambda: init_params(config))  # shapes only, no allocation
    shardings: Any = None
    if mesh is not None:
        from .sharding import param_shardings

        shardings = param_shardings(template, mesh)
    prefix = "model."
    # Some exports omit the "model." prefix; accept them.
    if f"{prefix}embed_tokens.weight" not in src and "embed_tokens.weight" in src:
        prefix = ""

    def check(name: str, shape: tuple[int, ...], transpose: bool) -> None:
        expected = tuple(shape[::-1] if transpose else shape)
        if name not in src:
            raise invalid(f"{where}: tensor {name!r}", f"present (shape {list(expected)})",
                          "<missing>", "check that the checkpoint matches config.json")
        if src.shape(name) != expected:
            raise invalid(f"{where}: tensor {name!r}", f"shape {list(expected)}",
                          f"<shape {list(src.shape(name))}>",
                          "check that the checkpoint matches config.json")

    def host(name: str, transpose: bool, index: tuple[slice, ...] | None = None,
             ) -> np.ndarray:
        """``ours[index]`` of tensor `name` on the host, in the target dtype."""
        hf_index = None if index is None else tuple(index[::-1] if transpose else index)
        arr = src.read(name, hf_index)
        if transpose:
            arr = arr.T
        return np.ascontiguousarray(arr.astype(target, copy=False))

    def single(name: str, shape: tuple[int, ...], transpose: bool, sharding: Any,
               ) -> jax.Array:
        check(name, shape, transpose)
        if sharding is not None:
            return jax.make_array_from_callback(
                shape, sharding, lambda index: host(name, transpose, _full(index, shape)))
        return _to_device(host(name, transpose))

    def stacked(ours: str, shape: tuple[int, ...], sharding: Any) -> jax.Array:
        transpose = ours in _MATRICES
        names = [f"{prefix}layers.{i}.{_layer_tensor(ours)}" for i in range(shape[0])]
        for name in names:
            check(name, shape[1:], transpose)
        if sharding is None:
            out = np.empty(shape, target)
            for i, name in enumerate(names):
                out[i] = host(name, transpose)
            return _to_device(out)

        def block(index: tuple[slice, ...] | None) -> np.ndarray:
            full = _full(index, shape)
            layers = range(shape[0])[full[0]]
            rest = full[1:]
            return np.stack([host(names[i], transpose, rest) for i in layers])

        return jax.make_array_from_callback(shape, sharding, block)

    def sh(key: str, sub: str | None = None) -> Any:
        if shardings is None:
            return None
        return shardings[key] if sub is None else shardings[key][sub]

    layers: dict[str, Any] = {}
    for ours, spec in template["layers"].items():
        layers[ours] = stacked(ours, tuple(spec.shape), sh("layers", ours))
    params: Params = {
        "embed": single(f"{prefix}embed_tokens.weight", tuple(template["embed"].shape), False,
                        sh("embed")),
        "layers": layers,
        "final_norm": single(f"{prefix}norm.weight", tuple(template["final_norm"].shape),
                             False, sh("final_norm")),
    }
    if not config.tie_embeddings:
        params["unembed"] = single("lm_head.weight", tuple(template["unembed"].shape), True,
                                   sh("unembed"))
    return params


def params_to_hf(params: Params, config: ModelConfig, *,
                 dtype: str = "float32") -> dict[str, np.ndarray]:
    """HF-named host tensors (``[out, in]``) in `dtype` from base parameters.

    Example:
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> from tinkex_jax.local.model.decoder import init_params
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2,
        ...                   n_kv_heads=1, d_ff=16)
        >>> params_to_hf(init_params(cfg), cfg)["model.layers.0.mlp.down_proj.weight"].shape
        (8, 16)
    """
    np_dtype = _np_dtype(dtype)
    out: dict[str, np.ndarray] = {}

    def put(name: str, value: Any, transpose: bool) -> None:
        arr = np.asarray(value, dtype=np.float32)
        out[name] = np.ascontiguousarray(arr.T if transpose else arr).astype(np_dtype)

    put("model.embed_tokens.weight", params["embed"], False)
    for ours, stacked in params["layers"].items():
        for i in range(config.n_layers):
            put(f"model.layers.{i}.{_layer_tensor(ours)}", stacked[i], ours in _MATRICES)
    put("model.norm.weight", params["final_norm"], False)
    if "unembed" in params:
        put("lm_head.weight", params["unembed"], True)
    return out


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise invalid(str(path), "a readable JSON file", f"<{type(exc).__name__}: {exc}>",
                      "check the model directory") from exc
    if not isinstance(data, dict):
        raise invalid(str(path), "a JSON object", f"<JSON {type(data).__name__}>")
    return data


def load_checkpoint_files(config_path: Path, weight_files: Sequence[Path],
                          tokenizer_path: Path | None, *, name: str, dtype: Any = "auto",
                          options: RunOptions | None = None) -> LoadedModel:
    """Loads a model from explicit file paths (used for directories and flat presets).

    Weights stream from the files tensor by tensor straight into their dtype and sharding
    (see `params_from_hf`).

    Args:
        config_path: The ``config.json``.
        weight_files: Every ``.safetensors`` file holding the weights.
        tokenizer_path: A ``tokenizer.json`` or None.
        name: The name recorded in the result.
        dtype: Parameter dtype: ``"auto"`` (float32 on CPU, the checkpoint's dtype on GPU /
            TPU), ``"checkpoint"``, ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        options: The model's `RunOptions` (its mesh decides the placement).

    Returns:
        A `LoadedModel`.

    Example:
        >>> from tinkex_jax.local.model.presets import PRESETS_DIR
        >>> m = load_checkpoint_files(PRESETS_DIR / "tiny.config.json",
        ...                           [PRESETS_DIR / "tiny.safetensors"], None, name="tiny")
        >>> m.config.d_model, m.tokenizer is None
        (128, True)
    """
    from .options import platform_of, resolve_param_dtype

    opts = options or RunOptions()
    config = config_from_hf(_read_json(config_path), where=str(config_path))
    with SafetensorsSource(weight_files) as source:
        target = resolve_param_dtype(dtype, checkpoint_dtype(source, config),
                                     platform=platform_of(opts))
        params = params_from_hf(source, config, where=str(weight_files[0].parent),
                                dtype=target, mesh=opts.mesh)
    tokenizer = None
    if tokenizer_path is not None and tokenizer_path.exists():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_path))
    return LoadedModel(name=name, model=Model(params, config, opts), tokenizer=tokenizer,
                       source=config_path.parent)


def hf_weight_files(path: str | os.PathLike[str]) -> tuple[Path, list[Path]]:
    """The ``config.json`` and the ``.safetensors`` files of a Hugging Face directory.

    Raises:
        ValidationError: Not a directory, no config.json, or no safetensors weights.

    Example:
        >>> import tempfile
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> from tinkex_jax.local.model.decoder import init_params
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2,
        ...                   n_kv_heads=1, d_ff=16)
        >>> d = save_hf_directory(tempfile.mkdtemp(), Model(init_params(cfg), cfg))
        >>> [f.name for f in hf_weight_files(d)[1]]
        ['model.safetensors']
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise invalid("base model path", "an existing directory with config.json and "
                      "*.safetensors", str(path), "check the path")
    config_path = root / "config.json"
    if not config_path.exists():
        raise invalid(str(root), "a config.json file", "<missing>",
                      "this does not look like a Hugging Face model directory")
    index = root / "model.safetensors.index.json"
    if index.exists():
        weight_map = _read_json(index).get("weight_map", {})
        files = sorted({root / f for f in weight_map.values()})
    elif (root / "model.safetensors").exists():
        files = [root / "model.safetensors"]
    else:
        files = sorted(root.glob("*.safetensors"))
    if not files:
        raise invalid(str(root), "model.safetensors or a sharded index "
                      "(model.safetensors.index.json)", "<no .safetensors files>",
                      "PyTorch .bin checkpoints are not supported; convert to safetensors")
    return config_path, files


def load_hf_directory(path: str | os.PathLike[str], *, dtype: Any = "auto",
                      options: RunOptions | None = None) -> LoadedModel:
    """Loads a Llama / Mistral / Qwen2 / Qwen3 Hugging Face directory from local disk.

    Args:
        path: A directory with ``config.json``, ``model.safetensors`` (or shards with
            ``model.safetensors.index.json``) and optionally ``tokenizer.json``.
        dtype: Parameter dtype (see `load_checkpoint_files`; ``"auto"``: float32 on CPU,
            the checkpoint's dtype on GPU / TPU).
        options: The model's `RunOptions` (remat, attention, mesh, ...).

    Returns:
        A `LoadedModel`.

    Raises:
        ValidationError: Missing files, an unsupported architecture, or tensors that do not
            match the config.

    Example:
        >>> import tempfile
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> from tinkex_jax.local.model.decoder import init_params
        >>> from tinkex_jax.local.model.runtime import Model
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2,
        ...                   n_kv_heads=1, d_ff=16, architecture="qwen3", qk_norm=True)
        >>> d = save_hf_directory(tempfile.mkdtemp(), Model(init_params(cfg), cfg),
        ...                       max_shard_bytes=1000)
        >>> load_hf_directory(d).model.params["layers"]["q_norm"].shape
        (1, 4)
    """
    config_path, files = hf_weight_files(path)
    root = config_path.parent
    return load_checkpoint_files(config_path, files, root / "tokenizer.json", name=str(root),
                                 dtype=dtype, options=options)


def save_hf_directory(path: str | os.PathLike[str], model: Model, tokenizer: Any = None, *,
                      dtype: str = "float32", max_shard_bytes: int | None = None,
                      tokenizer_config: Mapping[str, Any] | None = None) -> Path:
    """Writes `model` as a Hugging Face directory (config, safetensors, tokenizer).

    Args:
        path: Target directory (created if needed).
        model: The model to save (merge an adapter first with `merge_lora`).
        tokenizer: A ``tokenizers.Tokenizer`` to save as ``tokenizer.json``, or None.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        max_shard_bytes: Split the weights into shards of at most this size (plus an index),
            like ``transformers``'s ``max_shard_size``; None writes one file.
        tokenizer_config: ``tokenizer_config.json`` content (default: the byte tokenizer's).

    Returns:
        The directory path.

    Example:
        >>> import tempfile
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> from tinkex_jax.local.model.decoder import init_params
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2,
        ...                   n_kv_heads=1, d_ff=16)
        >>> d = save_hf_directory(tempfile.mkdtemp(), Model(init_params(cfg), cfg))
        >>> sorted(p.name for p in d.iterdir())
        ['config.json', 'model.safetensors']
    """
    from safetensors.numpy import save_file

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    hf_cfg = config_to_hf(model.config, dtype=dtype)
    (root / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n", encoding="utf-8")
    tensors = params_to_hf(model.params, model.config, dtype=dtype)
    meta = {"format": "pt"}
    if max_shard_bytes is None:
        save_file(tensors, str(root / "model.safetensors"), metadata=meta)
    else:
        shards: list[dict[str, np.ndarray]] = [{}]
        size = 0
        for name, arr in tensors.items():
            if shards[-1] and size + arr.nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][name] = arr
            size += arr.nbytes
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(root / fname), metadata=meta)
            weight_map.update({name: fname for name in shard})
        index = {"metadata": {"total_size": int(sum(a.nbytes for a in tensors.values()))},
                 "weight_map": weight_map}
        (root / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n",
                                                            encoding="utf-8")
    if tokenizer is not None:
        from .tokenizer import save_tokenizer, tokenizer_config as default_tok_cfg

        save_tokenizer(tokenizer, root, config=dict(tokenizer_config or default_tok_cfg()))
    return root
