"""Stability records for ``stable_reinforce``: what the sampler saw, per sampled sequence, and
the check of a training request's provenance spans against it.

A sample request with ``record_stability_info`` makes the engine record, for each sampled
sequence (keyed by the ``sequence_id`` it hands out in ``sample_sequence_ids``), the session
it belongs to, the prompt tokens, the sampled tokens and the logprobs the sampler computed
for them. A ``stable_reinforce`` request names those records with provenance spans;
`StabilityRecords.resolve` checks every span of every datum before anything runs and returns
the per-token inputs the loss needs (`losses.LOSS_SPECS`'s ``provenance_inputs``): the
recorded sampling logprobs and a mask of the sampled positions.

Records are session-scoped (a request may only name its own session's sequences), expire
after ``ttl_s`` without use (a day by default: `ServerConfig.stability_record_ttl_s`), and
are bounded in memory (``max_tokens`` stored tokens; the least recently used go first).
Using a record (resolving a request that names it) renews it.

This module does no model work and never changes a model: it only reads requests and its own
records.

Example:
    >>> import numpy as np
    >>> from tinkex_jax.types import Datum, ModelInput
    >>> from tinkex_jax.types import PromptProvenanceSpan as P, SampledProvenanceSpan as S
    >>> records = StabilityRecords(ttl_s=86400.0, max_tokens=1000, clock=lambda: 0.0)
    >>> records.record("s:0:0", SequenceRecord.create("sess", [5, 6], [7, 8], [-0.5, -1.5]))
    >>> d = Datum(model_input=ModelInput.from_ints([5, 6, 7]),
    ...           loss_fn_inputs={"target_tokens": [6, 7, 8], "advantages": [0.0, 1.0, 1.0]})
    >>> d = d.with_provenance(model_input=[P(sequence_id="s:0:0", offset=0, length=2),
    ...                                    S(sequence_id="s:0:0", offset=0, length=1)],
    ...                       loss_fn_inputs=[P(sequence_id="s:0:0", offset=1, length=1),
    ...                                       S(sequence_id="s:0:0", offset=0, length=2)])
    >>> [x.tolist() for x in records.resolve("sess", [d])[0].values()]
    [[0.0, -0.5, -1.5], [0.0, 1.0, 1.0]]
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..types import Datum, PromptProvenanceSpan, SampledProvenanceSpan
from ._backend import SampledRow
from ._errors import NotFoundError, PermissionDeniedError, UserError

__all__ = ["SequenceRecord", "StabilityRecords", "stability_metrics", "with_logprob_noise"]

_FORGOTTEN_LIMIT = 100_000
_HOW_TO_RECORD = ("sample with a client created with record_stability_info=True "
                  "(save_weights_and_get_sampling_client(record_stability_info=True) or "
                  "create_sampling_client(..., record_stability_info=True)) on this server, in "
                  "this session, and train within the record lifetime")


def _frozen(values: object, dtype: type) -> np.ndarray:
    array: np.ndarray = np.array(values, dtype=dtype).reshape(-1)
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class SequenceRecord:
    """What the sampler saw for one sampled sequence.

    Attributes:
        session_id: The session whose sampling client sampled it.
        prompt: The request's prompt tokens (int32, read-only; shared by the sequences of one
            request).
        tokens: The sampled tokens (int32, read-only).
        logprobs: The logprob of each sampled token as the sampler computed it (float32,
            read-only).
    """

    session_id: str
    prompt: np.ndarray
    tokens: np.ndarray
    logprobs: np.ndarray

    @classmethod
    def create(cls, session_id: str, prompt: object, tokens: object, logprobs: object
               ) -> SequenceRecord:
        """A record with read-only copies of the arrays (an already read-only int32 prompt
        is shared, not copied).

        Example:
            >>> SequenceRecord.create("s", [1, 2], [3], [-0.1]).size
            3
        """
        shared = (isinstance(prompt, np.ndarray) and prompt.dtype == np.int32
                  and prompt.ndim == 1 and not prompt.flags.writeable)
        prompt_array = prompt if shared else _frozen(prompt, np.int32)
        record = cls(session_id=session_id, prompt=prompt_array,  # type: ignore[arg-type]
                     tokens=_frozen(tokens, np.int32), logprobs=_frozen(logprobs, np.float32))
        if record.tokens.size != record.logprobs.size:
            raise ValueError(f"SequenceRecord: {record.tokens.size} sampled tokens but "
                             f"{record.logprobs.size} logprobs; expected one logprob per token.")
        return record

    @property
    def size(self) -> int:
        """Tokens held (prompt and sampled), the unit of the memory bound."""
        return int(self.prompt.size + self.tokens.size)


@dataclass
class _Entry:
    record: SequenceRecord
    last_used: float


class StabilityRecords:
    """The records of one server, thread-safe (see the module docstring).

    Args:
        ttl_s: A record not used for this long is dropped.
        max_tokens: Most tokens held; beyond it the least recently used records are dropped.
        clock: Seconds (the engine's storage clock, injectable in tests).
    """

    def __init__(self, *, ttl_s: float, max_tokens: int, clock: Callable[[], float]) -> None:
        self.ttl_s = float(ttl_s)
        self.max_tokens = int(max_tokens)
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._tokens = 0
        self._forgotten: OrderedDict[str, str] = OrderedDict()  # id -> why it is gone

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def tokens(self) -> int:
        """Tokens held now."""
        with self._lock:
            return self._tokens

    # ------------------------------------------------------------------ storing

    def record(self, sequence_id: str, record: SequenceRecord) -> None:
        """Store (or replace) the record of one sampled sequence."""
        now = self._clock()
        with self._lock:
            old = self._entries.pop(sequence_id, None)
            if old is not None:
                self._tokens -= old.record.size
            self._forgotten.pop(sequence_id, None)
            self._entries[sequence_id] = _Entry(record, now)
            self._tokens += record.size
            self._expire(now)
            while self._tokens > self.max_tokens and len(self._entries) > 1:
                victim, entry = next(iter(self._entries.items()))
                self._drop(victim, entry, f"dropped to stay within the server's record memory "
                                          f"bound ({self.max_tokens} tokens; "
                                          "ServerConfig.stability_max_tokens)")

    def collect(self) -> int:
        """Drop the records that expired; returns how many."""
        with self._lock:
            return self._expire(self._clock())

    def _drop(self, sequence_id: str, entry: _Entry, why: str) -> None:
        del self._entries[sequence_id]
        self._tokens -= entry.record.size
        self._forgotten[sequence_id] = why
        while len(self._forgotten) > _FORGOTTEN_LIMIT:
            self._forgotten.popitem(last=False)

    def _expire(self, now: float) -> int:
        cutoff = now - self.ttl_s
        dropped = 0
        while self._entries:
            sequence_id, entry = next(iter(self._entries.items()))
            if entry.last_used > cutoff:
                break
            self._drop(sequence_id, entry, f"expired: not used for {self.ttl_s:g} s "
                                           "(ServerConfig.stability_record_ttl_s)")
            dropped += 1
        return dropped

    # ------------------------------------------------------------------ resolving

    def resolve(self, session_id: str, data: Sequence[Datum]) -> list[dict[str, np.ndarray]]:
        """Check every datum's provenance against the records; the loss's derived inputs.

        For each datum: ``sampled_logprobs`` (float32 ``[T]``: the recorded sampling
        logprob of each target position that a `SampledProvenanceSpan` covers, 0 elsewhere)
        and ``sampled_mask`` (1.0 at those positions, 0.0 at prompt positions). Nothing is
        renewed unless every datum resolves.

        Raises:
            UserError (400): missing spans, 2-D targets, a span outside its sequence, tokens
                that differ from the record, or a nonzero advantage at a prompt position.
            NotFoundError (404): an unknown, expired or dropped sequence id.
            PermissionDeniedError (403): a sequence of another session.
        """
        now = self._clock()
        with self._lock:
            self._expire(now)
            used: dict[str, SequenceRecord] = {}
            out = [self._resolve_datum(session_id, datum, f"data[{i}]", used)
                   for i, datum in enumerate(data)]
            for sequence_id in used:
                self._entries[sequence_id].last_used = now
                self._entries.move_to_end(sequence_id)
        return out

    def _lookup(self, session_id: str, sequence_id: str, where: str,
                used: dict[str, SequenceRecord]) -> SequenceRecord:
        record = used.get(sequence_id)
        if record is not None:
            return record
        entry = self._entries.get(sequence_id)
        if entry is None:
            why = self._forgotten.get(sequence_id)
            if why is not None:
                raise NotFoundError(
                    f"{where}: the stability record of sequence_id {sequence_id!r} is gone "
                    f"({why}). Fix: sample again and train on the new sequences; to keep "
                    "records longer, train sooner after sampling.")
            raise NotFoundError(
                f"{where}: unknown sequence_id {sequence_id!r}: this server holds no "
                "stability record of it (records exist only for sequences sampled with "
                "record_stability_info=True, and only until the server restarts). Fix: "
                f"{_HOW_TO_RECORD}; pass SampledSequence.sequence_id unchanged.")
        if entry.record.session_id != session_id:
            raise PermissionDeniedError(
                f"{where}: sequence_id {sequence_id!r} was sampled in another session; a "
                "training request may only name sequences sampled in its own session. Fix: "
                "sample with a sampling client of the same ServiceClient (session) as the "
                "training client.")
        used[sequence_id] = entry.record
        return entry.record

    def _walk(self, session_id: str, spans: Sequence[object], values: np.ndarray, where: str,
              field: str, used: dict[str, SequenceRecord], *, compare_prompt: bool
              ) -> list[tuple[int, int, PromptProvenanceSpan | SampledProvenanceSpan,
                              SequenceRecord]]:
        """Check spans tiling `values`; returns ``(position, length, span, record)`` runs."""
        runs: list[tuple[int, int, PromptProvenanceSpan | SampledProvenanceSpan,
                         SequenceRecord]] = []
        position = 0
        for j, span in enumerate(spans):
            at = f"{where}.{field}[{j}]"
            if not isinstance(span, PromptProvenanceSpan | SampledProvenanceSpan):
                raise UserError(f"{at}: expected a PromptProvenanceSpan or "
                                f"SampledProvenanceSpan, got {type(span).__name__}.")
            offset, length = int(span.offset), int(span.length)
            if offset < 0 or length < 0:
                raise UserError(f"{at}: expected offset >= 0 and length >= 0, got offset "
                                f"{offset}, length {length}.")
            record = self._lookup(session_id, span.sequence_id, at, used)
            prompt = isinstance(span, PromptProvenanceSpan)
            source = record.prompt if prompt else record.tokens
            what = "prompt" if prompt else "sampled tokens"
            if offset + length > source.size:
                raise UserError(
                    f"{at}: span [offset {offset}, offset + length {offset + length}) is out of "
                    f"range: sequence {span.sequence_id!r} has {source.size} {what}. Fix: "
                    f"offsets count from the start of the {what} of that sequence, and a span "
                    "may not run past its end.")
            if position + length > values.size:
                raise UserError(
                    f"{where}.{field}: the spans cover more than the field's {values.size} "
                    f"positions (span {j} ends at {position + length}). Fix: the spans must "
                    "tile the field exactly.")
            if compare_prompt or not prompt:
                given = values[position:position + length]
                expected = source[offset:offset + length]
                diff = np.flatnonzero(given != expected)
                if diff.size:
                    k = int(diff[0])
                    raise UserError(
                        f"{where}: position {position + k} ({field}[{j}]) holds token "
                        f"{int(given[k])}, but the record of sequence {span.sequence_id!r} has "
                        f"token {int(expected[k])} at {what} position {offset + k}. Fix: build "
                        "the datum from the sequence's own prompt and sampled tokens, and name "
                        "with each span the positions it really came from.")
            runs.append((position, length, span, record))
            position += length
        if position != values.size:
            raise UserError(
                f"{where}.{field}: the spans cover {position} positions but the field has "
                f"{values.size}. Fix: the spans must tile the field exactly (build them with "
                "Datum.with_provenance).")
        return runs

    def _resolve_datum(self, session_id: str, datum: Datum, where: str,
                       used: dict[str, SequenceRecord]) -> dict[str, np.ndarray]:
        if datum.model_input_spans is None or datum.loss_fn_input_spans is None:
            raise UserError(
                f"{where}: expected provenance spans (stable_reinforce trains on recorded "
                f"samples), got a Datum without them. Fix: {_HOW_TO_RECORD}, then attach "
                "datum.with_provenance(model_input=[...], loss_fn_inputs=[...]).")
        target = datum.loss_fn_inputs["target_tokens"]
        if target.ndim != 1:
            raise UserError(
                f"{where}.loss_fn_inputs['target_tokens']: expected a 1-D tensor (one sampled "
                f"token per position) for stable_reinforce, got shape {list(target.shape or ())}.")
        targets = target.to_numpy(pad_value=0).astype(np.int64)
        inputs = datum.model_input.token_array().astype(np.int64)
        self._walk(session_id, datum.model_input_spans, inputs, where, "model_input_spans",
                   used, compare_prompt=True)
        # Target rows of prompt spans carry no sampled logprob and no training signal, so only
        # their range is checked (published code fills those targets with placeholders).
        runs = self._walk(session_id, datum.loss_fn_input_spans, targets, where,
                          "loss_fn_input_spans", used, compare_prompt=False)
        advantages = datum.loss_fn_inputs["advantages"].to_numpy(pad_value=0).astype(np.float32)
        sampled_logprobs = np.zeros(targets.size, np.float32)
        sampled_mask = np.zeros(targets.size, np.float32)
        for position, length, span, record in runs:
            rows = slice(position, position + length)
            if isinstance(span, SampledProvenanceSpan):
                offset = int(span.offset)
                sampled_logprobs[rows] = record.logprobs[offset:offset + length]
                sampled_mask[rows] = 1.0
            elif np.any(advantages[rows] != 0):
                k = position + int(np.flatnonzero(advantages[rows])[0])
                raise UserError(
                    f"{where}.loss_fn_inputs['advantages']: position {k} is a prompt position "
                    f"(a PromptProvenanceSpan) but has advantage {float(advantages[k])}; "
                    "stable_reinforce trains only sampled tokens, so it expects advantage 0 "
                    "there. Fix: set the advantages of prompt positions to 0 (fold rewards "
                    "into the sampled tokens' advantages).")
        return {"sampled_logprobs": sampled_logprobs, "sampled_mask": sampled_mask}


def with_logprob_noise(rows: Sequence[SampledRow], std: float, seed: int) -> list[SampledRow]:
    """The rows with Gaussian noise of `std` added to their logprobs (deterministic in
    `seed`): `ServerConfig.sampler_logprob_noise`, a testing aid that makes the sampler's
    numerics differ from training's.

    Example:
        >>> row = SampledRow(tokens=np.array([1, 2]), logprobs=np.array([-1.0, -2.0]),
        ...                  stop_reason="length")
        >>> out = with_logprob_noise([row], 0.5, seed=0)[0]
        >>> out.tokens.tolist(), bool(np.all(out.logprobs != row.logprobs))
        ([1, 2], True)
    """
    out = []
    for i, row in enumerate(rows):
        logprobs = np.asarray(row.logprobs, np.float32)
        noise = np.random.default_rng([seed, i]).normal(0.0, std, logprobs.shape)
        out.append(dataclasses.replace(row, logprobs=(logprobs + noise).astype(np.float32)))
    return out


def stability_metrics(inputs: Sequence[Mapping[str, np.ndarray]],
                      logprobs: Sequence[np.ndarray],
                      config: Mapping[str, float]) -> dict[str, float]:
    """How far a ``stable_reinforce`` batch was from on-policy, as ``name:reduction`` metrics.

    ``stable_reinforce/truncated_tokens:sum``: kept sampled tokens whose importance ratio was
    capped at ``ratio_cap``; ``stable_reinforce/dropped_datums:sum``: datums left out because
    their geometric-mean ratio left the trust band; ``stable_reinforce/max_abs_log_ratio:max``:
    the largest ``|log p_train - log p_sampled|`` over sampled tokens.

    Args:
        inputs: Per datum, the derived inputs (``sampled_logprobs``, ``sampled_mask``).
        logprobs: Per datum, the trained model's logprobs of the targets.
        config: The resolved ``loss_fn_config``.

    Example:
        >>> derived = [{"sampled_logprobs": np.array([0.0, -1.0, -1.0]),
        ...             "sampled_mask": np.array([0.0, 1.0, 1.0])}]
        >>> cfg = {"ratio_cap": 2.0, "sequence_ratio_limit": 2.0, "kl_coeff": 0.0}
        >>> stability_metrics(derived, [np.array([-3.0, -0.2, -1.1])], cfg)
        {'stable_reinforce/truncated_tokens:sum': 1.0, 'stable_reinforce/dropped_datums:sum': 0.0, 'stable_reinforce/max_abs_log_ratio:max': 0.8}
    """
    truncated = dropped = 0
    largest = 0.0
    for derived, lp in zip(inputs, logprobs):
        use = np.asarray(derived["sampled_mask"]).reshape(-1) != 0
        if not use.any():
            continue
        rho = (np.asarray(lp, np.float64).reshape(-1)
               - np.asarray(derived["sampled_logprobs"], np.float64).reshape(-1))[use]
        largest = max(largest, float(np.abs(rho).max()))
        if abs(float(rho.mean())) > np.log(config["sequence_ratio_limit"]):
            dropped += 1
        else:
            truncated += int(np.count_nonzero(rho > np.log(config["ratio_cap"])))
    return {"stable_reinforce/truncated_tokens:sum": float(truncated),
            "stable_reinforce/dropped_datums:sum": float(dropped),
            "stable_reinforce/max_abs_log_ratio:max": round(largest, 6)}
