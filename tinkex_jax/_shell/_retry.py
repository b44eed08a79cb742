"""Retry schedules of docs/protocol.md §5.2 and §6 as pure functions, the base policy of §6.1 as
explicit per-request state (`BaseRetries`: the API requests of `HttpCore` and the file
downloads of `tinkex_jax._shell._fetch` both follow it), plus the holder retry loop.

Example:
    >>> [base_retry_delay(k, 0.0) for k in range(6)]
    [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    >>> [holder_retry_delay(a) for a in range(7)]
    [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    >>> poll_backoff(0), poll_backoff(10)
    (1.0, 30.0)
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from ..errors import APIConnectionError, APIStatusError, BillingError
from ._runtime import Runtime
from ._waits import WaitLog

__all__ = [
    "HOLDER_RETRY_BUDGET",
    "BaseRetries",
    "BillingPause",
    "ProxyRejectBudget",
    "base_retry_delay",
    "holder_retry_delay",
    "is_retryable_error",
    "parse_retry_after",
    "poll_backoff",
    "sample_retry_delay",
    "should_retry_status",
    "with_holder_retries",
]

T = TypeVar("T")
logger = logging.getLogger("tinkex_jax.retry")

#: Total time the holder retry loop keeps trying (§6.2).
HOLDER_RETRY_BUDGET = 300.0
_RETRY_STATUSES = frozenset({408, 409, 429})


def should_retry_status(status: int, headers: Mapping[str, str]) -> bool:
    """Whether the base client retries a response: ``x-should-retry`` wins, else the status.

    Example:
        >>> should_retry_status(503, {}), should_retry_status(400, {})
        (True, False)
        >>> should_retry_status(503, {"x-should-retry": "false"})
        False
    """
    override = headers.get("x-should-retry")
    if override == "true":
        return True
    if override == "false":
        return False
    return status in _RETRY_STATUSES or status >= 500


def parse_retry_after(headers: Mapping[str, str], now: dt.datetime) -> float | None:
    """The server's requested delay in seconds, if it is in (0, 60].

    Reads ``retry-after-ms`` first, then ``retry-after`` (seconds or an HTTP date).

    Example:
        >>> now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
        >>> parse_retry_after({"retry-after-ms": "1500"}, now)
        1.5
        >>> parse_retry_after({"retry-after": "Thu, 01 Jan 2026 00:00:07 GMT"}, now)
        7.0
        >>> parse_retry_after({"retry-after": "120"}, now) is None
        True
    """
    value: float | None = None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000.0
        except ValueError:
            value = None
    if value is None:
        raw = headers.get("retry-after")
        if raw is not None:
            try:
                value = float(raw)
            except ValueError:
                try:
                    when = email.utils.parsedate_to_datetime(raw)
                except (TypeError, ValueError, IndexError):
                    when = None
                if when is not None:
                    if when.tzinfo is None:
                        when = when.replace(tzinfo=dt.UTC)
                    value = (when - now).total_seconds()
    if value is not None and 0 < value <= 60:
        return value
    return None


def base_retry_delay(retries_taken: int, u: float) -> float:
    """Base-client delay ``min(0.5 * 2**k, 10) * (1 - 0.25 * u)`` with ``u`` in [0, 1)."""
    return min(0.5 * 2.0 ** retries_taken, 10.0) * (1.0 - 0.25 * u)


class BaseRetries:
    """The base retry policy of §6.1 for one logical request, as explicit state.

    After each failed try the caller asks what to do: `after_no_answer` (a timeout, a refused
    or dropped connection) or `after_status` (an error answer). Each returns the seconds to
    wait before the next try, or None when the request must fail now: after `max_retries`
    retries, or for a status the policy does not retry (see `should_retry_status`). Waits are
    ``retry-after(-ms)`` when the server asks for one (up to 60 s), else `base_retry_delay`
    with jitter from ``runtime.random``. `taken` counts the retries granted so far.

    Example:
        >>> fake = Runtime(random=lambda: 0.0)
        >>> retry = BaseRetries(2, fake)
        >>> retry.after_status(404, {}), retry.after_status(503, {}), retry.after_no_answer()
        (None, 0.5, 1.0)
        >>> retry.after_status(503, {}), retry.taken
        (None, 2)
        >>> BaseRetries(2, fake).after_status(429, {"retry-after": "3"})
        3.0
    """

    def __init__(self, max_retries: int, runtime: Runtime) -> None:
        self.max_retries = max_retries
        self.runtime = runtime
        self.taken = 0

    def _grant(self, delay: float | None) -> float:
        self.taken += 1
        return base_retry_delay(self.taken - 1, self.runtime.random()) if delay is None else delay

    def after_no_answer(self) -> float | None:
        """The wait before retrying a try that got no answer; None: give up."""
        if self.taken >= self.max_retries:
            return None
        return self._grant(None)

    def after_status(self, status: int, headers: Mapping[str, str]) -> float | None:
        """The wait before retrying an error answer; None: it is final (not retryable, or no
        retries left)."""
        if self.taken >= self.max_retries or not should_retry_status(status, headers):
            return None
        return self._grant(parse_retry_after(headers, self.runtime.wall()))


def holder_retry_delay(attempt: int) -> float:
    """Holder-level delay ``min(2**attempt, 30)`` (§6.2)."""
    return float(min(2 ** min(attempt, 16), 30))


def poll_backoff(consecutive_errors: int) -> float:
    """retrieve_future backoff after connection errors or 429: ``min(2**n, 30)`` (§5.2)."""
    return float(min(2 ** min(consecutive_errors, 16), 30))


def sample_retry_delay(attempt: int, u: float, *, base: float = 0.5, cap: float = 10.0,
                       jitter: float = 0.25) -> float:
    """Sampling retry delay ``min(base * 2**attempt, cap)`` ± `jitter`, clamped to [0, cap].

    Example:
        >>> sample_retry_delay(0, 0.5), sample_retry_delay(0, 0.0), sample_retry_delay(9, 1.0)
        (0.5, 0.375, 10.0)
    """
    delay = min(base * 2.0 ** min(attempt, 30), cap)
    delay *= 1.0 + jitter * (2.0 * u - 1.0)
    return max(0.0, min(delay, cap))


def is_retryable_error(error: BaseException) -> bool:
    """Errors the holder loop retries: no answer, timeouts, 408, 409, 429 and 5xx; not a
    connection failure to a server that never answered (that one already had its
    ``wait_for_server`` seconds).

    Example:
        >>> is_retryable_error(APIConnectionError("reset")), is_retryable_error(ValueError())
        (True, False)
    """
    if isinstance(error, APIConnectionError):
        return not error.server_never_answered
    if isinstance(error, TimeoutError):
        return True
    if isinstance(error, APIStatusError):
        return error.status_code in _RETRY_STATUSES or error.status_code >= 500
    return False


class BillingPause:
    """The 402 billing pause of §6.3 as explicit state.

    On each 402 the caller asks `on_402`; it answers how long to sleep (5 s) while the current
    incident is younger than `max_pause` seconds, or None once it is older (then the caller
    raises). An incident ends after 300 s without a 402. Warnings are logged at most once per
    60 s.

    Example:
        >>> b = BillingPause(max_pause=10.0)
        >>> b.on_402(0.0), b.on_402(5.0), b.on_402(11.0)
        (5.0, 5.0, None)
        >>> b.on_402(400.0)  # a new incident
        5.0
    """

    SLEEP = 5.0
    INCIDENT_GAP = 300.0
    WARN_EVERY = 60.0

    def __init__(self, max_pause: float = 3600.0) -> None:
        self.max_pause = max_pause
        self._incident_start: float | None = None
        self._last_402 = float("-inf")
        self._last_warning = float("-inf")

    def on_402(self, now: float) -> float | None:
        """Record a 402 at `now`; return the pause in seconds, or None to give up."""
        if self._incident_start is None or now - self._last_402 > self.INCIDENT_GAP:
            self._incident_start = now
        self._last_402 = now
        if now - self._incident_start > self.max_pause:
            return None
        if now - self._last_warning >= self.WARN_EVERY:
            self._last_warning = now
            logger.warning("The server reports a billing problem (HTTP 402); pausing requests "
                           "for up to %.0f s while it is resolved. Check your Tinker account's "
                           "billing.", self.max_pause)
        return self.SLEEP


class ProxyRejectBudget:
    """Budget for bare HTTP 400s (empty body) treated as proxy rejections (§6.5).

    Each rejection takes one unit; each successful response gives one back (up to the cap).

    Example:
        >>> b = ProxyRejectBudget(2)
        >>> b.take(), b.take(), b.take()
        (True, True, False)
        >>> b.replenish(); b.take()
        True
    """

    def __init__(self, cap: int = 16) -> None:
        self.cap = cap
        self.left = cap

    def take(self) -> bool:
        """Use one unit; False when the budget is exhausted."""
        if self.left <= 0:
            return False
        self.left -= 1
        return True

    def replenish(self) -> None:
        """Give one unit back after a successful response."""
        self.left = min(self.cap, self.left + 1)


def _short(error: BaseException) -> str:
    if isinstance(error, APIStatusError):
        return f"HTTP {error.status_code}"
    if isinstance(error, APIConnectionError):
        return "no answer"
    return type(error).__name__


async def with_holder_retries(
    call: Callable[[], Awaitable[T]],
    *,
    runtime: Runtime,
    billing: BillingPause,
    what: str,
    budget: float = HOLDER_RETRY_BUDGET,
    waits: WaitLog | None = None,
) -> T:
    """Run `call` with the holder retry loop of §6.2 and the billing pause of §6.3.

    Retryable errors (see `is_retryable_error`) are retried after ``min(2**attempt, 30)`` s
    until `budget` seconds have passed (the last sleep is cut to what is left); then the last
    error is raised. A 402 sleeps 5 s without counting, until the billing window closes.
    Each wait is announced through `waits` (see `tinkex_jax._shell._waits`).
    """
    start = runtime.clock()
    attempt = 0
    while True:
        try:
            return await call()
        except BillingError:
            pause = billing.on_402(runtime.clock())
            if pause is None:
                raise
            await runtime.sleep(pause)
        except Exception as error:
            if not is_retryable_error(error):
                raise
            left = budget - (runtime.clock() - start)
            if left <= 0:
                raise
            delay = min(holder_retry_delay(attempt), left)
            message = (f"{what} failed ({_short(error)}); trying it again in {delay:.0f} s, "
                       f"and for up to {left:.0f} s more before giving up.")
            if waits is not None:
                waits.notice("retry", message, waited=runtime.clock() - start + delay)
            else:
                logger.debug("%s", message)
            attempt += 1
            await runtime.sleep(delay)
