"""Session status, and the session search of the hosted service's REST API.

A session is active until its client finishes it (`ClientSessionFinished`, with the
client's reason), the service cancels it, or it fails (`SessionFailed`, naming the request,
training run or sampling session at fault). Each status is its own struct, told apart by
``type`` (the `SessionStatus` union). `SessionSearchRequest` filters sessions by id, name,
projects, owner, metadata and status, a page at a time.

Example:
    >>> import msgspec
    >>> status = msgspec.json.decode(
    ...     b'{"type": "failed", "category": "user", "message": "bad batch",'
    ...     b' "reason": {"type": "request", "request_id": "r1", "request_type": "fwdbwd"}}',
    ...     type=SessionStatus)
    >>> status.type, status.reason.request_id
    ('failed', 'r1')
    >>> SessionSearchRequest(display_name="sweep", limit=10).owner.type
    'own'
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import msgspec

from ..errors import invalid
from ._base import WireStruct

__all__ = [
    "AccessibleSearchOwner",
    "ActiveSessionStatusQuery",
    "CancelledSessionStatusQuery",
    "ClientFinishedSessionStatusQuery",
    "ClientSessionFinishErrored",
    "ClientSessionFinishInterrupted",
    "ClientSessionFinishReason",
    "ClientSessionFinishReasonType",
    "ClientSessionFinishSuccess",
    "ClientSessionFinished",
    "FailedSessionStatusQuery",
    "OwnSearchOwner",
    "SearchOwner",
    "SessionActive",
    "SessionCancelled",
    "SessionFailed",
    "SessionFailedReason",
    "SessionFailedRequestReason",
    "SessionFailedSamplingSessionReason",
    "SessionFailedTrainingRunReason",
    "SessionSearchCursor",
    "SessionSearchRequest",
    "SessionSearchResponse",
    "SessionStatus",
    "SessionStatusQuery",
    "SessionSummary",
    "UserSearchOwner",
]


class _Tagged(WireStruct, frozen=True, kw_only=True, tag_field="type"):
    """A member of a union told apart by its ``type`` (read it as ``.type``)."""

    @property
    def type(self) -> str:
        """The ``type`` tag this struct has on the wire."""
        return str(type(self).__struct_config__.tag)


# ----------------------------------------------------------------------------- status


class SessionFailedRequestReason(_Tagged, frozen=True, kw_only=True, tag="request"):
    """A request of the session failed the session."""

    request_id: str
    request_type: str


class SessionFailedTrainingRunReason(_Tagged, frozen=True, kw_only=True, tag="training_run"):
    """A training run of the session failed the session."""

    training_run_id: str


class SessionFailedSamplingSessionReason(_Tagged, frozen=True, kw_only=True,
                                         tag="sampling_session"):
    """A sampling session of the session failed the session."""

    sampling_session_id: str


SessionFailedReason = (SessionFailedRequestReason | SessionFailedTrainingRunReason
                       | SessionFailedSamplingSessionReason)


class SessionFailed(_Tagged, frozen=True, kw_only=True, tag="failed"):
    """The session failed: whose fault (``category``), what (``reason``), and a message."""

    category: Literal["user", "internal"]
    reason: SessionFailedReason
    message: str


class SessionCancelled(_Tagged, frozen=True, kw_only=True, tag="cancelled"):
    """The service cancelled the session."""

    detail: str | None = None


class ClientSessionFinishSuccess(_Tagged, frozen=True, kw_only=True, tag="success"):
    """The client finished its work."""


class ClientSessionFinishErrored(_Tagged, frozen=True, kw_only=True, tag="errored"):
    """The client stopped on an error."""


class ClientSessionFinishInterrupted(_Tagged, frozen=True, kw_only=True, tag="interrupted"):
    """The client was interrupted (e.g. Ctrl-C)."""


ClientSessionFinishReason = (ClientSessionFinishSuccess | ClientSessionFinishErrored
                             | ClientSessionFinishInterrupted)


class ClientSessionFinished(_Tagged, frozen=True, kw_only=True, tag="client_finished"):
    """The client finished the session, for ``reason``."""

    reason: ClientSessionFinishReason
    detail: str | None = None


class SessionActive(_Tagged, frozen=True, kw_only=True, tag="active"):
    """The session is live."""


SessionStatus = SessionFailed | SessionCancelled | ClientSessionFinished | SessionActive

# ----------------------------------------------------------------------------- search

ClientSessionFinishReasonType = Literal["success", "errored", "interrupted"]


class ActiveSessionStatusQuery(_Tagged, frozen=True, kw_only=True, tag="active"):
    """Match live sessions."""


class CancelledSessionStatusQuery(_Tagged, frozen=True, kw_only=True, tag="cancelled"):
    """Match sessions the service cancelled."""


class FailedSessionStatusQuery(_Tagged, frozen=True, kw_only=True, tag="failed"):
    """Match failed sessions."""


class ClientFinishedSessionStatusQuery(_Tagged, frozen=True, kw_only=True,
                                       tag="client_finished"):
    """Match sessions their client finished; only for these ``reasons`` when given."""

    reasons: list[ClientSessionFinishReasonType] | None = None

    def __post_init__(self) -> None:
        if self.reasons is not None:
            if not self.reasons:
                raise invalid("ClientFinishedSessionStatusQuery.reasons",
                              "None (any reason) or at least one reason", [])
            for reason in self.reasons:
                if reason not in ("success", "errored", "interrupted"):
                    raise invalid("ClientFinishedSessionStatusQuery.reasons",
                                  "'success', 'errored' or 'interrupted'", reason)


SessionStatusQuery = (ActiveSessionStatusQuery | CancelledSessionStatusQuery
                      | FailedSessionStatusQuery | ClientFinishedSessionStatusQuery)


class OwnSearchOwner(_Tagged, frozen=True, kw_only=True, tag="own"):
    """Search the caller's own sessions."""


