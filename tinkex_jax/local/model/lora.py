"""LoRA adapters as a separate pytree over one frozen base.

A `Lora` holds only the adapter matrices (``weights``) and the static output scale
``alpha / rank``. Several adapters share one base parameter tree: nothing here copies or
mutates the base. An adapted projection computes ``x @ W + scale * (x @ A) @ B`` with
``A ~ N(0, 1/d_in)`` and ``B = 0``, so a fresh adapter is exactly the identity.

Adapter layout (``L`` layers, stacked like the base)::

    {"layers": {"wq": {"a": [L, d, r], "b": [L, r, q]}, ...},   # attn and/or mlp names
     "unembed": {"a": [d, r], "b": [r, V]}}                       # when train_unembed

Example:
    >>> from tinkex_jax.local.model.config import LoraSpec, ModelConfig
    >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1,
    ...                   d_ff=16)
    >>> lora = init_lora(cfg, LoraSpec(rank=4, train_mlp=False, train_unembed=False))
    >>> sorted(lora.weights["layers"]), lora.weights["layers"]["wq"]["a"].shape
    (['wk', 'wo', 'wq', 'wv'], (1, 8, 4))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tinkex_jax.errors import invalid

from .config import LoraSpec, ModelConfig
from .decoder import ATTN_WEIGHTS, MLP_WEIGHTS, DecodeWeights, Params, unembed_matrix

__all__ = [
    "Lora",
    "init_lora",
    "lora_from_arrays",
    "lora_num_params",
    "lora_to_arrays",
    "merge_for_decoding",
    "merge_lora",
    "weight_shapes",
]


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Lora:
    """A LoRA adapter: a pytree whose leaves are the adapter matrices.

    Attributes:
        weights: ``{"layers": {name: {"a", "b"}}, "unembed": {"a", "b"}}`` (see module doc).
        scale: ``alpha / rank`` (static: part of the tree structure, not a leaf).
    """

    weights: dict[str, Any]
    scale: float = field(default=1.0, metadata={"static": True})

    @property
    def rank(self) -> int:
        """The adapter rank (from the shape of any ``A`` matrix)."""
        leaves = jax.tree.leaves(self.weights)
        return int(leaves[0].shape[-1]) if leaves else 0


def weight_shapes(config: ModelConfig) -> dict[str, tuple[int, int]]:
    """``(d_in, d_out)`` of every adaptable projection, including ``unembed``.

    Example:
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2,
        ...                   n_kv_heads=1, d_ff=12)
        >>> weight_shapes(cfg)["w_down"], weight_shapes(cfg)["unembed"]
        ((12, 8), (8, 16))
    """
    c = config
    return {
        "wq": (c.d_model, c.q_dim), "wk": (c.d_model, c.kv_dim), "wv": (c.d_model, c.kv_dim),
        "wo": (c.q_dim, c.d_model), "w_gate": (c.d_model, c.d_ff), "w_up": (c.d_model, c.d_ff),
        "w_down": (c.d_ff, c.d_model), "unembed": (c.d_model, c.vocab_size),
    }


def _seed_key_data(seed: int) -> np.ndarray:
    """Threefry key data ``[hi, lo]`` (uint32) of a 64-bit seed, computed on the host.

    ``jax.random.key(seed)`` would silently drop the high 32 bits of a large seed.
    """
    s = int(seed) % (1 << 64)
    return np.array([s >> 32, s & 0xFFFFFFFF], dtype=np.uint32)


def init_lora(config: ModelConfig, spec: LoraSpec, *, dtype: Any = jnp.float32,
              mesh: Any = None) -> Lora:
    """A fresh adapter: ``A ~ N(0, 1/d_in)``, ``B = 0`` (the identity), deterministic in seed.

    Each matrix draws from its own key (derived from all 64 bits of ``spec.seed`` and the
    matrix name), so toggling one flag does not change the other matrices' initial values.
    Jitted with the seed traced: a new seed never recompiles.

    Args:
        config: The base model's shape.
        spec: Rank, seed, alpha and which groups of weights get adapters.
        dtype: Adapter dtype (float32 by default; keep float32 for mixed precision: the
            projections cast it to the base's dtype, gradients and AdamW state stay float32).
        mesh: A ``("fsdp", "tp")`` mesh to shard the adapter over (see
            `sharding.lora_shardings`), or None.

    Returns:
        The new `Lora` (scale ``spec.alpha / spec.rank``).

    Example:
        >>> from tinkex_jax.local.model.config import LoraSpec, ModelConfig
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2,
        ...                   n_kv_heads=1, d_ff=16)
        >>> lora = init_lora(cfg, LoraSpec(rank=2, seed=3))
        >>> float(abs(lora.weights["unembed"]["b"]).sum()), lora.scale
        (0.0, 16.0)
    """
    names: list[str] = []
    if spec.train_attn:
        names += list(ATTN_WEIGHTS)
    if spec.train_mlp:
        names += list(MLP_WEIGHTS)
    weights = _init_weights_jit(config, tuple(names), spec.train_unembed, spec.rank,
                                _seed_key_data(spec.seed), np.dtype(dtype))
    lora = Lora(weights=weights, scale=spec.scale)
    if mesh is not None:
        from .sharding import shard_lora

        lora = shard_lora(lora, mesh)
    return lora


def _init_weights_impl(config: ModelConfig, names: tuple[str, ...], unembed: bool, rank: int,
                       key_data: jax.Array, dtype: Any) -> dict[str, Any]:
    shapes = weight_shapes(config)
    base_key = jax.random.wrap_key_data(key_data)
    order = (*ATTN_WEIGHTS, *MLP_WEIGHTS, "unembed")

    def adapter(name: str, lead: tuple[int, ...]) -> dict[str, jax.Array]:
        d_in, d_out = shapes[name]
        key = jax.random.fold_in(base_key, order.index(name))
        a = jax.random.normal(key, (*lead, d_in, rank), jnp.float32) * d_in**-0.5
        return {"a": a.astype(dtype), "b": jnp.zeros((*lead, rank, d_out), dtype)}

    weights: dict[str, Any] = {}
    if names:
        weights["layers"] = {n: adapter(n, (config.n_layers,)) for n in names}
    if unembed:
        weights["unembed"] = adapter("unembed", ())
    return weights


_init_weights_jit = jax.jit(_init_weights_impl,
                            static_argnames=("config", "names", "unembed", "rank", "dtype"))


def lora_num_params(lora: Lora) -> int:
    """Number of trainable adapter parameters.

    Example:
        >>> from tinkex_jax.local.model.config import LoraSpec, ModelConfig
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2,
        ...                   n_kv_heads=1, d_ff=16)
        >>> lora_num_params(init_lora(cfg, LoraSpec(rank=1, train_attn=False,
        ...                                         train_mlp=False)))
        24
    """
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(lora.weights)))


def _delta(adapter: Mapping[str, jax.Array], scale: float) -> jax.Array:
    return jnp.matmul(adapter["a"], adapter["b"]) * scale


def merge_lora(base: Params, lora: Lora | None) -> Params:
    """The base parameters with the adapter folded in (``W + scale * A @ B``).

    Used to export a fine-tuned model as a plain checkpoint. For a tied embedding with an
    unembedding adapter, the result gets an untied ``unembed`` (the adapter changes only
    the output side).

    Example:
        >>> import jax.numpy as jnp
        >>> from tinkex_jax.local.model.config import LoraSpec, ModelConfig
        >>> from tinkex_jax.local.model.decoder import init_params
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2,
        ...                   n_kv_heads=1, d_ff=16)
        >>> base = init_params(cfg)
        >>> merged = merge_lora(base, init_lora(cfg, LoraSpec(rank=2)))
        >>> bool(jnp.allclose(merged["layers"]["wq"], base["layers"]["wq"]))
        True
    """
    if lora is None:
        return base
    out = dict(base)
    layers = dict(base["layers"])
    for name, ad in lora.weights.get("layers", {}).items():
        layers[name] = _add_delta(layers[name], ad, lora.scale)
    out["layers"] = layers
    if "unembed" in lora.weights:
        out["unembed"] = _add_delta(unembed_matrix(base), lora.weights["unembed"], lora.scale)
    return out


def _add_delta(w: jax.Array, adapter: Mapping[str, jax.Array], scale: float) -> jax.Array:
    """``w + scale * a @ b``, summed in float32 and rounded once to ``w``'s dtype."""
    return (w.astype(jnp.float32) + _delta(adapter, scale).astype(jnp.float32)).astype(w.dtype)


