"""The Starlette app: Tinker's HTTP routes (docs/protocol.md §3, §11) over the engine's services.

The only module that speaks HTTP: it checks credentials, decodes bodies into wire types,
calls the service each route needs (`Engine.sessions`, ``training``, ``weights``,
``sampling``, ``catalog``, ``core`` for futures) and encodes the answers. It keeps no request
state and does no model work; slow calls (loading weights, copying, deleting) run in the
thread pool, never on the event loop.

Every answer is JSON except the protobuf results of forward / forward_backward / sample
futures. Every error is JSON too, ``{"detail": message, "code": name}``, with a message that
says what was wrong and how to fix it (never an empty-bodied 400: the official SDK reads that
as a proxy failure).

**Keys and owners.** The server accepts its keys (``api_key`` and ``extra_api_keys``,
compared in constant time) or, with ``no_auth``, any key that starts with ``tml-``. Keys are
never logged. Each request acts for an owner: a hash of its key (`_jwt.key_owner`), or its
JWT's subject. The services answer 404 for what another owner created. With
``pjwt_auth_enabled`` the server also serves the JWT exchange of docs/protocol.md §1.3 (``POST
/api/v1/auth/token``, see `_jwt`), and every authenticated route but ``client/config`` and
``auth/token`` then takes only its JWTs.

**Bounds.** A body is read with a cap (``max_body_bytes``, 413 as soon as it is passed; a
declared ``Content-Length`` over it is refused before reading), zstd bodies are
decompressed with one (``max_decompressed_bytes``), and each decoded request is checked
against the limits of `_limits` before a service sees it. A body larger than
``_INLINE_BODY_BYTES`` is decoded, checked and submitted in the thread pool, so the event
loop never does work proportional to what a client sent.

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
import urllib.parse
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
from ..wire import decode_forward_backward_request
from . import _info as info
from ._audit import AuditLog, parse_audit_query
from ._console import render as render_console
from ._core import fingerprint
from ._engine import Engine
from ._errors import (
    InvalidTokenError,
    NotFoundError,
    PayloadTooLargeError,
    ServerError,
    UnauthorizedError,
    UserError,
    error_body,
)
from ._futures import Failure
from ._jwt import JwtSigner, key_owner
from ._limits import check_request, check_text, decompress_zstd, fwdbwd_size_check
from ._rest import iso_time

__all__ = ["create_app"]

_log = logging.getLogger("tinkex_jax.local")
T = TypeVar("T")
Handler = Callable[[Request], Awaitable[Response]]
_ENCODER = msgspec.json.Encoder()
#: Bodies up to this size are decoded on the event loop; larger ones in the thread pool.
_INLINE_BODY_BYTES = 256 * 1024


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
    except RecursionError:
        raise UserError("The body of this request nests too deeply to decode. Fix: send the "
                        f"flat {type_.__name__} fields the Tinker protocol defines.") from None


def _decode_any(body: bytes, what: str) -> Any:
    """Decode a JSON body without a type, or raise `UserError`."""
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        reason = "it nests too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise UserError(f"The {what} body is not valid JSON ({reason}).") from None


def _check_key(request: Request, accepted: tuple[str, ...]) -> str:
    """The owner of the request's key, if the server accepts the key (any ``tml-`` key when
    `accepted` is empty: a no-auth server)."""
    key = request.headers.get("x-api-key")
    if not key:
        raise UnauthorizedError(
            "Missing X-API-Key header. Fix: pass api_key='tml-...' to the client or set "
            "TINKER_API_KEY to the key the server printed when it started.")
    if not key.startswith("tml-"):
        raise UnauthorizedError(
            "Malformed API key: keys must start with 'tml-'. Fix: use the key the server "
            "printed when it started (tinkex serve prints it; serve() gives server.api_key).")
    if accepted:
        given = key.encode("utf-8", "surrogateescape")
        matched = False
        for candidate in accepted:  # every key compared, each in constant time
            matched |= hmac.compare_digest(given, candidate.encode())
        if not matched:
            raise UnauthorizedError(
                "API key not accepted by this server. Fix: use the key the server printed "
                "when it started, or the one given with tinkex serve --api-key.")
    return key_owner(key)


def _check_credential(request: Request, accepted: tuple[str, ...], signer: JwtSigner | None,
                      *, raw_key_ok: bool) -> str:
    """`_check_key`, plus JWT mode: a JWT must be one of ours and live (its owner is its
    subject); a raw key is only accepted where `raw_key_ok` (``client/config``,
    ``auth/token``)."""
    key = request.headers.get("x-api-key") or ""
    if signer is not None and key.startswith("eyJ"):
        claims = signer.verify(key)
        if claims is None or not isinstance(claims.get("sub"), str):
            raise InvalidTokenError(
                "The JWT in X-API-Key was not issued by this server or has expired. Fix: "
                "exchange the API key for a new one at POST /api/v1/auth/token (Tinker SDKs do "
                "this by themselves).")
        return str(claims["sub"])
    owner = _check_key(request, accepted)
    if signer is not None and not raw_key_ok:
        raise UnauthorizedError(
            "This server uses JWT auth (client config pjwt_auth_enabled): exchange the API key "
            "at POST /api/v1/auth/token and send the JWT in X-API-Key.")
    return owner


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

    accepted = () if config.no_auth else config.api_keys
    size_check = fwdbwd_size_check(config)
    if not config.no_auth and not accepted:
        raise ValueError("create_app: the engine's config has no API key and is not no_auth "
                         "(Engine resolves one: build the engine with Engine(config, ...)).")

    def endpoint(fn: Callable[[Request, str | None], Awaitable[Any]], *, auth: bool = True,
                 raw_key: bool = False) -> Handler:
        async def handle(request: Request) -> Response:
            try:
                owner = (_check_credential(request, accepted, signer, raw_key_ok=raw_key)
                         if auth else None)
                result = await fn(request, owner)
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

    def too_large(size: str) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"The request body is {size} bytes, more than this server takes "
            f"({config.max_body_bytes}: tinkex serve --max-body-bytes). Fix: send smaller "
            "requests (fewer datums per forward_backward call).")

    async def body_of(request: Request) -> bytes:
        """The body, read with the size cap and zstd-decompressed with its own."""
        limit = config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large(declared)
        parts: list[bytes] = []
        size = 0
        async for part in request.stream():
            size += len(part)
            if size > limit:
                raise too_large(f"more than {limit}")
            parts.append(part)
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        if request.headers.get("content-encoding", "").lower() == "zstd":
            body = await in_turn(len(body), lambda: decompress_zstd(
                body, config.max_decompressed_bytes))
        return body

    async def in_turn(size: int, work: Callable[[], T]) -> T:
        """`work` (proportional to a body of `size` bytes) inline when the body is small,
        in the thread pool when it is large."""
        if size > _INLINE_BODY_BYTES:
            return await run_in_threadpool(work)
        return work()

    def json_route(type_: type[T], action: Callable[[T, bytes, str | None], Any], *,
                   threaded: bool = False) -> Callable[[Request, str | None], Awaitable[Any]]:
        async def run(request: Request, owner: str | None) -> Any:
            body = await body_of(request)

            def go() -> Any:
                value = _decode(body, type_)
                check_request(value, config)
                return action(value, fingerprint(body), owner)

            if threaded:
                return await run_in_threadpool(go)
            return await in_turn(len(body), go)

        return run

    # ---------------------------------------------------------------- service

    async def healthz(request: Request, owner: str | None) -> Any:
        if not state["ready"]:
            return json_response({"status": "starting"}, 503)
        topology = getattr(engine.core.backend, "topology", None)  # devices, mesh, platform
        return {"status": "ok", **(topology() if callable(topology) else {})}

    async def client_config(request: Request, owner: str | None) -> Any:
        await body_of(request)
        return info.client_config(config)

    async def auth_token(request: Request, owner: str | None) -> Any:
        await body_of(request)
        if signer is None:
            raise NotFoundError("JWT auth is off on this server, so there is no token exchange "
                                "(start it with pjwt_auth_enabled=True to test JWT mode).")
        return {"jwt": signer.mint(request.headers.get("x-api-key") or "")}

    async def dynamic_config(request: Request, owner: str | None) -> Any:
        await body_of(request)
        return info.dynamic_config()

    async def capabilities(request: Request, owner: str | None) -> Any:
        return info.capabilities(config, engine.core.backend)

    async def telemetry(request: Request, owner: str | None) -> Any:
        await body_of(request)
        return {"status": "accepted"}

    async def cancel_future(request: Request, owner: str | None) -> Any:
        await body_of(request)
        return {}

    # ---------------------------------------------------------------- sessions

    async def finish_session(request: Request, owner: str | None) -> Any:
        body = await body_of(request)
        req = _decode(body, SessionFinishRequest) if body.strip() else SessionFinishRequest()
        check_request(req, config)
        return sessions.finish_session(request.path_params["session_id"], req, owner)

    # the REST reads answer pages of up to 10,000 rows: built in the thread pool

    async def list_sessions(request: Request, owner: str | None) -> Any:
        return await run_in_threadpool(
            sessions.list_sessions, _query_int(request, "limit", 20, low=1),
            _query_int(request, "offset", 0, high=10**9), owner)

    async def get_session(request: Request, owner: str | None) -> Any:
        return await run_in_threadpool(sessions.get_session, request.path_params["session_id"],
                                       owner)

    async def session_project(request: Request, owner: str | None) -> Any:
        body = await body_of(request)
        data = await in_turn(len(body), lambda: _decode_any(body or b"{}", "project"))
        project = data.get("project_id") if isinstance(data, dict) else None
        if not isinstance(project, str) or not project:
            raise UserError("Body must be {\"project_id\": \"...\"}.")
        check_text("project_id", project, config)
        session_id = request.path_params["session_id"]
        result = sessions.set_session_project(session_id, project, owner)
        audit.record("project_session_assign", {"session_id": session_id,
                                                "project_id": project}, owner=owner)
        return result

    async def trace_export(request: Request, owner: str | None) -> Any:
        sessions.get_session(request.path_params["session_id"], owner)
        return {"status": "failed", "error": "The local backend does not record traces."}

    # ---------------------------------------------------------------- training

    async def forward_backward(request: Request, owner: str | None) -> Any:
        body = await body_of(request)
        ctype = request.headers.get("content-type", "")
        if "json" in ctype:
            raise UserError("forward_backward bodies must be protobuf (Content-Type: "
                            "application/x-protobuf), as tinker >= 0.25 sends them.")

        def go() -> Any:
            try:
                req = decode_forward_backward_request(body, check_size=size_check)
            except ValidationError as exc:
                raise UserError(str(exc)) from None
            check_request(req, config)
            return training.submit_forward_backward(req, fingerprint(body), owner)

        return await in_turn(len(body), go)

    async def optim_step(request: Request, owner: str | None) -> Any:
        body = await body_of(request)

        def go() -> Any:
            raw = _decode_any(body, "optim_step")
            if isinstance(raw, dict) and "optim_params" in raw and "adam_params" not in raw:
                raw["adam_params"] = raw.pop("optim_params")
            try:
                req = msgspec.convert(raw, OptimStepRequest)
            except msgspec.ValidationError as exc:
                raise UserError(f"Invalid OptimStepRequest body: {exc}.") from None
            check_request(req, config)
            return training.submit_optim_step(req, fingerprint(body), owner)

        return await in_turn(len(body), go)

    async def get_info(request: Request, owner: str | None) -> Any:
        req = _decode(await body_of(request), GetInfoRequest)
        return training.get_info(req.model_id, owner)

    # ---------------------------------------------------------------- futures

    async def retrieve_future(request: Request, owner: str | None) -> Any:
        req = _decode(await body_of(request), FutureRetrieveRequest)
        timeout = config.long_poll_timeout_s
        header = request.headers.get("x-stainless-read-timeout")
        if header:
            with contextlib.suppress(ValueError):
                timeout = min(timeout, max(float(header) - 5.0, 0.5))
        outcome = await core.retrieve(req.request_id, timeout, owner)
        if outcome is None:
            return {"type": "try_again", "request_id": req.request_id, "queue_state": "active"}
        if isinstance(outcome, Failure):
            return {"error": outcome.message, "category": outcome.category}
        return Response(outcome.body, media_type=outcome.content_type)

    # ---------------------------------------------------------------- sampling

    async def get_sampler(request: Request, owner: str | None) -> Any:
        return sampling.get_sampler(request.path_params["sampler_id"], owner)

    async def join_sampling_session(request: Request, owner: str | None) -> Any:
        req = _decode(await body_of(request), JoinSamplingSessionRequest)
        return sampling.join_sampling_session(req.sampling_session_id, owner)

    async def weights_info(request: Request, owner: str | None) -> Any:
        req = _decode(await body_of(request), WeightsInfoRequest)
        return await run_in_threadpool(weights.weights_info, req.tinker_path, owner)

    async def copy_weights(request: Request, owner: str | None) -> Any:
        req = _decode(await body_of(request), CopyWeightsRequest)
        check_request(req, config)
        result = await run_in_threadpool(weights.copy_weights, req, owner)
        source = req.source_path[len("tinker://"):].split("/", 1)
        audit.record_checkpoint("checkpoint_read", source[0], source[1], purpose="copy",
                                copied_to=result["tinker_path"], owner=owner)
        return result

    # ---------------------------------------------------------------- REST

    def ckpt_id(request: Request) -> tuple[str, str]:
        p = request.path_params
        return p["run_id"], f"{p['kind']}/{p['name']}"

    async def list_runs(request: Request, owner: str | None) -> Any:
        return await run_in_threadpool(
            catalog.list_training_runs, _query_int(request, "limit", 20, low=1),
            _query_int(request, "offset", 0, high=10**9), owner)

    async def get_run(request: Request, owner: str | None) -> Any:
        return catalog.get_training_run(request.path_params["run_id"], owner)

    async def list_checkpoints(request: Request, owner: str | None) -> Any:
        return await run_in_threadpool(catalog.list_checkpoints, request.path_params["run_id"],
                                       owner)

    async def list_user_checkpoints(request: Request, owner: str | None) -> Any:
        return await run_in_threadpool(
            catalog.list_user_checkpoints, _query_int(request, "limit", 100, low=1),
            _query_int(request, "offset", 0, high=10**9), owner)

    async def delete_checkpoint(request: Request, owner: str | None) -> Any:
        run_id, checkpoint_id = ckpt_id(request)
        row = engine.storage.get_checkpoint(run_id, checkpoint_id)
        result = await run_in_threadpool(catalog.delete_checkpoint, run_id, checkpoint_id,
                                         owner)
        audit.record_checkpoint("checkpoint_delete", run_id, checkpoint_id, owner=owner,
                                created_at=iso_time(row.created_at) if row else None)
        return result

    async def publish(request: Request, owner: str | None) -> Any:
        public = request.method == "POST"
        result = catalog.set_published(*ckpt_id(request), public, owner)
        audit.record_checkpoint("checkpoint_publish" if public else "checkpoint_unpublish",
                                *ckpt_id(request), owner=owner)
        return result

    async def set_ttl(request: Request, owner: str | None) -> Any:
        body = await body_of(request)
        req = _decode(body or b"{}", SetCheckpointTTLRequest)
        result = catalog.set_ttl(*ckpt_id(request), req.ttl_seconds, owner)
        audit.record_checkpoint("checkpoint_ttl_set", *ckpt_id(request), owner=owner,
                                ttl_seconds=req.ttl_seconds)
        return result

    async def external_urls(request: Request, owner: str | None) -> Any:
        token, files = catalog.external_weights_files(*ckpt_id(request), owner)
        audit.record_checkpoint("checkpoint_read", *ckpt_id(request), purpose="download",
                                owner=owner)
        base = str(request.base_url).rstrip("/")
        lifetime = config.download_url_lifetime_s
        expires = int(engine.storage.now() + lifetime)
        urls = {}
        for name in files:
            query = urllib.parse.urlencode({"expires": expires,
                                            "signature": catalog.sign(token, name, expires)})
            urls[name] = f"{base}/api/v1/files/{token}/{urllib.parse.quote(name)}?{query}"
        return {"urls": urls, "expires": iso_time(expires)}

    # ---------------------------------------------------------------- admin, console

    async def audit_log(request: Request, owner: str | None) -> Any:
        kind, day = parse_audit_query(request.query_params.get("event_type"),
                                      request.query_params.get("day"), engine.storage.now())
        return await run_in_threadpool(audit.entries, kind, day, owner)

    def console_lookup(question: str, args: tuple[str, ...]) -> Any:
        # an open (no-auth, loopback) server's console: the server's own view of everything
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

    async def console(request: Request, owner: str | None) -> Any:
        open_server = config.no_auth and signer is None
        status, page = render_console(request.path_params.get("path", ""),
                                      dict(request.query_params),
                                      lookup=console_lookup if open_server else None)
        return HTMLResponse(page, status_code=status)

    async def files(request: Request, owner: str | None) -> Any:
        query = request.query_params
        path = catalog.file_path(request.path_params["token"], request.path_params["path"],
                                 query.get("expires"), query.get("signature"))
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
            CreateSessionRequest, lambda r, fp, owner: sessions.create_session(r, owner))),
            methods=["POST"]),
        Route(f"{v1}/session_heartbeat", endpoint(json_route(
            SessionHeartbeatRequest, lambda r, fp, owner: sessions.heartbeat(r.session_id,
                                                                             owner))),
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
