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
    TrainingClient.get_info: POST /api/v1/get_info answered HTTP 404 (Not Found): no such model. What to do: check the id or path you passed; the model, checkpoint or session does not exist (or this server does not implement the endpoint).
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
    400: "fix the request as the server's message says (the SDK validated what it could "
         "before sending)",
    401: "check the API key: set TINKER_API_KEY or pass api_key='tml-...' to ServiceClient",
    402: "the account has a billing problem; fix it in the Tinker console (requests paused "
         "for the billing window before this error)",
    403: "the API key may not access this resource; check the project or ask its owner "
         "for access",
    404: "check the id or path you passed; the model, checkpoint or session does not exist "
         "(or this server does not implement the endpoint)",
    409: "the request conflicts with the resource's state (e.g. a checkpoint name already "
         "exists: pass overwrite=True or choose another name)",
    410: "the server no longer has this request's result; submit the request again",
    422: "the request was well formed but the server rejected its values; see the message",
    429: "too many requests: the SDK already retried; lower your concurrency or wait",
}


def hint_for(status: int) -> str:
    """What the user can do about an HTTP status.

    Example:
        >>> hint_for(503).startswith("the server failed")
        True
    """
    if status >= 500:
        return ("the server failed; the SDK already retried. Try again later, or report it "
                "with the time and the request path")
    return _HINTS.get(status, "see the server's message")


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
    message = (f"{where}: {method} {_path_of(url)} answered HTTP {status} ({_reason(status)}): "
               f"{_detail(body)}. {note}What to do: {hint_for(status)}.")
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
) -> APIConnectionError:
    """Build an `APIConnectionError` / `APITimeoutError` for a request with no answer."""
    secrets = tuple(secrets)
    where = sdk_method or "tinkex_jax"
    timed_out = isinstance(error, TimeoutError) or "Timeout" in type(error).__name__
    what = "timed out" if timed_out else f"got no answer ({type(error).__name__}: {error})"
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    message = (f"{where}: {method} {_path_of(url)} {what}{tries}. What to do: check that the "
               f"server at {url.split('/api/v1/')[0]} is reachable (base_url, network, proxy "
               "settings) and try again.")
    cls = APITimeoutError if timed_out else APIConnectionError
    return cls(redact(message, secrets), method=method, url=redact(url, secrets))


_CATEGORY_HINTS: dict[str, str] = {
    "user": "the request was invalid for this model or server; fix its inputs",
    "server": "the server failed while running it; retry later or report the request id",
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
    message = (f"{where}: the server reported that {request_type} request {request_id} failed "
               f"(category {category}): {_detail(body.get('error'))}. What to do: "
               f"{_CATEGORY_HINTS[category]}.")
    return RequestFailedError(redact(message, secrets), category=category,
                              request_id=request_id, body=redact_value(dict(body), secrets))