def _merge_for_decoding(base: Params, lora: Lora | None) -> DecodeWeights:
    merged = merge_lora(base, lora)
    L = merged["layers"]["wq"].shape[0]
    layers = [{k: v[i] for k, v in merged["layers"].items()} for i in range(L)]
    return DecodeWeights(
        embed=merged["embed"],
        layers=layers,
        final_norm=merged["final_norm"],
        unembed=unembed_matrix(merged),
    )


merge_for_decoding = jax.jit(_merge_for_decoding)
merge_for_decoding.__doc__ = """Per-layer `DecodeWeights` (in the base's dtype) with the adapter
merged in.

Jitted (one compile per base shape and adapter structure); a ``"merged"`` sampler calls it
once per set of weights, so its decoding loop runs plain matmuls with no LoRA terms. This is
a full copy of the base: ``"shared"`` samplers (`decoder.SharedWeights`) avoid it.

Example:
    >>> from tinkex_jax.local.model.config import ModelConfig
    >>> from tinkex_jax.local.model.decoder import init_params
    >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1,
    ...                   d_ff=16)
    >>> w = merge_for_decoding(init_params(cfg), None)
    >>> len(w["layers"]), w["unembed"].shape
    (1, (8, 16))
"""


# --------------------------------------------------------------------------------------------
# Flat (de)serialisation, for checkpoints
# --------------------------------------------------------------------------------------------


