"""The one exception hierarchy of tinkex_jax.

```
TinkerError                         base of everything this SDK raises on purpose
├── ValidationError (ValueError)    bad input, caught before anything is sent
├── ClientPoisonedError             a TrainingClient whose custom-loss chain failed
├── RequestFailedError              the server accepted the request, then it failed
└── APIError                        something went wrong talking to the server
    ├── APIConnectionError          no HTTP answer (refused, reset, DNS, proxy)
    │   └── APITimeoutError         no answer within the timeout
    ├── APIResponseValidationError  an answer we could not decode
    └── APIStatusError              an HTTP error status
        ├── BadRequestError 400, AuthenticationError 401, BillingError 402,
        ├── PermissionDeniedError 403, NotFoundError 404, ConflictError 409,
        └── UnprocessableEntityError 422, RateLimitError 429, InternalServerError 5xx
```

Names, the hierarchy and the constructors match the official `tinker` SDK, so `except
tinker.APIStatusError` ports by changing the import, and so does code that builds these errors
itself (test doubles, proxies): ``BadRequestError(message, response=httpx.Response(400, ...),
body=None)``, ``APIConnectionError(request)``, ``APITimeoutError(request)``,
``APIResponseValidationError(response, body)``, ``RequestFailedError(message, request_id,
category)``. The official attributes (``message``, ``request``, ``response``,
``status_code``, ``body``) are there; ``request`` and ``response`` are rebuilt on first access
when the SDK made the error, without any headers the request was sent with. Every message
says what happened and what to do. Messages never contain the API key: the shell redacts
credentials before building any error. Every error pickles (e.g. across processes).
httpx is imported only when a ``request`` / ``response`` is rebuilt.

Example:
    >>> from tinkex_jax.errors import status_error_class, NotFoundError
    >>> status_error_class(404) is NotFoundError
    True
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, cast

if TYPE_CHECKING:
    import httpx

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BillingError",
    "ClientPoisonedError",
    "ConflictError",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestErrorCategory",
    "RequestFailedError",
    "TinkerError",
    "UnprocessableEntityError",
    "ValidationError",
    "invalid",
    "status_error_class",
]

RequestErrorCategory = Literal["unknown", "server", "user"]


class TinkerError(Exception):
    """Base class of every error tinkex_jax raises on purpose."""


class ValidationError(TinkerError, ValueError):
    """Input that cannot be sent: raised before any request leaves the process.

    The message names where the problem is, what was expected, what was given and how to fix
    it. It is also a `ValueError`, so existing `except ValueError` clauses keep working.
    """

    def __init__(self, message: str, *, where: str = "") -> None:
        super().__init__(message)
        self.where = where

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_validation_error, (str(self), self.where))


def _rebuild_validation_error(message: str, where: str) -> ValidationError:
    return ValidationError(message, where=where)


def invalid(where: str, expected: str, given: object, fix: str = "") -> ValidationError:
    """Build a `ValidationError` with the standard message shape.

    Args:
        where: The place of the bad value, e.g. ``"SamplingParams.top_p"`` or
            ``"data[3].loss_fn_inputs['weights']"``.
        expected: What a valid value looks like.
        given: The value (or a short description of it) that was given.
        fix: How to fix it; omitted from the message when empty.

    Returns:
        The error, ready to raise.

    Example:
        >>> str(invalid("AdamParams.beta1", "a float in [0, 1)", 1.5, "use e.g. 0.9"))
        'AdamParams.beta1: expected a float in [0, 1), got 1.5. Fix: use e.g. 0.9'
    """
    shown = given if isinstance(given, str) and given.startswith("<") else repr(given)
    if len(shown) > 200:
        shown = shown[:197] + "..."
    message = f"{where}: expected {expected}, got {shown}."
    if fix:
        message += f" Fix: {fix}"
    return ValidationError(message, where=where)


class ClientPoisonedError(TinkerError, RuntimeError):
    """A TrainingClient refused work because an earlier custom-loss chain failed.

    After a failure inside `forward_backward_custom` the server may hold half of a gradient
    step, so every queued and later request of that client fails with this error. Create a
    new training client (for example from your last checkpoint) to continue.
    """


class APIError(TinkerError):
    """Base of errors that come from talking to a server.

    Built like the official SDK's ``APIError(message, request, *, body)``; the keyword forms
    ``method=`` / ``url=`` are this SDK's (it builds errors without keeping the httpx
    objects, which carry the credentials in their headers).

    Attributes:
        message: The human-readable message.
        request: The failing `httpx.Request`: the one passed in, else one rebuilt on first
            access from `method` and `url` (no headers, so no credentials), else None.
        method: HTTP method of the failing request, if known.
        url: URL of the failing request, if known (never contains credentials when the SDK
            built the error).
        body: The decoded response body (JSON value or text), if any.

    Example:
        >>> from tinkex_jax.errors import APIError
        >>> err = APIError("boom", method="GET", url="http://127.0.0.1:8000/api/v1/healthz")
        >>> err.message, err.request.method, str(err.request.url)
        ('boom', 'GET', 'http://127.0.0.1:8000/api/v1/healthz')
    """

    def __init__(
        self,
        message: str,
        request: Any = None,
        *,
        body: object | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.body = body
        if request is not None:
            method = method or _text_attr(request, "method")
            url = url or _text_attr(request, "url")
        self.method = method
        self.url = url
        self._request = request
        self._request_built = False

    @property
    def request(self) -> httpx.Request | None:
        """The failing request (see the class docstring)."""
        if self._request is None and self.method and self.url:
            self._request = _build_request(self.method, self.url)
            self._request_built = self._request is not None
        return cast("httpx.Request | None", self._request)

    @request.setter
    def request(self, value: httpx.Request | None) -> None:
        self._request = value
        self._request_built = False

    def __reduce__(self) -> tuple[Any, ...]:
        state = self.__dict__.copy()
        # httpx objects rebuilt from our own fields are dropped (rebuilt again on access);
        # objects the caller passed in travel as they are (httpx pickles them)
        for name in ("_request", "_response"):
            if state.get(f"{name}_built"):
                state[name] = None
                state[f"{name}_built"] = False
        return (_rebuild, (type(self), self.message, state))


def _rebuild(cls: type[Exception], message: str, state: dict[str, Any]) -> Exception:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


def _text_attr(obj: Any, name: str) -> str | None:
    value = getattr(obj, name, None)
    return None if value is None else str(value)


def _build_request(method: str, url: str) -> Any:
    import httpx

    try:
        return httpx.Request(method, url)
    except Exception:  # a URL httpx cannot parse: no request rather than a second error
        return None


_HOP_HEADERS = frozenset({"content-length", "content-encoding", "transfer-encoding"})


def _build_response(status_code: int, headers: Mapping[str, str], body: object,
                    request: Any) -> Any:
    import httpx

    if body is None:
        content = b""
    elif isinstance(body, bytes):
        content = body
    elif isinstance(body, str):
        content = body.encode()
    else:
        content = json.dumps(body, default=str).encode()
    kept = {k: v for k, v in headers.items() if k.lower() not in _HOP_HEADERS}
    return httpx.Response(status_code, headers=kept, content=content, request=request)


def _answer_of(error: Any) -> httpx.Response:
    """The ``response`` of a status or validation error: the one it was made with, else one
    built once from its status, headers and body (``_response_built`` says which)."""
    if error._response is None:
        error._response = _build_response(error.status_code, error.headers, error.body,
                                          error.request)
        error._response_built = True
    return cast("httpx.Response", error._response)


def _request_of(response: Any) -> Any:
    """``response.request``, or None where httpx has none set (it raises RuntimeError)."""
    try:
        return response.request
    except (RuntimeError, AttributeError):
        return None


def _headers_of(response: Any) -> dict[str, str]:
    headers = getattr(response, "headers", None)
    if headers is None:
        return {}
    return {str(k).lower(): str(v) for k, v in headers.items()}


class APIConnectionError(APIError):
    """The request got no HTTP answer (refused, reset, DNS failure, proxy failure).

    Accepts the official form ``APIConnectionError(request, message="...")`` and this SDK's
    ``APIConnectionError("message", method=..., url=...)``: a string first argument is the
    message.

    Attributes:
        server_never_answered: True when no server at the base URL had answered this client
            yet (refused connection, unknown host, connect timeout). Such a failure is
            final after ``wait_for_server`` seconds instead of being retried for minutes.

    Example:
        >>> from tinkex_jax.errors import APIConnectionError
        >>> APIConnectionError("no route to host").message
        'no route to host'
    """

    _DEFAULT_MESSAGE = "Connection error."
    server_never_answered: bool = False

    def __init__(
        self,
        request: Any = None,
        message: str | None = None,
        *,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        if isinstance(request, str):
            if message is not None:
                raise TypeError(f"{type(self).__name__}: got two messages ({request!r} and "
                                f"{message!r}); pass the request first, or only a message")
            request, message = None, request
        super().__init__(message if message is not None else self._DEFAULT_MESSAGE, request,
                         body=None, method=method, url=url)


class APITimeoutError(APIConnectionError):
    """The request got no answer within its timeout.

    Example:
        >>> from tinkex_jax.errors import APITimeoutError
        >>> APITimeoutError().message
        'Request timed out.'
    """

    _DEFAULT_MESSAGE = "Request timed out."


class APIResponseValidationError(APIError):
    """The server answered with a body that does not match the expected shape.

    Accepts the official form ``APIResponseValidationError(response, body, message=None)``
    and this SDK's ``APIResponseValidationError("message", status_code=..., url=...)``: a
    string first argument is the message.

    Attributes:
        response: The `httpx.Response` passed in, else one rebuilt on first access from
            `status_code`, the body and the request (None without a status).
        status_code: The HTTP status of the answer (200 unless known otherwise).

    Example:
        >>> from tinkex_jax.errors import APIResponseValidationError
        >>> APIResponseValidationError("bad body", body={"x": 1}).status_code
        200
    """

    def __init__(
        self,
        response: Any = None,
        body: object | None = None,
        message: str | None = None,
        *,
        status_code: int | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        if isinstance(response, str):
            if message is not None:
                raise TypeError(f"{type(self).__name__}: got two messages ({response!r} and "
                                f"{message!r}); pass the response first, or only a message")
            response, message = None, response
        request = _request_of(response) if response is not None else None
        if status_code is None:
            status_code = int(response.status_code) if response is not None else 200
        super().__init__(message or "Data returned by API invalid for expected schema.",
                         request, body=body, method=method, url=url)
        self.status_code = status_code
        self.headers = _headers_of(response)
        self._response = response
        self._response_built = False

    @property
    def response(self) -> httpx.Response:
        """The answer (see the class docstring)."""
        return _answer_of(self)


class APIStatusError(APIError):
    """The server answered with an HTTP error status (4xx or 5xx).

    Accepts the official form ``APIStatusError(message, response, body)`` (the status is
    ``response.status_code``) and this SDK's keyword form ``APIStatusError(message,
    status_code=..., method=..., url=..., body=..., headers=...)``. The subclasses know their
    status, so ``NotFoundError("gone")`` needs neither.

    Attributes:
        status_code: The HTTP status.
        headers: The response headers (lower-cased names).
        response: The `httpx.Response` passed in, else one rebuilt on first access from the
            status, headers, body and request.

    Example:
        >>> import httpx
        >>> from tinkex_jax.errors import BadRequestError, NotFoundError
        >>> err = BadRequestError("no", response=httpx.Response(
        ...     400, request=httpx.Request("POST", "http://h/api/v1/asample")), body=None)
        >>> err.status_code, err.method, err.response.status_code
        (400, 'POST', 400)
        >>> NotFoundError("gone").status_code
        404
    """

    status_code: int

    def __init__(
        self,
        message: str,
        response: Any = None,
        body: object | None = None,
        *,
        status_code: int | None = None,
        method: str | None = None,
        url: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        request = None
        if response is not None:
            request = _request_of(response)
            if status_code is None:
                status_code = int(response.status_code)
            if headers is None:
                headers = _headers_of(response)
        if status_code is None:
            status_code = _default_status(type(self))
        super().__init__(message, request, body=body, method=method, url=url)
        self.status_code = status_code
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}
        self._response = response
        self._response_built = False

    @property
    def response(self) -> httpx.Response:
        """The answer (see the class docstring)."""
        return _answer_of(self)


def _default_status(cls: type[APIStatusError]) -> int:
    for klass in cls.__mro__:
        if klass is APIStatusError:
            break
        status = klass.__dict__.get("status_code")
        if isinstance(status, int):
            return status
    raise TypeError(f"{cls.__name__} needs the HTTP answer: pass response=httpx.Response(...) "
                    "or status_code=<int>")


class BadRequestError(APIStatusError):
    """HTTP 400: the server rejected the request as malformed."""

    status_code: int = 400


class AuthenticationError(APIStatusError):
    """HTTP 401: the API key is missing, malformed or not accepted."""

    status_code: int = 401


class BillingError(APIStatusError):
    """HTTP 402: the account has a billing problem (checked after the billing pause)."""

    status_code: int = 402


class PermissionDeniedError(APIStatusError):
    """HTTP 403: the key may not access this resource."""

    status_code: int = 403


class NotFoundError(APIStatusError):
    """HTTP 404: the resource (model, checkpoint, session, endpoint) does not exist."""

    status_code: int = 404


class ConflictError(APIStatusError):
    """HTTP 409: the request conflicts with the resource's current state."""

    status_code: int = 409


