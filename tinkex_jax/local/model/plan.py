"""Memory plans: per-device peak memory of training and sampling, without loading weights.

`plan_memory` builds abstract arrays (``jax.ShapeDtypeStruct`` with their shardings) for the
base, the adapter, the AdamW state and a batch, lowers and compiles the same jitted functions
the server runs (``forward_backward``, ``optim_step``, the sampler's prefill and decode loop)
for the current platform, and reads XLA's memory analysis of each compiled program. Nothing
is allocated and no checkpoint is read: a config is enough.

How the peaks are put together (all per device):

* training: ``max(forward_backward, optim_step)`` where each compiled step counts its
  arguments, outputs and scratch (``temp``) minus donated buffers, plus what stays resident
  outside that call (the AdamW moments and the accumulated gradient during
  ``forward_backward``; the base during ``optim_step``);
* sampling: the base, plus the sampler's own weights (a merged copy, or the one shared
  per-layer copy; nothing for ``"stacked"``), plus ``max(prefill, decode)`` scratch, outputs
  and KV cache.

The numbers are XLA's buffer assignment for the platform JAX runs on; a CPU plan for a GPU
run is an estimate (fusion and scratch differ between backends). To plan for N devices on a
CPU host, run in a process started with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``.

Example:
    >>> plan = plan_memory("tinkex-jax/tiny", seq_len=128, batch=2, rank=8)
    >>> plan.train_peak_bytes_per_device > plan.params_bytes_per_device > 0
    True
    >>> plan.fits(16 << 30)
    True
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from tinkex_jax.errors import invalid

from .config import LoraSpec, ModelConfig
from .options import (
    RunOptions,
    platform_of,
    remat_policy,
    resolve_attention,
    resolve_param_dtype,
    resolve_sampler_weights,
)

__all__ = [
    "DEVICE_MEMORY",
    "MemoryPlan",
    "plan_memory",
]

DEVICE_MEMORY: Mapping[str, tuple[int, int]] = {
    "t4": (1, 16 << 30),
    "a100-40gb": (1, 40 << 30),
    "a100-80gb": (1, 80 << 30),
    "h100": (1, 80 << 30),
    "h200": (1, 141 * 10**9),
    "tpu-v2-8": (8, 8 << 30),
    "tpu-v3-8": (8, 16 << 30),
    "tpu-v5e": (1, 16 << 30),
    "tpu-v5e-8": (8, 16 << 30),
}
"""Nominal ``(devices, bytes per device)`` of common accelerators (for `MemoryPlan.fits`)."""


def _per_token_ce(lp: jax.Array, inputs: Mapping[str, jax.Array], mask: jax.Array,
                  config: Mapping[str, jax.Array]) -> jax.Array:
    return -lp * inputs["weights"] * mask


@dataclass(frozen=True)
class MemoryPlan:
    """Per-device memory of one (model, sequence length, batch, rank, dtype, mesh) setting.

    Attributes:
        config: The model shape.
        seq_len: Padded sequence length of the training batch and of sampling (prompt plus
            completion).
        batch: Training batch rows (padded to a multiple of the data axis).
        rank: LoRA rank.
        dtype: Base parameter dtype name.
        mesh: Axis sizes ``{"fsdp": n, "tp": m}``.
        platform: The platform compiled for (``"cpu"``, ``"gpu"``, ``"tpu"``).
        remat, attention, sampler_weights: The resolved `RunOptions` choices.
        micro_batches: Micro-batches per training call (token budget).
        params_bytes_per_device: Base parameters.
        lora_bytes_per_device: Adapter weights (float32); the gradient and each AdamW
            moment take the same again.
        train_peak_bytes_per_device: Peak of a training step.
        sample_peak_bytes_per_device: Peak while sampling ``num_samples`` completions.
        steps: The memory analysis of each compiled program (bytes per device:
            ``argument``, ``output``, ``temp``, ``alias``).
    """

    config: ModelConfig
    seq_len: int
    batch: int
    rank: int
    dtype: str
    mesh: dict[str, int]
    platform: str
    remat: str
    attention: str
    sampler_weights: str
    micro_batches: int
    params_bytes_per_device: int
    lora_bytes_per_device: int
    train_peak_bytes_per_device: int
    sample_peak_bytes_per_device: int
    steps: dict[str, dict[str, int]] = field(default_factory=dict)

    def fits(self, device_bytes: int, *, usable: float = 0.9) -> bool:
        """Whether training and sampling both fit in `usable` of `device_bytes` per device.

        Example:
            >>> p = plan_memory("tinkex-jax/tiny", seq_len=64)
            >>> p.fits(1 << 40), p.fits(1 << 10)
            (True, False)
        """
        limit = device_bytes * usable
        return max(self.train_peak_bytes_per_device, self.sample_peak_bytes_per_device) <= limit

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the config as its Hugging Face ``config.json`` fields).

        Example:
            >>> sorted(plan_memory("tinkex-jax/tiny", seq_len=64).to_json())[:3]
            ['attention', 'batch', 'config']
        """
        from .hf import config_to_hf

        out = asdict(self)
        out["config"] = config_to_hf(self.config, dtype=self.dtype)
        return out


