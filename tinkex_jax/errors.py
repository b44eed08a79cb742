"""The one exception hierarchy of tinkex_jax.

```
TinkerError                         base of everything this SDK raises on purpose
├── ValidationError (ValueError)    bad input, caught before anything is sent
├── ClientPoisonedError             a TrainingClient whose custom-loss chain failed
└── APIError                        something went wrong talking to the server
    ├── APIConnectionError          no HTTP answer (refused, reset, DNS, proxy)
    │   └── APITimeoutError         no answer within the timeout
    ├── APIResponseValidationError  an answer we could not decode
    ├── RequestFailedError          the server accepted the request, then it failed
    └── APIStatusError              an HTTP error status
        ├── BadRequestError 400, AuthenticationError 401, BillingError 402,
        ├── PermissionDeniedError 403, NotFoundError 404, ConflictError 409,
        └── UnprocessableEntityError 422, RateLimitError 429, InternalServerError 5xx
```

Names match the official `tinker` SDK, so `except tinker.APIStatusError` ports by changing
the import. Every message says what happened and what to do. Messages never contain the API
key: the shell redacts credentials before building any error.

Example:
    >>> from tinkex_jax.errors import status_error_class, NotFoundError
    >>> status_error_class(404) is NotFoundError
    True
"""

from __future__ import annotations

from typing import Any, Literal

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

    Attributes:
        message: The human-readable message.
        method: HTTP method of the failing request, if any.
        url: URL of the failing request, if any (never contains credentials).
        body: The decoded response body (JSON value or text), if any.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        url: str | None = None,
        body: object | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.method = method
        self.url = url
        self.body = body

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.__dict__.copy()))


def _rebuild(cls: type[APIError], message: str, state: dict[str, Any]) -> APIError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class APIConnectionError(APIError):
    """The request got no HTTP answer (refused, reset, DNS failure, proxy failure)."""


class APITimeoutError(APIConnectionError):
    """The request got no answer within its timeout."""


class APIResponseValidationError(APIError):
    """The server answered with a body that does not match the expected shape."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 200,
        method: str | None = None,
        url: str | None = None,
        body: object | None = None,
    ) -> None:
        super().__init__(message, method=method, url=url, body=body)
        self.status_code = status_code


class RequestFailedError(APIError):
    """The server accepted a request and later reported that it failed.

    Attributes:
        category: ``"user"`` (fix the request), ``"server"`` (retry later or report it) or
            ``"unknown"``.
        request_id: The server's id of the failed request.
    """

    def __init__(
        self,
        message: str,
        *,
        category: RequestErrorCategory = "unknown",
        request_id: str | None = None,
        body: object | None = None,
    ) -> None:
        super().__init__(message, body=body)
        self.category = category
        self.request_id = request_id


class APIStatusError(APIError):
    """The server answered with an HTTP error status (4xx or 5xx).

    Attributes:
        status_code: The HTTP status.
        headers: The response headers (lower-cased names).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        method: str | None = None,
        url: str | None = None,
        body: object | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, method=method, url=url, body=body)
        self.status_code = status_code
        self.headers = headers or {}


class BadRequestError(APIStatusError):
    """HTTP 400: the server rejected the request as malformed."""


class AuthenticationError(APIStatusError):
    """HTTP 401: the API key is missing, malformed or not accepted."""


class BillingError(APIStatusError):
    """HTTP 402: the account has a billing problem (checked after the billing pause)."""


class PermissionDeniedError(APIStatusError):
    """HTTP 403: the key may not access this resource."""


class NotFoundError(APIStatusError):
    """HTTP 404: the resource (model, checkpoint, session, endpoint) does not exist."""


class ConflictError(APIStatusError):
    """HTTP 409: the request conflicts with the resource's current state."""


class UnprocessableEntityError(APIStatusError):
    """HTTP 422: the request was well formed but semantically invalid."""


class RateLimitError(APIStatusError):
    """HTTP 429: too many requests; retried automatically before you see this."""


class InternalServerError(APIStatusError):
    """HTTP 5xx: the server failed; retried automatically before you see this."""


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