class UnprocessableEntityError(APIStatusError):
    """HTTP 422: the request was well formed but semantically invalid."""

    status_code: int = 422


class RateLimitError(APIStatusError):
    """HTTP 429: too many requests; retried automatically before you see this."""

    status_code: int = 429


class InternalServerError(APIStatusError):
    """HTTP 5xx: the server failed; retried automatically before you see this."""

    status_code: int = 500


class RequestFailedError(TinkerError):
    """The server accepted a request and later reported that it failed.

    Like the official SDK's, this is not an `APIError` (the HTTP exchange worked). Built as
    ``RequestFailedError(message, request_id, category)``, positionally or by keyword.

    Attributes:
        message: The human-readable message.
        request_id: The server's id of the failed request.
        category: ``"user"`` (fix the request), ``"server"`` (retry later or report it) or
            ``"unknown"``.
        body: The failure as the server reported it, if known.

    Example:
        >>> from tinkex_jax.errors import RequestFailedError
        >>> err = RequestFailedError("prompt too long", "req-7", "user")
        >>> err.request_id, err.category
        ('req-7', 'user')
    """

    def __init__(
        self,
        message: str,
        request_id: str | None = None,
        category: RequestErrorCategory = "unknown",
        *,
        body: object | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        self.category = category
        self.body = body

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.__dict__.copy()))


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: BillingError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def status_error_class(status_code: int) -> type[APIStatusError]:
    """Return the `APIStatusError` subclass for an HTTP status code."""
    if status_code >= 500:
        return InternalServerError
    return _STATUS_CLASSES.get(status_code, APIStatusError)
