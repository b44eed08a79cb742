"""RestClient: sessions, training runs, checkpoints and weights (docs/protocol.md §3.2, §3.10).

Every method returns a `Future` (``*_async`` names give the result directly, for ported
code). A RestClient needs no session: it only fetches the client config first.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, TypeVar

import httpx

from .._shell import (
    REAL_RUNTIME,
    Future,
    Runtime,
    Shell,
    Telemetry,
    instrument_async,
    resolve_settings,
    whoami_from_jwt,
)
from ..builders import parse_tinker_path
from ..errors import APIResponseValidationError, TinkerError, invalid
from ..types import (
    AuditEventType,
    AuditLogResponse,
    BillingUsageResponse,
    CheckpointsListResponse,
    CopyWeightsRequest,
    CopyWeightsResponse,
    CurrentCheckpointStorageUsageResponse,
    ExternalWeightsUrlsResponse,
    GetBillingUsageRequest,
    GetCurrentCheckpointStorageUsageRequest,
    GetSamplerResponse,
    GetServerCapabilitiesResponse,
    GetSessionResponse,
    HealthResponse,
    ListSessionsResponse,
    SetCheckpointTTLRequest,
    TraceExportResponse,
    TrainingRun,
    TrainingRunsResponse,
    WeightsInfoRequest,
    WeightsInfoResponse,
    WhoamiResponse,
)

__all__ = ["AccessScope", "AdminClient", "RestClient"]

T = TypeVar("T")
AccessScope = Literal["owned", "accessible"]
_TRACE_POLL_SECONDS = 5.0


def _scope(access_scope: str) -> str:
    if access_scope not in ("owned", "accessible"):
        raise invalid("access_scope", "'owned' or 'accessible'", access_scope)
    return access_scope


_AUDIT_EVENT_TYPES = ("all", "checkpoints", "projects", "teams", "organizations")


def _audit_params(event_type: str, day: dt.date | None) -> dict[str, str]:
    if event_type not in _AUDIT_EVENT_TYPES:
        raise invalid("get_audit_log(event_type)", f"one of {', '.join(_AUDIT_EVENT_TYPES)}",
                      event_type)
    params = {"event_type": event_type}
    if day is not None:
        if isinstance(day, dt.datetime) or not isinstance(day, dt.date):
            raise invalid("get_audit_log(day)", "a datetime.date (the UTC day to list)", day,
                          "pass e.g. datetime.date(2026, 1, 15), or a datetime's .date()")
        params["day"] = day.isoformat()
    return params


def _page(limit: int, offset: int) -> dict[str, int]:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise invalid("limit", "an int >= 1", limit)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise invalid("offset", "an int >= 0", offset)
    return {"limit": limit, "offset": offset}


@instrument_async
class RestClient:
    """Manage sessions, training runs and checkpoints.

    Get one from `ServiceClient.create_rest_client()` (shares its connections), or build a
    standalone one with ``RestClient(base_url=..., api_key=...)`` (then `close` it when done).

    Example:
        >>> rest = service.create_rest_client()                          # doctest: +SKIP
        >>> runs = rest.list_training_runs(limit=5).result()              # doctest: +SKIP
        >>> [c.tinker_path for c in rest.list_checkpoints(runs.training_runs[0]  # doctest: +SKIP
        ...     .training_run_id).result().checkpoints]                  # doctest: +SKIP
    """

    def __init__(
        self,
        _shell: Shell | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        default_headers: Mapping[str, str] | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int | None = None,
        proxy: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        _runtime: Runtime | None = None,
    ) -> None:
        self._owns_shell = _shell is None
        if _shell is None:
            settings = resolve_settings(api_key=api_key, base_url=base_url,
                                        default_headers=default_headers, timeout=timeout,
                                        max_retries=max_retries, proxy=proxy, env=os.environ)
            _shell = Shell(settings, runtime=_runtime or REAL_RUNTIME, transport=transport,
                           name="RestClient")
        self._shell = _shell

    def __repr__(self) -> str:
        return (f"<{type(self).__module__}.{type(self).__qualname__} "
                f"base_url={self._shell.settings.base_url!r}>")

    def get_telemetry(self) -> Telemetry | None:
        """The telemetry batcher (None when telemetry is off)."""
        telemetry = self._shell.telemetry
        return telemetry if telemetry.enabled else None

    def close(self) -> None:
        """Close a standalone RestClient's connections (no-op for a shared one)."""
        if self._owns_shell:
            self._shell.close().result(timeout=10.0)

    def __enter__(self) -> RestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, method: str, fn: Callable[[], Awaitable[T]]) -> Future[T]:
        async def run() -> T:
            await self._shell.ensure_config()
            return await fn()

        qualified = method if "." in method else f"RestClient.{method}"
        return self._shell.submit(run, sdk_method=qualified)

    def _get(self, method: str, endpoint: str, response_type: type[T], *,
             path_params: Mapping[str, str] | None = None,
             params: Mapping[str, Any] | None = None) -> Future[T]:
        return self._run(method, lambda: self._shell.call(
            endpoint, None, response_type, path_params=path_params, params=params))

    def _checkpoint_call(self, method: str, endpoint: str, tinker_path: str,
                         body: Any = None) -> Future[None]:
        parsed = parse_tinker_path(tinker_path)
        return self._run(method, lambda: self._shell.call(
            endpoint, body, None, path_params={"run_id": parsed.training_run_id,
                                               "checkpoint_id": parsed.checkpoint_id}))

    # ------------------------------------------------------------------ sessions

    def list_sessions(self, limit: int = 20, offset: int = 0,
                      access_scope: AccessScope = "owned") -> Future[ListSessionsResponse]:
        """Session ids, newest first (``GET /api/v1/sessions``)."""
        params = {**_page(limit, offset), "access_scope": _scope(access_scope)}
        return self._get("list_sessions", "list_sessions", ListSessionsResponse, params=params)

    def get_session(self, session_id: str, access_scope: AccessScope = "owned"
                    ) -> Future[GetSessionResponse]:
        """The training runs and samplers of a session."""
        return self._get("get_session", "get_session", GetSessionResponse,
                         path_params={"session_id": session_id},
                         params={"access_scope": _scope(access_scope)})

    def assign_session_project(self, session_id: str, project_id: str) -> Future[None]:
        """Move a session to a project."""
        return self._run("assign_session_project", lambda: self._shell.call(
            "assign_session_project", {"project_id": project_id}, None,
            path_params={"session_id": session_id}))

    def export_session_trace(self, session_id: str) -> Future[str]:
        """Export a session's trace; polls every 5 s until ready and returns the URL."""
        async def run() -> str:
            while True:
                status = await self._shell.call("export_session_trace", None,
                                                TraceExportResponse,
                                                path_params={"session_id": session_id})
                if status.status == "ready" and status.url:
                    return status.url
                if status.status == "failed":
                    raise APIResponseValidationError(
                        f"RestClient.export_session_trace: the export of session {session_id} "
                        f"failed: {status.error or 'no reason given'}")
                await self._shell.runtime.sleep(_TRACE_POLL_SECONDS)

        return self._run("export_session_trace", run)

    # ------------------------------------------------------------------ training runs

    def list_training_runs(self, limit: int = 20, offset: int = 0,
                           access_scope: AccessScope = "owned", project_id: str | None = None
                           ) -> Future[TrainingRunsResponse]:
        """A page of training runs."""
        params = {**_page(limit, offset), "access_scope": _scope(access_scope),
                  "project_id": project_id}
        return self._get("list_training_runs", "list_training_runs", TrainingRunsResponse,
                         params=params)

    def get_training_run(self, training_run_id: str, access_scope: AccessScope = "owned"
                         ) -> Future[TrainingRun]:
        """One training run."""
        return self._get("get_training_run", "get_training_run", TrainingRun,
                         path_params={"run_id": training_run_id},
                         params={"access_scope": _scope(access_scope)})

    def get_training_run_by_tinker_path(self, tinker_path: str,
                                        access_scope: AccessScope = "owned"
                                        ) -> Future[TrainingRun]:
        """The training run a checkpoint path belongs to."""
        run_id = parse_tinker_path(tinker_path).training_run_id
        return self._get("get_training_run_by_tinker_path", "get_training_run", TrainingRun,
                         path_params={"run_id": run_id},
                         params={"access_scope": _scope(access_scope)})

    # ------------------------------------------------------------------ checkpoints

    def list_checkpoints(self, training_run_id: str) -> Future[CheckpointsListResponse]:
        """The checkpoints of one training run."""
        return self._get("list_checkpoints", "list_checkpoints", CheckpointsListResponse,
                         path_params={"run_id": training_run_id})

    def list_user_checkpoints(self, limit: int = 100, offset: int = 0
                              ) -> Future[CheckpointsListResponse]:
        """All of your checkpoints, newest first."""
        return self._get("list_user_checkpoints", "list_user_checkpoints",
                         CheckpointsListResponse, params=_page(limit, offset))

    def delete_checkpoint(self, training_run_id: str, checkpoint_id: str) -> Future[None]:
        """Delete a checkpoint by run id and kind-qualified id (``weights/step-10``)."""
        if "/" not in checkpoint_id:
            raise invalid("delete_checkpoint(checkpoint_id)",
                          "a kind-qualified id such as 'weights/step-10'", checkpoint_id)
        return self._run("delete_checkpoint", lambda: self._shell.call(
            "delete_checkpoint", None, None,
            path_params={"run_id": training_run_id, "checkpoint_id": checkpoint_id}))

    def delete_checkpoint_from_tinker_path(self, tinker_path: str) -> Future[None]:
        """Delete the checkpoint at a ``tinker://`` path."""
        return self._checkpoint_call("delete_checkpoint_from_tinker_path", "delete_checkpoint",
                                     tinker_path)

    def publish_checkpoint_from_tinker_path(self, tinker_path: str) -> Future[None]:
        """Make a checkpoint public."""
        return self._checkpoint_call("publish_checkpoint_from_tinker_path",
                                     "publish_checkpoint", tinker_path)

    def unpublish_checkpoint_from_tinker_path(self, tinker_path: str) -> Future[None]:
        """Make a checkpoint private again."""
        return self._checkpoint_call("unpublish_checkpoint_from_tinker_path",
                                     "unpublish_checkpoint", tinker_path)

    def set_checkpoint_ttl_from_tinker_path(self, tinker_path: str, ttl_seconds: int | None
                                            ) -> Future[None]:
        """Set (or with None remove) a checkpoint's expiry."""
        body = SetCheckpointTTLRequest(ttl_seconds=ttl_seconds)
        return self._checkpoint_call("set_checkpoint_ttl_from_tinker_path",
                                     "set_checkpoint_ttl", tinker_path, {"ttl_seconds":
                                                                         body.ttl_seconds})

    def get_external_weights_urls(self, tinker_path: str
                                  ) -> Future[ExternalWeightsUrlsResponse]:
        """Signed download URLs of an exported (``external_weights``) checkpoint."""
        parsed = parse_tinker_path(tinker_path)
        return self._get("get_external_weights_urls", "external_weights_urls",
                         ExternalWeightsUrlsResponse,
                         path_params={"run_id": parsed.training_run_id,
                                      "checkpoint_id": parsed.checkpoint_id})

    def get_weights_info_by_tinker_path(self, tinker_path: str) -> Future[WeightsInfoResponse]:
        """Base model, LoRA rank and optimizer of saved weights."""
        body = WeightsInfoRequest(tinker_path=tinker_path)
        return self._run("get_weights_info_by_tinker_path", lambda: self._shell.call(
            "weights_info", body, WeightsInfoResponse))

    def copy_weights(self, path: str, destination_project_id: str | None = None, *,
                     ttl_seconds: int | None = None, weights_access_token: str | None = None
                     ) -> Future[str]:
        """Copy a checkpoint (optionally into another project); returns the new path."""
        body = CopyWeightsRequest(source_path=path, destination_project_id=destination_project_id,
                                  ttl_seconds=ttl_seconds)
        return self._run("copy_weights", lambda: copy_weights(
            self._shell, body, weights_access_token=weights_access_token))

    # ------------------------------------------------------------------ samplers, server

    def get_sampler(self, sampler_id: str) -> Future[GetSamplerResponse]:
        """A sampler's base model and model path."""
        return self._get("get_sampler", "get_sampler", GetSamplerResponse,
                         path_params={"sampler_id": sampler_id})

    def get_server_capabilities(self) -> Future[GetServerCapabilitiesResponse]:
        """The models the server can train and sample."""
        return self._get("get_server_capabilities", "get_server_capabilities",
                         GetServerCapabilitiesResponse)

    def healthz(self) -> Future[HealthResponse]:
        """The server's health (``GET /api/v1/healthz``)."""
        return self._get("healthz", "healthz", HealthResponse)

    # ------------------------------------------------------------------ audit log

    def get_audit_log(self, event_type: AuditEventType = "all", day: dt.date | None = None
                      ) -> Future[AuditLogResponse]:
        """The audit events of one UTC day (``GET /api/v1/audit``), oldest first.

        Args:
            event_type: Which resource's events: ``"checkpoints"``, ``"projects"``,
                ``"teams"``, ``"organizations"`` or ``"all"``.
            day: The UTC day to list (default: today on the server).

        The hosted service needs an admin role for this (the official SDK moved it to
        ``AdminClient``; both work here). The local backend answers with what it did for the
        keys it serves (see docs/local-backend.md).

        Example:
            >>> log = rest.get_audit_log("checkpoints").result()            # doctest: +SKIP
            >>> [(e.timestamp, e.event) for e in log.entries]                # doctest: +SKIP
        """
        return _get_audit_log(self, "get_audit_log", event_type, day)

    async def get_audit_log_async(self, event_type: AuditEventType = "all",
                                  day: dt.date | None = None) -> AuditLogResponse:
        """Awaitable `get_audit_log` result."""
        return await self.get_audit_log(event_type, day)

    def get_billing_usage(self, starting_on: dt.datetime | str,
                          ending_before: dt.datetime | str) -> Future[BillingUsageResponse]:
        """Hourly billing usage; see `AdminClient.get_billing_usage` (kept here for ported
        code: the official SDK moved it to its AdminClient)."""
        return _get_billing_usage(self, "get_billing_usage", starting_on, ending_before)

    async def get_billing_usage_async(self, starting_on: dt.datetime | str,
                                      ending_before: dt.datetime | str) -> BillingUsageResponse:
        """Awaitable `get_billing_usage` result."""
        return await self.get_billing_usage(starting_on, ending_before)

    def get_current_checkpoint_storage_usage(self, project_id: str | None = None
                                             ) -> Future[CurrentCheckpointStorageUsageResponse]:
        """Current checkpoint storage; see `AdminClient.get_current_checkpoint_storage_usage`."""
        return _get_checkpoint_storage_usage(self, "get_current_checkpoint_storage_usage",
                                             project_id)

    async def get_current_checkpoint_storage_usage_async(
            self, project_id: str | None = None) -> CurrentCheckpointStorageUsageResponse:
        """Awaitable `get_current_checkpoint_storage_usage` result."""
        return await self.get_current_checkpoint_storage_usage(project_id)

    # ------------------------------------------------------------------ identity

    def whoami(self) -> Future[WhoamiResponse]:
        """The caller's identity, read from the claims of the JWT the client holds.

        No whoami request is made (docs/protocol.md §1.3, §3.11): in JWT mode (the server's client
        config says ``pjwt_auth_enabled``) the current JWT is decoded (``sub`` →
        ``user_urn``, ``org_id`` → ``org_urn = "tml:organization:<org_id>"``, ``email``);
        otherwise a Tinker-issued JWT passed as the key (``iss`` ``passport-…``) is.

        Raises:
            TinkerError: JWT auth is off and the credential is a plain API key, so there is
                no identity to read.

        Example:
            >>> me = rest.whoami().result()                                  # doctest: +SKIP
            >>> me.user_urn, me.org_urn, me.email                            # doctest: +SKIP
            ('tml:user:42', 'tml:organization:o-7', 'ada@example.com')
        """
        async def run() -> WhoamiResponse:
            token = await self._shell.identity_jwt()
            if token is None:
                raise TinkerError(
                    "RestClient.whoami: the identity is read from the JWT of JWT auth, but "
                    f"the server at {self._shell.settings.base_url} has JWT auth off "
                    "(pjwt_auth_enabled is false) and the credential is a plain API key, so "
                    "there is no identity to read. What to do: use a server with JWT auth, or "
                    "pass a Tinker-issued JWT as the key.")
            return whoami_from_jwt(token)

        return self._run("whoami", run)

    # ------------------------------------------------------------------ ported *_async names

    async def list_sessions_async(self, limit: int = 20, offset: int = 0,
                                  access_scope: AccessScope = "owned") -> ListSessionsResponse:
        """Awaitable `list_sessions` result (ported code)."""
        return await self.list_sessions(limit, offset, access_scope)

    async def get_session_async(self, session_id: str, access_scope: AccessScope = "owned"
                                ) -> GetSessionResponse:
        """Awaitable `get_session` result."""
        return await self.get_session(session_id, access_scope)

    async def assign_session_project_async(self, session_id: str, project_id: str) -> None:
        """Awaitable `assign_session_project`."""
        await self.assign_session_project(session_id, project_id)

    async def export_session_trace_async(self, session_id: str) -> str:
        """Awaitable `export_session_trace` result."""
        return await self.export_session_trace(session_id)

    async def list_training_runs_async(self, limit: int = 20, offset: int = 0,
                                       access_scope: AccessScope = "owned",
                                       project_id: str | None = None) -> TrainingRunsResponse:
        """Awaitable `list_training_runs` result."""
        return await self.list_training_runs(limit, offset, access_scope, project_id)

    async def get_training_run_async(self, training_run_id: str,
                                     access_scope: AccessScope = "owned") -> TrainingRun:
        """Awaitable `get_training_run` result."""
        return await self.get_training_run(training_run_id, access_scope)

    async def get_training_run_by_tinker_path_async(self, tinker_path: str,
                                                    access_scope: AccessScope = "owned"
                                                    ) -> TrainingRun:
        """Awaitable `get_training_run_by_tinker_path` result."""
        return await self.get_training_run_by_tinker_path(tinker_path, access_scope)

    async def list_checkpoints_async(self, training_run_id: str) -> CheckpointsListResponse:
        """Awaitable `list_checkpoints` result."""
        return await self.list_checkpoints(training_run_id)

    async def list_user_checkpoints_async(self, limit: int = 100, offset: int = 0
                                          ) -> CheckpointsListResponse:
        """Awaitable `list_user_checkpoints` result."""
        return await self.list_user_checkpoints(limit, offset)

    async def delete_checkpoint_async(self, training_run_id: str, checkpoint_id: str) -> None:
        """Awaitable `delete_checkpoint`."""
        await self.delete_checkpoint(training_run_id, checkpoint_id)

    async def delete_checkpoint_from_tinker_path_async(self, tinker_path: str) -> None:
        """Awaitable `delete_checkpoint_from_tinker_path`."""
        await self.delete_checkpoint_from_tinker_path(tinker_path)

    async def publish_checkpoint_from_tinker_path_async(self, tinker_path: str) -> None:
        """Awaitable `publish_checkpoint_from_tinker_path`."""
        await self.publish_checkpoint_from_tinker_path(tinker_path)

    async def unpublish_checkpoint_from_tinker_path_async(self, tinker_path: str) -> None:
        """Awaitable `unpublish_checkpoint_from_tinker_path`."""
        await self.unpublish_checkpoint_from_tinker_path(tinker_path)

    async def set_checkpoint_ttl_from_tinker_path_async(self, tinker_path: str,
                                                        ttl_seconds: int | None) -> None:
        """Awaitable `set_checkpoint_ttl_from_tinker_path`."""
        await self.set_checkpoint_ttl_from_tinker_path(tinker_path, ttl_seconds)

    async def get_external_weights_urls_async(self, tinker_path: str
                                              ) -> ExternalWeightsUrlsResponse:
        """Awaitable `get_external_weights_urls` result."""
        return await self.get_external_weights_urls(tinker_path)

    async def get_weights_info_by_tinker_path_async(self, tinker_path: str
                                                    ) -> WeightsInfoResponse:
        """Awaitable `get_weights_info_by_tinker_path` result."""
        return await self.get_weights_info_by_tinker_path(tinker_path)

    async def copy_weights_async(self, path: str, destination_project_id: str | None = None, *,
                                 ttl_seconds: int | None = None,
                                 weights_access_token: str | None = None) -> str:
        """Awaitable `copy_weights` result."""
        return await self.copy_weights(path, destination_project_id, ttl_seconds=ttl_seconds,
                                       weights_access_token=weights_access_token)

    async def get_sampler_async(self, sampler_id: str) -> GetSamplerResponse:
        """Awaitable `get_sampler` result."""
        return await self.get_sampler(sampler_id)


