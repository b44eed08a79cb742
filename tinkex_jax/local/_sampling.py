"""Sampling: sampling sessions, save_weights_for_sampler, admission control, asample, and
the stability records of sampled sequences.

* **Sampling sessions** sample a base model, saved weights (a tinker path) or a training
  model's in-memory weights (``save_weights_for_sampler`` without a name). At most
  ``max_live_samplers`` stay in memory (least recently used forgotten: saved-weight ones
  reload on use, in-memory ones are gone), and the backend's prepared (merged) weights of
  at most ``max_sampler_handles`` are cached, so thousands of per-step samplers do not each
  hold a merged copy of the model.
* **Admission.** With ``max_pending_samples`` set, a sample beyond that many in flight is
  refused with backpressure (429), as a busy hosted service does.
* **Stability records.** A sample with ``record_stability_info`` records each sequence's
  prompt, tokens and logprobs in `StabilityRecords`, which `_training` resolves for losses
  that need provenance.

A sampling session belongs to the owner that created it (for ``save_weights_for_sampler``,
the training model's owner); another owner gets 404 for it. Sampling from a path needs read
access to the checkpoint (its own, or published).

Each sample runs in a lane of its own on the compute workers. This module never touches
HTTP, never blocks the event loop, and reads saved weights only through `Weights`.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..types import CreateSamplingSessionRequest, SampleRequest, SaveWeightsForSamplerRequest
from ..wire import encode_sample_response
from ._convert import needs_prompt_table, sample_job, sample_response
from ._core import Core, Json, json_payload
from ._errors import NotFoundError, SamplingBackpressureError, UserError
from ._futures import PROTOBUF, Payload
from ._stability import SequenceRecord, StabilityRecords, with_logprob_noise
from ._storage import SamplerRow, may_use
from ._training import LiveModel, Training
from ._weights import Weights

__all__ = ["LiveSampler", "Sampling"]


@dataclass
class LiveSampler:
    """A live sampling session: its row and its adapter (None: the base model)."""

    row: SamplerRow
    adapter: Any = None
    clones: int = 0


class Sampling:
    """The sampling sessions and sample requests of one engine.

    Args:
        core: Dedup, futures, lanes.
        training: Training models (in-memory samplers take their current adapter).
        weights: Saved weights (samplers from a path, named sampler checkpoints).
        stability: Where sampled sequences' records go.

    Attributes:
        pending: Sample requests queued or running.
        backpressure_answers: 429s sent (``ServerConfig.max_pending_samples``).
    """

    def __init__(self, core: Core, training: Training, weights: Weights,
                 stability: StabilityRecords) -> None:
        self.core = core
        self.training = training
        self.weights = weights
        self.stability = stability
        self._samplers: OrderedDict[str, LiveSampler] = OrderedDict()
        self._handles: OrderedDict[int, tuple[LiveSampler, Any]] = OrderedDict()
        self._evicted: set[str] = set()
        self.pending = 0
        self.backpressure_answers = 0

    def collect(self) -> None:
        """Forget stability records past their TTL."""
        self.stability.collect()

    # ------------------------------------------------------------------ samplers

    def _add(self, sampler: LiveSampler) -> None:
        """Register a sampler; beyond `max_live_samplers` the least recently used one is
        forgotten."""
        with self.core.lock:
            self._samplers[sampler.row.sampler_id] = sampler
            self._samplers.move_to_end(sampler.row.sampler_id)
            while len(self._samplers) > self.core.config.max_live_samplers:
                old_id, _ = self._samplers.popitem(last=False)
                self._evicted.add(old_id)

    def _taken(self, sampler_id: str) -> bool:
        with self.core.lock:
            return sampler_id in self._samplers

    def forget_finished(self, finished: Callable[[str], bool]) -> int:
        """Drop from memory the samplers (and prepared weights) of sessions for which
        `finished(session_id)` is true (their clients are gone); returns how many. Called
        by the engine's reaper (`Engine.prune`)."""
        with self.core.lock:
            sessions = {s.row.session_id for s in self._samplers.values()}
        done = {session for session in sessions if finished(session)}
        with self.core.lock:
            gone = [k for k, s in self._samplers.items() if s.row.session_id in done]
            for key in gone:
                del self._samplers[key]
                self._evicted.discard(key)
            for handle in [k for k, (s, _) in self._handles.items()
                           if s.row.session_id in done]:
                del self._handles[handle]
        return len(gone)

    def _handle(self, sampler: LiveSampler) -> Any:
        """The backend's prepared weights for a sampler (LRU-cached; call on a worker)."""
        key = id(sampler)
        with self.core.lock:
            cached = self._handles.get(key)
            if cached is not None and cached[0] is sampler:
                self._handles.move_to_end(key)
                return cached[1]
        handle = self.core.backend.sampling_handle(sampler.row.base_model, sampler.adapter)
        with self.core.lock:
            self._handles[key] = (sampler, handle)
            while len(self._handles) > self.core.config.max_sampler_handles:
                self._handles.popitem(last=False)
        return handle

    def _sampler(self, sampler_id: str, owner: str | None = None) -> LiveSampler:
        with self.core.lock:
            sampler = self._samplers.get(sampler_id)
            if sampler is not None and may_use(sampler.row.owner, owner):
                self._samplers.move_to_end(sampler_id)
                return sampler
            evicted = sampler_id in self._evicted
        row = self.core.storage.get_sampler(sampler_id) if sampler is None else None
        if row is None or not may_use(row.owner, owner):
            raise NotFoundError(f"Unknown sampling session {sampler_id!r}. Fix: create a "
                                "sampling client on this server first.")
        if row.model_path is None and row.source_run_id is not None:
            why = (f"more than {self.core.config.max_live_samplers} newer samplers replaced "
                   "it" if evicted else "a server restart lost them")
            raise NotFoundError(
                f"Sampling session {sampler_id!r} sampled in-memory weights, and {why}. Fix: "
                "use a fresh save_weights_and_get_sampling_client(), or "
                "save_weights_for_sampler(name) and sample from the path.")
        adapter = None
        if row.model_path is not None:
            _, adapter = self.weights.adapter_at(row.model_path)
        self._add(LiveSampler(row=row, adapter=adapter))
        with self.core.lock:
            return self._samplers[sampler_id]

    def create_sampling_session(self, req: CreateSamplingSessionRequest, body_fp: bytes,
                                owner: str | None = None) -> Json:
        """``create_sampling_session`` in a session of `owner`, from a base model or saved
        weights it may read (loads them)."""
        self.core.session(req.session_id, owner)
        key = ("sampling_seq", req.session_id, str(req.sampling_session_seq_id))
        what = (f"sampling_session_seq_id {req.sampling_session_seq_id} of session "
                f"{req.session_id!r}")
        seen = self.core.seen(key, body_fp, what)
        if seen is not None:
            return seen
        sampler_id = f"{req.session_id}:sample:{req.sampling_session_seq_id}"
        adapter = None
        if req.model_path is not None:
            base, adapter = self.weights.adapter_at(req.model_path, owner)
        else:
            base = str(req.base_model)
            self.core.base(base)
        row = SamplerRow(sampler_id=sampler_id, session_id=req.session_id,
                         seq_id=req.sampling_session_seq_id, base_model=base,
                         created_at=self.core.storage.now(), model_path=req.model_path,
                         owner=owner)
        response = {"sampling_session_id": sampler_id, "type": "create_sampling_session"}
        with self.core.lock:
            seen = self.core.seen(key, body_fp, what)
            if seen is not None:  # a concurrent retry of the same request won the race
                return seen
            if sampler_id in self._samplers:
                raise UserError(
                    f"sampling_session_seq_id {req.sampling_session_seq_id} of session "
                    f"{req.session_id!r} is already taken. Fix: use the next one.")
            self.core.storage.create_sampler(row)
            self._add(LiveSampler(row=row, adapter=adapter))
            self.core.remember(key, body_fp, response)
        return response

    def submit_save_for_sampler(self, req: SaveWeightsForSamplerRequest, body_fp: bytes,
                                owner: str | None = None) -> Json:
        """``save_weights_for_sampler``: a named sampler checkpoint, or (no name) a sampling
        session over the model's current in-memory weights."""

        def prepare(model: LiveModel) -> Callable[[], Payload]:
            if req.path is not None:
                name = req.path

                def save() -> Payload:
                    row = self.weights.write(model, "sampler_weights", name, optimizer=False,
                                             ttl_seconds=req.ttl_seconds,
                                             metadata=req.user_metadata)
                    return json_payload({"path": row.tinker_path,
                                         "type": "save_weights_for_sampler"})

                return save
            seq = int(req.sampling_session_seq_id)  # type: ignore[arg-type]
            session_id = model.run.session_id
            sampler_id = f"{session_id}:sample:{seq}"
            if self._taken(sampler_id):
                raise UserError(
                    f"sampling_session_seq_id {seq} of session {session_id!r} is already "
                    "taken. Fix: use the next sampling_session_seq_id.")

            def snapshot() -> Payload:
                row = SamplerRow(sampler_id=sampler_id, session_id=session_id, seq_id=seq,
                                 base_model=model.run.base_model,
                                 created_at=self.core.storage.now(),
                                 source_run_id=model.model_id, owner=model.run.owner)
                self.core.storage.create_sampler(row)
                self._add(LiveSampler(row=row, adapter=model.adapter))
                return json_payload({"sampling_session_id": sampler_id,
                                     "type": "save_weights_for_sampler"})

            return snapshot

        return self.training.submit_op("SaveWeightsForSampler", req.model_id, req.seq_id,
                                       body_fp, prepare, owner=owner)

    def get_sampler(self, sampler_id: str, owner: str | None = None) -> Json:
        """``GET samplers/{id}``."""
        row = self.core.storage.get_sampler(sampler_id)
        if row is None or not may_use(row.owner, owner):
            raise NotFoundError(f"Unknown sampler {sampler_id!r}.")
        out: Json = {"sampler_id": row.sampler_id, "base_model": row.base_model}
        if row.model_path is not None:
            out["model_path"] = row.model_path
        return out

    def join_sampling_session(self, sampler_id: str, owner: str | None = None) -> Json:
        """``join_sampling_session``: a fresh clone number for an unpickled client."""
        sampler = self._sampler(sampler_id, owner)
        with self.core.lock:
            sampler.clones += 1
            return {"client_counter": sampler.clones, "type": "join_sampling_session"}

    # ------------------------------------------------------------------ samples

    def submit_sample(self, req: SampleRequest, body_fp: bytes, owner: str | None = None
                      ) -> Json:
        """``asample``: queue a sampling request of `owner`."""
        if req.sampling_session_id is not None:
            sampler = self._sampler(req.sampling_session_id, owner)
            sampler_key = req.sampling_session_id
        elif req.model_path is not None:
            base, adapter = self.weights.adapter_at(req.model_path, owner)
            sampler = _ad_hoc(base, adapter)
            sampler_key = ""
        elif req.base_model is not None:
            self.core.base(req.base_model)
            sampler = _ad_hoc(req.base_model, None)
            sampler_key = ""
        else:
            raise UserError("asample needs sampling_session_id (or base_model / model_path). "
                            "Fix: sample through a SamplingClient.")
        key = ("sample", sampler_key, str(req.seq_id)) if sampler_key else None
        if key is not None:
            seen = self.core.seen(key, body_fp, f"seq_id {req.seq_id} of sampling session "
                                  f"{sampler_key!r}")
            if seen is not None:
                return seen
        info = self.core.base(sampler.row.base_model)
        seed = (None if req.sampling_params.seed is not None
                else self.core.effects.random_bits(64) % (2**63))
        job = sample_job(req, info, default_max_tokens=self.core.config.max_tokens_default,
                         seed=seed, max_request_tokens=self.core.config.max_request_tokens)
        if req.record_stability_info and not sampler_key:
            raise UserError(
                "record_stability_info needs a sampling session (its records belong to the "
                "session, and its sequence ids must be unique). Fix: sample through a "
                "SamplingClient created with record_stability_info=True.")
        self._admit()
        want_table = needs_prompt_table(req)
        seq_ids = [f"{sampler_key or 'adhoc'}:{req.seq_id}:{i}" for i in range(req.num_samples)]
        noise = self.core.config.sampler_logprob_noise
        backend = self.core.backend

        def work() -> Payload:
            handle = self._handle(sampler)
            outcome = backend.sample(handle, job, prompt_logprobs=req.prompt_logprobs,
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
            table = backend.logprob_table(handle, job.prompt) if want_table else None
            sample_tables = None
            if req.topk_sample_logprobs:
                sample_tables = []
                for row in outcome.rows:
                    full = np.concatenate([job.prompt, np.asarray(row.tokens, np.int32)])
                    t = backend.logprob_table(handle, full)
                    n = len(row.tokens)
                    sample_tables.append(t[job.prompt.size - 1: job.prompt.size - 1 + n])
            response = sample_response(req, job.prompt, outcome, table, sample_tables)
            return Payload(encode_sample_response(response), PROTOBUF)

        def admitted_work() -> Payload:
            try:
                return work()
            finally:
                self._release()

        try:
            return self.core.submit("Sample", self.core.one_shot_lane("sample"), key, body_fp,
                                    admitted_work, {"sample_sequence_ids": seq_ids},
                                    owner=owner)
        except BaseException:
            self._release()
            raise

    def _admit(self) -> None:
        """Count one more sampling request in flight, or refuse it with backpressure."""
        limit = self.core.config.max_pending_samples
        with self.core.lock:
            if limit is not None and self.pending >= limit:
                self.backpressure_answers += 1
                raise SamplingBackpressureError(
                    f"{self.pending} sampling requests are in flight (this server "
                    f"takes {limit} at a time: ServerConfig.max_pending_samples). Wait and "
                    "resubmit with the same seq_id; Tinker SDKs do this by themselves.")
            self.pending += 1

    def _release(self) -> None:
        with self.core.lock:
            self.pending -= 1


def _ad_hoc(base: str, adapter: Any) -> LiveSampler:
    """A sampler for one request that names a base model or path instead of a session."""
    return LiveSampler(row=SamplerRow(sampler_id="", session_id="", seq_id=0,
                                      base_model=base, created_at=0.0), adapter=adapter)
