"""Errors the local server answers with: an HTTP status plus a JSON message that says what
was wrong and how to fix it (never an empty body)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar, Literal

__all__ = [
    "Category",
    "ConflictError",
    "GoneError",
    "InvalidTokenError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "SamplingBackpressureError",
    "ServerError",
    "UnauthorizedError",
    "UserError",
    "error_body",
]

Category = Literal["user", "server", "unknown"]


class ServerError(Exception):
    """A failure with an HTTP status; inside a future it becomes ``{"error", "category"}``.

    Attributes:
        status: The HTTP status of a direct answer.
        category: The ``category`` reported when the failure is a future's result.
        code: A short machine-readable name.

    Example:
        >>> e = UserError("bad loss")
        >>> e.status, e.category, error_body(e)
        (400, 'user', {'detail': 'bad loss', 'code': 'invalid_request'})
    """

    status: int = 500
    category: Category = "server"
    code: str = "internal_error"
    headers: ClassVar[Mapping[str, str] | None] = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UserError(ServerError):
    """The request is invalid (HTTP 400, category ``user``)."""

    status = 400
    category = "user"
    code = "invalid_request"


class UnauthorizedError(ServerError):
    """Missing or malformed API key (HTTP 401)."""

    status = 401
    category = "user"
    code = "invalid_api_key"


class InvalidTokenError(UnauthorizedError):
    """A JWT that this server did not issue or that expired (HTTP 401 with
    ``WWW-Authenticate: Bearer error="invalid_token"``, which makes SDKs exchange again)."""

    code = "invalid_token"
    headers: ClassVar[Mapping[str, str] | None] = MappingProxyType(
        {"WWW-Authenticate": 'Bearer error="invalid_token"'})


class PermissionDeniedError(ServerError):
    """The request names something that belongs to another session (HTTP 403)."""

    status = 403
    category = "user"
    code = "permission_denied"


class NotFoundError(ServerError):
    """An unknown id or path (HTTP 404)."""

    status = 404
    category = "user"
    code = "not_found"


class PayloadTooLargeError(ServerError):
    """The body (as sent, or once decompressed) is over the server's limit (HTTP 413)."""

    status = 413
    category = "user"
    code = "payload_too_large"


class ConflictError(ServerError):
    """The request conflicts with what exists (HTTP 409)."""

    status = 409
    category = "user"
    code = "conflict"


class GoneError(ServerError):
    """The session has finished (HTTP 410)."""

    status = 410
    category = "user"
    code = "gone"


class SamplingBackpressureError(ServerError):
    """Too many sampling requests in flight (HTTP 429 with the backpressure header, which
    SDKs treat as "wait and resubmit", not as a failure)."""

    status = 429
    category = "server"
    code = "sampling_backpressure"
    headers: ClassVar[Mapping[str, str] | None] = MappingProxyType(
        {"X-Tinker-Sampling-Backpressure": "1", "Retry-After": "1"})


def error_body(error: ServerError) -> dict[str, str]:
    """The JSON body of a direct error answer (FastAPI-style ``detail``)."""
    return {"detail": error.message, "code": error.code}
