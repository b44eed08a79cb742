"""The `Backend` of the local server, built on the JAX model layer (`tinkex_jax.local.model`).

A thin adapter: base models come from ``resolve_base_model`` (presets or local Hugging Face
directories, loaded once and shared by every adapter), training goes through the jitted,
shape-bucketed runtime with a built-in loss from ``losses.BUILTIN_LOSSES``, sampling through
the KV-cache `Sampler`. The only computation added here is `logprob_table` (the full
next-token distribution over a sequence, for ``target_prompt_logprobs``, prompt alternative
tokens and top-k sampled logprobs), jitted per length bucket.

Example:
    >>> backend = JaxBackend()                       # doctest: +SKIP
    >>> backend.base_model("tinkex-jax/tiny").vocab_size  # doctest: +SKIP
    259
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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
from .model.sampler import Sampler

__all__ = ["JaxBackend", "Loader"]

Loader = Callable[[str], LoadedModel]


def _default_loader(name: str) -> LoadedModel:
    from .model.presets import resolve_base_model

    return resolve_base_model(name)


class JaxBackend:
    """Array work of the local server on the JAX model layer.

    Args:
        loader: Loads a base model by name or path (default: the model layer's
            ``resolve_base_model``: presets and local Hugging Face directories).
        buckets: Shape buckets of the training runtime and the sampler.
    """

    def __init__(self, loader: Loader | None = None,
                 buckets: runtime.Buckets = runtime.DEFAULT_BUCKETS) -> None:
        self._loader = loader or _default_loader
        self._buckets = buckets
        self._lock = threading.Lock()
        self._loaded: dict[str, LoadedModel] = {}
        self._base_samplers: dict[str, Sampler] = {}

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
        """A fresh adapter for `base`."""
        return lora.init_lora(self._model(base).config, _lora_spec(spec))

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
        """An adapter from flat arrays, shape-checked against the base."""
        return lora.lora_from_arrays(arrays, scale=_lora_spec(spec).scale,
                                     config=self._model(base).config)

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

