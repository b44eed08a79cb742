"""Built-in pretrained presets and base-model resolution.

=====================  =======================================================  ==========
name                   shape                                                    weights
=====================  =======================================================  ==========
``tinkex-jax/tiny``    Llama, 2 layers, d 128, 4/2 heads, d_ff 384, 427 K       float32
``tinkex-jax/small``   Qwen3 (q/k norm), 4 layers, d 256, 8/4 heads, d_ff 512   float16
=====================  =======================================================  ==========

Both use the byte-level tokenizer (259 ids: bytes, ``<|bos|>`` 256, ``<|eos|>`` 257,
``<|pad|>`` 258) and were pretrained by ``scripts/pretrain_presets.py``
(`tinkex_jax.local.model.pretrain`) on the offline synthetic mixture of
`tinkex_jax.local.model.tasks` (no string reversal). Files live flat in
``tinkex_jax/local/model/presets/``: ``<name>.config.json`` (Hugging Face config),
``<name>.safetensors`` (Hugging Face tensor names), ``<name>.tokenizer.json``,
``<name>.tokenizer_config.json`` and ``<name>.pretrain.json`` (how it was made).

Example:
    >>> m = load_preset("tinkex-jax/tiny")
    >>> m.config.d_model, m.tokenizer.encode("hi").ids
    (128, [104, 105])
    >>> resolve_base_model("tinkex-jax/tiny") is m
    True
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from tinkex_jax.errors import invalid

from .config import ModelConfig
from .hf import LoadedModel, load_checkpoint_files, load_hf_directory
from .options import RunOptions
from .tokenizer import BOS_ID, BYTE_VOCAB_SIZE, EOS_ID, PAD_ID

__all__ = [
    "PRESETS_DIR",
    "PRESET_CONFIGS",
    "PRESET_PREFIX",
    "load_preset",
    "preset_names",
    "resolve_base_model",
]

PRESET_PREFIX = "tinkex-jax/"
PRESETS_DIR = Path(__file__).resolve().parent / "presets"

PRESET_CONFIGS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        vocab_size=BYTE_VOCAB_SIZE, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2,
        d_ff=384, rope_theta=10_000.0, rms_norm_eps=1e-5, tie_embeddings=True,
        max_seq_len=2048, architecture="llama", bos_token_id=BOS_ID, eos_token_ids=(EOS_ID,),
        pad_token_id=PAD_ID,
    ),
    "small": ModelConfig(
        vocab_size=BYTE_VOCAB_SIZE, d_model=256, n_layers=4, n_heads=8, n_kv_heads=4,
        d_ff=512, rope_theta=10_000.0, rms_norm_eps=1e-6, tie_embeddings=True, qk_norm=True,
        max_seq_len=2048, architecture="qwen3", bos_token_id=BOS_ID, eos_token_ids=(EOS_ID,),
        pad_token_id=PAD_ID,
    ),
}
"""The preset shapes (what `pretrain` trains and the shipped config files describe)."""

_CACHE: dict[Any, LoadedModel] = {}
_LOCK = threading.Lock()


def preset_names() -> list[str]:
    """Full names of the presets whose files are present (``["tinkex-jax/small", ...]``).

    Example:
        >>> "tinkex-jax/tiny" in preset_names()
        True
    """
    return sorted(PRESET_PREFIX + n for n in PRESET_CONFIGS
                  if (PRESETS_DIR / f"{n}.safetensors").exists())


def _bare(name: str) -> str:
    bare = name[len(PRESET_PREFIX):] if name.startswith(PRESET_PREFIX) else name
    return bare.split(":", 1)[0]


def load_preset(name: str, *, presets_dir: str | os.PathLike[str] | None = None,
                dtype: Any = "auto", options: RunOptions | None = None) -> LoadedModel:
    """Loads a built-in preset (cached: every caller shares one frozen base).

    Args:
        name: ``"tinkex-jax/tiny"`` (or ``"tiny"``).
        presets_dir: Where the files live (default `PRESETS_DIR`); not cached when given.
        dtype: Parameter dtype (see `hf.load_checkpoint_files`; ``"auto"``: float32 on CPU).
        options: The model's `RunOptions`; the cache keeps one base per (dtype, options).

    Returns:
        The `LoadedModel` (byte tokenizer).

    Raises:
        ValidationError: Unknown preset or missing files (the message lists the presets).

    Example:
        >>> load_preset("tiny").config.n_layers
        2
    """
    bare = _bare(name)
    root = Path(presets_dir) if presets_dir is not None else PRESETS_DIR
    if bare not in PRESET_CONFIGS:
        raise invalid("base_model", f"a preset among {sorted(PRESET_PREFIX + n for n in PRESET_CONFIGS)} "
                      "or a local Hugging Face directory", name)
    key = PRESET_PREFIX + bare
    cache_key = _cache_key(key, dtype, options)
    if presets_dir is None:
        with _LOCK:
            if cache_key in _CACHE:
                return _CACHE[cache_key]
    weights = root / f"{bare}.safetensors"
    config = root / f"{bare}.config.json"
    if not weights.exists() or not config.exists():
        raise invalid(f"preset {key!r}", f"files {config.name} and {weights.name} in {root}",
                      "<missing>", "run `python scripts/pretrain_presets.py` to build them")
    loaded = load_checkpoint_files(config, [weights], root / f"{bare}.tokenizer.json",
                                   name=key, dtype=dtype, options=options)
    if presets_dir is None:
        with _LOCK:
            loaded = _CACHE.setdefault(cache_key, loaded)
    return loaded


def _cache_key(name: str, dtype: Any, options: RunOptions | None) -> Any:
    opts = options or RunOptions()
    if opts == RunOptions() and isinstance(dtype, str) and dtype == "auto":
        return name
    return (name, str(dtype), opts)


def resolve_base_model(name_or_path: str, *, dtype: Any = "auto",
                       options: RunOptions | None = None) -> LoadedModel:
    """A preset name (``tinkex-jax/...``) or a local Hugging Face directory, loaded once.

    Args:
        name_or_path: ``"tinkex-jax/tiny"``, ``"tinkex-jax/small"``, or a directory path.
        dtype: Parameter dtype (``"auto"``: float32 on CPU, the checkpoint's on GPU / TPU).
        options: The model's `RunOptions` (remat, attention, micro-batching, mesh, ...).

    Returns:
        The `LoadedModel`; repeated calls with the same name return the same object.

    Raises:
        ValidationError: Neither a known preset nor an existing model directory.

    Example:
        >>> resolve_base_model("tinkex-jax/tiny").name
        'tinkex-jax/tiny'
    """
    if name_or_path.startswith(PRESET_PREFIX) or name_or_path in PRESET_CONFIGS:
        return load_preset(name_or_path, dtype=dtype, options=options)
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise invalid("base_model", f"a preset among {preset_names()} or an existing local "
                      "Hugging Face model directory (downloads are not supported)",
                      name_or_path, "pass a preset name or the path of a downloaded model")
    key = _cache_key(str(path.resolve()), dtype, options)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    loaded = load_hf_directory(path, dtype=dtype, options=options)
    with _LOCK:
        return _CACHE.setdefault(key, loaded)
