"""The `Backend` of the local server, built on the JAX model layer (`tinkex_jax.local.model`).

A thin adapter: base models come from ``resolve_base_model`` (presets or local Hugging Face
directories, loaded once and shared by every adapter), training goes through the jitted,
shape-bucketed runtime with a built-in loss from ``losses.BUILTIN_LOSSES``, sampling through
the KV-cache `Sampler`. The only computation added here is `logprob_table` (the full
next-token distribution over a sequence, for ``target_prompt_logprobs``, prompt alternative
tokens and top-k sampled logprobs), jitted per length bucket.

How the server runs on the hardware comes from its `ServerConfig` (`JaxBackend.from_config`):
the base dtype (``dtype``), the model layer's `RunOptions` (``remat``, ``attention``,
``token_budget``, ``sampler_weights``) and the device mesh (``mesh``: every visible device on
the ``fsdp`` axis when there are several, none on one device). Adapters are made on the base's
mesh, so training, the optimizer and samplers follow their sharding. JAX's persistent
compilation cache goes under the data directory unless ``JAX_COMPILATION_CACHE_DIR`` says
otherwise or the config turns it off (`configure_compilation_cache`).

Example:
    >>> backend = JaxBackend()
    >>> backend.topology()["devices"], backend.topology()["mesh"]
    (1, {'fsdp': 1, 'tp': 1})
    >>> backend.base_model("tinkex-jax/tiny").vocab_size
    259
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import invalid
from ..types import AdamParams
from ._backend import (
    AdapterSpec,
    BaseModelInfo,
    SampledRow,
    SampleJob,
    SampleOutcome,
    TrainItem,
    TrainResult,
)
from ._errors import UserError
from ._peft import write_peft_adapter
from .model import lora, runtime
from .model.config import LoraSpec
from .model.hf import LoadedModel
from .model.options import RunOptions, platform_of
from .model.sampler import Sampler
from .model.sharding import DATA_AXIS, TP_AXIS, make_mesh, mesh_shape, parse_mesh

if TYPE_CHECKING:
    from jax.sharding import Mesh

    from ._config import ServerConfig

__all__ = ["COMPILATION_CACHE_DIR", "JaxBackend", "Loader", "configure_compilation_cache",
           "run_options", "server_mesh"]

_log = logging.getLogger("tinkex_jax.local")

Loader = Callable[[str], LoadedModel]

COMPILATION_CACHE_DIR = "compilation-cache"
"""Folder of the data directory that holds JAX's persistent compilation cache by default."""


def _default_loader(name: str, *, dtype: Any = "auto",
                    options: RunOptions | None = None) -> LoadedModel:
    from .model.presets import resolve_base_model

    return resolve_base_model(name, dtype=dtype, options=options)


def server_mesh(spec: str | None, devices: Sequence[Any] | None = None) -> Mesh | None:
    """The device mesh a server runs on, from a ``--mesh`` spec.

    Args:
        spec: ``"fsdp=4,tp=2"``-style axis sizes (see `parse_mesh`), or None / ``""`` for
            the default: every device on the ``fsdp`` axis. A mesh of fewer devices than
            are visible uses the first ones.
        devices: The devices to use (default ``jax.devices()``).

    Returns:
        The mesh, or None when it would have one device (the unsharded code path).

    Raises:
        ValidationError: Bad axis sizes, or more devices than are visible.

    Example:
        >>> server_mesh(None) is None, server_mesh("fsdp=1,tp=1") is None  # one CPU device
        (True, True)
        >>> server_mesh("fsdp=2")
        Traceback (most recent call last):
        ...
        tinkex_jax.ValidationError: mesh: expected at most the 1 visible cpu device(s) (a CPU \
process started with XLA_FLAGS=--xla_force_host_platform_device_count=2 simulates 2), got \
{'fsdp': 2}. Fix: use fewer devices
    """
    devs = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh(spec or "")
    tp = sizes.get(TP_AXIS, 1)
    fsdp = sizes.get(DATA_AXIS)
    count = len(devs) if fsdp is None else fsdp * tp
    if count > len(devs):
        platform = devs[0].platform if devs else "?"
        raise invalid("mesh", f"at most the {len(devs)} visible {platform} device(s) (a CPU "
                      f"process started with XLA_FLAGS=--xla_force_host_platform_device_count="
                      f"{count} simulates {count})", sizes, "use fewer devices")
    if count == 1:
        return None
    return make_mesh(None if fsdp is None else fsdp, tp, devs[:count])


