"""The shell: the only place with I/O. One per ServiceClient (and per standalone RestClient
or unpickled SamplingClient).

It owns the background event-loop thread, the HTTP client, the session life cycle of
docs/protocol.md §2 (config, dynamic config, create_session, heartbeat, config refresh,
telemetry, finish), the retry loops of §6, the dispatch limits and the long polling of §5.
Clients hold a shell, build requests with the pure builders and hand them to it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Literal, TypeVar, overload
from urllib.parse import quote

import httpx

from ..builders import SessionCounters, next_model_seq_id, next_sampling_session_seq_id
from ..errors import (
    APIResponseValidationError,
    APIStatusError,
    ClientPoisonedError,
    NotFoundError,
    TinkerError,
    ValidationError,
)
from ..types import (
    ClientConfigRequest,
    ClientConfigResponse,
    ClientDynamicConfigResponse,
    CreateSessionRequest,
    CreateSessionResponse,
    FinishReason,
    SessionFinishRequest,
    SessionHeartbeatRequest,
    TelemetrySendRequest,
    UntypedAPIFuture,
)
from ..wire import decode_json
from ._background import Telemetry, heartbeat_loop, refresh_loop
from ._config import Settings
from ._constants import ENDPOINTS, PROTOCOL_VERSION
from ._future import Future
from ._http import SDK_METHOD, HttpCore, configure_logging
from ._instrument import current_outer_method
from ._limits import BytesBudget, SampleDispatcher
from ._loop import LoopThread
from ._polling import QueueObserver, retrieve_future
from ._retry import BillingPause, with_holder_retries
from ._runtime import REAL_RUNTIME, Runtime

__all__ = ["FinishStatus", "Shell", "shadow_shell"]

T = TypeVar("T")
FinishStatus = Literal["success", "errored", "interrupted"]
logger = logging.getLogger("tinkex_jax.session")

_CLOSE_TELEMETRY_BUDGET = 3.0
#: Answers to ``sessions/{id}/finish`` that mean "nothing to finish" (docs/protocol.md §12).
_FINISH_ABSENT = frozenset({404, 405, 410})
_NOT_REPORTED = (ValidationError, ClientPoisonedError, asyncio.CancelledError)


def _failed(task: asyncio.Task[Any]) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None)


def _quote(value: str, *, allow_slash: bool = False) -> str:
    return quote(str(value), safe=":@/" if allow_slash else ":@")


class Shell:
    """I/O, retries, polling and the session life cycle for a set of clients.

    Args:
        settings: Resolved settings.
        runtime: Time and randomness (tests inject a fake).
        transport: An httpx transport replacing the network (tests, ASGI apps).
        name: Name of the owner, for the thread name and messages.
        user_metadata: ``user_metadata`` of the session.
        display_name: ``display_name`` of the session.
        session_id: An existing session to join (unpickled sampling clients); no
            config or create_session calls are made then.
        client_config: Known client config (skips ``client/config``).
        dynamic_config: Known dynamic config (skips ``client/dynamic_config``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        runtime: Runtime = REAL_RUNTIME,
        transport: httpx.AsyncBaseTransport | None = None,
        name: str = "ServiceClient",
        user_metadata: Mapping[str, Any] | None = None,
        display_name: str | None = None,
        session_id: str | None = None,
        client_config: ClientConfigResponse | None = None,
        dynamic_config: ClientDynamicConfigResponse | None = None,
    ) -> None:
        configure_logging(settings)
        self.settings = settings
        self.runtime = runtime
        self.name = name
        self.user_metadata = dict(user_metadata or {})
        self.display_name = display_name
        self.loop_thread = LoopThread(name)
        self.http = HttpCore(settings, runtime, transport=transport)
        # a joined session (an unpickled sampling client) is on a server that has answered
        self.http.answered = session_id is not None
        self.secrets = self.http.secrets
        self.billing = BillingPause()
        self.telemetry = Telemetry(enabled=settings.telemetry, send=self._send_telemetry,
                                   runtime=runtime, session_id=lambda: self.session_id,
                                   secrets=self.secrets)
        self.session_id: str | None = session_id
        self.joined = session_id is not None
        self.client_config: ClientConfigResponse | None = None
        self.dynamic_config: ClientDynamicConfigResponse | None = None
        self._counters = SessionCounters()
        self._counter_lock = threading.Lock()
        self._config_task: asyncio.Task[None] | None = None
        self._session_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._background_started = False
        self._session_started_at: float | None = None
        self._closing = False
        self.last_sample_progress = runtime.clock()
        # limits, replaced from the client config
        self.response_budget = BytesBudget(50 * 1024 * 1024)
        self.fwdbwd_budget = BytesBudget(50_000_000)
        self.sample_dispatcher = SampleDispatcher(bytes_budget=10 * 1024 * 1024,
                                                  clock=runtime.clock)
        self.sample_semaphore: asyncio.Semaphore | None = None
        if client_config is not None:
            self._apply_client_config(client_config)
        if dynamic_config is not None:
            self.dynamic_config = dynamic_config

    def __repr__(self) -> str:
        return (f"<Shell {self.name} base_url={self.settings.base_url!r} "
                f"session_id={self.session_id!r}>")

    # ------------------------------------------------------------------ running work

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._closing

    def submit(self, fn: Callable[[], Awaitable[T]], *, sdk_method: str | None,
               future_cls: type[Future[T]] = Future) -> Future[T]:
        """Run ``fn()`` on the event loop as the public method `sdk_method` (or the outer
        public method running in the caller's context, see `_instrument`); return a Future.

        Requests made inside carry ``x-sdk-method``; unexpected failures are reported to
        telemetry (validation errors and poisoned-client errors are not). `future_cls` picks
        the Future subclass (client-creating methods return a `ClientFuture`).
        """
        sdk_method = current_outer_method() or sdk_method
        if self._closing:
            raise TinkerError(f"{sdk_method or self.name}: the {self.name} is closed. Fix: "
                              "create a new ServiceClient to make more requests")

        async def run() -> T:
            SDK_METHOD.set(sdk_method)
            try:
                return await fn()
            except _NOT_REPORTED:
                raise
            except Exception as error:
                self.telemetry.exception(error, where=sdk_method)
                raise

        cf = self.loop_thread.submit(run(), context=contextvars.Context())
        return future_cls(cf, is_loop_thread=self.loop_thread.is_current)

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Start background work on the loop (call from the loop) without an SDK method."""
        task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # ------------------------------------------------------------------ counters

    def next_model_seq_id(self) -> int:
        """Reserve the next ``model_seq_id`` of the session (thread-safe, program order)."""
        with self._counter_lock:
            value, self._counters = next_model_seq_id(self._counters)
        return value

    def next_sampling_session_seq_id(self) -> int:
        """Reserve the next ``sampling_session_seq_id`` (thread-safe, program order)."""
        with self._counter_lock:
            value, self._counters = next_sampling_session_seq_id(self._counters)
        return value

    # ------------------------------------------------------------------ requests

    def _decode(self, response: httpx.Response, response_type: type[T], method: str,
                path: str) -> T:
        try:
            return decode_json(response.content, response_type)
        except APIResponseValidationError as error:
            where = SDK_METHOD.get() or self.name
            raise APIResponseValidationError(
                f"{where}: {method} /api/v1/{path} answered with a body we could not read "
                f"({error.message}). What to do: check that base_url "
                f"({self.settings.base_url}) points at a Tinker-compatible server.",
                status_code=response.status_code, method=method, url=self.http.url(path),
                body=error.body) from None

    @overload
    async def call(self, endpoint: str, body: Any, response_type: type[T], *,
                   path_params: Mapping[str, str] | None = ...,
                   params: Mapping[str, Any] | None = ...,
                   headers: Mapping[str, str] | None = ...,
                   content: bytes | None = ..., content_type: str | None = ...,
                   idempotency_key: str | None = ...) -> T: ...

    @overload
    async def call(self, endpoint: str, body: Any, response_type: None, *,
                   path_params: Mapping[str, str] | None = ...,
                   params: Mapping[str, Any] | None = ...,
                   headers: Mapping[str, str] | None = ...,
                   content: bytes | None = ..., content_type: str | None = ...,
                   idempotency_key: str | None = ...) -> None: ...

    async def call(
        self,
        endpoint: str,
        body: Any,
        response_type: type[T] | None,
        *,
        path_params: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        content_type: str | None = None,
        idempotency_key: str | None = None,
    ) -> T | None:
        """Call an endpoint of `ENDPOINTS` with its retry policy; decode the JSON answer.

        `body` is a struct (sent as JSON) or None; `content` sends raw bytes instead.
        `response_type` None accepts any 2xx and returns None.
        """
        spec = ENDPOINTS[endpoint]
        quoted = {k: _quote(v, allow_slash=(k == "checkpoint_id"))
                  for k, v in (path_params or {}).items()}
        path = spec.path.format(**quoted)

        async def once() -> T | None:
            response = await self.http.send(
                spec.method, path, json=body, content=content, content_type=content_type,
                params=params, headers=headers, timeout=spec.timeout,
                max_retries=spec.max_retries, idempotency_key=idempotency_key)
            if response_type is None:
                return None
            return self._decode(response, response_type, spec.method, path)

        if spec.holder_retries:
            return await with_holder_retries(once, runtime=self.runtime, billing=self.billing,
                                             what=f"{spec.method} /api/v1/{path}",
                                             waits=self.http.waits)
        return await once()

    async def poll(
        self,
        future: UntypedAPIFuture,
        request_type: str,
        *,
        json_type: type[T] | None = None,
        decode_proto: Callable[[bytes], T] | None = None,
        observer: QueueObserver | None = None,
        roundtrip: float = 0.0,
    ) -> T:
        """Long-poll the result of a submitted request (docs/protocol.md §5)."""
        return await retrieve_future(
            self.http, future.request_id, request_type, runtime=self.runtime,
            billing=self.billing, response_budget=self.response_budget, json_type=json_type,
            decode_proto=decode_proto, observer=observer, roundtrip=roundtrip)

    async def submit_request(self, endpoint: str, body: Any, **kwargs: Any
                             ) -> tuple[UntypedAPIFuture, float]:
        """POST a future-returning request; return the future and the POST's round trip."""
        start = self.runtime.clock()
        future = await self.call(endpoint, body, UntypedAPIFuture, **kwargs)
        return future, self.runtime.clock() - start

    # ------------------------------------------------------------------ life cycle

    def _apply_client_config(self, config: ClientConfigResponse) -> None:
        self.client_config = config
        self.billing.max_pause = float(config.billing_exception_max_pause_duration_sec)
        self.response_budget = BytesBudget(config.inflight_response_bytes_semaphore_size)
        self.fwdbwd_budget = BytesBudget(config.fwdbwd_dispatch_bytes_semaphore_size)
        self.sample_dispatcher = SampleDispatcher(
            bytes_budget=config.sample_dispatch_bytes_semaphore_size, clock=self.runtime.clock)
        self.sample_semaphore = None  # rebuilt on the loop with the new size
        if config.pjwt_auth_enabled:
            logger.debug("the server uses JWT auth (credential for the exchange: %s)",
                         config.credential_default_source)
            self.http.enable_jwt(config.credential_default_source,
                                 spawn=self._spawn_unless_closing)

    def _spawn_unless_closing(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        if self._closing:
            coro.close()
            return None
        return self.spawn(coro)

    async def identity_jwt(self) -> str | None:
        """A JWT with the caller's identity claims (the JWT-mode token, or a Tinker-issued JWT
        passed as the key), or None. Call after `ensure_config`."""
        return await self.http.auth.identity_jwt()

    def require_client_config(self) -> ClientConfigResponse:
        """The client config (fetched before any training or sampling client exists)."""
        if self.client_config is None:
            return ClientConfigResponse()
        return self.client_config

    async def ensure_config(self) -> None:
        """Fetch ``client/config`` (required) and ``client/dynamic_config`` once."""
        if self.client_config is not None and self.dynamic_config is not None:
            return
        if self._config_task is None or _failed(self._config_task):
            self._config_task = asyncio.get_running_loop().create_task(self._fetch_config())
        await asyncio.shield(self._config_task)

    async def _fetch_config(self) -> None:
        request = ClientConfigRequest(sdk_version=PROTOCOL_VERSION)
        if self.client_config is None:
            try:
                config = await self.call("client_config", request, ClientConfigResponse)
            except NotFoundError as error:
                raise NotFoundError(
                    f"{self.name}: the server at {self.settings.base_url} answered HTTP 404 to "
                    "POST /api/v1/client/config, so it does not serve the Tinker API at this "
                    "base URL. What to do: check base_url / TINKER_BASE_URL (include any path "
                    "prefix such as /services/tinker-prod).", status_code=404,
                    method="POST", url=error.url, body=error.body, headers=error.headers,
                ) from None
            self._apply_client_config(config)
        if self.dynamic_config is None:
            try:
                dynamic = await self.call("dynamic_config", request, ClientDynamicConfigResponse)
            except NotFoundError:
                dynamic = ClientDynamicConfigResponse()
            self.dynamic_config = dynamic

    async def ensure_session(self) -> str:
        """Create the session once (config first) and start the background loops."""
        if self.session_id is None:
            if self._session_task is None or _failed(self._session_task):
                self._session_task = asyncio.get_running_loop().create_task(
                    self._create_session())
            await asyncio.shield(self._session_task)
        else:
            await self.ensure_config()
        assert self.session_id is not None
        self._start_background()
        return self.session_id

    async def _create_session(self) -> None:
        await self.ensure_config()
        request = CreateSessionRequest(
            tags=list(self.settings.tags), user_metadata=self.user_metadata,
            sdk_version=PROTOCOL_VERSION, project_id=self.settings.project_id,
            display_name=self.display_name)
        response = await self.call("create_session", request, CreateSessionResponse)
        for level, message in ((logging.INFO, response.info_message),
                               (logging.WARNING, response.warning_message),
                               (logging.ERROR, response.error_message)):
            if message:
                logger.log(level, "%s", message)
        self.session_id = response.session_id
        self._session_started_at = self.runtime.clock()
        self.telemetry.session_start()

    def _start_background(self) -> None:
        if self._background_started or self._closing or self.session_id is None:
            return
        self._background_started = True
        session_id = self.session_id

        async def heartbeat() -> None:
            await self.call("session_heartbeat", SessionHeartbeatRequest(session_id=session_id),
                            None)

        async def fetch_dynamic() -> ClientDynamicConfigResponse:
            return await self.call("dynamic_config_refresh",
                                   ClientConfigRequest(sdk_version=PROTOCOL_VERSION),
                                   ClientDynamicConfigResponse)

        def apply_dynamic(config: ClientDynamicConfigResponse) -> None:
            self.dynamic_config = config

        self.spawn(heartbeat_loop(heartbeat, runtime=self.runtime, session_id=session_id))
        self.spawn(refresh_loop(
            fetch_dynamic, apply_dynamic, runtime=self.runtime,
            interval=lambda: (self.dynamic_config or ClientDynamicConfigResponse()
                              ).refresh_interval_sec))
        if self.telemetry.enabled:
            self.spawn(self.telemetry.run())

    async def _send_telemetry(self, request: TelemetrySendRequest) -> None:
        await self.call("telemetry", request, None)

    def get_sample_semaphore(self) -> asyncio.Semaphore:
        """The semaphore of whole sample calls (``sample_max_concurrent_requests``)."""
        if self.sample_semaphore is None:
            self.sample_semaphore = asyncio.Semaphore(
                max(1, self.require_client_config().sample_max_concurrent_requests))
        return self.sample_semaphore

    async def close_async(self, status: FinishStatus = "success",
                          detail: str | None = None) -> None:
        """Finish the session, stop the background loops, flush telemetry (bounded), close
        the connections. A failed ``finish`` is raised after everything else is done, except
        404 / 405 (a server without the endpoint) and 410 (already finished), which count as
        finished."""
        self._closing = True
        error: BaseException | None = None
        if self.session_id is not None and not self.joined:
            try:
                await self.call("session_finish", SessionFinishRequest(
                    reason=FinishReason(type=status), detail=detail), None,
                    path_params={"session_id": self.session_id})
            except APIStatusError as exc:
                if exc.status_code in _FINISH_ABSENT:
                    # servers built for older SDKs have no finish endpoint (404 / 405), and
                    # 410 means the session is finished already: nothing left to do
                    logger.debug("session %s: finish answered HTTP %d; treated as finished",
                                 self.session_id, exc.status_code)
                else:
                    error = exc
            except Exception as exc:
                error = exc
            if self._session_started_at is not None:
                self.telemetry.session_end(self.runtime.clock() - self._session_started_at)
        current = asyncio.current_task()
        for task in list(self._background):
            if task is not current:
                task.cancel()
        try:
            await asyncio.wait_for(self.telemetry.flush(), _CLOSE_TELEMETRY_BUDGET)
        except Exception:
            logger.debug("telemetry flush on close did not finish in time")
        await self.http.aclose()
        if error is not None:
            raise error

    def close(self, status: FinishStatus = "success", detail: str | None = None) -> Future[None]:
        """Close in the background; the loop thread stops once the returned future is done."""
        if self._closing or not self.loop_thread.running:
            self._closing = True
            self.loop_thread.stop()
            return Future.completed(None)
        future = self.submit(lambda: self.close_async(status, detail),
                             sdk_method=f"{self.name}.close")
        self._closing = True
        future.add_done_callback(lambda _f: self.loop_thread.stop())
        return future


_SHADOWS: dict[tuple[str, str, str], Shell] = {}
_SHADOWS_LOCK = threading.Lock()


def shadow_shell(settings: Settings, *, session_id: str,
                 client_config: ClientConfigResponse,
                 dynamic_config: ClientDynamicConfigResponse,
                 transport: httpx.AsyncBaseTransport | None = None,
                 runtime: Runtime = REAL_RUNTIME) -> Shell:
    """The shell that unpickled sampling clients of one session share in this process.

    It joins the existing session (no config or create_session calls) and runs its own
    heartbeat for it.
    """
    key = (settings.base_url, session_id,
           str(hash((settings.api_key, settings.credential_cmd))))
    with _SHADOWS_LOCK:
        shell = _SHADOWS.get(key)
        if shell is None or shell.closed:
            shell = Shell(settings, runtime=runtime, transport=transport, name="SamplingClient",
                          session_id=session_id, client_config=client_config,
                          dynamic_config=dynamic_config)
            _SHADOWS[key] = shell
        return shell