def _get_audit_log(client: RestClient, method: str, event_type: str, day: dt.date | None
                   ) -> Future[AuditLogResponse]:
    params = _audit_params(event_type, day)
    return client._get(method, "audit_log", AuditLogResponse, params=params)


def _rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _when(value: dt.datetime | str, where: str) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
        try:
            return dt.datetime.fromisoformat(text)
        except ValueError:
            pass
    raise invalid(where, "a datetime or an RFC 3339 string such as 2026-07-13T00:00:00Z", value)


def _get_billing_usage(client: RestClient, method: str, starting_on: dt.datetime | str,
                       ending_before: dt.datetime | str) -> Future[BillingUsageResponse]:
    request = GetBillingUsageRequest(  # checks the window before anything is sent
        starting_on=_when(starting_on, "get_billing_usage(starting_on)"),
        ending_before=_when(ending_before, "get_billing_usage(ending_before)"))
    params = {"starting_on": _rfc3339(request.starting_on),
              "ending_before": _rfc3339(request.ending_before)}
    return client._get(method, "billing_usage", BillingUsageResponse, params=params)


def _get_checkpoint_storage_usage(client: RestClient, method: str, project_id: str | None
                                  ) -> Future[CurrentCheckpointStorageUsageResponse]:
    request = GetCurrentCheckpointStorageUsageRequest(project_id=project_id)
    params = {"project_id": request.project_id} if request.project_id is not None else None
    return client._get(method, "checkpoint_storage_usage",
                       CurrentCheckpointStorageUsageResponse, params=params)