def run_options(config: ServerConfig) -> RunOptions:
    """The model layer's `RunOptions` for a server's settings (its mesh: `server_mesh`).

    Example:
        >>> from tinkex_jax.local import ServerConfig
        >>> run_options(ServerConfig(data_dir=Path("unused"), remat="off")).remat
        'off'
    """
    return RunOptions(remat=config.remat,  # type: ignore[arg-type]
                      attention=config.attention,  # type: ignore[arg-type]
                      token_budget=config.token_budget,
                      sampler_weights=config.sampler_weights,  # type: ignore[arg-type]
                      mesh=server_mesh(config.mesh))


def configure_compilation_cache(config: ServerConfig) -> str | None:
    """Point JAX's persistent compilation cache where the server's settings say.

    ``config.compilation_cache``: None (the default) means ``$JAX_COMPILATION_CACHE_DIR``
    when it is set, else ``<data_dir>/compilation-cache``; ``"off"`` turns the cache off;
    anything else is a directory. Compiled programs then survive restarts (a real model's
    training step can take minutes to compile). Process-wide: the last server started
    decides.

    Returns:
        The cache directory in use, or None when off.

    Example:
        >>> import tempfile
        >>> from tinkex_jax.local import ServerConfig
        >>> cfg = ServerConfig(data_dir=Path(tempfile.mkdtemp()), compilation_cache="off")
        >>> configure_compilation_cache(cfg) is None
        True
    """
    setting = config.compilation_cache
    if setting == "off":
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    jax.config.update("jax_enable_compilation_cache", True)
    env = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if setting is None and env:
        path = Path(env)
    else:
        path = (Path(setting).expanduser() if setting is not None
                else config.data_dir / COMPILATION_CACHE_DIR)
    path.mkdir(parents=True, exist_ok=True)
    if getattr(jax.config, "jax_compilation_cache_dir", None) != str(path):
        from jax.experimental.compilation_cache import compilation_cache

        jax.config.update("jax_compilation_cache_dir", str(path))
        compilation_cache.reset_cache()  # the next compile opens the cache at `path`
    return str(path)