def _resolve_config(model: ModelConfig | Mapping[str, Any] | str | Path,
                    ) -> tuple[ModelConfig, Any]:
    """(config, checkpoint dtype name or None) from any accepted model description."""
    from .hf import config_from_hf

    if isinstance(model, ModelConfig):
        return model, None
    if isinstance(model, Mapping):
        return config_from_hf(model), model.get("torch_dtype") or model.get("dtype")
    text = str(model)
    from .presets import PRESET_CONFIGS, PRESET_PREFIX

    bare = text[len(PRESET_PREFIX):] if text.startswith(PRESET_PREFIX) else text
    if bare in PRESET_CONFIGS:
        return PRESET_CONFIGS[bare], None
    path = Path(text).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise invalid("plan model", "a preset name, a ModelConfig, a config.json dict, or the "
                      "path of a config.json / model directory", text,
                      "e.g. plan_memory('tinkex-jax/small', seq_len=1024)")
    hf = json.loads(path.read_text(encoding="utf-8"))
    return config_from_hf(hf, where=str(path)), hf.get("torch_dtype") or hf.get("dtype")


def _resolve_mesh(mesh: Mesh | Mapping[str, int] | str | None) -> Mesh | None:
    from .sharding import DATA_AXIS, TP_AXIS, make_mesh, parse_mesh

    if mesh is None or isinstance(mesh, Mesh):
        return mesh
    sizes = parse_mesh(mesh) if isinstance(mesh, str) else dict(mesh)
    tp = int(sizes.get(TP_AXIS, 1))
    fsdp = sizes.get(DATA_AXIS)
    count = (int(fsdp) if fsdp is not None else 1) * tp
    devices = jax.devices()
    if fsdp is None:
        count = len(devices)
    if count > len(devices):
        raise invalid("plan mesh", f"at most the {len(devices)} visible devices", dict(sizes),
                      "on CPU start the process with XLA_FLAGS="
                      f"--xla_force_host_platform_device_count={count}")
    return make_mesh(None if fsdp is None else int(fsdp), tp, devices[:count])


def _abstract(tree: Any, shardings: Any) -> Any:
    if shardings is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


def _device_bytes(tree: Any) -> int:
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.shape
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding):
            shape = sharding.shard_shape(shape)
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


def _analysis(fn: Any, *args: Any, **kwargs: Any) -> dict[str, int]:
    compiled = fn.lower(*args, **kwargs).compile()
    mem = compiled.memory_analysis()
    return {"argument": int(mem.argument_size_in_bytes),
            "output": int(mem.output_size_in_bytes),
            "temp": int(mem.temp_size_in_bytes),
            "alias": int(mem.alias_size_in_bytes)}


def _peak(step: Mapping[str, int]) -> int:
    return step["argument"] + step["output"] + step["temp"] - step["alias"]


