"""Fault injection for testing clients against the local backend (off unless asked for).

``tinkex serve --inject-faults SPEC`` (or ``serve(inject_faults=SPEC)``,
``ServerConfig.inject_faults``) makes the server misbehave the way a real network and a
busy hosted service do, on chosen fractions of the requests:

=============  ==========================================================================
``5xx``        answered 500, 502, 503 or 504 before the request is handled (nothing done)
``429``        answered 429 with ``Retry-After`` before the request is handled
``408``        answered 408 before the request is handled (a future poll: "still running")
``try_again``  a ``retrieve_future`` answered ``try_again`` at once (the future is unchanged)
``drop``       the request is handled, then the connection is closed without an answer (the
               work is done, the answer lost: the client must retry without applying it twice)
``slow``       answered ``slow_s`` seconds late
=============  ==========================================================================

A spec is ``key=value`` pairs separated by commas, e.g.
``"5xx=0.05,429=0.03,408=0.03,try_again=0.05,drop=0.03,slow=0.05,seed=7"``. The other keys:
``seed`` (int, default 0), ``slow_s`` (default 0.5), ``retry_after`` (seconds, default 1),
``max_in_a_row`` (default 2: a request that is retried meets at most this many faults in a
row, so a client that retries more often than that never sees a fault as final; raise it to
make faults final) and ``routes`` (``|``-separated route names under ``/api/v1/``, such as
``asample|optim_step``; default every route but ``healthz``).

**Deterministic.** Whether a request meets a fault, and which, depends only on the seed, the
request (method, path, query and body) and how many times this server has seen that same
request: the same program against the same seed meets the same faults, whatever the timing.
Retries carry the same body, so they count as the same request.

Example:
    >>> spec = FaultSpec.parse("5xx=0.2,drop=0.1,seed=3,routes=asample|optim_step")
    >>> spec.error_5xx, spec.drop, spec.routes
    (0.2, 0.1, ('asample', 'optim_step'))
    >>> plan = FaultPlan(spec)
    >>> [plan.decide("POST", "/api/v1/optim_step", "", b"{}") for _ in range(6)]
    [None, None, '5xx', None, None, 'drop']
    >>> plan.decide("GET", "/api/v1/healthz", "", b"")  # never faulted
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from ..errors import invalid

__all__ = ["FAULT_KINDS", "FaultInjector", "FaultPlan", "FaultSpec", "spec_of", "with_faults"]

_log = logging.getLogger("tinkex_jax.local.faults")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The faults, in the order their fractions are stacked.
FAULT_KINDS = ("5xx", "429", "408", "try_again", "drop", "slow")
_FIELDS = {"5xx": "error_5xx", "429": "rate_limit", "408": "timeout_408",
           "try_again": "try_again", "drop": "drop", "slow": "slow"}
_PREFIX = "/api/v1/"
_NEVER = ("healthz",)
_MEMORY = 100_000  # requests whose attempt counts are remembered


@dataclass(frozen=True)
class FaultSpec:
    """Which faults to inject, how often, and with what seed (see the module docstring).

    Attributes:
        error_5xx: Fraction answered 5xx (spec key ``5xx``).
        rate_limit: Fraction answered 429 (``429``).
        timeout_408: Fraction answered 408 (``408``).
        try_again: Fraction of future polls answered try_again (``try_again``).
        drop: Fraction handled, then dropped without an answer (``drop``).
        slow: Fraction answered late (``slow``).
        seed: Seed of the choice.
        slow_s: Delay of a slow answer, in seconds.
        retry_after_s: The ``Retry-After`` of a 429, in seconds.
        max_in_a_row: Most faults one (retried) request meets in a row.
        routes: Route names the faults apply to (empty: all but ``healthz``).
    """

    error_5xx: float = 0.0
    rate_limit: float = 0.0
    timeout_408: float = 0.0
    try_again: float = 0.0
    drop: float = 0.0
    slow: float = 0.0
    seed: int = 0
    slow_s: float = 0.5
    retry_after_s: float = 1.0
    max_in_a_row: int = 2
    routes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = "inject_faults"
        for kind, name in _FIELDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    0.0 <= value <= 1.0):
                raise invalid(f"{where} ({kind})", "a fraction in [0, 1]", value)
        total = sum(getattr(self, name) for name in _FIELDS.values())
        if total > 1.0 + 1e-9:
            raise invalid(where, "fractions that add up to at most 1", round(total, 6))
        if not 0 <= self.slow_s <= 60:
            raise invalid(f"{where} (slow_s)", "seconds in [0, 60]", self.slow_s)
        if not 0 < self.retry_after_s <= 60:
            raise invalid(f"{where} (retry_after)", "seconds in (0, 60]", self.retry_after_s)
        if isinstance(self.max_in_a_row, bool) or not isinstance(self.max_in_a_row, int) \
                or self.max_in_a_row < 1:
            raise invalid(f"{where} (max_in_a_row)", "an int >= 1", self.max_in_a_row)

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        """A spec from its text form, ``"5xx=0.05,drop=0.02,seed=7"``.

        Raises:
            ValidationError: an unknown key, a bad value, or fractions above 1 in all.

        Example:
            >>> FaultSpec.parse("429=0.1, retry_after=0.2").retry_after_s
            0.2
        """
        values: dict[str, Any] = {}
        keys = {**_FIELDS, "seed": "seed", "slow_s": "slow_s", "retry_after": "retry_after_s",
                "max_in_a_row": "max_in_a_row", "routes": "routes"}
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            key, sep, raw = (x.strip() for x in item.partition("="))
            if not sep or key not in keys:
                raise invalid("inject_faults", f"key=value pairs with keys {sorted(keys)}",
                              item, 'e.g. "5xx=0.05,429=0.02,drop=0.02,seed=7"')
            name = keys[key]
            try:
                if name == "routes":
                    values[name] = tuple(r.strip().strip("/") for r in raw.split("|")
                                         if r.strip())
                elif name in ("seed", "max_in_a_row"):
                    values[name] = int(raw)
                else:
                    values[name] = float(raw)
            except ValueError:
                raise invalid(f"inject_faults ({key})", "a number", raw) from None
        return cls(**values)

    def __str__(self) -> str:
        """The spec's text form (`parse` reads it back).

        Example:
            >>> str(FaultSpec(drop=0.1, seed=2))
            'drop=0.1,seed=2,max_in_a_row=2,slow_s=0.5,retry_after=1'
        """
        parts = [f"{kind}={getattr(self, name):g}" for kind, name in _FIELDS.items()
                 if getattr(self, name)]
        parts += [f"seed={self.seed}", f"max_in_a_row={self.max_in_a_row}",
                  f"slow_s={self.slow_s:g}", f"retry_after={self.retry_after_s:g}"]
        if self.routes:
            parts.append("routes=" + "|".join(self.routes))
        return ",".join(parts)

    @property
    def active(self) -> bool:
        """Whether any fault has a nonzero fraction."""
        return any(getattr(self, name) for name in _FIELDS.values())


class FaultPlan:
    """The deterministic choice of faults (no I/O; `FaultInjector` applies them).

    Attributes:
        injected: How many faults of each kind were chosen so far.
    """

    def __init__(self, spec: FaultSpec) -> None:
        self.spec = spec
        self.injected: Counter[str] = Counter()
        self._seen: OrderedDict[bytes, list[int]] = OrderedDict()  # [arrivals, in a row]
        self._key = spec.seed.to_bytes(16, "little", signed=True)
        bounds: list[tuple[float, str]] = []
        total = 0.0
        for kind in FAULT_KINDS:
            total += getattr(spec, _FIELDS[kind])
            bounds.append((total, kind))
        self._bounds = bounds

    def applies(self, path: str) -> bool:
        """Whether requests to `path` may meet faults."""
        if not path.startswith(_PREFIX):
            return False
        route = path[len(_PREFIX):]
        if route.startswith(_NEVER):
            return False
        return not self.spec.routes or route.startswith(self.spec.routes)

    def decide(self, method: str, path: str, query: str, body: bytes) -> str | None:
        """The fault for this arrival of a request (None: none), from `FAULT_KINDS`."""
        if not self.applies(path):
            return None
        identity = hashlib.blake2b(f"{method} {path}?{query}\0".encode() + body,
                                   key=self._key, digest_size=16).digest()
        state = self._seen.pop(identity, None) or [0, 0]
        self._seen[identity] = state
        if len(self._seen) > _MEMORY:
            self._seen.popitem(last=False)
        arrival = state[0]
        state[0] += 1
        if state[1] >= self.spec.max_in_a_row:
            state[1] = 0
            return None
        draw = hashlib.blake2b(identity + arrival.to_bytes(8, "little"), key=self._key,
                               digest_size=8).digest()
        u = int.from_bytes(draw, "little") / 2**64
        kind = next((k for bound, k in self._bounds if u < bound), None)
        if kind == "try_again" and not path.endswith("/retrieve_future"):
            kind = None
        if kind is None or kind == "slow":
            state[1] = 0
        else:
            state[1] += 1
        if kind is not None:
            self.injected[kind] += 1
        return kind


class FaultInjector:
    """ASGI middleware applying a `FaultPlan` to the requests of `app` (outermost, so that
    a dropped connection closes the real socket under uvicorn).

    Args:
        app: The ASGI app.
        spec: The faults.
        max_body_bytes: Bodies larger than this are passed through unfaulted (they are not
            buffered to be hashed).
    """

    def __init__(self, app: ASGIApp, spec: FaultSpec, *, max_body_bytes: int = 64 * 2**20
                 ) -> None:
        self.app = app
        self.spec = spec
        self.plan = FaultPlan(spec)
        self._max_body = max_body_bytes

    @property
    def state(self) -> Any:
        """The wrapped app's ``state`` (Starlette), so the wrapper can stand in for it."""
        return getattr(self.app, "state", None)

    def stats(self) -> dict[str, int]:
        """Faults injected so far, by kind."""
        return dict(self.plan.injected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.plan.applies(scope["path"]):
            await self.app(scope, receive, send)
            return
        body, complete = await _read_body(receive, self._max_body)
        replay = _replay(body, complete, receive)
        if not complete:
            await self.app(scope, replay, send)
            return
        query = scope.get("query_string", b"").decode("latin-1")
        fault = self.plan.decide(scope["method"], scope["path"], query, body)
        if fault is not None:
            _log.debug("injecting %s into %s %s", fault, scope["method"], scope["path"])
        if fault == "slow":
            await asyncio.sleep(self.spec.slow_s)
        elif fault == "drop":
            await self.app(scope, replay, _swallow)
            await _drop(send)
            return
        elif fault is not None:
            await _answer(send, *_fault_answer(fault, self.spec, body, scope["path"]))
            return
        await self.app(scope, replay, send)


def with_faults(app: Any, spec: FaultSpec | str | None, *, max_body_bytes: int = 64 * 2**20
                ) -> Any:
    """`app` wrapped in a `FaultInjector` when `spec` asks for faults; else `app` itself.

    Example:
        >>> app = object()
        >>> with_faults(app, None) is app, with_faults(app, "5xx=0") is app
        (True, True)
        >>> type(with_faults(app, "drop=0.1")).__name__
        'FaultInjector'
    """
    if isinstance(spec, str):
        spec = FaultSpec.parse(spec)
    if spec is None or not spec.active:
        return app
    return FaultInjector(app, spec, max_body_bytes=max_body_bytes)


# ----------------------------------------------------------------------------- ASGI helpers


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The request body (at most `limit` + one chunk) and whether it is complete."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True
        if size > limit:
            return b"".join(chunks), False


def _replay(body: bytes, complete: bool, receive: Receive) -> Receive:
    """A `receive` that hands out the already-read body first, then defers to `receive`."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": not complete}
        return await receive()

    return replay


async def _swallow(message: Message) -> None:
    """A `send` that discards the answer (of a request whose connection will be dropped)."""


async def _drop(send: Send) -> None:
    """Close the connection without answering: abort the socket where the server exposes it
    (uvicorn), else start an answer and break it off."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is not None and hasattr(transport, "abort"):
        transport.abort()
        for _ in range(3):  # let the server see the connection gone before the app returns
            await asyncio.sleep(0)
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"1048576")]})
    await send({"type": "http.response.body", "body": b"{", "more_body": True})