class JaxBackend:
    """Array work of the local server on the JAX model layer.

    Args:
        loader: Loads a base model by name or path (default: the model layer's
            ``resolve_base_model``: presets and local Hugging Face directories, in `dtype`
            with `options`).
        buckets: Shape buckets of the training runtime and the sampler.
        dtype: Base-parameter dtype of the default loader: ``"auto"`` (float32 on CPU, the
            checkpoint's elsewhere), ``"checkpoint"``, ``"float32"``, ``"bfloat16"``,
            ``"float16"``.
        options: `RunOptions` of the default loader (remat, attention, micro-batching,
            sampler weights, mesh); default: the model layer's defaults on one device.
    """

    def __init__(self, loader: Loader | None = None,
                 buckets: runtime.Buckets = runtime.DEFAULT_BUCKETS, *,
                 dtype: str = "auto", options: RunOptions | None = None) -> None:
        self.options = options if options is not None else RunOptions()
        self.dtype = dtype
        self._loader = loader or functools.partial(_default_loader, dtype=dtype,
                                                   options=self.options)
        self._buckets = buckets
        self._lock = threading.Lock()
        self._loaded: dict[str, LoadedModel] = {}
        self._base_samplers: dict[str, Sampler] = {}

    @classmethod
    def from_config(cls, config: ServerConfig) -> JaxBackend:
        """The backend a server with these settings runs: dtype, `run_options` (mesh
        included) and the compilation cache (`configure_compilation_cache`).

        Raises:
            ValidationError: A mesh that does not fit the visible devices.

        Example:
            >>> import tempfile
            >>> from tinkex_jax.local import ServerConfig
            >>> cfg = ServerConfig(data_dir=Path(tempfile.mkdtemp()), dtype="float32",
            ...                    remat="full")
            >>> backend = JaxBackend.from_config(cfg)
            >>> backend.dtype, backend.options.remat, backend.options.mesh is None
            ('float32', 'full', True)
        """
        options = run_options(config)
        cache = configure_compilation_cache(config)
        backend = cls(dtype=config.dtype, options=options)
        top = backend.topology()
        _log.info("model layer: %d %s device(s), mesh %s, dtype %s, compilation cache %s",
                  top["devices"], top["platform"],
                  ",".join(f"{k}={v}" for k, v in top["mesh"].items()), config.dtype,
                  cache or "off")
        return backend

    def topology(self) -> dict[str, Any]:
        """What ``healthz`` reports about the hardware: ``devices`` (how many the models run
        on), ``mesh`` (axis sizes) and ``platform``."""
        mesh = self.options.mesh
        return {"devices": 1 if mesh is None else int(mesh.size), "mesh": mesh_shape(mesh),
                "platform": platform_of(self.options)}

    # ------------------------------------------------------------------ base models

    def _load(self, name: str) -> LoadedModel:
        with self._lock:
            loaded = self._loaded.get(name)
        if loaded is None:
            loaded = self._loader(name)
            with self._lock:
                loaded = self._loaded.setdefault(name, loaded)
        return loaded

    def _model(self, name: str) -> runtime.Model:
        return self._load(name).model

    def base_models(self) -> Sequence[BaseModelInfo]:
        """Info about every base model loaded so far."""
        with self._lock:
            names = list(self._loaded)
        return [self.base_model(n) for n in names]

    def base_model(self, name: str) -> BaseModelInfo:
        """Info about a base model (loads it on first use); KeyError if it cannot load."""
        try:
            loaded = self._load(name)
        except Exception as exc:
            raise KeyError(name) from exc
        cfg = loaded.config
        return BaseModelInfo(name=name, vocab_size=cfg.vocab_size,
                             max_context_length=cfg.max_seq_len, tokenizer_id=name,
                             arch=cfg.architecture, eos_token_ids=tuple(cfg.eos_token_ids),
                             num_params=cfg.num_params())

    def warm_up(self, name: str) -> None:
        """Load a base model."""
        self._load(name)

    # ------------------------------------------------------------------ training

    def init_adapter(self, base: str, spec: AdapterSpec) -> lora.Lora:
        """A fresh adapter for `base` (float32, on the base's mesh)."""
        model = self._model(base)
        return lora.init_lora(model.config, _lora_spec(spec), mesh=model.options.mesh)

    def init_optimizer(self, base: str, adapter: lora.Lora) -> Any:
        """Fresh AdamW state."""
        return runtime.init_optimizer(adapter)

    def forward_backward(self, base: str, adapter: lora.Lora, items: Sequence[TrainItem],
                         loss_fn: str, config: Mapping[str, float], *,
                         forward_only: bool) -> TrainResult:
        """Logprobs, per-token losses and (unless `forward_only`) the adapter gradient."""
        from losses import BUILTIN_LOSSES

        model = self._model(base)
        datums = [(item.tokens, {"target_tokens": item.targets, **item.inputs})
                  for item in items]
        batch, layout = runtime.make_batch(datums, buckets=self._buckets,
                                           max_seq_len=model.config.max_seq_len)
        per_token = BUILTIN_LOSSES[loss_fn].per_token
        grads = None
        if forward_only:
            out = runtime.forward(model, adapter, batch, per_token, config)
        else:
            out, grads = runtime.forward_backward(model, adapter, batch, per_token, config)
        split = runtime.split_outputs(out, layout)
        return TrainResult(logprobs=[d["logprobs"] for d in split],
                           losses=[d["elementwise_loss"] for d in split], grads=grads)

    def accumulate(self, total: Any, grads: Any) -> Any:
        """Sum of gradients (donates `total`)."""
        return runtime.accumulate(total, grads)

    def optim_step(self, base: str, adapter: lora.Lora, opt_state: Any, grads: Any,
                   params: AdamParams) -> tuple[lora.Lora, Any, dict[str, float]]:
        """One AdamW step; metrics as ``<name>:mean``."""
        if grads is None:
            grads = jax.tree.map(jnp.zeros_like, adapter)
        hp = {"learning_rate": params.learning_rate, "beta1": params.beta1,
              "beta2": params.beta2, "eps": params.eps, "weight_decay": params.weight_decay,
              "grad_clip_norm": params.grad_clip_norm}
        new, state, metrics = runtime.optim_step(adapter, opt_state, grads, hp)
        host = jax.device_get(metrics)
        return new, state, {f"{k}:mean": float(v) for k, v in host.items()}

    # ------------------------------------------------------------------ sampling

    def sampling_handle(self, base: str, adapter: lora.Lora | None) -> Sampler:
        """A `Sampler` over the base with the adapter merged in (a snapshot)."""
        if adapter is None:
            with self._lock:
                cached = self._base_samplers.get(base)
            if cached is not None:
                return cached
        sampler = Sampler(self._model(base), adapter, buckets=self._buckets,
                          tokenizer=self._load(base).tokenizer)
        if adapter is None:
            with self._lock:
                sampler = self._base_samplers.setdefault(base, sampler)
        return sampler

    def sample(self, handle: Sampler, job: SampleJob, *, prompt_logprobs: bool,
               topk_prompt: int) -> SampleOutcome:
        """Generate and (when asked) score the prompt."""
        if job.stop_strings and handle.tokenizer is None:
            raise UserError("Stop strings need a tokenizer, and this base model has none "
                            "(no tokenizer.json). Fix: stop on token ids instead.")
        res = handle.sample(
            job.prompt.tolist(), num_samples=job.num_samples, max_tokens=job.max_tokens,
            temperature=job.temperature, top_k=job.top_k, top_p=job.top_p, seed=job.seed,
            stop_token_ids=job.stop_tokens, stop_strings=job.stop_strings,
            prompt_logprobs=prompt_logprobs, topk_prompt_logprobs=topk_prompt)
        rows = [SampledRow(tokens=np.asarray(s.tokens, np.int32),
                           logprobs=np.asarray(s.logprobs, np.float32),
                           stop_reason=s.stop_reason) for s in res.sequences]
        plp = None if res.prompt_logprobs is None else np.asarray(res.prompt_logprobs,
                                                                   np.float32)
        topk = None
        if res.topk_prompt_logprobs is not None and topk_prompt:
            P = len(res.topk_prompt_logprobs)
            ids = np.zeros((P, topk_prompt), np.int32)
            vals = np.full((P, topk_prompt), -99999.0, np.float32)
            for i, pairs in enumerate(res.topk_prompt_logprobs):
                for j, (t, v) in enumerate((pairs or [])[:topk_prompt]):
                    ids[i, j], vals[i, j] = t, v
            topk = (ids, vals)
        return SampleOutcome(rows=rows, prompt_logprobs=plp, topk_prompt=topk)

    def logprob_table(self, handle: Sampler, tokens: np.ndarray) -> np.ndarray:
        """Next-token log-softmax after every position of `tokens`: ``[T, V]`` (the
        sampler's own computation, whatever way it holds its weights)."""
        return handle.logprob_table(tokens)

    # ------------------------------------------------------------------ (de)serialisation

    def adapter_to_arrays(self, adapter: lora.Lora) -> dict[str, np.ndarray]:
        """Flat host arrays (copies)."""
        return {k: np.array(v) for k, v in lora.lora_to_arrays(adapter).items()}

    def adapter_from_arrays(self, base: str, spec: AdapterSpec,
                            arrays: Mapping[str, np.ndarray]) -> lora.Lora:
        """An adapter from flat arrays, shape-checked against the base (on its mesh)."""
        model = self._model(base)
        return lora.lora_from_arrays(arrays, scale=_lora_spec(spec).scale,
                                     config=model.config, mesh=model.options.mesh)

    def optimizer_to_arrays(self, opt_state: Any) -> dict[str, np.ndarray]:
        """Flat host arrays of the optimizer state (copies)."""
        return {k: np.array(v) for k, v in runtime.optimizer_state_to_arrays(opt_state).items()}

    def optimizer_from_arrays(self, base: str, adapter: lora.Lora,
                              arrays: Mapping[str, np.ndarray]) -> Any:
        """Optimizer state from flat arrays."""
        return runtime.optimizer_state_from_arrays(arrays, adapter)

    def export_hf(self, base: str, spec: AdapterSpec, adapter: lora.Lora, out_dir: Path
                  ) -> None:
        """The adapter in PEFT format."""
        write_peft_adapter(Path(out_dir), base, spec.rank, spec.alpha,
                           self.adapter_to_arrays(adapter))


def _lora_spec(spec: AdapterSpec) -> LoraSpec:
    return LoraSpec(rank=spec.rank, seed=spec.seed, alpha=spec.alpha,
                    train_attn=spec.train_attn, train_mlp=spec.train_mlp,
                    train_unembed=spec.train_unembed)