def plan_memory(model: ModelConfig | Mapping[str, Any] | str | Path, *, seq_len: int,
                batch: int = 1, rank: int = 32, dtype: Any = "auto",
                mesh: Mesh | Mapping[str, int] | str | None = None,
                options: RunOptions | None = None, num_samples: int = 1,
                train_unembed: bool = True) -> MemoryPlan:
    """Per-device peak memory of training and sampling, from compiled memory analyses.

    Args:
        model: A preset name (``"tinkex-jax/small"``), a `ModelConfig`, a Hugging Face
            ``config.json`` dict, or the path of a ``config.json`` or model directory.
        seq_len: Tokens per sequence (training rows; prompt plus completion when sampling).
        batch: Sequences per training call.
        rank: LoRA rank (adapters on attention, MLP and unembedding).
        dtype: Base dtype (``"auto"``: float32 on CPU, the checkpoint's dtype elsewhere;
            or ``"float32"``, ``"bfloat16"``, ``"float16"``, ``"checkpoint"``).
        mesh: None (one device), a ``Mesh``, ``{"fsdp": n, "tp": m}`` or ``"fsdp=4,tp=2"``
            over the visible devices.
        options: `RunOptions` to plan with (its mesh is replaced by `mesh`).
        num_samples: Completions sampled at once.
        train_unembed: Whether the adapter covers the unembedding.

    Returns:
        A `MemoryPlan`.

    Raises:
        ValidationError: An unknown model, bad sizes, or a mesh larger than the devices.

    Example:
        >>> from tinkex_jax.local.model.options import RunOptions
        >>> a = plan_memory("tinkex-jax/small", seq_len=512, batch=4)
        >>> b = plan_memory("tinkex-jax/small", seq_len=512, batch=4,
        ...                 options=RunOptions(remat="full"))
        >>> b.train_peak_bytes_per_device < a.train_peak_bytes_per_device
        True
    """
    from . import runtime, sampler
    from .decoder import SharedWeights, init_params
    from .lora import init_lora, merge_for_decoding
    from .sharding import (
        DATA_AXIS,
        batch_sharding,
        lora_shardings,
        mesh_shape,
        optimizer_shardings,
        param_shardings,
        replicated,
    )

    for name, value in (("seq_len", seq_len), ("batch", batch), ("rank", rank),
                        ("num_samples", num_samples)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise invalid(f"plan {name}", "a positive int", value)
    config, stored = _resolve_config(model)
    the_mesh = _resolve_mesh(mesh)
    opts = replace(options or RunOptions(), mesh=the_mesh)
    platform = platform_of(opts)
    param_dtype = resolve_param_dtype(dtype, stored, platform=platform)
    seq = runtime.DEFAULT_BUCKETS.seq(seq_len)
    data = mesh_shape(the_mesh)[DATA_AXIS]
    rows = -(-runtime.DEFAULT_BUCKETS.batch(batch) // data) * data

    params_shape = jax.eval_shape(lambda: init_params(config, dtype=param_dtype))
    params = _abstract(params_shape, None if the_mesh is None
                       else param_shardings(params_shape, the_mesh))
    spec = LoraSpec(rank=rank, train_unembed=train_unembed)
    lora_shape = jax.eval_shape(lambda: init_lora(config, spec))
    lora = replace(lora_shape, weights=_abstract(
        lora_shape.weights, None if the_mesh is None
        else lora_shardings(lora_shape.weights, the_mesh)))
    opt_shape = jax.eval_shape(runtime.init_optimizer, lora_shape)
    opt = _abstract(opt_shape, None if the_mesh is None
                    else optimizer_shardings(opt_shape, lora_shape.weights, the_mesh))

    def rows_struct(dt: Any) -> jax.ShapeDtypeStruct:
        sh = None if the_mesh is None else batch_sharding(the_mesh, 2)
        return jax.ShapeDtypeStruct((rows, seq), dt, sharding=sh)

    batch_struct = runtime.Batch(rows_struct(jnp.int32), rows_struct(jnp.int32),
                                 rows_struct(jnp.float32), {"weights": rows_struct(jnp.float32)})
    the_model = runtime.Model(params, config, opts)
    steps: dict[str, dict[str, int]] = {}
    steps["forward_backward"] = _analysis(runtime._forward_backward_jit, the_model, lora,
                                          batch_struct, _per_token_ce, {})
    hp = {k: jax.ShapeDtypeStruct((), jnp.float32,
                                  sharding=None if the_mesh is None else replicated(the_mesh))
          for k in runtime.ADAM_DEFAULTS}
    if the_mesh is None:
        steps["optim_step"] = _analysis(runtime._optim_step_jit, lora, opt, lora, hp)
    else:
        steps["optim_step"] = _analysis(runtime._optim_step_sharded_jit, lora, opt, lora, hp,
                                        mesh=the_mesh)
    params_bytes = _device_bytes(params)
    lora_bytes = _device_bytes(lora.weights)
    opt_bytes = _device_bytes(opt)
    train_peak = max(_peak(steps["forward_backward"]) + opt_bytes + lora_bytes,
                     _peak(steps["optim_step"]) + params_bytes)

    # Sampling: the sampler's weights, a batch-1 prefill of the prompt, the decode loop.
    base_bytes = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
                     for x in jax.tree.leaves(params_shape))
    mode = resolve_sampler_weights(opts, base_bytes)
    if mode == "merged":
        weights: Any = jax.eval_shape(merge_for_decoding, params, lora)
        extra = _device_bytes(weights)
    else:
        base_view: Any = params
        extra = 0
        if mode == "shared":
            per_layer = [{k: _layer_struct(v) for k, v in params["layers"].items()}
                         for _ in range(config.n_layers)]
            base_view = {**{k: v for k, v in params.items() if k != "layers"},
                         "layers": per_layer}
            extra = _device_bytes(per_layer)
        weights = SharedWeights(base_view, lora.weights, lora.scale)
    weights = _with_shardings(weights, the_mesh)
    prompt = jax.ShapeDtypeStruct((1, seq), jnp.int32)
    steps["sample_prefill"] = _analysis(sampler._prefill_jit, weights, prompt, cache_len=seq,
                                        config=config, options=opts)
    cache1 = jax.eval_shape(lambda w, t: sampler._prefill_impl(w, t, seq, config, opts)[1],
                            weights, prompt)
    samples = sampler._pow2(num_samples)
    cache, state = jax.eval_shape(
        lambda c: sampler._start_impl(c, jnp.zeros((seq,), jnp.int32),
                                      jnp.zeros((2,), jnp.uint32), samples), cache1)
    scalars = {"temperature": jnp.float32(1), "top_k": jnp.int32(-1),
               "top_p": jnp.float32(1), "max_tokens": jnp.int32(seq),
               "stop_ids": jnp.zeros((8,), jnp.int32)}
    steps["sample_decode"] = _analysis(sampler._decode_jit, weights, cache, state,
                                       jnp.int32(0), jnp.int32(seq), scalars, config=config)
    weights_bytes = _device_bytes(weights)
    sample_peak = params_bytes + extra + max(
        _peak(steps["sample_prefill"]) - weights_bytes,
        _peak(steps["sample_decode"]) - weights_bytes)
    return MemoryPlan(
        config=config, seq_len=seq, batch=rows, rank=rank, dtype=param_dtype.name,
        mesh=mesh_shape(the_mesh), platform=platform,
        remat="off" if remat_policy(opts, config) is None else
        (opts.remat if opts.remat != "auto" else "full"),
        attention=resolve_attention(opts, param_dtype, seq), sampler_weights=mode,
        micro_batches=runtime.micro_batches(the_model, (rows, seq)),
        params_bytes_per_device=params_bytes, lora_bytes_per_device=lora_bytes,
        train_peak_bytes_per_device=int(train_peak),
        sample_peak_bytes_per_device=int(sample_peak), steps=steps)


def _layer_struct(stacked: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
    """One layer of a stacked parameter (what `decoder.unstack_layers` makes of it)."""
    sharding = stacked.sharding
    if isinstance(sharding, NamedSharding):
        spec = tuple(sharding.spec) + (None,) * (len(stacked.shape) - len(sharding.spec))
        sharding = NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec[1:]))
    return jax.ShapeDtypeStruct(stacked.shape[1:], stacked.dtype, sharding=sharding)


def _with_shardings(tree: Any, mesh: Mesh | None) -> Any:
    """Gives shape structs without a sharding a replicated one on `mesh`."""
    if mesh is None:
        return tree

    def fix(x: Any) -> Any:
        if isinstance(x, jax.ShapeDtypeStruct) and x.sharding is None:
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(
                mesh, jax.sharding.PartitionSpec()))
        return x

    return jax.tree.map(fix, tree)
