"""Checkpoints that remember where the loop was, resume, and recovery from corrupted runs.

A training loop saves a `CheckpointRecord` per checkpoint (the tinker paths plus the loop's
own state: step, epoch, data cursor, RNG seed) to an append-only JSON-lines `CheckpointLog`.
After a crash, `resume` starts a training client from the last resumable record; when the
server reports the run ``corrupted`` (its state was lost), `recover` does the same for a live
loop, with bounded retries and callbacks. `RunMonitor` is an opt-in background watcher that
only raises a flag, so the loop decides when to recover, on its own thread.

Example:
    >>> import tempfile
    >>> log = CheckpointLog(tempfile.mkdtemp() + "/checkpoints.jsonl")
    >>> log.append(CheckpointRecord(name="step-10", step=10,
    ...                             state_path="tinker://run-1/weights/step-10",
    ...                             loop_state={"epoch": 0, "cursor": 320}))
    >>> log.latest().loop_state
    {'epoch': 0, 'cursor': 320}
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import msgspec

from .errors import TinkerError, invalid

if TYPE_CHECKING:
    from .clients import RestClient, ServiceClient, TrainingClient
    from .types import TrainingRun

__all__ = [
    "CheckpointKind",
    "CheckpointLog",
    "CheckpointRecord",
    "Recovery",
    "RecoveryError",
    "RecoveryPolicy",
    "RunMonitor",
    "recover",
    "resume",
    "save_checkpoint",
]

_log = logging.getLogger("tinkex_jax.checkpointing")

CheckpointKind = Literal["state", "sampler", "both"]
_KINDS = ("state", "sampler", "both")


class CheckpointRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One checkpoint of a training loop: where it is stored and where the loop was.

    Attributes:
        name: The checkpoint name (the last part of its tinker paths).
        step: The loop's step count when it was saved (the number of optim steps taken).
        state_path: ``tinker://.../weights/<name>`` (weights and optimizer state), if saved.
        sampler_path: ``tinker://.../sampler_weights/<name>``, if saved.
        loop_state: Anything JSON-encodable the loop needs to continue exactly (epoch, data
            cursor, RNG seed, best metric, ...).
        final: Whether this is the run's last checkpoint.
        run_id: The training run it came from.
        time: When it was recorded (Unix seconds).
    """

    name: str
    step: int
    state_path: str | None = None
    sampler_path: str | None = None
    loop_state: dict[str, Any] = msgspec.field(default_factory=dict)
    final: bool = False
    run_id: str | None = None
    time: float = 0.0


