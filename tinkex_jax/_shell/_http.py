"""The HTTP layer: one `httpx.AsyncClient`, the credential auth flow (`_auth`), default
headers, the JWT exchange of docs/protocol.md §1.3 and the base-client retry loop of §6.1 (plus
the bare-400 proxy quirk of §6.5); and the plain synchronous client of file downloads, built
with the same network options (`build_download_client`).
"""

from __future__ import annotations

import contextvars
import importlib.util
import json as _json
import logging
import uuid
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import httpx

from ..errors import APIConnectionError, APIResponseValidationError
from ..types import AuthTokenRequest
from ..wire import encode_json
from ._auth import (
    EXCHANGE_EXTENSION,
    CredentialAuth,
    JwtCore,
    exchange_source,
    primary_source,
    validate_jwt,
)
from ._config import Settings, join_url, platform_headers
from ._constants import ENDPOINTS, PROTOCOL_VERSION
from ._errors import SecretSet, connection_error, status_error
from ._retry import BaseRetries, ProxyRejectBudget
from ._runtime import Runtime
from ._waits import WaitLog, describe_no_answer

__all__ = [
    "DOWNLOAD_TIMEOUT",
    "KEEPALIVE_EXPIRY",
    "SDK_METHOD",
    "HttpCore",
    "build_async_client",
    "build_download_client",
    "configure_logging",
    "default_headers",
]

logger = logging.getLogger("tinkex_jax.http")

#: The public SDK method a request is made for (``TrainingClient.forward_backward``), or
#: None for background work (heartbeats, telemetry, polling): sent as ``x-sdk-method``.
SDK_METHOD: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tinkex_jax_sdk_method", default=None)


def default_headers(settings: Settings) -> dict[str, str]:
    """Headers of every request: platform info, Accept, CF-Access, then user overrides."""
    headers = {"Accept": "application/json", **platform_headers()}
    if settings.cloudflare_client_id:
        headers["CF-Access-Client-Id"] = settings.cloudflare_client_id
    if settings.cloudflare_client_secret is not None:
        headers["CF-Access-Client-Secret"] = settings.cloudflare_client_secret.reveal()
    headers.update(settings.default_headers)
    return headers


#: Seconds an idle connection stays in the pool. Servers commonly close idle connections
#: after 5 s (uvicorn's default, so the local backend's too); reusing one at that very moment
#: loses the request ("server disconnected") and costs a retry, so the client lets go first.
KEEPALIVE_EXPIRY = 4.0

#: Timeouts of a file download: long reads (large files), short connects.
DOWNLOAD_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


def _network_options(settings: Settings | None, custom_transport: bool) -> dict[str, Any]:
    """How every client of the SDK reaches the network: redirects followed, the proxy really
    passed to httpx (none over a custom transport), ``trust_env`` as configured."""
    proxy = (settings.proxy.reveal() if settings is not None and settings.proxy is not None
             else None)
    return {"follow_redirects": True, "proxy": None if custom_transport else proxy,
            "trust_env": settings.trust_env if settings is not None else True}


def build_async_client(settings: Settings, *,
                       transport: httpx.AsyncBaseTransport | None = None,
                       auth: httpx.Auth | None = None) -> httpx.AsyncClient:
    """The `httpx.AsyncClient` of a shell.

    The proxy really reaches the connections: ``proxy=`` is passed to httpx, and with
    ``trust_env`` httpx mounts the ``HTTP(S)_PROXY`` / ``ALL_PROXY`` proxies and honours
    ``NO_PROXY``. A custom `transport` (tests, ASGI apps) replaces the network stack. `auth`
    defaults to a `CredentialAuth` over the settings' credential.
    """
    return httpx.AsyncClient(
        auth=auth if auth is not None else CredentialAuth(primary_source(settings)),
        headers=default_headers(settings),
        timeout=settings.timeout,
        limits=httpx.Limits(max_connections=1000, max_keepalive_connections=20,
                            keepalive_expiry=KEEPALIVE_EXPIRY),
        http2=transport is None and importlib.util.find_spec("h2") is not None,
        transport=transport,
        **_network_options(settings, transport is not None),
    )


def build_download_client(settings: Settings | None = None, *,
                          transport: httpx.BaseTransport | None = None,
                          headers: Mapping[str, str] | None = None,
                          timeout: httpx.Timeout = DOWNLOAD_TIMEOUT) -> httpx.Client:
    """A synchronous `httpx.Client` for downloading files (checkpoint files, tokenizers).

    It reaches the network as the shell's client does (proxy, ``trust_env``, redirects;
    `settings` None means the defaults: no explicit proxy, environment trusted), but carries
    no Tinker credential and none of the Tinker headers: download URLs point at other hosts
    (storage, the Hugging Face Hub), so only the `headers` given are sent. Retry its GETs
    with `tinkex_jax._shell._fetch.get_file`.

    Example:
        >>> client = build_download_client(transport=httpx.MockTransport(
        ...     lambda request: httpx.Response(200, content=b"ok")))
        >>> client.get("https://files.example/a").content, "authorization" in client.headers
        (b'ok', False)
    """
    return httpx.Client(headers=dict(headers or {}), timeout=timeout, transport=transport,
                        **_network_options(settings, transport is not None))


