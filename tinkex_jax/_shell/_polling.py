"""Long polling of ``retrieve_future`` with every answer of docs/protocol.md §5.2.

| answer | reaction |
|---|---|
| 200 protobuf | decode (ForwardBackward / Forward / Sample only) |
| 200 JSON result of those three | decode as JSON (servers built for SDKs before 0.25) |
| 200 ``{"type": "try_again", …}`` / 408 | re-poll at once; queue state to the observer |
| 200 ``{"status": "complete_metadata", …}`` | reserve the payload size, re-poll with ``allow_metadata_only=false`` |
| 200 ``{"error", "category"}`` | `RequestFailedError` |
| 200 other JSON | decode (JSON kinds) |
| 5xx | re-poll at once |
| 429, no answer | sleep ``min(2**n, 30)`` (n = consecutive such errors) |
| 400 | up to 3 extra polls (reset by a 408), then `BadRequestError` |
| 402 | billing pause (§6.3) |
| 410 | `APIStatusError` 410 (sampling resubmits; fatal for training) |
| other 4xx | the matching `APIStatusError` |
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from ..errors import APIConnectionError, APIResponseValidationError
from ..types import FutureRetrieveRequest
from ..wire import decode_json
from ._constants import PROTO_REQUEST_TYPES
from ._errors import request_failed_error, status_error
from ._http import SDK_METHOD, HttpCore
from ._legacy_json import decode_legacy_result, is_legacy_result
from ._limits import BytesBudget
from ._retry import BillingPause, poll_backoff
from ._runtime import Runtime

__all__ = ["QueueObserver", "QueueStateLogger", "retrieve_future"]

T = TypeVar("T")
logger = logging.getLogger("tinkex_jax.futures")
#: Seconds of waiting for one result before the SDK says that it is waiting.
POLL_NOTICE_AFTER = 10.0

#: Called with ``(queue_state, queue_state_reason)`` on every try_again / 408 answer.
QueueObserver = Callable[[str, "str | None"], None]
_MAX_BAD_REQUESTS = 3


class QueueStateLogger:
    """Logs "paused" queue states with a debounce and forwards every report to listeners.

    Training: a warning only after the queue has been paused for `grace` seconds (15 min),
    then at most once per `every` seconds (60). Sampling: at most once per `every` seconds.

    Example:
        >>> now = [0.0]
        >>> seen = []
        >>> log = QueueStateLogger("sampling", "s1", clock=lambda: now[0])
        >>> log.listeners.append(lambda state, reason: seen.append(state))
        >>> log("paused_capacity", None); log("active", None); seen
        ['paused_capacity', 'active']
    """

    def __init__(self, kind: Literal["training", "sampling"], name: str, *,
                 clock: Callable[[], float], every: float = 60.0,
                 grace: float | None = None) -> None:
        self.kind = kind
        self.name = name
        self.every = every
        self.grace = (900.0 if kind == "training" else 0.0) if grace is None else grace
        self.listeners: list[QueueObserver] = []
        self._clock = clock
        self._paused_since: float | None = None
        self._last_log = float("-inf")
        self.warnings = 0

    def __call__(self, state: str, reason: str | None) -> None:
        for listener in list(self.listeners):
            try:
                listener(state, reason)
            except Exception:  # a user callback must not break polling
                logger.exception("queue-state listener failed")
        if state == "active":
            self._paused_since = None
            return
        now = self._clock()
        if self._paused_since is None:
            self._paused_since = now
        if now - self._paused_since < self.grace or now - self._last_log < self.every:
            return
        self._last_log = now
        self.warnings += 1
        default = {"paused_rate_limit": "rate limit reached",
                   "paused_capacity": "the service is short on capacity"}.get(state, state)
        what = "Training" if self.kind == "training" else "Sampling"
        logger.warning("%s is paused for %s: %s. Requests stay queued and continue "
                       "automatically.", what, self.name, reason or default)


class _PollWait:
    """When to say that a result is still awaited: after `POLL_NOTICE_AFTER` seconds, then
    every ``waits.every`` seconds (the shell's `WaitLog` bounds the rate across requests);
    a paused queue state is said at once."""

    def __init__(self, http: HttpCore, runtime: Runtime, request_type: str,
                 request_id: str) -> None:
        self.http = http
        self.clock = runtime.clock
        self.what = f"{request_type} request {request_id}"
        self.started = self.clock()
        self.next_notice = self.started + POLL_NOTICE_AFTER
        self.queue: str | None = None

    def queue_state(self, state: str, reason: object) -> None:
        if state == "active" or state == self.queue:
            self.queue = None if state == "active" else self.queue
            return
        self.queue = state
        because = f" ({reason})" if isinstance(reason, str) and reason else ""
        self.http.waits.notice("queue", (
            f"The server holds {self.what} in its queue: {state}{because}. It runs when the "
            "server has room; the SDK keeps waiting for it with no time limit of its own."))

    def tick(self, why: str = "") -> None:
        now = self.clock()
        if now < self.next_notice:
            return
        self.next_notice = now + self.http.waits.every
        queue = f"; queue state {self.queue}" if self.queue else ""
        self.http.waits.notice("poll", (
            f"Waiting for the result of {self.what} ({now - self.started:.0f} s so far{queue}"
            f"{why}). The SDK polls until the server answers, with no time limit of its own; "
            "pass a timeout to .result(timeout=...) to bound your wait."))


def _json_body(content: bytes) -> Any:
    try:
        return json.loads(content) if content else None
    except ValueError:
        return None


async def retrieve_future(
    http: HttpCore,
    request_id: str,
    request_type: str,
    *,
    runtime: Runtime,
    billing: BillingPause,
    response_budget: BytesBudget,
    json_type: type[T] | None = None,
    decode_proto: Callable[[bytes], T] | None = None,
    observer: QueueObserver | None = None,
    roundtrip: float = 0.0,
) -> T:
    """Poll until the result of `request_id` arrives; decode and return it.

    Exactly one of `json_type` (JSON kinds) and `decode_proto` (proto kinds) is used,
    according to `request_type`.
    """
    is_proto = request_type in PROTO_REQUEST_TYPES
    sdk_method = SDK_METHOD.get()  # named in errors; polls themselves send no x-sdk-method
    token = SDK_METHOD.set(None)
    iteration = 0
    allow_metadata_only = True
    backoff_n = 0
    bad_requests = 0
    reserved = 0
    wait = _PollWait(http, runtime, request_type, request_id)
    try:
        while True:
            wait.tick()
            headers = {
                "X-Tinker-Request-Iteration": str(iteration),
                "X-Tinker-Request-Type": request_type,
                "X-Stainless-Raw-Response": "raw",
                "Accept": "application/x-protobuf" if is_proto else "application/json",
            }
            if iteration == 0:
                headers["X-Tinker-Create-Promise-Roundtrip-Time"] = repr(float(roundtrip))
            iteration += 1
            body = FutureRetrieveRequest(request_id=request_id,
                                         allow_metadata_only=allow_metadata_only)
            try:
                response = await http.send("POST", "retrieve_future", json=body, headers=headers,
                                           timeout=45.0, max_retries=0, check_status=False)
            except APIConnectionError:
                wait.tick(f"; the server did not answer the last poll, next in "
                          f"{poll_backoff(backoff_n):.0f} s")
                await runtime.sleep(poll_backoff(backoff_n))
                backoff_n += 1
                continue
            status = response.status_code
            if status == 429:
                await runtime.sleep(poll_backoff(backoff_n))
                backoff_n += 1
                continue
            backoff_n = 0
            if 200 <= status < 300:
                if "application/x-protobuf" in response.headers.get("content-type", ""):
                    if decode_proto is None:
                        raise APIResponseValidationError(
                            f"retrieve_future answered {request_type} request {request_id} with "
                            "a protobuf body, but that result kind is JSON-only",
                            url=http.url("retrieve_future"))
                    return decode_proto(response.content)
                payload = _json_body(response.content)
                if isinstance(payload, dict):
                    if "error" in payload:
                        raise request_failed_error(payload, request_id=request_id,
                                                   request_type=request_type,
                                                   sdk_method=sdk_method, secrets=http.secrets)
                    if payload.get("type") == "try_again":
                        wait.queue_state(str(payload.get("queue_state", "active")),
                                         payload.get("queue_state_reason"))
                        if observer is not None:
                            observer(str(payload.get("queue_state", "active")),
                                     payload.get("queue_state_reason"))
                        await asyncio.sleep(0)
                        continue
                    if payload.get("status") == "complete_metadata":
                        if not allow_metadata_only:
                            raise APIResponseValidationError(
                                f"retrieve_future answered complete_metadata for {request_type} "
                                f"request {request_id} although allow_metadata_only was false",
                                url=http.url("retrieve_future"), body=payload)
                        size = payload.get("response_payload_size", 0)
                        reserved = await response_budget.acquire(
                            size if isinstance(size, int) else 0)
                        allow_metadata_only = False
                        continue
                if is_proto and is_legacy_result(request_type, payload):
                    logger.debug("retrieve_future answered %s request %s with JSON, as servers "
                                 "built for SDKs before 0.25 do; reading it as JSON",
                                 request_type, request_id)
                    return decode_legacy_result(request_type, response.content)
                if is_proto or json_type is None:
                    raise APIResponseValidationError(
                        f"retrieve_future answered {request_type} request {request_id} with a "
                        "JSON payload, but this result kind only travels as protobuf "
                        "(Content-Type: application/x-protobuf). The server does not follow the "
                        "Tinker protocol for this result.",
                        url=http.url("retrieve_future"), body=payload)
                return decode_json(response.content, json_type)
            if status == 408:
                payload = _json_body(response.content)
                if isinstance(payload, dict) and payload.get("queue_state"):
                    wait.queue_state(str(payload["queue_state"]),
                                     payload.get("queue_state_reason"))
                    if observer is not None:
                        observer(str(payload["queue_state"]), payload.get("queue_state_reason"))
                bad_requests = 0
                await asyncio.sleep(0)
                continue
            if status >= 500:
                await asyncio.sleep(0)
                continue
            if status == 400 and bad_requests < _MAX_BAD_REQUESTS:
                bad_requests += 1
                continue
            if status == 402:
                pause = billing.on_402(runtime.clock())
                if pause is not None:
                    await runtime.sleep(pause)
                    continue
            note = ""
            if status == 400:
                note = f"(Still 400 after {_MAX_BAD_REQUESTS} extra polls.) "
            elif status == 410:
                note = f"The result of {request_type} request {request_id} is gone. "
            raise status_error(status, response.headers, response.content, method="POST",
                               url=http.url("retrieve_future"), sdk_method=sdk_method,
                               secrets=http.secrets, note=note)
    finally:
        SDK_METHOD.reset(token)
        if reserved:
            await response_budget.release(reserved)
