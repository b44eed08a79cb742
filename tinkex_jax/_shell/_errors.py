"""Turning HTTP answers and failures into `tinkex_jax.errors`, with redacted messages.

Every message names what happened, where (SDK method and HTTP method + path) and what to do.
Credentials are removed from every message and body before an error is built.

Example:
    >>> err = status_error(404, {}, b'{"detail": "no such model"}', method="POST",
    ...                    url="http://h/api/v1/get_info", sdk_method="TrainingClient.get_info",
    ...                    secrets=())
    >>> type(err).__name__, err.status_code
    ('NotFoundError', 404)
    >>> print(err)
    TrainingClient.get_info: POST /api/v1/get_info answered HTTP 404 (Not Found): no such model. What to do: check the id or tinker:// path you passed (it may have been deleted or expired), and that base_url points at a Tinker server.

A server message that already says what to do (``Fix: ...``) is kept as the advice:

    >>> print(status_error(400, {}, b'{"detail": "rank 0 is too small. Fix: pass rank >= 1."}',
    ...                    method="POST", url="http://h/api/v1/create_model",
    ...                    sdk_method=None, secrets=()))
    tinkex_jax: POST /api/v1/create_model answered HTTP 400 (Bad Request): rank 0 is too small. Fix: pass rank >= 1.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator, Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from ..errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    RequestErrorCategory,
    RequestFailedError,
    status_error_class,
)
from ._waits import describe_no_answer

__all__ = [
    "SecretSet",
    "connection_error",
    "decode_body",
    "hint_for",
    "redact",
    "redact_value",
    "request_failed_error",
    "status_error",
]

_REDACTED = "<redacted>"
_MAX_DETAIL = 600
_MIN_SECRET_LEN = 8


class SecretSet:
    """The secrets to redact: fixed ones (from the settings) plus credentials met at run time
    (credential-command outputs, JWTs), of which the newest `keep` are remembered.

    Iterating gives a snapshot, longest first (so a secret that contains another is redacted
    whole). Thread-safe. Values shorter than 8 characters are ignored (redacting them would
    garble messages, and no real credential is that short).

    Example:
        >>> secrets = SecretSet(["tml-fixed-secret"])
        >>> secrets.add("eyJ.jwt-seen-later")
        >>> redact("sent eyJ.jwt-seen-later and tml-fixed-secret", secrets)
        'sent <redacted> and <redacted>'
        >>> len(secrets), "<redacted>" in repr(secrets)
        (2, True)
    """

    def __init__(self, fixed: Iterable[str] = (), *, keep: int = 64) -> None:
        self._fixed = tuple(s for s in fixed if s and len(s) >= _MIN_SECRET_LEN)
        self._seen: dict[str, None] = {}
        self._keep = keep
        self._lock = threading.Lock()
        self._snapshot: tuple[str, ...] = self._build()

    def _build(self) -> tuple[str, ...]:
        return tuple(sorted(set(self._fixed) | set(self._seen), key=len, reverse=True))

    def add(self, value: str) -> None:
        """Remember a credential met at run time."""
        if not value or len(value) < _MIN_SECRET_LEN:
            return
        with self._lock:
            if value in self._seen:
                return
            self._seen[value] = None
            while len(self._seen) > self._keep:
                del self._seen[next(iter(self._seen))]
            self._snapshot = self._build()

    def __iter__(self) -> Iterator[str]:
        return iter(self._snapshot)

    def __len__(self) -> int:
        return len(self._snapshot)

    def __repr__(self) -> str:
        return f"SecretSet(<redacted> x {len(self._snapshot)})"


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret in `text` with ``<redacted>``.

    Example:
        >>> redact("key tml-abc rejected", ["tml-abc"])
        'key <redacted> rejected'
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, _REDACTED)
    return text


def redact_value(value: Any, secrets: Iterable[str]) -> Any:
    """Redact strings inside a decoded JSON value (dicts, lists, strings)."""
    secrets = tuple(secrets)
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {redact(str(k), secrets): redact_value(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v, secrets) for v in value]
    return value


def decode_body(content: bytes, secrets: Iterable[str]) -> object:
    """The body as JSON if it parses, else as (truncated) text; redacted either way."""
    text = content.decode("utf-8", "replace")
    try:
        value: object = json.loads(text) if text else None
    except ValueError:
        value = text if len(text) <= 2000 else text[:2000] + "..."
    return redact_value(value, secrets)


def _detail(body: object) -> str:
    if body is None or body == "":
        return "(empty body)"
    if isinstance(body, dict):
        for key in ("detail", "error", "message"):
            if key in body:
                value = body[key]
                text = value if isinstance(value, str) else json.dumps(value, default=str)
                break
        else:
            text = json.dumps(body, default=str)
    else:
        text = body if isinstance(body, str) else json.dumps(body, default=str)
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "..."


_HINTS: dict[int, str] = {
    400: "change the request as the server's message says",
    401: "check the API key: set TINKER_API_KEY, pass api_key='tml-...' to ServiceClient, or "
         "store a key with `tinkex auth login`",
    402: "fix the account's billing in the Tinker console (the SDK paused its requests for "
         "the billing window before giving up)",
    403: "use a key that may access this resource, or ask the project's owner for access",
    404: "check the id or tinker:// path you passed (it may have been deleted or expired), "
         "and that base_url points at a Tinker server",
    409: "resolve the conflict the message names; for a checkpoint name that is taken, "
         "choose another name or pass overwrite=True",
    410: "submit the request again: the server no longer has its result",
    422: "change the values the server's message names",
    429: "lower how many requests you keep in flight, or wait a little (the SDK already "
         "retried)",
}


def hint_for(status: int) -> str:
    """What the user can do about an HTTP status (one imperative clause, no final period).

    Example:
        >>> print(hint_for(503))
        try again later (the SDK already retried); if it persists, report the time and the request path to the server's operators
    """
    if status >= 500:
        return ("try again later (the SDK already retried); if it persists, report the time "
                "and the request path to the server's operators")
    return _HINTS.get(status, "read the server's message above")


def _sentence(text: str) -> str:
    """`text` ending in exactly one sentence mark (no doubled ``..``).

    Example:
        >>> _sentence("no such model"), _sentence("no such model."), _sentence("why?")
        ('no such model.', 'no such model.', 'why?')
    """
    text = text.rstrip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _says_what_to_do(detail: str) -> bool:
    """Whether the server's message already says what to do (so no generic advice is added,
    which could contradict it)."""
    return any(mark in detail for mark in ("Fix:", "What to do:", "fix:"))


def _path_of(url: str) -> str:
    return urlsplit(url).path or url


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def status_error(
    status: int,
    headers: Mapping[str, str],
    content: bytes,
    *,
    method: str,
    url: str,
    sdk_method: str | None,
    secrets: Iterable[str],
    note: str = "",
) -> APIStatusError:
    """Build the `APIStatusError` subclass for an HTTP error answer."""
    secrets = tuple(secrets)
    body = decode_body(content, secrets)
    where = sdk_method or "tinkex_jax"
    detail = _detail(body)
    advice = "" if _says_what_to_do(detail) else f" What to do: {hint_for(status)}."
    message = (f"{where}: {method} {_path_of(url)} answered HTTP {status} ({_reason(status)}): "
               f"{_sentence(detail)}{' ' + note.strip() if note.strip() else ''}{advice}")
    cls = status_error_class(status)
    return cls(redact(message, secrets), status_code=status, method=method,
               url=redact(url, secrets), body=body,
               headers={k.lower(): redact(v, secrets) for k, v in headers.items()})


def connection_error(
    error: BaseException,
    *,
    method: str,
    url: str,
    sdk_method: str | None,
    secrets: Iterable[str],
    attempts: int,
    elapsed: float | None = None,
    never_answered: bool = False,
) -> APIConnectionError:
    """Build an `APIConnectionError` / `APITimeoutError` for a request with no answer.

    `never_answered`: no server at this base URL has answered the client yet, so the message
    is about a missing or wrong server (and the error is not retried further).

    Example:
        >>> refused = ConnectionRefusedError(111, "Connect call failed")
        >>> err = connection_error(refused, method="POST", url="http://127.0.0.1:9/api/v1/x",
        ...                        sdk_method="ServiceClient.get_server_capabilities",
        ...                        secrets=(), attempts=4, elapsed=2.6, never_answered=True)
        >>> print(err)  # doctest: +NORMALIZE_WHITESPACE
        ServiceClient.get_server_capabilities: no Tinker server answered at
        http://127.0.0.1:9 (connection refused; 4 tries in 2.6 s). What to do: check base_url
        / TINKER_BASE_URL, or start a local server (`tinkex serve`); to wait for a server
        that is still starting, pass ServiceClient(wait_for_server=120) or set
        TINKEX_WAIT_FOR_SERVER=120.
    """
    secrets = tuple(secrets)
    where = sdk_method or "tinkex_jax"
    base = url.split("/api/v1/")[0]
    timed_out = isinstance(error, TimeoutError) or "Timeout" in type(error).__name__
    reason = describe_no_answer(error, url)
    tries = f"{attempts} tries" if attempts > 1 else "1 try"
    if elapsed is not None and attempts > 1:
        tries += f" in {elapsed:.1f} s"
    if never_answered:
        message = (f"{where}: no Tinker server answered at {base} ({reason}; {tries}). "
                   "What to do: check base_url / TINKER_BASE_URL, or start a local server "
                   "(`tinkex serve`); to wait for a server that is still starting, pass "
                   "ServiceClient(wait_for_server=120) or set TINKEX_WAIT_FOR_SERVER=120.")
    else:
        slow = (", or pass a larger timeout= to ServiceClient if the request is slow"
                if timed_out else "")
        message = (f"{where}: {method} {_path_of(url)} got no answer from {base} ({reason}; "
                   f"{tries}). What to do: check that the server is still running and "
                   f"reachable (network, proxy settings){slow}, then try again.")
    cls = APITimeoutError if timed_out else APIConnectionError
    built = cls(redact(message, secrets), method=method, url=redact(url, secrets))
    built.server_never_answered = never_answered
    return built


_CATEGORY_HINTS: dict[str, str] = {
    "user": "change the request's inputs as the message says",
    "server": "retry later; if it fails again, report the request id to the server's "
              "operators",
    "unknown": "retry; if it fails again, report the request id",
}


def request_failed_error(
    body: Mapping[str, Any],
    *,
    request_id: str,
    request_type: str,
    sdk_method: str | None,
    secrets: Iterable[str],
) -> RequestFailedError:
    """Build a `RequestFailedError` from a ``{"error", "category"}`` future result."""
    secrets = tuple(secrets)
    raw_category = str(body.get("category", "unknown")).lower()
    category: RequestErrorCategory = (
        raw_category if raw_category in ("user", "server") else "unknown")  # type: ignore[assignment]
    where = sdk_method or "tinkex_jax"
    detail = _detail(body.get("error"))
    advice = ("" if _says_what_to_do(detail)
              else f" What to do: {_CATEGORY_HINTS[category]}.")
    message = (f"{where}: the server reported that {request_type} request {request_id} failed "
               f"(category {category}): {_sentence(detail)}{advice}")
    return RequestFailedError(redact(message, secrets), category=category,
                              request_id=request_id, body=redact_value(dict(body), secrets))