class CheckpointLog:
    """An append-only JSON-lines file of `CheckpointRecord`s, one line per checkpoint.

    Each append is one ``write`` of a whole line followed by ``fsync``, so a crash leaves at
    most a torn last line, which `records` skips with a warning.

    Example:
        >>> import tempfile
        >>> log = CheckpointLog(tempfile.mkdtemp() + "/run/checkpoints.jsonl")
        >>> log.records(), log.latest()
        ([], None)
        >>> log.append(CheckpointRecord(name="s", step=1,
        ...                             sampler_path="tinker://r/sampler_weights/s"))
        >>> log.latest() is None  # no state_path: nothing to resume from
        True
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"CheckpointLog({str(self.path)!r})"

    def append(self, record: CheckpointRecord) -> None:
        """Add one record (creates the file and its directory on first use)."""
        line = msgspec.json.encode(record) + b"\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list[CheckpointRecord]:
        """Every record, oldest first.

        Raises:
            ValueError: a line other than the last is not a valid record (the message names
                the line); the file was edited or belongs to something else.
        """
        if not self.path.exists():
            return []
        lines = self.path.read_bytes().splitlines()
        out: list[CheckpointRecord] = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                out.append(msgspec.json.decode(line, type=CheckpointRecord))
            except msgspec.DecodeError as exc:
                if number == len(lines):
                    _log.warning("%s: skipping a torn last line (%s)", self.path, exc)
                    continue
                raise ValueError(
                    f"{self.path}:{number}: not a checkpoint record ({exc}). Fix: restore the "
                    "file or point CheckpointLog at the run's own checkpoints.jsonl.") from None
        return out

    def latest(self) -> CheckpointRecord | None:
        """The newest record with a ``state_path`` (one a training client can resume from)."""
        return next((r for r in reversed(self.records()) if r.state_path is not None), None)


def save_checkpoint(training: TrainingClient, name: str, *, step: int,
                    kind: CheckpointKind = "state", ttl_seconds: int | None = None,
                    loop_state: Mapping[str, Any] | None = None, final: bool = False,
                    log: CheckpointLog | None = None) -> CheckpointRecord:
    """Save the training client's state (and / or sampler weights) and record it.

    Both saves are submitted together and waited for; the record is appended to `log` only
    once they succeeded, so the log never names a checkpoint that does not exist.

    Args:
        training: The training client.
        name: The checkpoint name (e.g. ``f"step-{step}"``).
        step: The loop's step count, recorded for resume.
        kind: ``"state"`` (weights + optimizer, resumable), ``"sampler"`` (sampling
            weights only) or ``"both"``.
        ttl_seconds: Expiry of the saved checkpoints (None: never; final checkpoints usually
            keep none, periodic ones a few days).
        loop_state: JSON-encodable state of the loop (epoch, cursor, seed, ...).
        final: Mark the run's last checkpoint.
        log: Where to append the record.

    Returns:
        The `CheckpointRecord`.

    Raises:
        ValidationError: bad arguments, checked before anything is sent.
        TinkerError: a save failed (nothing is recorded).

    Example: see `recover`.
    """
    where = "save_checkpoint"
    if kind not in _KINDS:
        raise invalid(f"{where}(kind)", f"one of {list(_KINDS)}", kind)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise invalid(f"{where}(step)", "an int >= 0", step)
    if ttl_seconds is not None and (isinstance(ttl_seconds, bool)
                                    or not isinstance(ttl_seconds, int) or ttl_seconds <= 0):
        raise invalid(f"{where}(ttl_seconds)", "None or an int > 0 (seconds)", ttl_seconds)
    state = dict(loop_state or {})
    try:
        msgspec.json.encode(state)
    except (TypeError, msgspec.EncodeError) as exc:
        raise invalid(f"{where}(loop_state)", "a JSON-encodable mapping",
                      "<a mapping that JSON cannot encode>",
                      f"convert arrays with .tolist() and numpy scalars with int() / float() "
                      f"({exc})") from None
    state_future = (training.save_state(name, ttl_seconds=ttl_seconds)
                    if kind in ("state", "both") else None)
    sampler_future = (training.save_weights_for_sampler(name, ttl_seconds=ttl_seconds)
                      if kind in ("sampler", "both") else None)
    record = CheckpointRecord(
        name=name, step=step, loop_state=state, final=final, run_id=training.model_id,
        state_path=state_future.result().path if state_future is not None else None,
        sampler_path=sampler_future.result().path if sampler_future is not None else None,
        time=time.time())
    if log is not None:
        log.append(record)
    return record


def resume(service: ServiceClient, log: CheckpointLog, *, with_optimizer: bool = True
           ) -> tuple[TrainingClient, CheckpointRecord] | None:
    """A training client restored from the log's newest resumable record, or None.

    Args:
        service: The ServiceClient to create the training client with.
        log: The run's checkpoint log.
        with_optimizer: Restore Adam's moments too (an exact resume); False restores the
            weights with a fresh optimizer.

    Returns:
        ``(training_client, record)``; continue the loop from ``record.step`` and
        ``record.loop_state``. None when the log has no resumable record (start afresh).

    Example: see `recover` (which also resumes).
    """
    record = log.latest()
    if record is None:
        return None
    return _restore(service, record, with_optimizer=with_optimizer), record


def _restore(service: ServiceClient, record: CheckpointRecord, *, with_optimizer: bool
             ) -> TrainingClient:
    path = record.state_path
    assert path is not None  # latest() only returns resumable records
    if with_optimizer:
        return service.create_training_client_from_state_with_optimizer(path).result()
    return service.create_training_client_from_state(path).result()


class RecoveryError(TinkerError):
    """A corrupted run could not be recovered (no checkpoint, or every attempt failed)."""


@dataclass(frozen=True, kw_only=True)
class RecoveryPolicy:
    """How `recover` behaves.

    Attributes:
        max_attempts: Attempts to restore the checkpoint (>= 1).
        backoff_s: Wait before the second attempt, doubled after each failure.
        with_optimizer: Restore the optimizer state too (an exact resume).
        on_corrupted: Called with the corrupted `TrainingRun` before restoring.
        on_recovered: Called with the new training client and the record it resumed from.
        on_give_up: Called with the last error when every attempt failed.
    """

    max_attempts: int = 3
    backoff_s: float = 2.0
    with_optimizer: bool = True
    on_corrupted: Callable[[TrainingRun], None] | None = None
    on_recovered: Callable[[TrainingClient, CheckpointRecord], None] | None = None
    on_give_up: Callable[[BaseException], None] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) \
                or self.max_attempts < 1:
            raise invalid("RecoveryPolicy(max_attempts)", "an int >= 1", self.max_attempts)
        if not self.backoff_s >= 0:
            raise invalid("RecoveryPolicy(backoff_s)", "seconds >= 0", self.backoff_s)


class Recovery(NamedTuple):
    """What `recover` did: the client to continue with, and the record it resumed from."""

    training: TrainingClient
    record: CheckpointRecord | None
    recovered: bool


def recover(service: ServiceClient, training: TrainingClient, log: CheckpointLog, *,
            policy: RecoveryPolicy | None = None, rest: RestClient | None = None,
            sleep: Callable[[float], None] = time.sleep) -> Recovery:
    """If the server reports the training run corrupted, resume from the newest checkpoint.

    One ``GET training_runs/{id}``; when the run is healthy nothing else happens and the
    same client comes back. Otherwise the newest resumable record of `log` is restored into
    a new training client, with up to ``policy.max_attempts`` attempts and exponential
    backoff; continue the loop from ``recovery.record.step`` and ``.loop_state``.

    Args:
        service: The ServiceClient that creates the new training client.
        training: The loop's current training client.
        log: The run's checkpoint log.
        policy: Attempts, backoff and callbacks (default `RecoveryPolicy()`).
        rest: The RestClient to ask (default: a new one from `service`).
        sleep: Waits between attempts (tests pass a fake).

    Returns:
        A `Recovery`: ``recovered`` is False (and ``training`` the same client) when the run
        is healthy.

    Raises:
        RecoveryError: the run is corrupted and the log has no resumable record, or every
            attempt failed (the last error is chained).

    Example:
        >>> import tempfile
        >>> import tinkex_jax as tinker
        >>> from tinkex_jax.local import serve
        >>> log = CheckpointLog(tempfile.mkdtemp() + "/checkpoints.jsonl")
        >>> with serve(base_models=["tinkex-jax/tiny"], warm_up=False) as server, \\
        ...         tinker.ServiceClient(base_url=server.base_url,
        ...                              api_key=server.api_key) as service:
        ...     training = service.create_lora_training_client("tinkex-jax/tiny", rank=4).result()
        ...     _ = save_checkpoint(training, "step-0", step=0, loop_state={"cursor": 0}, log=log)
        ...     server.corrupt_run(training.model_id)  # fault injection (local backend)
        ...     training, record, recovered = recover(service, training, log)
        ...     resumed, same = resume(service, log)  # e.g. in a new process after a crash
        >>> recovered, record.step, record.loop_state, same == record
        (True, 0, {'cursor': 0}, True)
    """
    policy = policy if policy is not None else RecoveryPolicy()
    rest = rest if rest is not None else service.create_rest_client()
    run = rest.get_training_run(training.model_id).result()
    if not run.corrupted:
        return Recovery(training, None, False)
    _log.warning("training run %s is corrupted; resuming from %s", run.training_run_id,
                 log.path)
    if policy.on_corrupted is not None:
        policy.on_corrupted(run)
    record = log.latest()
    if record is None:
        raise RecoveryError(
            f"recover: training run {run.training_run_id!r} is corrupted and {log.path} holds "
            "no checkpoint with a state_path. Fix: save_checkpoint(..., kind='state' or "
            "'both', log=log) periodically; meanwhile restart the run from scratch.")
    last: BaseException | None = None
    for attempt in range(policy.max_attempts):
        if attempt:
            sleep(policy.backoff_s * 2 ** (attempt - 1))
        try:
            restored = _restore(service, record, with_optimizer=policy.with_optimizer)
        except TinkerError as exc:
            last = exc
            _log.warning("recover: attempt %d of %d failed: %s", attempt + 1,
                         policy.max_attempts, exc)
            continue
        if policy.on_recovered is not None:
            policy.on_recovered(restored, record)
        return Recovery(restored, record, True)
    assert last is not None
    if policy.on_give_up is not None:
        policy.on_give_up(last)
    raise RecoveryError(
        f"recover: restoring {record.state_path} failed {policy.max_attempts} time(s); last "
        f"error: {last}. Fix: check that the checkpoint still exists (RestClient."
        "list_checkpoints) and retry, or resume from an older record.") from last


class RunMonitor:
    """An opt-in watcher: polls a training run on a daemon thread and raises a flag when the
    server reports it corrupted. It never touches the training client: the loop checks
    `corrupted` (cheap) and calls `recover` itself, on its own thread, between steps.

    Poll errors (network, 5xx) are logged at debug level and retried at the next interval.

    Usage in a loop (every name but `RunMonitor` and `recover` is yours)::

        with RunMonitor(service.create_rest_client(), training.model_id) as monitor:
            for step in range(start, steps):
                if monitor.corrupted:
                    training, record, _ = recover(service, training, log)
                    monitor.watch(training.model_id)
                ...

    Example: ``tests/e2e/test_e2e_checkpointing.py`` runs it against the local backend.
    """

    def __init__(self, rest: RestClient, run_id: str, *, interval_s: float = 30.0,
                 on_corrupted: Callable[[TrainingRun], None] | None = None) -> None:
        if not interval_s > 0:
            raise invalid("RunMonitor(interval_s)", "seconds > 0", interval_s)
        self._rest = rest
        self._interval_s = interval_s
        self._on_corrupted = on_corrupted
        self._lock = threading.Lock()
        self._run_id = run_id
        self._flag = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def corrupted(self) -> bool:
        """Whether the watched run was reported corrupted."""
        return self._flag.is_set()

    @property
    def run_id(self) -> str:
        """The run being watched."""
        with self._lock:
            return self._run_id

    def watch(self, run_id: str) -> None:
        """Watch another run (e.g. the recovered client's) and clear the flag."""
        with self._lock:
            self._run_id = run_id
            self._flag.clear()

    def check(self) -> bool:
        """Poll once now; return `corrupted`."""
        run_id = self.run_id
        run = self._rest.get_training_run(run_id).result()
        with self._lock:  # the poller and the loop may check at once: one callback
            fire = run.corrupted and run_id == self._run_id and not self._flag.is_set()
            if fire:
                self._flag.set()
        if fire and self._on_corrupted is not None:
            self._on_corrupted(run)
        return self.corrupted

    def start(self) -> RunMonitor:
        """Start polling every ``interval_s`` seconds (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="tinkex-run-monitor",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.check()
            except Exception as exc:  # keep watching; the next poll may succeed
                _log.debug("RunMonitor: polling %s failed: %s", self.run_id, exc)

    def __enter__(self) -> RunMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
