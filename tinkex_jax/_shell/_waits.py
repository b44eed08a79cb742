"""Saying what the SDK waits for: one INFO line when a wait starts, then at a bounded rate.

The SDK waits in a few places: retries of a request that got no answer or a retryable error
(docs/protocol.md §6), long polls of a result the server has not finished (§5), queue states
the server reports (paused for capacity or a rate limit) and sampling backpressure. Each
wait that lasts more than a few seconds (`WaitLog.after`) is announced through one `WaitLog`
per shell on the ``tinkex_jax.wait`` logger: the first notice of a kind at INFO, later ones
of that kind at INFO again only after `every` seconds (the others, and short waits such as
one quick retry of a dropped keep-alive connection, at DEBUG), so a stuck loop shows a
steady trickle instead of silence or a flood. Each message names what is awaited and how
long the SDK will keep waiting.

When the program has not configured logging at all (no handler anywhere on the logger's
path and no level set on the ``tinkex_jax`` loggers), Python would drop INFO lines; then
notices are written to stderr as ``tinkex_jax: ...`` so a waiting script is never silent.
Configure logging (or set ``TINKER_LOG=warning``) to route or silence them.

Example:
    >>> now = [0.0]
    >>> waits = WaitLog(lambda: now[0], every=30.0)
    >>> waits.notice("retry", "a short wait", waited=0.5)
    False
    >>> waits.notice("retry", "first"), waits.notice("retry", "second")
    (True, False)
    >>> now[0] = 31.0; waits.notice("retry", "third"), waits.notice("poll", "other kind")
    (True, True)
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable
from typing import TextIO

import httpx

__all__ = ["WaitLog", "describe_no_answer", "logging_untouched"]

logger = logging.getLogger("tinkex_jax.wait")


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (like Python's last-resort handler)."""

    terminator = "\n"

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            self.stream.flush()
        except Exception:
            self.handleError(record)


_console = logging.getLogger("tinkex_jax_wait_console")
_console.propagate = False
_console.setLevel(logging.INFO)
if not _console.handlers:
    _handler = _StderrHandler()
    _handler.setFormatter(logging.Formatter("tinkex_jax: %(message)s"))
    _console.addHandler(_handler)


def logging_untouched(target: logging.Logger = logger) -> bool:
    """Whether the program left logging unconfigured for `target`: no handler on its path to
    the root and no level set on any logger of that path but the root's default.

    Example:
        >>> logging_untouched(logging.getLogger("tinkex_jax.wait.example")) in (True, False)
        True
    """
    node: logging.Logger | None = target
    while node is not None:
        if node.handlers:
            return False
        if node is not logging.root and node.level != logging.NOTSET:
            return False
        if not node.propagate:
            return True
        node = node.parent
    return True


class WaitLog:
    """Announces waits at INFO: the first of each kind that lasts `after` seconds or more,
    then at most one per `every` seconds of `clock` per kind (the rest at DEBUG).

    Args:
        clock: Monotonic seconds (the shell's `Runtime.clock`, so tests use a fake clock).
        every: Seconds between INFO notices of one kind.
        after: A wait shorter than this (so far, including the next sleep) is only
            logged at DEBUG.
    """

    def __init__(self, clock: Callable[[], float], *, every: float = 30.0,
                 after: float = 3.0) -> None:
        self.clock = clock
        self.every = every
        self.after = after
        self._last: dict[str, float] = {}
        self.shown = 0

    def notice(self, kind: str, message: str, *, waited: float | None = None) -> bool:
        """Log `message` for a wait of `kind` that will have lasted `waited` seconds by the
        end of the coming sleep (None: long enough by nature, e.g. a paused queue); True
        when it went out at INFO."""
        if waited is not None and waited < self.after:
            logger.debug("%s", message)
            return False
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.every:
            logger.debug("%s", message)
            return False
        self._last[kind] = now
        self.shown += 1
        if logger.isEnabledFor(logging.INFO):
            logger.info("%s", message)
        elif logging_untouched():
            _console.info("%s", message)
        else:
            logger.debug("%s", message)
        return True


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not s for s in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def describe_no_answer(error: BaseException, url: str = "") -> str:
    """A short phrase for why a request got no HTTP answer, for messages.

    Example:
        >>> refused = httpx.ConnectError("All connection attempts failed")
        >>> refused.__cause__ = ConnectionRefusedError(111, "Connect call failed")
        >>> describe_no_answer(refused)
        'connection refused'
        >>> describe_no_answer(httpx.ReadTimeout("slow"))
        'timed out waiting for the answer'
    """
    chain = _chain(error)
    host = httpx.URL(url).host if url else ""
    if any(isinstance(e, socket.gaierror) for e in chain):
        return f"unknown host {host!r}" if host else "unknown host"
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "connection refused"
    if isinstance(error, httpx.ConnectTimeout):
        return "timed out connecting"
    if isinstance(error, httpx.TimeoutException | TimeoutError):
        return "timed out waiting for the answer"
    if isinstance(error, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return f"the connection dropped ({type(error).__name__})"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