def _fault_answer(fault: str, spec: FaultSpec, body: bytes, path: str
                  ) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]:
    note = (f"Injected fault ({fault}): this server runs with --inject-faults "
            f"'{spec}'; nothing was done. Clients retry this.")
    headers: list[tuple[bytes, bytes]] = []
    if fault == "5xx":
        status = (500, 502, 503, 504)[hashlib.blake2b(body, digest_size=1).digest()[0] % 4]
        return status, {"detail": note, "code": "injected_fault"}, headers
    if fault == "429":
        headers = [(b"retry-after", f"{spec.retry_after_s:g}".encode()),
                   (b"retry-after-ms", str(int(spec.retry_after_s * 1000)).encode())]
        return 429, {"detail": note, "code": "injected_fault"}, headers
    request_id = None
    try:
        parsed = json.loads(body or b"{}")
        request_id = parsed.get("request_id") if isinstance(parsed, dict) else None
    except ValueError:
        pass
    if fault == "408":
        return 408, {"detail": note, "code": "injected_fault", "type": "try_again",
                     "request_id": request_id, "queue_state": "active"}, headers
    assert fault == "try_again" and path.endswith("/retrieve_future")
    return 200, {"type": "try_again", "request_id": request_id, "queue_state": "active"}, headers


async def _answer(send: Send, status: int, data: dict[str, Any],
                  headers: list[tuple[bytes, bytes]]) -> None:
    payload = json.dumps(data).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()), *headers]})
    await send({"type": "http.response.body", "body": payload})


def spec_of(value: FaultSpec | str | None) -> FaultSpec | None:
    """`value` as a `FaultSpec` (parsed when text); None when off."""
    if value is None or isinstance(value, FaultSpec):
        return value
    return FaultSpec.parse(value)
