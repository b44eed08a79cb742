"""Sessions: create, heartbeat, finish, the REST session views and projects, and finishing
sessions whose client stopped sending heartbeats.

A finished session answers 410 to heartbeats (the first finish reason wins), and its
training models are freed in their own lanes, after the requests already queued there.
A session belongs to the owner that created it: for any other owner, and for an id no one
created, every call answers 404 (a session is never created implicitly).

This module never touches HTTP and never blocks the event loop; it frees models only
through `Training.release_session`.
"""

from __future__ import annotations

import logging

from ..types import CreateSessionRequest, FinishReason, SessionFinishRequest
from ._core import Core, Json
from ._errors import GoneError, NotFoundError
from ._rest import session_json
from ._storage import SessionRow, may_use
from ._training import Training

__all__ = ["Sessions"]

_log = logging.getLogger("tinkex_jax.local")


class Sessions:
    """The sessions of one engine.

    Args:
        core: Storage, its clock, identifiers.
        training: Frees a finished session's models.
    """

    def __init__(self, core: Core, training: Training) -> None:
        self.core = core
        self.storage = core.storage
        self.training = training

    def create_session(self, req: CreateSessionRequest, owner: str | None = None) -> Json:
        """Create a session of `owner` and return its id."""
        now = self.storage.now()
        session_id = f"sess-{self.core.effects.new_id()[:20]}"
        self.storage.create_session(SessionRow(
            session_id=session_id, created_at=now, last_seen=now, tags=list(req.tags),
            user_metadata=dict(req.user_metadata), sdk_version=req.sdk_version,
            project_id=req.project_id, display_name=req.display_name, owner=owner))
        return {"session_id": session_id, "type": "create_session"}

    def heartbeat(self, session_id: str, owner: str | None = None) -> Json:
        """Record a heartbeat (404 for an unknown session; 410 for a finished one)."""
        session = self.core.session(session_id, owner)
        if session.finished_at is not None:
            raise GoneError(
                f"Session {session_id!r} is finished ({session.finish_reason}"
                f"{': ' + session.finish_detail if session.finish_detail else ''}). Fix: "
                "create a new ServiceClient; resume training from a checkpoint.")
        self.storage.touch_session(session_id)
        return {"type": "session_heartbeat"}

    def finish_session(self, session_id: str, req: SessionFinishRequest,
                       owner: str | None = None) -> Json:
        """Mark a session finished (first reason wins) and free its training models."""
        self.core.session(session_id, owner)
        self.storage.finish_session(session_id, req.reason.type, req.detail)
        self.training.release_session(session_id)
        return {"status": "finished", "session_id": session_id}

    def finish_idle(self) -> None:
        """Finish the sessions without a heartbeat for ``session_idle_timeout_s``."""
        timeout = self.core.config.session_idle_timeout_s
        if timeout is None:
            return
        for session_id in self.storage.idle_sessions(self.storage.now() - timeout):
            _log.info("finishing session %s: no heartbeat for %.0f s", session_id, timeout)
            self.finish_session(session_id, SessionFinishRequest(
                reason=FinishReason(type="interrupted"),
                detail=f"no heartbeat for {timeout:.0f} s"))

    def list_sessions(self, limit: int, offset: int, owner: str | None = None) -> Json:
        """``GET sessions``: ids of `owner`'s sessions, newest first."""
        return {"sessions": [s.session_id
                             for s in self.storage.list_sessions(limit, offset, owner)]}

    def get_session(self, session_id: str, owner: str | None = None) -> Json:
        """``GET sessions/{id}``."""
        session = self.storage.get_session(session_id)
        if session is None or not may_use(session.owner, owner):
            raise NotFoundError(f"Unknown session {session_id!r}. Fix: list your sessions "
                                "with RestClient.list_sessions().")
        return session_json(session, self.storage.runs_of_session(session_id),
                            self.storage.samplers_of_session(session_id))

    def set_session_project(self, session_id: str, project_id: str,
                            owner: str | None = None) -> Json:
        """``PUT sessions/{id}/project``."""
        self.get_session(session_id, owner)
        self.storage.set_session_project(session_id, project_id)
        return {"session_id": session_id, "project_id": project_id}
