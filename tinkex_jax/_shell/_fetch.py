"""Plain GETs of files (checkpoint downloads, tokenizer files) under the SDK's base retry
policy: the one synchronous retry loop of the package.

For: fetching a URL with a client from `build_download_client`, retrying what the API
requests retry (no answer, a connection dropped while the body streams, 408 / 409 / 429 /
5xx or ``x-should-retry``; waits from `BaseRetries`: ``retry-after`` or jittered
exponential backoff) and handing the final response to the caller's `consume`, which checks
it and streams the body to disk. Not for: wording errors (callers do, with
`describe_error`, which redacts secrets) or deciding what a final status means (``consume``
sees it: a 404 is never retried). A partial file never survives a retry or a failure.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from tinkex_jax._shell import FakeTime, build_download_client
    >>> answers = iter([httpx.Response(503), httpx.Response(200, content=b"weights")])
    >>> client = build_download_client(transport=httpx.MockTransport(lambda r: next(answers)))
    >>> dest = Path(tempfile.mkdtemp()) / "w.bin"
    >>> fake = FakeTime()
    >>> get_file(client, "https://files.example/w.bin", lambda r: write_body(r, dest),
    ...          dest=dest, runtime=fake.runtime, what="w.bin")
    7
    >>> fake.delays
    [0.4375]
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import httpx

from ._errors import redact
from ._retry import BaseRetries
from ._runtime import REAL_RUNTIME, Runtime

__all__ = ["DOWNLOAD_MAX_RETRIES", "describe_error", "get_file", "write_body"]

T = TypeVar("T")
logger = logging.getLogger("tinkex_jax.http")

#: Retries of one file GET (three tries in all): a file is large, and a failure is reported
#: to a person who can run the command again.
DOWNLOAD_MAX_RETRIES = 2
_CHUNK = 1 << 20


def get_file(client: httpx.Client, url: str, consume: Callable[[httpx.Response], T], *,
             dest: Path | None = None, headers: Mapping[str, str] | None = None,
             max_retries: int = DOWNLOAD_MAX_RETRIES, runtime: Runtime = REAL_RUNTIME,
             what: str = "a file") -> T:
    """GET `url` with the base retry policy and return ``consume(final response)``.

    `consume` gets a streamed response that is a success, or an error status that is final
    (not retryable, or no retries left); it checks the status and reads the body. A
    transport error while it reads (a dropped connection) is retried like one before the
    answer. Anything else it raises propagates at once.

    Args:
        client: Usually from `build_download_client`.
        url: The file's URL; it appears in no log line (download URLs may carry signatures).
        consume: Reads the final response.
        dest: The file `consume` writes, removed before a retry and on any failure.
        headers: Extra request headers.
        max_retries: Retries after the first try.
        runtime: Its ``block`` sleeps between tries and its ``random`` / ``wall`` feed the
            waits (tests pass ``FakeTime().runtime``).
        what: How log lines name the file.

    Raises:
        httpx.TransportError: no answer after the retries (the last error).
    """
    retry = BaseRetries(max_retries, runtime)
    while True:
        try:
            with client.stream("GET", url, headers=headers) as response:
                delay = (None if response.is_success
                         else retry.after_status(response.status_code, response.headers))
                if delay is None:
                    return consume(response)
                reason = f"HTTP {response.status_code}"
        except httpx.TransportError as error:
            _discard(dest)
            delay = retry.after_no_answer()
            if delay is None:
                raise
            reason = type(error).__name__
        except BaseException:
            _discard(dest)
            raise
        logger.warning("Retrying the download of %s in %.1f s (%s).", what, delay, reason)
        runtime.block(delay)


def write_body(response: httpx.Response, dest: Path,
               on_chunk: Callable[[bytes], None] | None = None) -> int:
    """Stream the body into the new file `dest` (it must not exist); the bytes written.

    `on_chunk` sees every chunk as it is written (hashing, progress).
    """
    written = 0
    with open(dest, "xb") as out:
        for chunk in response.iter_bytes(_CHUNK):
            out.write(chunk)
            written += len(chunk)
            if on_chunk is not None:
                on_chunk(chunk)
    return written


def describe_error(error: BaseException, secrets: Iterable[str] = ()) -> str:
    """``"<ErrorType>: <message>"`` for a message to a person, with `secrets` redacted.

    Example:
        >>> describe_error(httpx.ConnectError("refused by tok-1234567890"), ["tok-1234567890"])
        'ConnectError: refused by <redacted>'
    """
    return redact(f"{type(error).__name__}: {error}", secrets)


def _discard(dest: Path | None) -> None:
    if dest is not None:
        dest.unlink(missing_ok=True)

