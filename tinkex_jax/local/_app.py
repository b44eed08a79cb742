"""The Starlette app: Tinker's HTTP routes (PROTOCOL.md §3, §11) over the engine's services.

The only module that speaks HTTP: it checks credentials, decodes bodies into wire types,
calls the service each route needs (`Engine.sessions`, ``training``, ``weights``,
``sampling``, ``catalog``, ``core`` for futures) and encodes the answers. It keeps no request
state and does no model work; slow calls (loading weights, copying, deleting) run in the
thread pool, never on the event loop.

Every answer is JSON except the protobuf results of forward / forward_backward / sample
futures. Every error is JSON too, ``{"detail": message, "code": name}``, with a message that
says what was wrong and how to fix it (never an empty-bodied 400: the official SDK reads that
as a proxy failure). API keys must start with ``tml-``; a server started with ``api_key``
accepts only that key. Keys are never logged. With ``pjwt_auth_enabled`` the server also
serves the JWT exchange of PROTOCOL.md §1.3 (``POST /api/v1/auth/token``, see `_jwt`), and
every authenticated route but ``client/config`` and ``auth/token`` then takes only its JWTs.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from starlette.testclient import TestClient
    >>> from tinkex_jax.local import ServerConfig
    >>> from tinkex_jax.local._engine import Engine
    >>> from tinkex_jax.local._jax_backend import JaxBackend
    >>> config = ServerConfig(data_dir=Path(tempfile.mkdtemp()), warm_up=False,
    ...                       base_models=("tinkex-jax/tiny",))
    >>> with TestClient(create_app(Engine(config, JaxBackend()))) as client:
    ...     client.post("/api/v1/create_session", json={},
    ...                 headers={"X-API-Key": "oops"}).status_code
    401
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route

from ..errors import ValidationError
from ..types import (
    CopyWeightsRequest,
    CreateModelRequest,
    CreateSamplingSessionRequest,
    CreateSessionRequest,
    FutureRetrieveRequest,
    GetInfoRequest,
    JoinSamplingSessionRequest,
    LoadWeightsRequest,
    OptimStepRequest,
    SampleRequest,
    SaveWeightsExternalRequest,
    SaveWeightsForSamplerRequest,
    SaveWeightsRequest,
    SessionFinishRequest,
    SessionHeartbeatRequest,
    SetCheckpointTTLRequest,
    UnloadModelRequest,
    WeightsInfoRequest,
)
from ..wire import decode_forward_backward_request, zstd_decompress
from . import _info as info
from ._audit import AuditLog, parse_audit_query
from ._console import render as render_console
from ._core import fingerprint
from ._engine import Engine
from ._errors import (
    InvalidTokenError,
    NotFoundError,
    ServerError,
    UnauthorizedError,
    UserError,
    error_body,
)
from ._futures import Failure
from ._jwt import JwtSigner
from ._rest import iso_time

__all__ = ["create_app"]

_log = logging.getLogger("tinkex_jax.local")
T = TypeVar("T")
Handler = Callable[[Request], Awaitable[Response]]
_ENCODER = msgspec.json.Encoder()
_EXTERNAL_URL_LIFETIME_S = 3600.0


def json_response(data: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    """A compact JSON response."""
    return Response(_ENCODER.encode(data), status_code=status, media_type="application/json",
                    headers=headers)


def _error_response(error: ServerError) -> Response:
    headers = dict(error.headers) if error.headers is not None else None
    return json_response(error_body(error), error.status, headers)


def _decode(body: bytes, type_: type[T]) -> T:
    """Decode a JSON request body into a (self-validating) wire type, or raise `UserError`."""
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        raise UserError(f"Invalid {type_.__name__} body: {exc}. Fix: send the fields the "
                        "Tinker protocol defines for this endpoint.") from None
    except msgspec.DecodeError as exc:
        raise UserError(f"The body of this request is not valid JSON ({exc}). Fix: send a "
                        "JSON object with Content-Type: application/json.") from None


def _check_key(request: Request, required: str | None) -> None:
    key = request.headers.get("x-api-key")
    if not key:
        raise UnauthorizedError(
            "Missing X-API-Key header. Fix: pass api_key='tml-...' to the client or set "
            "TINKER_API_KEY (any key starting with 'tml-' works unless the server was started "
            "with --api-key).")
    if not key.startswith("tml-"):
        raise UnauthorizedError(
            "Malformed API key: keys must start with 'tml-'. Fix: use e.g. 'tml-local' (the "
            "local backend accepts any 'tml-' key unless started with --api-key).")
    if required is not None and not hmac.compare_digest(key.encode(), required.encode()):
        raise UnauthorizedError(
            "API key not accepted by this server. Fix: use the key the server was started "
            "with (tinkex serve --api-key ...).")


def _check_credential(request: Request, required: str | None, signer: JwtSigner | None, *,
                      raw_key_ok: bool) -> None:
    """`_check_key`, plus JWT mode: a JWT must be one of ours and live; a raw key is only
    accepted where `raw_key_ok` (``client/config``, ``auth/token``)."""
    key = request.headers.get("x-api-key") or ""
    if signer is not None and key.startswith("eyJ"):
        if signer.verify(key) is None:
            raise InvalidTokenError(
                "The JWT in X-API-Key was not issued by this server or has expired. Fix: "
                "exchange the API key for a new one at POST /api/v1/auth/token (Tinker SDKs do "
                "this by themselves).")
        return
    _check_key(request, required)
    if signer is not None and not raw_key_ok:
        raise UnauthorizedError(
            "This server uses JWT auth (client config pjwt_auth_enabled): exchange the API key "
            "at POST /api/v1/auth/token and send the JWT in X-API-Key.")


def _query_int(request: Request, name: str, default: int, *, low: int = 0,
               high: int = 10_000) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UserError(f"Query parameter {name}={raw!r} is not an integer.") from None
    if not low <= value <= high:
        raise UserError(f"Query parameter {name}={value} is outside [{low}, {high}].")
    return value


def create_app(engine: Engine, *, owns_engine: bool = True) -> Starlette:
    """Build the ASGI app serving `engine`.

    Args:
        engine: The engine (storage, model backend, futures).
        owns_engine: Start the engine when the app starts and stop it when the app stops.

    Returns:
        A Starlette application; run it with uvicorn (see `tinkex_jax.local.serve`).
    """
    config = engine.config
    sessions, training, weights = engine.sessions, engine.training, engine.weights
    sampling, catalog, core = engine.sampling, engine.catalog, engine.core
    state: dict[str, bool] = {"ready": False}
    signer = (JwtSigner(config.jwt_lifetime_s, clock=engine.storage.now)
              if config.pjwt_auth_enabled else None)
    audit = AuditLog(engine.storage)

    def endpoint(fn: Callable[[Request], Awaitable[Any]], *, auth: bool = True,
                 raw_key: bool = False) -> Handler:
        async def handle(request: Request) -> Response:
            try:
                if auth:
                    _check_credential(request, config.api_key, signer, raw_key_ok=raw_key)
                result = await fn(request)
            except ServerError as exc:
                return _error_response(exc)
            except ValidationError as exc:
                return _error_response(UserError(str(exc)))
            except ClientDisconnect:
                # the client went away mid-request (e.g. closed during a long poll): no one
                # reads the answer, and it is not a server failure
                _log.debug("%s %s: client disconnected", request.method, request.url.path)
                return Response(status_code=499)
            except Exception as exc:
                _log.exception("%s %s failed", request.method, request.url.path)
                return json_response({
                    "detail": f"The local backend failed on {request.method} "
                              f"{request.url.path} ({type(exc).__name__}: {exc}). This is a "
                              "bug; please report it.",
                    "code": "internal_error"}, 500)
            if isinstance(result, Response):
                return result
            return json_response(result)

        return handle

    async def body_of(request: Request) -> bytes:
        body = await request.body()
        if request.headers.get("content-encoding", "").lower() == "zstd":
            try:
                body = zstd_decompress(body)
            except Exception as exc:
                raise UserError(f"Content-Encoding is zstd but the body is not a valid zstd "
                                f"frame ({exc}).") from None
        return body

    def json_route(type_: type[T], action: Callable[[T, bytes], Any], *,
                   threaded: bool = False) -> Callable[[Request], Awaitable[Any]]:
        async def run(request: Request) -> Any:
            body = await body_of(request)
            value = _decode(body, type_)
            if threaded:
                return await run_in_threadpool(action, value, fingerprint(body))
            return action(value, fingerprint(body))

        return run

    # ---------------------------------------------------------------- service

    async def healthz(request: Request) -> Any:
        if not state["ready"]:
            return json_response({"status": "starting"}, 503)
        topology = getattr(engine.core.backend, "topology", None)  # devices, mesh, platform
        return {"status": "ok", **(topology() if callable(topology) else {})}

    async def client_config(request: Request) -> Any:
        return info.client_config(config)

    async def auth_token(request: Request) -> Any:
        await request.body()
        if signer is None:
            raise NotFoundError("JWT auth is off on this server, so there is no token exchange "
                                "(start it with pjwt_auth_enabled=True to test JWT mode).")
        return {"jwt": signer.mint(request.headers.get("x-api-key") or "")}

    async def dynamic_config(request: Request) -> Any:
        return info.dynamic_config()

    async def capabilities(request: Request) -> Any:
        return info.capabilities(config, engine.core.backend)

    async def telemetry(request: Request) -> Any:
        await request.body()
        return {"status": "accepted"}

    async def cancel_future(request: Request) -> Any:
        await request.body()
        return {}

    # ---------------------------------------------------------------- sessions

    async def finish_session(request: Request) -> Any:
        body = await body_of(request)
        req = _decode(body, SessionFinishRequest) if body.strip() else SessionFinishRequest()
        return sessions.finish_session(request.path_params["session_id"], req)

    async def list_sessions(request: Request) -> Any:
        return sessions.list_sessions(_query_int(request, "limit", 20, low=1),
                                    _query_int(request, "offset", 0, high=10**9))

    async def get_session(request: Request) -> Any:
        return sessions.get_session(request.path_params["session_id"])

    async def session_project(request: Request) -> Any:
        try:
            data = msgspec.json.decode(await body_of(request) or b"{}")
        except msgspec.DecodeError as exc:
            raise UserError(f"The body is not valid JSON ({exc}). Fix: send "
                            "{\"project_id\": \"...\"}.") from None
        project = data.get("project_id") if isinstance(data, dict) else None
        if not isinstance(project, str) or not project:
            raise UserError("Body must be {\"project_id\": \"...\"}.")
        result = sessions.set_session_project(request.path_params["session_id"], project)
        audit.record("project_session_assign", {"session_id": request.path_params["session_id"],
                                                "project_id": project})
        return result

    async def trace_export(request: Request) -> Any:
        sessions.get_session(request.path_params["session_id"])
        return {"status": "failed", "error": "The local backend does not record traces."}

    # ---------------------------------------------------------------- training

    async def forward_backward(request: Request) -> Any:
        body = await body_of(request)
        ctype = request.headers.get("content-type", "")
        if "json" in ctype:
            raise UserError("forward_backward bodies must be protobuf (Content-Type: "
                            "application/x-protobuf), as tinker >= 0.25 sends them.")
        try:
            req = decode_forward_backward_request(body)
        except ValidationError as exc:
            raise UserError(str(exc)) from None
        return training.submit_forward_backward(req, fingerprint(body))

    async def optim_step(request: Request) -> Any:
        body = await body_of(request)
        try:
            raw = msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            raise UserError(f"The optim_step body is not valid JSON ({exc}).") from None
        if isinstance(raw, dict) and "optim_params" in raw and "adam_params" not in raw:
            raw["adam_params"] = raw.pop("optim_params")
        try:
            req = msgspec.convert(raw, OptimStepRequest)
        except msgspec.ValidationError as exc:
            raise UserError(f"Invalid OptimStepRequest body: {exc}.") from None
        return training.submit_optim_step(req, fingerprint(body))

    async def get_info(request: Request) -> Any:
        req = _decode(await body_of(request), GetInfoRequest)
        return training.get_info(req.model_id)

    # ---------------------------------------------------------------- futures

    async def retrieve_future(request: Request) -> Any:
        req = _decode(await body_of(request), FutureRetrieveRequest)
        timeout = config.long_poll_timeout_s
        header = request.headers.get("x-stainless-read-timeout")
        if header:
            with contextlib.suppress(ValueError):
                timeout = min(timeout, max(float(header) - 5.0, 0.5))
        outcome = await core.retrieve(req.request_id, timeout)
        if outcome is None:
            return {"type": "try_again", "request_id": req.request_id, "queue_state": "active"}
        if isinstance(outcome, Failure):
            return {"error": outcome.message, "category": outcome.category}
        return Response(outcome.body, media_type=outcome.content_type)

    # ---------------------------------------------------------------- sampling

    async def get_sampler(request: Request) -> Any:
        return sampling.get_sampler(request.path_params["sampler_id"])

    async def join_sampling_session(request: Request) -> Any:
        req = _decode(await body_of(request), JoinSamplingSessionRequest)
        return sampling.join_sampling_session(req.sampling_session_id)

    async def weights_info(request: Request) -> Any:
        req = _decode(await body_of(request), WeightsInfoRequest)
        return await run_in_threadpool(weights.weights_info, req.tinker_path)

    async def copy_weights(request: Request) -> Any:
        req = _decode(await body_of(request), CopyWeightsRequest)
        result = await run_in_threadpool(weights.copy_weights, req)
        source = req.source_path[len("tinker://"):].split("/", 1)
        audit.record_checkpoint("checkpoint_read", source[0], source[1], purpose="copy",
                                copied_to=result["tinker_path"])
        return result

    # ---------------------------------------------------------------- REST

    def ckpt_id(request: Request) -> tuple[str, str]:
        p = request.path_params
        return p["run_id"], f"{p['kind']}/{p['name']}"

    async def list_runs(request: Request) -> Any:
        return catalog.list_training_runs(_query_int(request, "limit", 20, low=1),
                                         _query_int(request, "offset", 0, high=10**9))

    async def get_run(request: Request) -> Any:
        return catalog.get_training_run(request.path_params["run_id"])

    async def list_checkpoints(request: Request) -> Any:
        return catalog.list_checkpoints(request.path_params["run_id"])

    async def list_user_checkpoints(request: Request) -> Any:
        return catalog.list_user_checkpoints(_query_int(request, "limit", 100, low=1),
                                            _query_int(request, "offset", 0, high=10**9))

    async def delete_checkpoint(request: Request) -> Any:
        run_id, checkpoint_id = ckpt_id(request)
        row = engine.storage.get_checkpoint(run_id, checkpoint_id)
        result = await run_in_threadpool(catalog.delete_checkpoint, run_id, checkpoint_id)
        audit.record_checkpoint("checkpoint_delete", run_id, checkpoint_id,
                                created_at=iso_time(row.created_at) if row else None)
        return result

    async def publish(request: Request) -> Any:
        public = request.method == "POST"
        result = catalog.set_published(*ckpt_id(request), public)
        audit.record_checkpoint("checkpoint_publish" if public else "checkpoint_unpublish",
                                *ckpt_id(request))
        return result

    async def set_ttl(request: Request) -> Any:
        body = await body_of(request)
        req = _decode(body or b"{}", SetCheckpointTTLRequest)
        result = catalog.set_ttl(*ckpt_id(request), req.ttl_seconds)
        audit.record_checkpoint("checkpoint_ttl_set", *ckpt_id(request),
                                ttl_seconds=req.ttl_seconds)
        return result

    async def external_urls(request: Request) -> Any:
        token, files = catalog.external_weights_files(*ckpt_id(request))
        audit.record_checkpoint("checkpoint_read", *ckpt_id(request), purpose="download")
        base = str(request.base_url).rstrip("/")
        return {"urls": {name: f"{base}/api/v1/files/{token}/{name}" for name in files},
                "expires": catalog.expires_at(_EXTERNAL_URL_LIFETIME_S)}

    # ---------------------------------------------------------------- admin, console

    async def audit_log(request: Request) -> Any:
        kind, day = parse_audit_query(request.query_params.get("event_type"),
                                      request.query_params.get("day"), engine.storage.now())
        return await run_in_threadpool(audit.entries, kind, day)

    def console_lookup(question: str, args: tuple[str, ...]) -> Any:
        if question == "list_sessions":
            return sessions.list_sessions(100, 0)
        if question == "get_session":
            return sessions.get_session(*args)
        if question == "get_training_run":
            return catalog.get_training_run(*args)
        run_id, checkpoint_id = args
        for checkpoint in catalog.list_checkpoints(run_id)["checkpoints"]:
            if checkpoint["checkpoint_id"] == checkpoint_id:
                return checkpoint
        raise NotFoundError(f"Run {run_id!r} has no checkpoint {checkpoint_id!r}.")

    async def console(request: Request) -> Any:
        open_server = config.api_key is None and signer is None
        status, page = render_console(request.path_params.get("path", ""),
                                      dict(request.query_params),
                                      lookup=console_lookup if open_server else None)
        return HTMLResponse(page, status_code=status)

    async def files(request: Request) -> Any:
        path = catalog.file_path(request.path_params["token"], request.path_params["path"])
        return FileResponse(path)

    # ---------------------------------------------------------------- routing

    v1 = "/api/v1"
    ckpt = f"{v1}/training_runs/{{run_id}}/checkpoints/{{kind}}/{{name}}"
    routes = [
        Route(f"{v1}/healthz", endpoint(healthz, auth=False), methods=["GET"]),
        Route(f"{v1}/client/config", endpoint(client_config, raw_key=True), methods=["POST"]),
        Route(f"{v1}/auth/token", endpoint(auth_token, raw_key=True), methods=["POST"]),
        Route(f"{v1}/client/dynamic_config", endpoint(dynamic_config), methods=["POST"]),
        Route(f"{v1}/get_server_capabilities", endpoint(capabilities), methods=["GET"]),
        Route(f"{v1}/telemetry", endpoint(telemetry), methods=["POST"]),
        Route(f"{v1}/cancel_future", endpoint(cancel_future), methods=["POST"]),
        Route(f"{v1}/create_session", endpoint(json_route(
            CreateSessionRequest, lambda r, fp: sessions.create_session(r))), methods=["POST"]),
        Route(f"{v1}/session_heartbeat", endpoint(json_route(
            SessionHeartbeatRequest, lambda r, fp: sessions.heartbeat(r.session_id))),
            methods=["POST"]),
        Route(f"{v1}/sessions", endpoint(list_sessions), methods=["GET"]),
        Route(f"{v1}/sessions/{{session_id}}", endpoint(get_session), methods=["GET"]),
        Route(f"{v1}/sessions/{{session_id}}/finish", endpoint(finish_session),
              methods=["POST"]),
        Route(f"{v1}/sessions/{{session_id}}/project", endpoint(session_project),
              methods=["PUT"]),
        Route(f"{v1}/sessions/{{session_id}}/trace_export", endpoint(trace_export),
              methods=["GET"]),
        Route(f"{v1}/create_model", endpoint(json_route(
            CreateModelRequest, training.submit_create_model)), methods=["POST"]),
        Route(f"{v1}/get_info", endpoint(get_info), methods=["POST"]),
        Route(f"{v1}/unload_model", endpoint(json_route(
            UnloadModelRequest, training.submit_unload_model)), methods=["POST"]),
        Route(f"{v1}/forward_backward", endpoint(forward_backward), methods=["POST"]),
        Route(f"{v1}/optim_step", endpoint(optim_step), methods=["POST"]),
        Route(f"{v1}/save_weights", endpoint(json_route(
            SaveWeightsRequest, weights.submit_save_weights)), methods=["POST"]),
        Route(f"{v1}/save_weights_for_sampler", endpoint(json_route(
            SaveWeightsForSamplerRequest, sampling.submit_save_for_sampler)), methods=["POST"]),
        Route(f"{v1}/save_weights_external", endpoint(json_route(
            SaveWeightsExternalRequest, weights.submit_save_external)), methods=["POST"]),
        Route(f"{v1}/load_weights", endpoint(json_route(
            LoadWeightsRequest, weights.submit_load_weights, threaded=False)), methods=["POST"]),
        Route(f"{v1}/create_sampling_session", endpoint(json_route(
            CreateSamplingSessionRequest, sampling.create_sampling_session, threaded=True)),
            methods=["POST"]),
        Route(f"{v1}/samplers/{{sampler_id}}", endpoint(get_sampler), methods=["GET"]),
        Route(f"{v1}/join_sampling_session", endpoint(join_sampling_session),
              methods=["POST"]),
        Route(f"{v1}/asample", endpoint(json_route(SampleRequest, sampling.submit_sample)),
              methods=["POST"]),
        Route(f"{v1}/retrieve_future", endpoint(retrieve_future), methods=["POST"]),
        Route(f"{v1}/weights_info", endpoint(weights_info), methods=["POST"]),
        Route(f"{v1}/copy_weights", endpoint(copy_weights), methods=["POST"]),
        Route(f"{v1}/training_runs", endpoint(list_runs), methods=["GET"]),
        Route(f"{v1}/training_runs/{{run_id}}", endpoint(get_run), methods=["GET"]),
        Route(f"{v1}/training_runs/{{run_id}}/checkpoints", endpoint(list_checkpoints),
              methods=["GET"]),
        Route(ckpt, endpoint(delete_checkpoint), methods=["DELETE"]),
        Route(f"{ckpt}/publish", endpoint(publish), methods=["POST", "DELETE"]),
        Route(f"{ckpt}/ttl", endpoint(set_ttl), methods=["PUT"]),
        Route(f"{ckpt}/external_weights_urls", endpoint(external_urls), methods=["GET"]),
        Route(f"{v1}/checkpoints", endpoint(list_user_checkpoints), methods=["GET"]),
        Route(f"{v1}/audit", endpoint(audit_log), methods=["GET"]),
        Route("/console", endpoint(console, auth=False), methods=["GET"]),
        Route("/console/{path:path}", endpoint(console, auth=False), methods=["GET"]),
        Route(f"{v1}/files/{{token}}/{{path:path}}", endpoint(files, auth=False),
              methods=["GET"]),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        if status == 404:
            err: ServerError = NotFoundError(
                f"No endpoint {request.method} {request.url.path} on the tinkex local backend. "
                "Fix: check the base URL (it should end at the host, e.g. "
                "http://127.0.0.1:8000) and the SDK version.")
        else:
            err = UserError(f"{request.method} is not allowed on {request.url.path}.")
            err.status = status
        return _error_response(err)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        reaper: asyncio.Task[None] | None = None
        if owns_engine:
            await run_in_threadpool(engine.start)
        state["ready"] = True

        async def reap_forever() -> None:
            while True:
                await asyncio.sleep(config.reap_interval_s)  # tests call Engine.reap instead
                try:
                    await run_in_threadpool(engine.reap)
                except Exception:
                    _log.exception("reaping expired checkpoints failed")

        reaper = asyncio.create_task(reap_forever())
        try:
            yield
        finally:
            state["ready"] = False
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            if owns_engine:
                await run_in_threadpool(engine.stop)

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error})
    app.state.jwt_signer = signer
    return app
