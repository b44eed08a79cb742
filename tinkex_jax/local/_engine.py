"""The engine: sessions, training models, samplers and checkpoints behind the HTTP routes.

How requests run:

* **Validation first.** Every request is decoded into the wire types (which validate
  themselves) and checked against its model (token ids, lengths, loss inputs) when it is
  submitted. A bad request gets a 4xx answer with a message and is never queued, so it
  cannot change adapter weights, accumulated gradients or optimizer state.
* **Dedup.** Accepted requests are remembered by their client-chosen key:
  ``(model_id, seq_id)`` for training operations, ``(sampling_session_id, seq_id)`` for
  samples, ``(session_id, model_seq_id)`` and ``(session_id, sampling_session_seq_id)`` for
  creations. A resubmission with the same body gets the original answer (the same
  ``request_id``); one with a different body is rejected.
* **Ordering.** Each training model is a lane of the `Scheduler`: its requests run one at
  a time in arrival order, which the client's turn-taking makes program order. Chunks of one
  forward_backward call may arrive in any order; their gradients simply add up.
* **Accumulation.** forward_backward adds its adapter gradient to the model's running sum;
  optim_step applies the sum with AdamW and clears it. optim_step, save and load are
  barriers because they run in the lane.
* **Futures.** Each asynchronous request gets a ``request_id`` in the `FutureStore`;
  the lane task resolves it with an encoded payload or rejects it with a message.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import math
import os
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..builders import LOSS_SPECS, parse_tinker_path, tinker_path, training_model_id
from ..errors import ValidationError
from ..types import (
    CopyWeightsRequest,
    CreateModelRequest,
    CreateSamplingSessionRequest,
    CreateSessionRequest,
    FinishReason,
    ForwardBackwardRequest,
    LoadWeightsRequest,
    OptimStepRequest,
    ParsedCheckpointTinkerPath,
    SampleRequest,
    SaveWeightsExternalRequest,
    SaveWeightsForSamplerRequest,
    SaveWeightsRequest,
    SessionFinishRequest,
    UnloadModelRequest,
)
from ..wire import encode_forward_backward_output, encode_json, encode_sample_response
from ._backend import AdapterSpec, Backend, BaseModelInfo
from ._checkpoints import (
    META_FILE,
    CheckpointMeta,
    read_checkpoint,
    read_meta,
    write_checkpoint,
    write_meta,
)
from ._config import ServerConfig
from ._convert import (
    forward_backward_output,
    needs_prompt_table,
    sample_job,
    sample_response,
    training_items,
)
from ._errors import (
    ConflictError,
    GoneError,
    NotFoundError,
    SamplingBackpressureError,
    ServerError,
    UserError,
)
from ._futures import JSON, PROTOBUF, FutureStore, Outcome, Payload
from ._rest import checkpoint_json, iso_time, session_json, training_run_json
from ._scheduler import Scheduler
from ._stability import (
    SequenceRecord,
    StabilityRecords,
    stability_metrics,
    with_logprob_noise,
)
from ._storage import CheckpointRow, RunRow, SamplerRow, SessionRow, Storage

__all__ = ["Engine"]

_log = logging.getLogger("tinkex_jax.local")

Json = dict[str, Any]


@dataclass
class _Model:
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


@dataclass
class _Sampler:
    """A live sampling session: its row and its adapter (None: the base model).

    The backend's prepared (merged) weights are built lazily on the worker and cached in a
    small LRU (`Engine._handle`), so thousands of per-step samplers do not each hold a
    merged copy of the model.
    """

    row: SamplerRow
    adapter: Any = None
    clones: int = 0


@dataclass
class _Seen:
    fingerprint: bytes
    response: Json


@dataclass
class _Dedup:
    """Remembered answers by client key; bounded (oldest forgotten first)."""

    limit: int = 200_000
    entries: dict[tuple[str, ...], _Seen] = field(default_factory=dict)

    def get(self, key: tuple[str, ...], fingerprint: bytes, what: str) -> Json | None:
        seen = self.entries.get(key)
        if seen is None:
            return None
        if seen.fingerprint != fingerprint:
            raise UserError(
                f"{what} was already used by a different request (the server keeps the first "
                "one and answered it). Fix: give every request a fresh seq_id; clients do "
                "this for you unless two clients share one id.")
        return seen.response

    def put(self, key: tuple[str, ...], fingerprint: bytes, response: Json) -> None:
        self.entries[key] = _Seen(fingerprint, response)
        if len(self.entries) > self.limit:
            for old in list(self.entries)[: len(self.entries) - self.limit]:
                del self.entries[old]


def fingerprint(body: bytes) -> bytes:
    """A short digest of a request body, to tell a retry from a different request.

    Example:
        >>> fingerprint(b"a") == fingerprint(b"a"), fingerprint(b"a") == fingerprint(b"b")
        (True, False)
    """
    return hashlib.blake2b(body, digest_size=16).digest()


def _json(obj: Any) -> Payload:
    return Payload(encode_json(obj), JSON)


class Engine:
    """The local backend's state and operations (transport-free; see the module docstring).

    Args:
        config: Server settings.
        backend: The array work (the JAX model layer, or a test fake).
        storage: Durable state; opened from ``config.data_dir`` when omitted.
    """

    def __init__(self, config: ServerConfig, backend: Backend,
                 storage: Storage | None = None) -> None:
        self.config = config
        self.backend = backend
        self.storage = storage if storage is not None else Storage(config.data_dir)
        self.futures = FutureStore(retention_s=config.result_retention_s,
                                   max_results=config.max_retained_results)
        self.scheduler = Scheduler(workers=config.compute_workers)
        self._lock = threading.RLock()
        self._models: dict[str, _Model] = {}
        self._samplers: OrderedDict[str, _Sampler] = OrderedDict()
        self._handles: OrderedDict[int, tuple[_Sampler, Any]] = OrderedDict()
        self._dedup = _Dedup()
        self.stability = StabilityRecords(ttl_s=config.stability_record_ttl_s,
                                          max_tokens=config.stability_max_tokens,
                                          clock=self.storage.now)
        self._evicted: set[str] = set()
        self._started = False
        self.pending_samples = 0  # asample requests queued or running
        self.sample_backpressure_answers = 0  # 429s sent (ServerConfig.max_pending_samples)

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Start the compute workers and, if configured, load the base models."""
        self.scheduler.start()
        self._started = True
        if self.config.warm_up:
            for name in self.config.base_models:
                try:
                    self.backend.warm_up(name)
                except Exception as exc:  # serve the other models; this one errors on use
                    _log.warning("base model %s is unavailable: %s", name, exc)

    def stop(self) -> None:
        """Stop the workers and close storage."""
        self.scheduler.stop()
        self.storage.close()

    def reap(self) -> int:
        """Delete expired checkpoints and forgotten results, finish sessions idle for longer
        than ``session_idle_timeout_s``; returns the number of checkpoints deleted."""
        self.futures.collect()
        self.stability.collect()
        timeout = self.config.session_idle_timeout_s
        if timeout is not None:
            for session_id in self.storage.idle_sessions(self.storage.now() - timeout):
                _log.info("finishing session %s: no heartbeat for %.0f s", session_id, timeout)
                self.finish_session(session_id, SessionFinishRequest(
                    reason=FinishReason(type="interrupted"),
                    detail=f"no heartbeat for {timeout:.0f} s"))
        return self.storage.reap_expired()

    # ------------------------------------------------------------------ helpers

    def _base(self, name: str) -> BaseModelInfo:
        if name not in self.config.base_models:
            raise UserError(
                f"Unknown base model {name!r}. This local server offers "
                f"{list(self.config.base_models)}. Fix: pass one of them as base_model (start "
                "the server with --base-model to offer others).")
        try:
            return self.backend.base_model(name)
        except KeyError as exc:
            cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
            raise UserError(f"Base model {name!r} could not be loaded by the local "
                            f"backend{cause}") from None

    def _model(self, model_id: str) -> _Model:
        with self._lock:
            model = self._models.get(model_id)
        if model is not None:
            return model
        if self.storage.get_run(model_id) is not None:
            raise NotFoundError(
                f"Training model {model_id!r} is not loaded: the local server restarted (or "
                "its session finished) since it was created. Fix: continue from its last "
                "checkpoint with ServiceClient.create_training_client_from_state(path).")
        raise NotFoundError(
            f"Unknown model_id {model_id!r}. Fix: use the id of a training client created on "
            "this server (create_lora_training_client / create_training_client_from_state).")

    def _submit(self, kind: str, lane: str, key: tuple[str, ...] | None, body_fp: bytes,
                work: Callable[[], Payload], extra: Json | None = None) -> Json:
        """Queue `work` in `lane` behind a new future; returns the future's JSON."""
        with self._lock:
            request_id = self.futures.create(kind)
            response: Json = {"request_id": request_id, **(extra or {})}
            if key is not None:
                self._dedup.put(key, body_fp, response)

        def run() -> None:
            try:
                payload = work()
            except ServerError as exc:
                self.futures.reject(request_id, exc.message, exc.category)
            except ValidationError as exc:
                self.futures.reject(request_id, str(exc), "user")
            except Exception as exc:
                _log.exception("%s request %s failed", kind, request_id)
                self.futures.reject(
                    request_id, f"The local backend failed on this {kind} request "
                    f"({type(exc).__name__}: {exc}). This is a bug; please report it.",
                    "server")
            else:
                self.futures.resolve(request_id, payload)

        self.scheduler.submit(lane, run)
        return response

    def _seen(self, key: tuple[str, ...], body_fp: bytes, what: str) -> Json | None:
        with self._lock:
            return self._dedup.get(key, body_fp, what)

    def _ensure_session(self, session_id: str) -> None:
        if self.storage.get_session(session_id) is None:
            now = self.storage.now()
            self.storage.create_session(SessionRow(session_id=session_id, created_at=now,
                                                   last_seen=now))

    # ------------------------------------------------------------------ service

    def client_config(self) -> Json:
        """The ``client/config`` answer."""
        return {
            "pjwt_auth_enabled": self.config.pjwt_auth_enabled,
            "credential_default_source": "api_key",
            "use_pyqwest_transport": self.config.use_pyqwest_transport,
            "proto_compress_fwdbwd": self.config.proto_compress_fwdbwd,
            "parallel_fwdbwd_chunks": True,
            "fwdbwd_max_chunk_len": self.config.fwdbwd_max_chunk_len,
            "sample_use_retrieve_futures": False,
            "custom_loss_server_side": False,
            "sample_join_sampling_session": False,
        }

    @staticmethod
    def dynamic_config() -> Json:
        """The ``client/dynamic_config`` answer."""
        return {"refresh_interval_sec": 300.0, "sample_cancel_enabled": False,
                "sample_cancel_max_batch_size": 64}

    def capabilities(self) -> Json:
        """The ``get_server_capabilities`` answer."""
        models = []
        for name in self.config.base_models:
            try:
                info = self.backend.base_model(name)
            except KeyError:
                continue  # listed only once it can be loaded
            models.append({"model_name": name, "max_context_length": info.max_context_length,
                           "trainable": True, "sampleable": True})
        return {"supported_models": models}

    # ------------------------------------------------------------------ sessions

    def create_session(self, req: CreateSessionRequest) -> Json:
        """Create a session and return its id."""
        now = self.storage.now()
        session_id = f"sess-{uuid.uuid4().hex[:20]}"
        self.storage.create_session(SessionRow(
            session_id=session_id, created_at=now, last_seen=now, tags=list(req.tags),
            user_metadata=dict(req.user_metadata), sdk_version=req.sdk_version,
            project_id=req.project_id, display_name=req.display_name))
        return {"session_id": session_id, "type": "create_session"}

    def heartbeat(self, session_id: str) -> Json:
        """Record a heartbeat (unknown sessions are tolerated; finished ones get 410)."""
        session = self.storage.get_session(session_id)
        if session is not None and session.finished_at is not None:
            raise GoneError(
                f"Session {session_id!r} is finished ({session.finish_reason}"
                f"{': ' + session.finish_detail if session.finish_detail else ''}). Fix: "
                "create a new ServiceClient; resume training from a checkpoint.")
        self.storage.touch_session(session_id)
        return {"type": "session_heartbeat"}

    def finish_session(self, session_id: str, req: SessionFinishRequest) -> Json:
        """Mark a session finished (first reason wins) and free its training models."""
        self._ensure_session(session_id)
        self.storage.finish_session(session_id, req.reason.type, req.detail)
        with self._lock:
            gone = [m for m in self._models.values() if m.run.session_id == session_id]
        for model in gone:
            self.scheduler.submit(model.lane, functools.partial(self._forget, model))
        return {"status": "finished", "session_id": session_id}

    def _forget(self, model: _Model) -> None:
        with self._lock:
            if self._models.get(model.model_id) is model:
                del self._models[model.model_id]

    def list_sessions(self, limit: int, offset: int) -> Json:
        """``GET sessions``: ids, newest first."""
        return {"sessions": [s.session_id for s in self.storage.list_sessions(limit, offset)]}

    def get_session(self, session_id: str) -> Json:
        """``GET sessions/{id}``."""
        session = self.storage.get_session(session_id)
        if session is None:
            raise NotFoundError(f"Unknown session {session_id!r}. Fix: list sessions with "
                                "RestClient.list_sessions().")
        return session_json(session, self.storage.runs_of_session(session_id),
                            self.storage.samplers_of_session(session_id))

    def set_session_project(self, session_id: str, project_id: str) -> Json:
        """``PUT sessions/{id}/project``."""
        self.get_session(session_id)
        self.storage.set_session_project(session_id, project_id)
        return {"session_id": session_id, "project_id": project_id}

    # ------------------------------------------------------------------ models

    def submit_create_model(self, req: CreateModelRequest, body_fp: bytes) -> Json:
        """``create_model``: a new LoRA adapter on a base model."""
        key = ("model_seq", req.session_id, str(req.model_seq_id))
        seen = self._seen(key, body_fp, f"model_seq_id {req.model_seq_id} of session "
                          f"{req.session_id!r}")
        if seen is not None:
            return seen
        self._base(req.base_model)
        if req.optimizer_config is not None and type(req.optimizer_config).__name__ != (
                "AdamOptimizerConfig"):
            raise UserError("The local backend supports only the AdamW optimizer. Fix: omit "
                            "optimizer_config or pass {'type': 'adamw'}.")
        lora = req.lora_config
        rank = lora.rank if lora is not None else 32
        seed = lora.seed if lora is not None and lora.seed is not None else int.from_bytes(
            os.urandom(4), "little")
        spec = AdapterSpec(rank=rank, seed=int(seed) % (2**31),
                           train_attn=lora.train_attn if lora else True,
                           train_mlp=lora.train_mlp if lora else True,
                           train_unembed=lora.train_unembed if lora else True)
        model_id = training_model_id(req.session_id, req.model_seq_id)
        model = self._register(model_id, req.session_id, req.model_seq_id, req.base_model,
                               spec, req.user_metadata)

        def work() -> Payload:
            try:
                adapter = self.backend.init_adapter(req.base_model, spec)
                opt_state = self.backend.init_optimizer(req.base_model, adapter)
            except Exception as exc:
                model.failed = str(exc)
                raise
            model.adapter, model.opt_state, model.ready = adapter, opt_state, True
            return _json({"model_id": model_id, "type": "create_model"})

        return self._submit("CreateModel", model.lane, key, body_fp, work,
                            {"model_id": model_id})

    def _register(self, model_id: str, session_id: str, model_seq_id: int, base: str,
                  spec: AdapterSpec, metadata: Mapping[str, Any] | None) -> _Model:
        with self._lock:
            if model_id in self._models:
                raise UserError(
                    f"model_seq_id {model_seq_id} of session {session_id!r} already names "
                    f"model {model_id!r}. Fix: use the next model_seq_id (clients count them).")
            self._ensure_session(session_id)
            now = self.storage.now()
            run = RunRow(run_id=model_id, session_id=session_id, model_seq_id=model_seq_id,
                         base_model=base, lora_rank=spec.rank, lora_seed=spec.seed,
                         lora_alpha=spec.alpha, train_attn=spec.train_attn,
                         train_mlp=spec.train_mlp, train_unembed=spec.train_unembed,
                         created_at=now, last_request_time=now,
                         user_metadata=dict(metadata or {}))
            self.storage.create_run(run)
            model = _Model(model_id=model_id, run=run, spec=spec, lane=f"model:{model_id}")
            self._models[model_id] = model
            return model

    def get_info(self, model_id: str) -> Json:
        """``get_info``: the base model and LoRA settings of a training model."""
        with self._lock:
            model = self._models.get(model_id)
        run = model.run if model is not None else self.storage.get_run(model_id)
        if run is None:
            self._model(model_id)  # raises the standard 404
            raise AssertionError("unreachable")
        info = self._base(run.base_model)
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

    def submit_unload_model(self, req: UnloadModelRequest, body_fp: bytes) -> Json:
        """Legacy ``unload_model``: free a training model's memory."""
        model = self._model(req.model_id)

        def work() -> Payload:
            self._forget(model)
            return _json({"model_id": req.model_id, "type": "unload_model"})

        return self._submit("UnloadModel", model.lane, None, body_fp, work,
                            {"model_id": req.model_id})

    # ------------------------------------------------------------------ training

    def _ready(self, model: _Model, *, restoring: bool = False) -> None:
        """Raise unless `model` can take a request (a corrupted one only a state load)."""
        if model.failed is not None:
            raise UserError(f"Model {model.model_id!r} could not be created: {model.failed}")
        with self._lock:
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

    def corrupt_run(self, run_id: str, reason: str) -> None:
        """Mark a live training run corrupted, as a hosted server does when a run's state is
        lost: it refuses training and saving until a checkpoint is loaded into it, and the
        REST API reports ``corrupted: true``. A fault-injection hook for testing recovery
        code (`LocalServer.corrupt_run`).

        Raises:
            NotFoundError: no live model has this id.
        """
        model = self._model(run_id)
        model.corrupted = reason
        self.storage.mark_run_corrupted(run_id, reason)

    def submit_forward_backward(self, req: ForwardBackwardRequest, body_fp: bytes) -> Json:
        """``forward_backward`` / forward: validate, then queue in the model's lane."""
        key = ("model", req.model_id, str(req.seq_id))
        seen = self._seen(key, body_fp, f"seq_id {req.seq_id} of model {req.model_id!r}")
        if seen is not None:
            return seen
        model = self._model(req.model_id)
        items, loss_config = training_items(req, self._base(model.run.base_model))
        derived: list[dict[str, np.ndarray]] | None = None
        if LOSS_SPECS[req.loss_fn].needs_provenance:  # checked in full before anything runs
            derived = self.stability.resolve(model.run.session_id, req.data)
            items = [dataclasses.replace(item, inputs={**item.inputs, **extra})
                     for item, extra in zip(items, derived)]
        kind = "Forward" if req.forward_only else "ForwardBackward"

        def work() -> Payload:
            self._ready(model)
            result = self.backend.forward_backward(
                model.run.base_model, model.adapter, items, req.loss_fn, loss_config,
                forward_only=req.forward_only)
            if not req.forward_only:
                model.grads = self.backend.accumulate(model.grads, result.grads)
                model.accumulated += len(items)
            extra = (None if derived is None
                     else stability_metrics(derived, result.logprobs, loss_config))
            output = forward_backward_output(result, items, extra)
            return Payload(encode_forward_backward_output(output), PROTOBUF)

        self.storage.touch_run(req.model_id)
        return self._submit(kind, model.lane, key, body_fp, work, {"model_id": req.model_id})

    def submit_optim_step(self, req: OptimStepRequest, body_fp: bytes) -> Json:
        """``optim_step``: apply the accumulated gradient with AdamW."""
        key = ("model", req.model_id, str(req.seq_id))
        seen = self._seen(key, body_fp, f"seq_id {req.seq_id} of model {req.model_id!r}")
        if seen is not None:
            return seen
        model = self._model(req.model_id)
        if req.adam_params is None:
            raise UserError("The local backend supports only AdamW. Fix: call optim_step with "
                            "AdamParams(...).")
        params = req.adam_params

        def work() -> Payload:
            self._ready(model)
            adapter, opt_state, metrics = self.backend.optim_step(
                model.run.base_model, model.adapter, model.opt_state, model.grads, params)
            # a step with non-finite norms came back unchanged (the Backend contract); the
            # accumulated gradient is consumed either way
            datums = model.accumulated
            model.adapter, model.opt_state = adapter, opt_state
            model.grads, model.accumulated = None, 0
            non_finite = {k: v for k, v in metrics.items() if not math.isfinite(v)}
            if non_finite:
                raise UserError(
                    f"optim_step on {model.model_id!r} produced non-finite values "
                    f"({', '.join(f'{k}={v}' for k, v in sorted(non_finite.items()))}) with "
                    f"learning_rate={params.learning_rate}; the update and the accumulated "
                    "gradient were discarded, the weights are those of the previous step. Fix: "
                    "lower the learning rate, set grad_clip_norm, or check the loss and its "
                    "inputs for inf / NaN.")
            metrics = {**metrics, "num_datums:sum": float(datums)}
            model.step += 1
            return _json({"metrics": metrics})

        self.storage.touch_run(req.model_id)
        return self._submit("OptimStep", model.lane, key, body_fp, work,
                            {"model_id": req.model_id})

    # ------------------------------------------------------------------ saving

    def _meta(self, model: _Model, *, optimizer: bool) -> CheckpointMeta:
        return CheckpointMeta(base_model=model.run.base_model, lora=model.spec, step=model.step,
                              has_optimizer=optimizer,
                              optimizer_config=model.run.optimizer_config)

    def _write(self, model: _Model, kind: str, name: str, *, optimizer: bool,
               ttl_seconds: int | None, metadata: Mapping[str, str] | None,
               writer: Callable[[Any], None] | None = None) -> CheckpointRow:
        """Write the model's current state as a checkpoint of `kind` (in the lane)."""
        staged = self.storage.new_checkpoint_dir()
        try:
            if writer is not None:
                writer(staged)
                write_meta(staged, self._meta(model, optimizer=False))
            else:
                opt = self.backend.optimizer_to_arrays(model.opt_state) if optimizer else None
                write_checkpoint(staged, self._meta(model, optimizer=optimizer),
                                 self.backend.adapter_to_arrays(model.adapter), opt)
            now = self.storage.now()
            row = CheckpointRow(
                run_id=model.model_id, checkpoint_id=f"{kind}/{name}", kind=kind, name=name,
                tinker_path=tinker_path(model.model_id, kind, name),  # type: ignore[arg-type]
                dir=staged.name, created_at=now,
                expires_at=None if ttl_seconds is None else now + ttl_seconds,
                user_metadata=dict(metadata) if metadata is not None else None,
                has_optimizer=optimizer)
            return self.storage.add_checkpoint(row, staged)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise

    def submit_save_weights(self, req: SaveWeightsRequest, body_fp: bytes) -> Json:
        """``save_weights`` (save_state): adapter and optimizer state."""
        key = ("model", req.model_id, str(req.seq_id))
        seen = self._seen(key, body_fp, f"seq_id {req.seq_id} of model {req.model_id!r}")
        if seen is not None:
            return seen
        model = self._model(req.model_id)

        def work() -> Payload:
            self._ready(model)
            if not req.overwrite and self.storage.get_checkpoint(
                    model.model_id, f"weights/{req.path}") is not None:
                raise ConflictError(
                    f"A checkpoint named {req.path!r} already exists in run "
                    f"{model.model_id!r}. Fix: pass overwrite=True or choose another name.")
            row = self._write(model, "weights", req.path, optimizer=True,
                              ttl_seconds=req.ttl_seconds, metadata=req.user_metadata)
            return _json({"path": row.tinker_path, "type": "save_weights"})

        return self._submit("SaveWeights", model.lane, key, body_fp, work,
                            {"model_id": req.model_id})

    def submit_save_for_sampler(self, req: SaveWeightsForSamplerRequest, body_fp: bytes
                                ) -> Json:
        """``save_weights_for_sampler``: a named sampler checkpoint or an ephemeral sampler."""
        key = ("model", req.model_id, str(req.seq_id))
        seen = self._seen(key, body_fp, f"seq_id {req.seq_id} of model {req.model_id!r}")
        if seen is not None:
            return seen
        model = self._model(req.model_id)
        if req.path is not None:
            name = req.path

            def work() -> Payload:
                self._ready(model)
                row = self._write(model, "sampler_weights", name, optimizer=False,
                                  ttl_seconds=req.ttl_seconds, metadata=req.user_metadata)
                return _json({"path": row.tinker_path, "type": "save_weights_for_sampler"})
        else:
            seq = int(req.sampling_session_seq_id)  # type: ignore[arg-type]
            session_id = model.run.session_id
            sampler_id = f"{session_id}:sample:{seq}"
            with self._lock:
                if sampler_id in self._samplers:
                    raise UserError(
                        f"sampling_session_seq_id {seq} of session {session_id!r} is already "
                        "taken. Fix: use the next sampling_session_seq_id.")

            def work() -> Payload:
                self._ready(model)
                row = SamplerRow(sampler_id=sampler_id, session_id=session_id, seq_id=seq,
                                 base_model=model.run.base_model,
                                 created_at=self.storage.now(), source_run_id=model.model_id)
                self.storage.create_sampler(row)
                self._add_sampler(_Sampler(row=row, adapter=model.adapter))
                return _json({"sampling_session_id": sampler_id,
                              "type": "save_weights_for_sampler"})

        return self._submit("SaveWeightsForSampler", model.lane, key, body_fp, work,
                            {"model_id": req.model_id})

    def submit_save_external(self, req: SaveWeightsExternalRequest, body_fp: bytes) -> Json:
        """``save_weights_external``: export the adapter in Hugging Face (PEFT) format."""
        key = ("model", req.model_id, str(req.seq_id))
        seen = self._seen(key, body_fp, f"seq_id {req.seq_id} of model {req.model_id!r}")
        if seen is not None:
            return seen
        model = self._model(req.model_id)
        if req.age_encryption_recipients:
            raise UserError("The local backend cannot encrypt exports (age_encryption_"
                            "recipients). Fix: omit the recipients.")

        def work() -> Payload:
            self._ready(model)

            def writer(directory: Any) -> None:
                self.backend.export_hf(model.run.base_model, model.spec, model.adapter,
                                       directory)

            row = self._write(model, "external_weights", req.path, optimizer=False,
                              ttl_seconds=req.ttl_seconds, metadata=None, writer=writer)
            return _json({"path": row.tinker_path, "size_bytes": row.size_bytes,
                          "type": "save_weights_external"})

        return self._submit("SaveWeightsExternal", model.lane, key, body_fp, work,
                            {"model_id": req.model_id})

    # ------------------------------------------------------------------ loading

    def _checkpoint(self, path: str, *, kinds: tuple[str, ...]) -> tuple[CheckpointRow, Any]:
        """A live checkpoint by tinker path (its row and directory)."""
        try:
            parsed = parse_tinker_path(path)
        except ValidationError as exc:
            raise UserError(str(exc)) from None
        if parsed.kind not in kinds:
            raise UserError(
                f"{path!r} is a {parsed.kind} checkpoint; this call needs one of {list(kinds)}. "
                "Fix: pass the path returned by save_state (weights) or "
                "save_weights_for_sampler (sampler_weights).")
        row = self.storage.get_checkpoint(parsed.training_run_id, parsed.checkpoint_id)
        if row is None:
            raise NotFoundError(
                f"No checkpoint at {path!r} (it never existed, was deleted or expired). Fix: "
                "list checkpoints with RestClient.list_checkpoints(run_id).")
        return row, self.storage.checkpoint_path(row)

    def submit_load_weights(self, req: LoadWeightsRequest, body_fp: bytes) -> Json:
        """``load_weights``: create a model from a checkpoint, or (legacy) load into one."""
        _, directory = self._checkpoint(req.path, kinds=("weights", "sampler_weights"))
        meta = read_meta(directory)
        if req.optimizer and not meta.has_optimizer:
            raise UserError(
                f"{req.path!r} holds no optimizer state (sampler checkpoints never do). Fix: "
                "load it without the optimizer, or use a save_state checkpoint.")
        if req.model_id is None:
            return self._load_as_new_model(req, body_fp, meta, directory)
        key = ("model", req.model_id, str(req.seq_id))
        seen = self._seen(key, body_fp, f"seq_id {req.seq_id} of model {req.model_id!r}")
        if seen is not None:
            return seen
        model = self._model(req.model_id)
        if meta.base_model != model.run.base_model or meta.lora.rank != model.spec.rank:
            raise UserError(
                f"{req.path!r} was trained on {meta.base_model!r} with LoRA rank "
                f"{meta.lora.rank}, but model {req.model_id!r} is {model.run.base_model!r} with "
                f"rank {model.spec.rank}. Fix: use create_training_client_from_state(path).")

        def work() -> Payload:
            self._ready(model, restoring=True)
            adapter, opt_state = self._restore(meta, directory, optimizer=req.optimizer)
            if opt_state is None:
                opt_state = self.backend.init_optimizer(meta.base_model, adapter)
            model.adapter, model.opt_state, model.grads, model.accumulated = (
                adapter, opt_state, None, 0)
            model.step = meta.step
            if model.corrupted is not None:
                model.corrupted = None
                self.storage.clear_run_corrupted(model.model_id)
            return _json({"path": req.path, "model_id": model.model_id, "type": "load_weights"})

        return self._submit("LoadWeights", model.lane, key, body_fp, work,
                            {"model_id": req.model_id})

    def _restore(self, meta: CheckpointMeta, directory: Any, *, optimizer: bool
                 ) -> tuple[Any, Any]:
        _, arrays, opt_arrays = read_checkpoint(directory, optimizer=optimizer)
        adapter = self.backend.adapter_from_arrays(meta.base_model, meta.lora, arrays)
        opt_state = None
        if optimizer and opt_arrays is not None:
            opt_state = self.backend.optimizer_from_arrays(meta.base_model, adapter, opt_arrays)
        return adapter, opt_state

    def _load_as_new_model(self, req: LoadWeightsRequest, body_fp: bytes, meta: CheckpointMeta,
                           directory: Any) -> Json:
        session_id, seq = str(req.session_id), int(req.model_seq_id)  # type: ignore[arg-type]
        key = ("model_seq", session_id, str(seq))
        seen = self._seen(key, body_fp, f"model_seq_id {seq} of session {session_id!r}")
        if seen is not None:
            return seen
        self._base(meta.base_model)
        if req.base_model is not None and req.base_model != meta.base_model:
            raise UserError(f"{req.path!r} was trained on {meta.base_model!r}, not "
                            f"{req.base_model!r}. Fix: omit base_model or pass the right one.")
        model_id = training_model_id(session_id, seq)
        model = self._register(model_id, session_id, seq, meta.base_model, meta.lora,
                               req.user_metadata)

        def work() -> Payload:
            try:
                adapter, opt_state = self._restore(meta, directory, optimizer=req.optimizer)
                if opt_state is None:
                    opt_state = self.backend.init_optimizer(meta.base_model, adapter)
            except Exception as exc:
                model.failed = str(exc)
                raise
            model.adapter, model.opt_state, model.ready = adapter, opt_state, True
            model.step = meta.step if req.optimizer else 0
            return _json({"path": req.path, "model_id": model_id, "type": "load_weights"})

        return self._submit("LoadWeights", model.lane, key, body_fp, work,
                            {"model_id": model_id})

    def weights_info(self, path: str) -> Json:
        """``weights_info``: base model and LoRA settings of a checkpoint."""
        _, directory = self._checkpoint(path, kinds=("weights", "sampler_weights",
                                                     "external_weights"))
        meta = read_meta(directory)
        return {"base_model": meta.base_model, "optimizer_config": dict(meta.optimizer_config),
                "is_lora": True, "lora_rank": meta.lora.rank,
                "train_unembed": meta.lora.train_unembed, "train_mlp": meta.lora.train_mlp,
                "train_attn": meta.lora.train_attn}

    # ------------------------------------------------------------------ sampling sessions

    def create_sampling_session(self, req: CreateSamplingSessionRequest, body_fp: bytes
                                ) -> Json:
        """``create_sampling_session`` from a base model or saved weights (loads them)."""
        key = ("sampling_seq", req.session_id, str(req.sampling_session_seq_id))
        seen = self._seen(key, body_fp, f"sampling_session_seq_id "
                          f"{req.sampling_session_seq_id} of session {req.session_id!r}")
        if seen is not None:
            return seen
        sampler_id = f"{req.session_id}:sample:{req.sampling_session_seq_id}"
        self._ensure_session(req.session_id)
        adapter = None
        if req.model_path is not None:
            base, adapter = self._sampling_weights(req.model_path)
        else:
            base = str(req.base_model)
            self._base(base)
        row = SamplerRow(sampler_id=sampler_id, session_id=req.session_id,
                         seq_id=req.sampling_session_seq_id, base_model=base,
                         created_at=self.storage.now(), model_path=req.model_path)
        response = {"sampling_session_id": sampler_id, "type": "create_sampling_session"}
        with self._lock:
            seen = self._dedup.get(key, body_fp, f"sampling_session_seq_id "
                                   f"{req.sampling_session_seq_id} of session "
                                   f"{req.session_id!r}")
            if seen is not None:  # a concurrent retry of the same request won the race
                return seen
            if sampler_id in self._samplers:
                raise UserError(
                    f"sampling_session_seq_id {req.sampling_session_seq_id} of session "
                    f"{req.session_id!r} is already taken. Fix: use the next one.")
            self.storage.create_sampler(row)
            self._add_sampler(_Sampler(row=row, adapter=adapter))
            self._dedup.put(key, body_fp, response)
        return response

    def _sampling_weights(self, path: str) -> tuple[str, Any]:
        """Base model name and the adapter of saved weights."""
        _, directory = self._checkpoint(path, kinds=("sampler_weights", "weights"))
        meta = read_meta(directory)
        self._base(meta.base_model)
        adapter, _ = self._restore(meta, directory, optimizer=False)
        return meta.base_model, adapter

    def _add_sampler(self, sampler: _Sampler) -> None:
        """Register a sampler; beyond `max_live_samplers` the least recently used one is
        forgotten (saved-weight samplers reload on use; in-memory ones are gone)."""
        with self._lock:
            self._samplers[sampler.row.sampler_id] = sampler
            self._samplers.move_to_end(sampler.row.sampler_id)
            while len(self._samplers) > self.config.max_live_samplers:
                old_id, _ = self._samplers.popitem(last=False)
                self._evicted.add(old_id)

    def _handle(self, sampler: _Sampler) -> Any:
        """The backend's prepared weights for a sampler (LRU-cached; call on a worker)."""
        key = id(sampler)
        with self._lock:
            cached = self._handles.get(key)
            if cached is not None and cached[0] is sampler:
                self._handles.move_to_end(key)
                return cached[1]
        handle = self.backend.sampling_handle(sampler.row.base_model, sampler.adapter)
        with self._lock:
            self._handles[key] = (sampler, handle)
            while len(self._handles) > self.config.max_sampler_handles:
                self._handles.popitem(last=False)
        return handle

    def _sampler(self, sampler_id: str) -> _Sampler:
        with self._lock:
            sampler = self._samplers.get(sampler_id)
            if sampler is not None:
                self._samplers.move_to_end(sampler_id)
                return sampler
            evicted = sampler_id in self._evicted
        row = self.storage.get_sampler(sampler_id)
        if row is None:
            raise NotFoundError(f"Unknown sampling session {sampler_id!r}. Fix: create a "
                                "sampling client on this server first.")
        if row.model_path is None and row.source_run_id is not None:
            why = (f"more than {self.config.max_live_samplers} newer samplers replaced it"
                   if evicted else "a server restart lost them")
            raise NotFoundError(
                f"Sampling session {sampler_id!r} sampled in-memory weights, and {why}. Fix: "
                "use a fresh save_weights_and_get_sampling_client(), or "
                "save_weights_for_sampler(name) and sample from the path.")
        adapter = None
        if row.model_path is not None:
            _, adapter = self._sampling_weights(row.model_path)
        self._add_sampler(_Sampler(row=row, adapter=adapter))
        with self._lock:
            return self._samplers[sampler_id]

    def get_sampler(self, sampler_id: str) -> Json:
        """``GET samplers/{id}``."""
        row = self.storage.get_sampler(sampler_id)
        if row is None:
            raise NotFoundError(f"Unknown sampler {sampler_id!r}.")
        out: Json = {"sampler_id": row.sampler_id, "base_model": row.base_model}
        if row.model_path is not None:
            out["model_path"] = row.model_path
        return out

    def join_sampling_session(self, sampler_id: str) -> Json:
        """``join_sampling_session``: a fresh clone number for an unpickled client."""
        sampler = self._sampler(sampler_id)
        with self._lock:
            sampler.clones += 1
            return {"client_counter": sampler.clones, "type": "join_sampling_session"}

    def submit_sample(self, req: SampleRequest, body_fp: bytes) -> Json:
        """``asample``: queue a sampling request."""
        if req.sampling_session_id is not None:
            sampler = self._sampler(req.sampling_session_id)
            sampler_key = req.sampling_session_id
        elif req.model_path is not None:
            base, adapter = self._sampling_weights(req.model_path)
            sampler = _Sampler(row=SamplerRow(sampler_id="", session_id="", seq_id=0,
                                              base_model=base, created_at=0.0), adapter=adapter)
            sampler_key = ""
        elif req.base_model is not None:
            self._base(req.base_model)
            sampler = _Sampler(row=SamplerRow(sampler_id="", session_id="", seq_id=0,
                                              base_model=req.base_model, created_at=0.0))
            sampler_key = ""
        else:
            raise UserError("asample needs sampling_session_id (or base_model / model_path). "
                            "Fix: sample through a SamplingClient.")
        key = ("sample", sampler_key, str(req.seq_id)) if sampler_key else None
        if key is not None:
            seen = self._seen(key, body_fp, f"seq_id {req.seq_id} of sampling session "
                              f"{sampler_key!r}")
            if seen is not None:
                return seen
        base = sampler.row.base_model
        info = self._base(base)
        job = sample_job(req, info, default_max_tokens=self.config.max_tokens_default)
        if req.record_stability_info and not sampler_key:
            raise UserError(
                "record_stability_info needs a sampling session (its records belong to the "
                "session, and its sequence ids must be unique). Fix: sample through a "
                "SamplingClient created with record_stability_info=True.")
        self._admit_sample()
        want_table = needs_prompt_table(req)
        seq_ids = [f"{sampler_key or 'adhoc'}:{req.seq_id}:{i}" for i in range(req.num_samples)]
        noise = self.config.sampler_logprob_noise

        def work() -> Payload:
            handle = self._handle(sampler)
            outcome = self.backend.sample(handle, job, prompt_logprobs=req.prompt_logprobs,
                                          topk_prompt=req.topk_prompt_logprobs)
            if noise > 0:
                outcome = dataclasses.replace(
                    outcome, rows=with_logprob_noise(outcome.rows, noise, job.seed))
            if req.record_stability_info:
                prompt = job.prompt.copy()
                prompt.setflags(write=False)  # one read-only copy shared by the sequences
                for sequence_id, row in zip(seq_ids, outcome.rows):
                    self.stability.record(sequence_id, SequenceRecord.create(
                        sampler.row.session_id, prompt, row.tokens, row.logprobs))
            table = self.backend.logprob_table(handle, job.prompt) if want_table else None
            sample_tables = None
            if req.topk_sample_logprobs:
                sample_tables = []
                for row in outcome.rows:
                    full = np.concatenate([job.prompt, np.asarray(row.tokens, np.int32)])
                    t = self.backend.logprob_table(handle, full)
                    n = len(row.tokens)
                    sample_tables.append(t[job.prompt.size - 1: job.prompt.size - 1 + n])
            response = sample_response(req, job.prompt, outcome, table, sample_tables)
            return Payload(encode_sample_response(response), PROTOBUF)

        def admitted_work() -> Payload:
            try:
                return work()
            finally:
                with self._lock:
                    self.pending_samples -= 1

        lane = f"sample:{uuid.uuid4().hex}"
        try:
            return self._submit("Sample", lane, key, body_fp, admitted_work,
                                {"sample_sequence_ids": seq_ids})
        except BaseException:
            with self._lock:
                self.pending_samples -= 1
            raise

    def _admit_sample(self) -> None:
        """Count one more sampling request in flight, or refuse it with backpressure."""
        limit = self.config.max_pending_samples
        with self._lock:
            if limit is not None and self.pending_samples >= limit:
                self.sample_backpressure_answers += 1
                raise SamplingBackpressureError(
                    f"{self.pending_samples} sampling requests are in flight (this server "
                    f"takes {limit} at a time: ServerConfig.max_pending_samples). Wait and "
                    "resubmit with the same seq_id; Tinker SDKs do this by themselves.")
            self.pending_samples += 1

    # ------------------------------------------------------------------ futures

    async def retrieve(self, request_id: str, timeout: float) -> Outcome | None:
        """Long-poll one future (None while it is still pending after `timeout`)."""
        return await self.futures.wait(request_id, timeout)

    # ------------------------------------------------------------------ REST

    def _run(self, run_id: str) -> RunRow:
        run = self.storage.get_run(run_id)
        if run is None:
            raise NotFoundError(f"Unknown training run {run_id!r}. Fix: list runs with "
                                "RestClient.list_training_runs().")
        return run

    def _run_json(self, run: RunRow) -> Json:
        return training_run_json(run, self.storage.latest_checkpoint(run.run_id, "weights"),
                                 self.storage.latest_checkpoint(run.run_id, "sampler_weights"))

    def list_training_runs(self, limit: int, offset: int) -> Json:
        """``GET training_runs``."""
        runs, total = self.storage.list_runs(limit, offset)
        return {"training_runs": [self._run_json(r) for r in runs],
                "cursor": {"offset": offset, "limit": limit, "total_count": total}}

    def get_training_run(self, run_id: str) -> Json:
        """``GET training_runs/{id}``."""
        return self._run_json(self._run(run_id))

    def list_checkpoints(self, run_id: str) -> Json:
        """``GET training_runs/{id}/checkpoints``."""
        self._run(run_id)
        rows = self.storage.list_checkpoints(run_id)
        return {"checkpoints": [checkpoint_json(r) for r in rows],
                "cursor": {"offset": 0, "limit": len(rows), "total_count": len(rows)}}

    def list_user_checkpoints(self, limit: int, offset: int) -> Json:
        """``GET checkpoints``: every run's checkpoints, newest first."""
        rows, total = self.storage.list_all_checkpoints(limit, offset)
        return {"checkpoints": [checkpoint_json(r) for r in rows],
                "cursor": {"offset": offset, "limit": limit, "total_count": total}}

    def _stored(self, run_id: str, checkpoint_id: str) -> CheckpointRow:
        self._run(run_id)
        row = self.storage.get_checkpoint(run_id, checkpoint_id)
        if row is None:
            raise NotFoundError(
                f"Run {run_id!r} has no checkpoint {checkpoint_id!r} (never saved, deleted or "
                "expired). Fix: list them with RestClient.list_checkpoints(run_id).")
        return row

    def delete_checkpoint(self, run_id: str, checkpoint_id: str) -> Json:
        """``DELETE …/checkpoints/{kind}/{name}``."""
        self._stored(run_id, checkpoint_id)
        self.storage.delete_checkpoint(run_id, checkpoint_id)
        return {"deleted": f"tinker://{run_id}/{checkpoint_id}"}

    def set_published(self, run_id: str, checkpoint_id: str, public: bool) -> Json:
        """Publish / unpublish a checkpoint (idempotent)."""
        self._stored(run_id, checkpoint_id)
        self.storage.set_checkpoint_public(run_id, checkpoint_id, public)
        return {"tinker_path": f"tinker://{run_id}/{checkpoint_id}", "public": public}

    def set_ttl(self, run_id: str, checkpoint_id: str, ttl_seconds: int | None) -> Json:
        """``PUT …/ttl``: expire the checkpoint `ttl_seconds` from now (None: never)."""
        self._stored(run_id, checkpoint_id)
        self.storage.set_checkpoint_ttl(run_id, checkpoint_id, ttl_seconds)
        row = self._stored(run_id, checkpoint_id)
        return checkpoint_json(row)

    def external_weights_files(self, run_id: str, checkpoint_id: str) -> tuple[str, list[str]]:
        """The download token (directory name) and relative file names of an export."""
        if not checkpoint_id.startswith("external_weights/"):
            raise UserError(f"{checkpoint_id!r} is not an external_weights checkpoint. Fix: "
                            "export with save_weights_external first.")
        row = self._stored(run_id, checkpoint_id)
        root = self.storage.checkpoint_path(row)
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                       if p.is_file() and p.name != META_FILE)
        return row.dir, files

    def expires_at(self, seconds: float) -> str:
        """An ISO time `seconds` from now."""
        return iso_time(self.storage.now() + seconds)

    def file_path(self, token: str, relative: str) -> Any:
        """The file behind a download URL, or raise `NotFoundError`."""
        root = (self.storage.checkpoint_root / token).resolve()
        target = (root / relative).resolve()
        if (not token or "/" in token or token.startswith(".") or root not in target.parents
                or not target.is_file()):
            raise NotFoundError("No such file. Fix: ask for fresh URLs with "
                                "RestClient.get_external_weights_urls(path).")
        return target

    def copy_weights(self, req: CopyWeightsRequest) -> Json:
        """``copy_weights``: duplicate a checkpoint into another (possibly new) run."""
        row, directory = self._checkpoint(req.source_path, kinds=(
            "weights", "sampler_weights", "external_weights"))
        parsed = ParsedCheckpointTinkerPath.from_tinker_path(req.source_path)
        source_run = self._run(parsed.training_run_id)
        if req.session_id is not None and req.model_seq_id is not None:
            run_id = training_model_id(req.session_id, req.model_seq_id)
        else:
            run_id = f"copy-{uuid.uuid4().hex[:16]}"
        if self.storage.get_run(run_id) is None:
            now = self.storage.now()
            self.storage.create_run(dataclasses.replace(
                source_run, run_id=run_id, session_id=req.session_id or source_run.session_id,
                model_seq_id=req.model_seq_id or 0, created_at=now, last_request_time=now))
        staged = self.storage.new_checkpoint_dir()
        shutil.copytree(directory, staged, dirs_exist_ok=True)
        now = self.storage.now()
        copy = CheckpointRow(
            run_id=run_id, checkpoint_id=row.checkpoint_id, kind=row.kind, name=row.name,
            tinker_path=f"tinker://{run_id}/{row.checkpoint_id}", dir=staged.name,
            created_at=now,
            expires_at=None if req.ttl_seconds is None else now + req.ttl_seconds,
            user_metadata=row.user_metadata, has_optimizer=row.has_optimizer)
        stored = self.storage.add_checkpoint(copy, staged)
        return {"tinker_path": stored.tinker_path}
