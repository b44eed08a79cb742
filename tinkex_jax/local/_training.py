"""Training models: create / unload, forward_backward, optim_step, and the live-model registry.

Each training model is a LoRA adapter over a base model with its AdamW state and the
running sum of its gradients, served in its own lane of the `Core` scheduler:

* **Validation first.** A request is checked against its model (token ids, lengths, loss
  inputs, stability records for provenance losses) when it is submitted. A bad one gets a
  4xx answer and is never queued, so it cannot change weights, gradients or optimizer state.
* **Accumulation.** forward_backward adds its adapter gradient to the model's running sum
  (chunks of one call may arrive in any order; their gradients simply add up); optim_step
  applies the sum with AdamW and clears it.
* **Corruption.** `Training.corrupt_run` marks a run as a hosted server does when its state
  is lost: only loading a checkpoint into it is accepted until then.

A training model belongs to the owner whose request created it (its run row's ``owner``);
every request naming it for another owner is answered 404, before its dedup key is looked
at, so no one learns another owner's request ids.

`submit_op` and `submit_new_model` are the two request shapes (an operation on a live
model; a new model) that `_weights` and `_sampling` reuse for saving and loading.

This module is the only place that creates, mutates or forgets a `LiveModel`; model state
changes only inside the model's lane. It never touches HTTP and never blocks the event loop.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..builders import LOSS_SPECS, training_model_id
from ..types import (
    CreateModelRequest,
    ForwardBackwardRequest,
    OptimStepRequest,
    UnloadModelRequest,
)
from ..wire import encode_forward_backward_output
from ._backend import AdapterSpec
from ._convert import forward_backward_output, training_items
from ._core import Core, Json, Key, json_payload
from ._errors import NotFoundError, UserError
from ._futures import PROTOBUF, Payload
from ._stability import StabilityRecords, stability_metrics
from ._storage import RunRow, may_use

__all__ = ["LiveModel", "Training"]


@dataclass
class LiveModel:
    """A live training model: an adapter over a base, its optimizer and pending gradient."""

    model_id: str
    run: RunRow
    spec: AdapterSpec
    lane: str
    adapter: Any = None
    opt_state: Any = None
    grads: Any = None
    accumulated: int = 0
    step: int = 0
    ready: bool = False
    failed: str | None = None
    corrupted: str | None = None


class Training:
    """The training models of one engine.

    Args:
        core: Dedup, futures, lanes.
        stability: Sampled sequences' records, resolved for losses that need provenance.
    """

    def __init__(self, core: Core, stability: StabilityRecords) -> None:
        self.core = core
        self.stability = stability
        self._models: dict[str, LiveModel] = {}

    # ------------------------------------------------------------------ registry

    def model(self, model_id: str, owner: str | None = None) -> LiveModel:
        """The live model `model_id` of `owner`, or a `NotFoundError` saying why there is
        none."""
        with self.core.lock:
            model = self._models.get(model_id)
        if model is not None and may_use(model.run.owner, owner):
            return model
        run = self.core.storage.get_run(model_id) if model is None else None
        if run is not None and may_use(run.owner, owner):
            raise NotFoundError(
                f"Training model {model_id!r} is not loaded: the local server restarted (or "
                "its session finished) since it was created. Fix: continue from its last "
                "checkpoint with ServiceClient.create_training_client_from_state(path).")
        raise NotFoundError(
            f"Unknown model_id {model_id!r}. Fix: use the id of a training client created on "
            "this server (create_lora_training_client / create_training_client_from_state).")

    def check_owner(self, model_id: str, owner: str | None) -> None:
        """Raise the standard 404 unless `owner` may use training run `model_id` (live or
        not); `owner` None passes."""
        if owner is None:
            return
        with self.core.lock:
            model = self._models.get(model_id)
        run = model.run if model is not None else self.core.storage.get_run(model_id)
        if run is None or not may_use(run.owner, owner):
            self.model(model_id, owner)  # raises the 404

    def is_loaded(self, model_id: str) -> bool:
        """Whether `model_id` is a live model (not yet unloaded or freed)."""
        with self.core.lock:
            return model_id in self._models

    def release_session(self, session_id: str) -> None:
        """Free the session's models, each in its own lane (after its queued requests)."""
        with self.core.lock:
            gone = [m for m in self._models.values() if m.run.session_id == session_id]
        for model in gone:
            self.core.scheduler.submit(model.lane, functools.partial(self._forget, model))

    def _forget(self, model: LiveModel) -> None:
        with self.core.lock:
            if self._models.get(model.model_id) is model:
                del self._models[model.model_id]

    def _register(self, model_id: str, session_id: str, model_seq_id: int, base: str,
                  spec: AdapterSpec, metadata: Mapping[str, Any] | None,
                  owner: str | None) -> LiveModel:
        storage = self.core.storage
        self.core.session(session_id, owner, live=True)
        with self.core.lock:
            if model_id in self._models:
                raise UserError(
                    f"model_seq_id {model_seq_id} of session {session_id!r} already names "
                    f"model {model_id!r}. Fix: use the next model_seq_id (clients count them).")
            now = storage.now()
            run = RunRow(run_id=model_id, session_id=session_id, model_seq_id=model_seq_id,
                         base_model=base, lora_rank=spec.rank, lora_seed=spec.seed,
                         lora_alpha=spec.alpha, train_attn=spec.train_attn,
                         train_mlp=spec.train_mlp, train_unembed=spec.train_unembed,
                         created_at=now, last_request_time=now,
                         user_metadata=dict(metadata or {}), owner=owner or "local")
            storage.create_run(run)
            model = LiveModel(model_id=model_id, run=run, spec=spec, lane=f"model:{model_id}")
            self._models[model_id] = model
            return model

    def _ready(self, model: LiveModel, *, restoring: bool) -> None:
        """Raise unless `model` can take a request (a corrupted one only a state load)."""
        if model.failed is not None:
            raise UserError(f"Model {model.model_id!r} could not be created: {model.failed}")
        with self.core.lock:
            if self._models.get(model.model_id) is not model:
                raise NotFoundError(f"Model {model.model_id!r} was unloaded (its session "
                                    "finished). Fix: create a new training client.")
        if model.corrupted is not None and not restoring:
            raise UserError(
                f"Training run {model.model_id!r} is corrupted ({model.corrupted}); nothing was "
                "done. Fix: restore a checkpoint saved before the corruption, in place with "
                "load_state_with_optimizer(path) or as a new client with "
                "create_training_client_from_state_with_optimizer(path) "
                "(tinkex_jax.checkpointing.recover does this from your checkpoint log).")

    # ------------------------------------------------------------------ request shapes

    def new_model_key(self, session_id: str, model_seq_id: int, body_fp: bytes,
                      owner: str | None = None) -> tuple[Key, Json | None]:
        """The dedup key of a model creation in a session of `owner` and the earlier answer
        to it, if any."""
        self.core.session(session_id, owner)
        key = ("model_seq", session_id, str(model_seq_id))
        return key, self.core.seen(key, body_fp, f"model_seq_id {model_seq_id} of session "
                                   f"{session_id!r}")

    def submit_new_model(self, kind: str, key: Key, body_fp: bytes, *, session_id: str,
                         model_seq_id: int, base: str, spec: AdapterSpec,
                         metadata: Mapping[str, Any] | None,
                         init: Callable[[], tuple[Any, Any]], step: int,
                         answer: Json, owner: str | None = None) -> Json:
        """Register a new model of `owner` and queue its initialisation (`init` returns the
        adapter and the optimizer state) in its lane; a failed `init` fails every later
        request."""
        model_id = training_model_id(session_id, model_seq_id)
        model = self._register(model_id, session_id, model_seq_id, base, spec, metadata, owner)

        def work() -> Payload:
            try:
                adapter, opt_state = init()
            except Exception as exc:
                model.failed = str(exc)
                raise
            model.adapter, model.opt_state, model.ready = adapter, opt_state, True
            model.step = step
            return json_payload(answer)

        return self.core.submit(kind, model.lane, key, body_fp, work, {"model_id": model_id},
                                owner=owner)

    def submit_op(self, kind: str, model_id: str, seq_id: int | None, body_fp: bytes,
                  prepare: Callable[[LiveModel], Callable[[], Payload]], *,
                  owner: str | None = None, restoring: bool = False,
                  touch: bool = False) -> Json:
        """An operation on a live model of `owner`, in its lane: dedup by ``(model_id,
        seq_id)``, then ``prepare(model)`` validates (raising before anything is queued) and
        returns the work.

        Args:
            owner: Who asks (None: the server itself); another owner's model is a 404.
            restoring: The work loads a checkpoint (allowed on a corrupted run).
            touch: Record the request time on the run (training requests).
        """
        self.check_owner(model_id, owner)
        key = ("model", model_id, str(seq_id))
        seen = self.core.seen(key, body_fp, f"seq_id {seq_id} of model {model_id!r}")
        if seen is not None:
            return seen
        model = self.model(model_id, owner)
        work = prepare(model)

        def run() -> Payload:
            self._ready(model, restoring=restoring)
            return work()

        if touch:
            self.core.storage.touch_run(model_id)
        return self.core.submit(kind, model.lane, key, body_fp, run, {"model_id": model_id},
                                owner=owner)

    # ------------------------------------------------------------------ models

    def submit_create_model(self, req: CreateModelRequest, body_fp: bytes,
                            owner: str | None = None) -> Json:
        """``create_model``: a new LoRA adapter on a base model, in a session of `owner`."""
        key, seen = self.new_model_key(req.session_id, req.model_seq_id, body_fp, owner)
        if seen is not None:
            return seen
        self.core.base(req.base_model)
        if req.optimizer_config is not None and type(req.optimizer_config).__name__ != (
                "AdamOptimizerConfig"):
            raise UserError("The local backend supports only the AdamW optimizer. Fix: omit "
                            "optimizer_config or pass {'type': 'adamw'}.")
        lora = req.lora_config
        rank = lora.rank if lora is not None else 32
        seed = (lora.seed if lora is not None and lora.seed is not None
                else self.core.effects.random_bits(32))
        spec = AdapterSpec(rank=rank, seed=int(seed) % (2**31),
                           train_attn=lora.train_attn if lora else True,
                           train_mlp=lora.train_mlp if lora else True,
                           train_unembed=lora.train_unembed if lora else True)
        backend = self.core.backend

        def init() -> tuple[Any, Any]:
            adapter = backend.init_adapter(req.base_model, spec)
            return adapter, backend.init_optimizer(req.base_model, adapter)

        model_id = training_model_id(req.session_id, req.model_seq_id)
        return self.submit_new_model(
            "CreateModel", key, body_fp, session_id=req.session_id,
            model_seq_id=req.model_seq_id, base=req.base_model, spec=spec,
            metadata=req.user_metadata, init=init, step=0,
            answer={"model_id": model_id, "type": "create_model"}, owner=owner)

    def get_info(self, model_id: str, owner: str | None = None) -> Json:
        """``get_info``: the base model and LoRA settings of a training model."""
        self.check_owner(model_id, owner)
        with self.core.lock:
            model = self._models.get(model_id)
        run = model.run if model is not None else self.core.storage.get_run(model_id)
        if run is None:
            self.model(model_id, owner)  # raises the standard 404
            raise AssertionError("unreachable")
        info = self.core.base(run.base_model)
        return {
            "model_id": model_id,
            "model_data": {"arch": info.arch, "model_name": run.base_model,
                           "tokenizer_id": info.tokenizer_id},
            "model_name": run.base_model,
            "is_lora": True,
            "lora_rank": run.lora_rank,
            "optimizer_config": run.optimizer_config,
            "type": "get_info",
        }

    def submit_unload_model(self, req: UnloadModelRequest, body_fp: bytes,
                            owner: str | None = None) -> Json:
        """Legacy ``unload_model``: free a training model's memory."""
        model = self.model(req.model_id, owner)

        def work() -> Payload:
            self._forget(model)
            return json_payload({"model_id": req.model_id, "type": "unload_model"})

        return self.core.submit("UnloadModel", model.lane, None, body_fp, work,
                                {"model_id": req.model_id}, owner=owner)

    def corrupt_run(self, run_id: str, reason: str) -> None:
        """Mark a live training run corrupted, as a hosted server does when a run's state is
        lost: it refuses training and saving until a checkpoint is loaded into it, and the
        REST API reports ``corrupted: true``. A fault-injection hook for testing recovery
        code (`LocalServer.corrupt_run`).

        Raises:
            NotFoundError: no live model has this id.
        """
        model = self.model(run_id)
        model.corrupted = reason
        self.core.storage.mark_run_corrupted(run_id, reason)

    # ------------------------------------------------------------------ training

    def submit_forward_backward(self, req: ForwardBackwardRequest, body_fp: bytes,
                                owner: str | None = None) -> Json:
        """``forward_backward`` / forward: validate, then queue in the model's lane."""

        def prepare(model: LiveModel) -> Callable[[], Payload]:
            items, loss_config = training_items(
                req, self.core.base(model.run.base_model),
                max_width=self.core.config.max_logprobs_topk)
            derived: list[dict[str, np.ndarray]] | None = None
            if LOSS_SPECS[req.loss_fn].needs_provenance:  # checked in full before it runs
                derived = self.stability.resolve(model.run.session_id, req.data)
                items = [dataclasses.replace(item, inputs={**item.inputs, **extra})
                         for item, extra in zip(items, derived)]
            backend = self.core.backend

            def work() -> Payload:
                result = backend.forward_backward(
                    model.run.base_model, model.adapter, items, req.loss_fn, loss_config,
                    forward_only=req.forward_only)
                if not req.forward_only:
                    model.grads = backend.accumulate(model.grads, result.grads)
                    model.accumulated += len(items)
                extra = (None if derived is None
                         else stability_metrics(derived, result.logprobs, loss_config))
                output = forward_backward_output(result, items, extra)
                return Payload(encode_forward_backward_output(output), PROTOBUF)

            return work

        kind = "Forward" if req.forward_only else "ForwardBackward"
        return self.submit_op(kind, req.model_id, req.seq_id, body_fp, prepare, owner=owner,
                              touch=True)

    def submit_optim_step(self, req: OptimStepRequest, body_fp: bytes,
                          owner: str | None = None) -> Json:
        """``optim_step``: apply the accumulated gradient with AdamW."""

        def prepare(model: LiveModel) -> Callable[[], Payload]:
            if req.adam_params is None:
                raise UserError("The local backend supports only AdamW. Fix: call optim_step "
                                "with AdamParams(...).")
            params = req.adam_params

            def work() -> Payload:
                adapter, opt_state, metrics = self.core.backend.optim_step(
                    model.run.base_model, model.adapter, model.opt_state, model.grads, params)
                # a step with non-finite norms came back unchanged (the Backend contract);
                # the accumulated gradient is consumed either way
                datums = model.accumulated
                model.adapter, model.opt_state = adapter, opt_state
                model.grads, model.accumulated = None, 0
                non_finite = {k: v for k, v in metrics.items() if not math.isfinite(v)}
                if non_finite:
                    raise UserError(
                        f"optim_step on {model.model_id!r} produced non-finite values "
                        f"({', '.join(f'{k}={v}' for k, v in sorted(non_finite.items()))}) "
                        f"with learning_rate={params.learning_rate}; the update and the "
                        "accumulated gradient were discarded, the weights are those of the "
                        "previous step. Fix: lower the learning rate, set grad_clip_norm, or "
                        "check the loss and its inputs for inf / NaN.")
                metrics = {**metrics, "num_datums:sum": float(datums)}
                model.step += 1
                return json_payload({"metrics": metrics})

            return work

        return self.submit_op("OptimStep", req.model_id, req.seq_id, body_fp, prepare,
                              owner=owner, touch=True)