class AccessibleSearchOwner(_Tagged, frozen=True, kw_only=True, tag="accessible"):
    """Search every session the caller can see."""


class UserSearchOwner(_Tagged, frozen=True, kw_only=True, tag="user"):
    """Search the sessions of these users (1 to 10 user URNs)."""

    owner_urns: list[str]

    def __post_init__(self) -> None:
        if not 1 <= len(self.owner_urns) <= 10:
            raise invalid("UserSearchOwner.owner_urns", "1 to 10 user URNs",
                          f"<{len(self.owner_urns)} URNs>")


SearchOwner = OwnSearchOwner | AccessibleSearchOwner | UserSearchOwner


class SessionSearchCursor(WireStruct, frozen=True, kw_only=True):
    """Where the next page of a session search starts."""

    last_created_at: dt.datetime
    last_session_id: str

    def __post_init__(self) -> None:
        if self.last_created_at.tzinfo is None:
            raise invalid("SessionSearchCursor.last_created_at", "a timezone-aware datetime",
                          self.last_created_at.isoformat(),
                          "pass the next_cursor of the previous page unchanged")


class SessionSearchRequest(WireStruct, frozen=True, kw_only=True):
    """A session search: every given filter must match (``session_id`` and
    ``display_name`` together match either). ``display_name`` matches case-insensitively,
    each of its words anywhere in the name; ``limit`` is 1 to 200 per page.
    """

    session_id: str | None = None
    project_ids: list[str] | None = None
    user_metadata: dict[str, str] = msgspec.field(default_factory=dict)
    display_name: str | None = None
    owner: SearchOwner = msgspec.field(default_factory=OwnSearchOwner)
    statuses: list[SessionStatusQuery] | None = None
    limit: int = 50
    cursor: SessionSearchCursor | None = None

    def __post_init__(self) -> None:
        if self.display_name is not None and not self.display_name:
            raise invalid("SessionSearchRequest.display_name", "None or a non-empty string", "")
        if self.statuses is not None and not self.statuses:
            raise invalid("SessionSearchRequest.statuses", "None (any status) or at least one",
                          [])
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or not (
                1 <= self.limit <= 200):
            raise invalid("SessionSearchRequest.limit", "an int in [1, 200]", self.limit)


class SessionSummary(WireStruct, frozen=True, kw_only=True):
    """One session found by a search."""

    session_id: str
    created_at: dt.datetime
    owner: str
    project_id: str
    checkpoints_count: int
    status: SessionStatus | None = None
    display_name: str | None = None
    user_metadata: dict[str, str] | None = None
    checkpoint_storage_bytes: int | None = None


class SessionSearchResponse(WireStruct, frozen=True, kw_only=True):
    """A page of sessions, and the cursor of the next page (None on the last one)."""

    sessions: list[SessionSummary] = msgspec.field(default_factory=list)
    next_cursor: SessionSearchCursor | None = None
