"""Device meshes and shardings: base weights, LoRA, optimizer state and batches.

The mesh has two axes: ``"fsdp"`` (data parallel plus fully-sharded parameters) and ``"tp"``
(tensor parallel). Batches are split over ``"fsdp"``; every weight matrix shards its input
side over ``"fsdp"`` and its output side over ``"tp"`` (attention heads, MLP width, vocabulary),
so XLA's SPMD partitioner gathers a weight over ``"fsdp"`` just before it is used and keeps
the head / MLP / vocabulary dimensions split over ``"tp"``. A dimension that an axis size does
not divide stays unsplit on that axis. Norm weights are replicated.

=================================  =========================================================
array                              `PartitionSpec`
=================================  =========================================================
``embed [V, d]``                   ``("tp", "fsdp")``
``unembed [d, V]``                 ``("fsdp", "tp")``
``wq, wk, wv, w_gate, w_up``       ``(None, "fsdp", "tp")`` (``[L, in, out]``)
``wo, w_down``                     ``(None, "tp", "fsdp")``
norms                              replicated
LoRA ``a [.., in, r]``             the base weight's ``in`` axis, ``r`` unsplit
LoRA ``b [.., r, out]``            the base weight's ``out`` axis
AdamW moments                      as the LoRA leaf they track; counters replicated
batch ``[B, ...]``                 ``("fsdp",)`` (``B`` padded to a multiple of the axis)
=================================  =========================================================

Example:
    >>> mesh = make_mesh()                       # all visible devices on "fsdp"
    >>> dict(mesh.shape)
    {'fsdp': 1, 'tp': 1}
    >>> parse_mesh("fsdp=4,tp=2")
    {'fsdp': 4, 'tp': 2}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tinkex_jax.errors import invalid

__all__ = [
    "DATA_AXIS",
    "TP_AXIS",
    "batch_sharding",
    "lora_shardings",
    "make_mesh",
    "mesh_shape",
    "optimizer_shardings",
    "param_shardings",
    "param_spec",
    "parse_mesh",
    "replicated",
    "shard_batch",
    "shard_lora",
    "shard_params",
]

DATA_AXIS = "fsdp"
"""The data-parallel / fully-sharded axis (batches split here)."""

TP_AXIS = "tp"
"""The tensor-parallel axis (heads, MLP width and vocabulary split here)."""

# (input-side axis, output-side axis) of each matrix, by its name in the parameter tree.
_IN_OUT = {
    "wq": (DATA_AXIS, TP_AXIS), "wk": (DATA_AXIS, TP_AXIS), "wv": (DATA_AXIS, TP_AXIS),
    "w_gate": (DATA_AXIS, TP_AXIS), "w_up": (DATA_AXIS, TP_AXIS),
    "wo": (TP_AXIS, DATA_AXIS), "w_down": (TP_AXIS, DATA_AXIS),
    "unembed": (DATA_AXIS, TP_AXIS),
}


def parse_mesh(spec: str) -> dict[str, int]:
    """Axis sizes from a ``"fsdp=4,tp=2"`` string (missing axes: fsdp = the rest, tp = 1).

    Raises:
        ValidationError: Unknown axis names or non-positive sizes.

    Example:
        >>> parse_mesh("tp=2"), parse_mesh("")
        ({'tp': 2}, {})
    """
    out: dict[str, int] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in (DATA_AXIS, TP_AXIS) or not value.strip().isdigit() \
                or int(value) < 1:
            raise invalid("mesh", "comma-separated 'fsdp=N' and 'tp=M' with N, M >= 1",
                          spec, "e.g. --mesh fsdp=4,tp=2")
        out[name] = int(value)
    return out


def make_mesh(fsdp: int | None = None, tp: int = 1,
              devices: Sequence[Any] | None = None) -> Mesh:
    """A ``("fsdp", "tp")`` mesh over `devices` (default: every visible device).

    Args:
        fsdp: Size of the data / fully-sharded axis (default: ``len(devices) // tp``).
        tp: Size of the tensor-parallel axis.
        devices: The devices to use (default ``jax.devices()``).

    Raises:
        ValidationError: ``fsdp * tp`` does not equal the number of devices.

    Example:
        >>> make_mesh(tp=1).axis_names
        ('fsdp', 'tp')
    """
    devs = list(jax.devices() if devices is None else devices)
    if not isinstance(tp, int) or tp < 1 or len(devs) % tp:
        raise invalid("mesh tp", f"a divisor of the {len(devs)} devices", tp)
    size = len(devs) // tp if fsdp is None else fsdp
    if size * tp != len(devs):
        raise invalid("mesh", f"fsdp * tp == {len(devs)} (the devices in use)",
                      f"fsdp={size}, tp={tp}",
                      "pick sizes whose product is the device count, or pass devices=")
    return Mesh(np.asarray(devs, dtype=object).reshape(size, tp), (DATA_AXIS, TP_AXIS))


def mesh_shape(mesh: Mesh | None) -> dict[str, int]:
    """Axis sizes of a mesh (``{"fsdp": 1, "tp": 1}`` for None).

    Example:
        >>> mesh_shape(None)
        {'fsdp': 1, 'tp': 1}
    """
    if mesh is None:
        return {DATA_AXIS: 1, TP_AXIS: 1}
    return {str(k): int(v) for k, v in mesh.shape.items()}


def replicated(mesh: Mesh) -> NamedSharding:
    """A fully replicated sharding on `mesh`.

    Example:
        >>> tuple(replicated(make_mesh()).spec)
        ()
    """
    return NamedSharding(mesh, PartitionSpec())


def _fit(shape: Sequence[int], axes: Sequence[str | None], mesh: Mesh) -> PartitionSpec:
    """`axes` with every axis that does not divide its dimension dropped."""
    sizes = mesh_shape(mesh)
    return PartitionSpec(*[a if a is not None and dim % sizes[a] == 0 else None
                           for dim, a in zip(shape, axes)])


def param_spec(name: str, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """The `PartitionSpec` of a base parameter (``"embed"``, ``"unembed"``,
    ``"final_norm"`` or a stacked layer weight name such as ``"wq"``).

    Example:
        >>> mesh = make_mesh()
        >>> tuple(param_spec("wq", (2, 64, 64), mesh)), tuple(param_spec("attn_norm", (2, 64), mesh))
        ((None, 'fsdp', 'tp'), (None, None))
    """
    if name == "embed":
        return _fit(shape, (TP_AXIS, DATA_AXIS), mesh)
    if name in _IN_OUT:
        lead = (None,) * (len(shape) - 2)
        return _fit(shape, (*lead, *_IN_OUT[name]), mesh)
    return PartitionSpec(*([None] * len(shape)))


def param_shardings(params: Mapping[str, Any], mesh: Mesh) -> dict[str, Any]:
    """`NamedSharding` tree for a base parameter tree (arrays or ``ShapeDtypeStruct``s).

    Example:
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> from tinkex_jax.local.model.decoder import init_params
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2,
        ...                   n_kv_heads=1, d_ff=16)
        >>> shapes = jax.eval_shape(lambda: init_params(cfg))
        >>> tuple(param_shardings(shapes, make_mesh())["layers"]["wo"].spec)
        (None, 'tp', 'fsdp')
    """
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key == "layers":
            out[key] = {n: NamedSharding(mesh, param_spec(n, v.shape, mesh))
                        for n, v in value.items()}
        else:
            out[key] = NamedSharding(mesh, param_spec(key, value.shape, mesh))
    return out


def shard_params(params: Mapping[str, Any], mesh: Mesh) -> dict[str, Any]:
    """Places a base parameter tree on `mesh` (see the module table).

    Example:
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> from tinkex_jax.local.model.decoder import init_params
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2,
        ...                   n_kv_heads=1, d_ff=16)
        >>> p = shard_params(init_params(cfg), make_mesh())
        >>> tuple(p["embed"].sharding.spec)
        ('tp', 'fsdp')
    """
    result: dict[str, Any] = jax.device_put(dict(params), param_shardings(params, mesh))
    return result


def _lora_leaf_spec(name: str, part: str, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    in_axis, out_axis = _IN_OUT[name]
    lead = (None,) * (len(shape) - 2)
    axes = (in_axis, None) if part == "a" else (None, out_axis)
    return _fit(shape, (*lead, *axes), mesh)


def lora_shardings(weights: Mapping[str, Any], mesh: Mesh) -> dict[str, Any]:
    """`NamedSharding` tree for LoRA weights (``Lora.weights``; arrays or shape structs).

    Example:
        >>> from tinkex_jax.local.model.config import LoraSpec, ModelConfig
        >>> from tinkex_jax.local.model.lora import init_lora
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2,
        ...                   n_kv_heads=1, d_ff=16)
        >>> sh = lora_shardings(init_lora(cfg, LoraSpec(rank=2)).weights, make_mesh())
        >>> tuple(sh["layers"]["wq"]["a"].spec), tuple(sh["unembed"]["b"].spec)
        ((None, 'fsdp', None), (None, 'tp'))
    """
    out: dict[str, Any] = {}
    for name, ad in weights.get("layers", {}).items():
        out.setdefault("layers", {})[name] = {
            part: NamedSharding(mesh, _lora_leaf_spec(name, part, arr.shape, mesh))
            for part, arr in ad.items()}
    if "unembed" in weights:
        out["unembed"] = {
            part: NamedSharding(mesh, _lora_leaf_spec("unembed", part, arr.shape, mesh))
            for part, arr in weights["unembed"].items()}
    return out


def shard_lora(lora: Any, mesh: Mesh) -> Any:
    """A `Lora` (or its gradient) placed on `mesh`.

    Example:
        >>> from tinkex_jax.local.model.config import LoraSpec, ModelConfig
        >>> from tinkex_jax.local.model.lora import init_lora
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2,
        ...                   n_kv_heads=1, d_ff=16)
        >>> lora = shard_lora(init_lora(cfg, LoraSpec(rank=2)), make_mesh())
        >>> tuple(lora.weights["unembed"]["a"].sharding.spec)
        ('fsdp', None)
    """
    from dataclasses import replace

    weights = jax.device_put(lora.weights, lora_shardings(lora.weights, mesh))
    return replace(lora, weights=weights)


def _leaf_key(path: Sequence[Any]) -> tuple[str, ...]:
    keys: list[str] = []
    for p in path:
        if isinstance(p, jax.tree_util.DictKey):
            keys.append(str(p.key))
    return tuple(keys)


def optimizer_shardings(state: Any, weights: Mapping[str, Any], mesh: Mesh) -> Any:
    """`NamedSharding` tree for an optimizer state over LoRA `weights`: every moment leaf
    takes the sharding of the LoRA leaf at the same path, everything else is replicated.

    Example:
        >>> from tinkex_jax.local.model.config import LoraSpec, ModelConfig
        >>> from tinkex_jax.local.model.lora import init_lora
        >>> from tinkex_jax.local.model.runtime import init_optimizer
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2,
        ...                   n_kv_heads=1, d_ff=16)
        >>> lora = init_lora(cfg, LoraSpec(rank=2))
        >>> sh = optimizer_shardings(init_optimizer(lora), lora.weights, make_mesh())
        >>> sorted({tuple(s.spec) for s in jax.tree.leaves(sh)}, key=str)[:2]
        [('fsdp', None), ()]
    """
    by_key = {}
    flat, _ = jax.tree_util.tree_flatten_with_path(lora_shardings(weights, mesh))
    for path, sh in flat:
        by_key[_leaf_key(path)] = sh

    def pick(path: Sequence[Any], leaf: Any) -> NamedSharding:
        key = _leaf_key(path)
        for start in range(len(key)):
            found = by_key.get(key[start:])
            if found is not None and len(found.spec) == np.ndim(leaf):
                return found
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(pick, state)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Rows split over ``"fsdp"``, everything else unsplit.

    Example:
        >>> tuple(batch_sharding(make_mesh(), 2).spec)
        ('fsdp', None)
    """
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS, *([None] * (ndim - 1))))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Pads a `Batch`'s rows to a multiple of the ``"fsdp"`` size (masked padding rows) and
    splits them over that axis.

    Example:
        >>> from tinkex_jax.local.model.runtime import make_batch
        >>> batch, _ = make_batch([([1, 2], {"target_tokens": [2, 3]})])
        >>> tuple(shard_batch(batch, make_mesh()).tokens.sharding.spec)
        ('fsdp', None)
    """
    size = mesh_shape(mesh)[DATA_AXIS]

    def place(x: Any) -> Any:
        arr = np.asarray(x)
        rows = arr.shape[0]
        target = -(-rows // size) * size
        if target != rows:
            pad = np.zeros((target - rows, *arr.shape[1:]), arr.dtype)
            arr = np.concatenate([arr, pad])
        return jax.device_put(arr, batch_sharding(mesh, arr.ndim))

    return jax.tree.map(place, batch)