def lora_to_arrays(lora: Lora) -> dict[str, np.ndarray]:
    """Flat ``{"layers.wq.a": array, ...}`` host arrays (e.g. for ``safetensors``).

    Example:
        >>> from tinkex_jax.local.model.config import LoraSpec, ModelConfig
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2,
        ...                   n_kv_heads=1, d_ff=16)
        >>> sorted(lora_to_arrays(init_lora(cfg, LoraSpec(rank=2, train_attn=False,
        ...                                                train_mlp=False))))
        ['unembed.a', 'unembed.b']
    """
    out: dict[str, np.ndarray] = {}
    for name, ad in lora.weights.get("layers", {}).items():
        for part in ("a", "b"):
            out[f"layers.{name}.{part}"] = np.asarray(ad[part])
    if "unembed" in lora.weights:
        for part in ("a", "b"):
            out[f"unembed.{part}"] = np.asarray(lora.weights["unembed"][part])
    return out


def lora_from_arrays(arrays: Mapping[str, Any], *, scale: float,
                     config: ModelConfig | None = None, mesh: Any = None) -> Lora:
    """Inverse of `lora_to_arrays`; checks shapes against `config` when given.

    Args:
        arrays: Flat ``{"layers.<name>.a"/"b", "unembed.a"/"b"}`` arrays.
        scale: ``alpha / rank`` of the adapter.
        config: The base model's shape, to validate the arrays against.
        mesh: A mesh to shard the adapter over (see `sharding.lora_shardings`), or None.

    Returns:
        The `Lora` (float32 device arrays).

    Raises:
        ValidationError: Unknown keys, a missing half of a pair, or a wrong shape.

    Example:
        >>> from tinkex_jax.local.model.config import LoraSpec, ModelConfig
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2,
        ...                   n_kv_heads=1, d_ff=16)
        >>> lora = init_lora(cfg, LoraSpec(rank=2))
        >>> back = lora_from_arrays(lora_to_arrays(lora), scale=lora.scale, config=cfg)
        >>> back.rank
        2
    """
    allowed = (*ATTN_WEIGHTS, *MLP_WEIGHTS)
    weights: dict[str, Any] = {}
    layers: dict[str, dict[str, jax.Array]] = {}
    for key, value in arrays.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "layers" and parts[1] in allowed and parts[2] in "ab":
            layers.setdefault(parts[1], {})[parts[2]] = jnp.asarray(value, jnp.float32)
        elif len(parts) == 2 and parts[0] == "unembed" and parts[1] in ("a", "b"):
            weights.setdefault("unembed", {})[parts[1]] = jnp.asarray(value, jnp.float32)
        else:
            raise invalid(f"LoRA arrays[{key!r}]", "keys 'layers.<name>.a|b' (name in "
                          f"{list(allowed)}) or 'unembed.a|b'", key,
                          "save adapters with lora_to_arrays")
    if layers:
        weights["layers"] = layers
    for name, ad in [*layers.items(), *([("unembed", weights["unembed"])]
                                          if "unembed" in weights else [])]:
        if set(ad) != {"a", "b"}:
            raise invalid(f"LoRA arrays for {name!r}", "both 'a' and 'b'", sorted(ad))
        if config is not None:
            d_in, d_out = weight_shapes(config)[name]
            a, b = ad["a"].shape, ad["b"].shape
            if a[-2] != d_in or b[-1] != d_out or a[-1] != b[-2]:
                raise invalid(f"LoRA arrays for {name!r}", f"a [..., {d_in}, r] and "
                              f"b [..., r, {d_out}]", f"<a {a}, b {b}>",
                              "load the adapter onto the base model it was trained on")
    if not weights:
        raise invalid("LoRA arrays", "at least one adapter", "<empty>")
    lora = Lora(weights=weights, scale=scale)
    if mesh is not None:
        from .sharding import shard_lora

        lora = shard_lora(lora, mesh)
    return lora