@instrument_async
class AdminClient:
    """The calls the hosted service reserves for organization admins: the audit log and
    billing usage.

    Built like a `RestClient` (``AdminClient(base_url=..., api_key=...)``, then `close` it)
    or over an existing client's connections. A server that bills nothing (the local
    backend) answers the billing calls with 404 (`NotFoundError`).

    Example:
        >>> admin = AdminClient(base_url="http://127.0.0.1:8000")          # doctest: +SKIP
        >>> admin.get_audit_log().result().entries                          # doctest: +SKIP
    """

    def __init__(
        self,
        _holder: Shell | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        default_headers: Mapping[str, str] | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int | None = None,
        proxy: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        _runtime: Runtime | None = None,
    ) -> None:
        if _holder is not None and (base_url is not None or api_key is not None):
            raise invalid("AdminClient(_holder, base_url/api_key)",
                          "either an existing client's connections or base_url/api_key",
                          "both", "pass only one of them")
        self._rest = RestClient(_holder, base_url=base_url, api_key=api_key,
                                default_headers=default_headers, timeout=timeout,
                                max_retries=max_retries, proxy=proxy, transport=transport,
                                _runtime=_runtime)

    def __repr__(self) -> str:
        return (f"<{type(self).__module__}.{type(self).__qualname__} "
                f"base_url={self._rest._shell.settings.base_url!r}>")

    def get_telemetry(self) -> Telemetry | None:
        """The telemetry batcher (None when telemetry is off)."""
        return self._rest.get_telemetry()

    def close(self) -> None:
        """Close a standalone AdminClient's connections (no-op for shared ones)."""
        self._rest.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_audit_log(self, event_type: AuditEventType = "all", day: dt.date | None = None
                      ) -> Future[AuditLogResponse]:
        """The audit events of one UTC day; see `RestClient.get_audit_log`."""
        return _get_audit_log(self._rest, "AdminClient.get_audit_log", event_type, day)

    async def get_audit_log_async(self, event_type: AuditEventType = "all",
                                  day: dt.date | None = None) -> AuditLogResponse:
        """Awaitable `get_audit_log` result."""
        return await self.get_audit_log(event_type, day)

    def get_billing_usage(self, starting_on: dt.datetime | str,
                          ending_before: dt.datetime | str) -> Future[BillingUsageResponse]:
        """Hourly billing usage of the organization (``GET /api/v1/billing/usage/events``).

        Args:
            starting_on: Inclusive start, on a UTC hour, not in the future (a datetime or an
                RFC 3339 string).
            ending_before: Exclusive end, on a UTC hour, at most 14 days after the start.

        Raises:
            ValidationError: a window the server would refuse (before anything is sent).
            NotFoundError: the server bills nothing (the local backend).

        Example:
            >>> usage = admin.get_billing_usage("2026-07-13T00:00:00Z",      # doctest: +SKIP
            ...                                 "2026-07-14T00:00:00Z").result()
            >>> [(e.bucket_start, e.event_info.type) for e in usage.data]   # doctest: +SKIP
        """
        return _get_billing_usage(self._rest, "AdminClient.get_billing_usage", starting_on,
                                  ending_before)

    async def get_billing_usage_async(self, starting_on: dt.datetime | str,
                                      ending_before: dt.datetime | str) -> BillingUsageResponse:
        """Awaitable `get_billing_usage` result."""
        return await self.get_billing_usage(starting_on, ending_before)

    def get_current_checkpoint_storage_usage(self, project_id: str | None = None
                                             ) -> Future[CurrentCheckpointStorageUsageResponse]:
        """Current checkpoint count, size and projected storage cost, for the organization or
        one project (``GET /api/v1/billing/usage/checkpoints/current``).

        Raises:
            NotFoundError: the server bills nothing (the local backend).

        Example:
            >>> admin.get_current_checkpoint_storage_usage().result().data  # doctest: +SKIP
        """
        return _get_checkpoint_storage_usage(
            self._rest, "AdminClient.get_current_checkpoint_storage_usage", project_id)

    async def get_current_checkpoint_storage_usage_async(
            self, project_id: str | None = None) -> CurrentCheckpointStorageUsageResponse:
        """Awaitable `get_current_checkpoint_storage_usage` result."""
        return await self.get_current_checkpoint_storage_usage(project_id)


async def copy_weights(shell: Shell, body: CopyWeightsRequest, *,
                       weights_access_token: str | None) -> str:
    """POST copy_weights with one idempotency key for every retry (docs/protocol.md §1.1)."""
    headers = ({"X-Tinker-Weights-Access-Token": weights_access_token}
               if weights_access_token else None)
    response = await shell.call("copy_weights", body, CopyWeightsResponse, headers=headers,
                                idempotency_key=str(uuid.uuid4()))
    return response.tinker_path