def configure_logging(settings: Settings) -> None:
    """Apply ``TINKER_LOG`` to the ``tinkex_jax`` logger and keep httpx's per-request INFO
    lines out of the user's logs (unless the user configured the ``httpx`` logger)."""
    if settings.log_level:
        level = logging.getLevelName(settings.log_level)
        if isinstance(level, int):
            logging.getLogger("tinkex_jax").setLevel(level)
    for name in ("httpx", "httpcore"):
        noisy = logging.getLogger(name)
        if noisy.level == logging.NOTSET and settings.log_level != "DEBUG":
            noisy.setLevel(logging.WARNING)


def _seconds(value: float | None) -> str:
    if value is None:
        return "None"
    return str(int(value)) if float(value).is_integer() else str(value)


class HttpCore:
    """Sends requests with default headers, auth, idempotency keys and base retries.

    Lives on the shell's event loop (the `httpx.AsyncClient` is created there on first use).
    `auth` owns the credential; `secrets` grows with every credential it meets. `waits`
    announces every wait (retries here, long polls in `_polling`). `answered` turns True with
    the first HTTP answer of the server: until then a refused connection, an unknown host or
    a connect timeout is retried only for ``settings.wait_for_server`` seconds, counted from
    the first try, and then fails with an error that is not retried further.
    """

    def __init__(self, settings: Settings, runtime: Runtime, *,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.runtime = runtime
        self.secrets = SecretSet(settings.secrets())
        self.auth = CredentialAuth(primary_source(settings, runtime), secrets=self.secrets)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self.proxy_rejects = ProxyRejectBudget()
        self.waits = WaitLog(runtime.clock)
        self.answered = False
        self._first_try: float | None = None
        self._deprecations_seen: set[str] = set()

    @property
    def client(self) -> httpx.AsyncClient:
        """The async client (built on first use)."""
        if self._client is None:
            self._client = build_async_client(self.settings, transport=self._transport,
                                              auth=self.auth)
        return self._client

    def enable_jwt(self, credential_default_source: str, *,
                   spawn: Callable[[Coroutine[Any, Any, None]], object] | None = None) -> JwtCore:
        """Switch to JWT auth (the client config said ``pjwt_auth_enabled``, §1.3).

        The exchange credential is ``TINKER_CREDENTIAL_CMD``'s when
        `credential_default_source` is ``"credential_cmd"``, else the configured key. `spawn`
        starts the background refresh task (the shell's, so closing cancels it).
        """
        if self.auth.jwt is not None:
            return self.auth.jwt
        source = exchange_source(self.settings, credential_default_source, self.auth.primary,
                                 self.runtime)
        core = JwtCore(self.exchange_jwt, runtime=self.runtime, secrets=self.secrets,
                       spawn=spawn)
        self.auth.enable_jwt(core, source)
        return core

    async def exchange_jwt(self) -> str:
        """``POST /api/v1/auth/token`` with body ``{}`` and the raw credential; the JWT.

        Raises:
            APIStatusError: the server refused the exchange (e.g. 401 for a bad key).
            APIResponseValidationError: the answer holds no well-formed JWT (the message
                never contains the token).
        """
        spec = ENDPOINTS["auth_token"]
        response = await self.send(spec.method, spec.path, json=AuthTokenRequest(),
                                   timeout=spec.timeout, max_retries=spec.max_retries,
                                   extensions={EXCHANGE_EXTENSION: True})
        where = SDK_METHOD.get() or "tinkex_jax"
        try:
            body = _json.loads(response.content)
        except ValueError:
            body = None
        token = body.get("jwt") if isinstance(body, dict) else None
        if isinstance(token, str):
            self.secrets.add(token)
        reason = "it has no 'jwt' string"
        if isinstance(token, str):
            try:
                validate_jwt(token)
                return token
            except ValueError as error:
                reason = str(error)
        raise APIResponseValidationError(
            f"{where}: POST /api/v1/auth/token answered without a usable JWT ({reason}). "
            "What to do: check that base_url points at a Tinker server whose JWT auth works; "
            "report it to the server's operators if it persists.",
            status_code=response.status_code, method="POST", url=self.url(spec.path))

    async def aclose(self) -> None:
        """Close the connections."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def url(self, path: str) -> str:
        """The absolute URL of an API path (``"get_info"`` → ``<base>/api/v1/get_info``)."""
        return join_url(self.settings.base_url, "api/v1/" + path.lstrip("/"))

    def _notice_retry(self, what: str, delay: float, retry: BaseRetries, started: float
                      ) -> None:
        self.waits.notice("retry", f"{what}; retrying in {delay:.1f} s (retry {retry.taken} of "
                                   f"{retry.max_retries} for this request).",
                          waited=self.runtime.clock() - started + delay)

    def _first_contact_delay(self, retry: BaseRetries, what: str) -> float | None:
        """The wait before retrying a connect failure while the server never answered, or
        None once ``wait_for_server`` would be exceeded."""
        assert self._first_try is not None
        elapsed = self.runtime.clock() - self._first_try
        window = self.settings.wait_for_server
        if retry.taken >= retry.max_retries or elapsed >= window:
            return None
        delay = min(retry.after_no_answer() or 0.0, window - elapsed)
        self.waits.notice("connect", (
            f"No Tinker server has answered at {self.settings.base_url} yet ({what}); the SDK "
            f"keeps trying for up to {window:g} s in all (wait_for_server / "
            f"TINKEX_WAIT_FOR_SERVER) before failing; next try in {delay:.1f} s."),
            waited=elapsed + delay)
        return delay

    def _log_deprecation(self, response: httpx.Response) -> None:
        note = response.headers.get("x-deprecation-note")
        if not note or note in self._deprecations_seen:
            return
        self._deprecations_seen.add(note)
        level = (logging.ERROR if response.headers.get("x-deprecation-level", "").lower()
                 == "error" else logging.WARNING)
        logger.log(level, "The Tinker server says: %s", note)

    async def send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        content_type: str | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        idempotency_key: str | None = None,
        check_status: bool = True,
        extensions: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        """Send one logical request with the base retry loop; return the response.

        Retries timeouts, transport errors, bare 400s (proxy rejections, within budget) and
        retryable statuses (408/409/429/5xx, or as ``x-should-retry`` says), waiting as
        ``retry-after(-ms)`` asks or ``min(0.5 * 2**k, 10)`` with jitter.

        Raises:
            APIConnectionError: no answer after the retries (`APITimeoutError` on timeouts).
            APIStatusError: an error status (when `check_status`; else it is returned).
        """
        url = self.url(path)
        retries = self.settings.max_retries if max_retries is None else max_retries
        read_timeout = timeout if timeout is not None else self.settings.timeout.read
        request_timeout: httpx.Timeout | float = (
            httpx.Timeout(timeout, connect=min(timeout, self.settings.timeout.connect or timeout))
            if timeout is not None else self.settings.timeout)
        sdk_method = SDK_METHOD.get()
        base_headers: dict[str, str] = {"x-stainless-read-timeout": _seconds(read_timeout)}
        if method != "GET":
            base_headers["X-Idempotency-Key"] = (
                idempotency_key or f"tinkex-jax-retry-{uuid.uuid4()}")
        if sdk_method:
            base_headers["x-sdk-version"] = PROTOCOL_VERSION
            base_headers["x-sdk-method"] = sdk_method
        if json is not None:
            content = encode_json(json)
            content_type = "application/json"
        if content_type:
            base_headers["Content-Type"] = content_type
        base_headers.update(headers or {})
        clean_params = {k: v for k, v in (params or {}).items() if v is not None}

        retry = BaseRetries(retries, self.runtime)
        if self._first_try is None:
            self._first_try = self.runtime.clock()
        started = self.runtime.clock()
        while True:
            request_headers = {**base_headers, "x-stainless-retry-count": str(retry.taken)}
            try:
                response = await self.client.request(
                    method, url, content=content, params=clean_params or None,
                    headers=request_headers, timeout=request_timeout,
                    extensions=dict(extensions) if extensions else None)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                what = f"{method} /api/v1/{path}: {describe_no_answer(exc, url)}"
                never_answered = not self.answered and isinstance(
                    exc, httpx.ConnectError | httpx.ConnectTimeout)
                if never_answered:
                    delay = self._first_contact_delay(retry, what)
                else:
                    delay = retry.after_no_answer()
                    if delay is not None:
                        self._notice_retry(what, delay, retry, started)
                if delay is not None:
                    await self.runtime.sleep(delay)
                    continue
                raise connection_error(exc, method=method, url=url, sdk_method=sdk_method,
                                       secrets=self.secrets, attempts=retry.taken + 1,
                                       elapsed=self.runtime.clock() - started,
                                       never_answered=never_answered) from None
            self.answered = True
            status = response.status_code
            self._log_deprecation(response)
            if status == 400 and not response.content and self.proxy_rejects.take():
                # An empty-bodied 400 comes from a proxy in front of the server (§6.5); it is
                # retried like a request that got no answer.
                delay = retry.after_no_answer()
                if delay is not None:
                    self._notice_retry(f"{method} /api/v1/{path}: empty HTTP 400 from a proxy",
                                       delay, retry, started)
                    await self.runtime.sleep(delay)
                    continue
                where = sdk_method or "tinkex_jax"
                raise APIConnectionError(
                    f"{where}: {method} /api/v1/{path} was rejected with an empty HTTP 400, "
                    "which comes from a proxy or gateway in front of the server, not from the "
                    "server. What to do: retry; if it persists, check proxy settings and the "
                    "gateway's logs.", method=method, url=url)
            if response.is_success:
                self.proxy_rejects.replenish()
                return response
            delay = retry.after_status(status, response.headers)
            if delay is not None:
                self._notice_retry(f"{method} /api/v1/{path}: HTTP {status}", delay, retry,
                                   started)
                await self.runtime.sleep(delay)
                continue
            if not check_status:
                return response
            raise status_error(status, response.headers, response.content, method=method,
                               url=url, sdk_method=sdk_method, secrets=self.secrets)
