"""Where the ``X-API-Key`` value of each request comes from (docs/protocol.md §1.2, §1.3).

Three pieces, all living on the shell's event loop:

* Credential sources: a static key (`StaticCredential`), or ``TINKER_CREDENTIAL_CMD`` run
  for every request off the event loop (`CredentialCommand`).
* `JwtCore`: when the server's client config says ``pjwt_auth_enabled``, exchanges the raw
  credential for a JWT at ``POST /api/v1/auth/token``, refreshes it in the background at a
  random 45–55 % of its lifetime (``exp - iat``; a failed refresh is retried every 60 s),
  and on demand when at most 60 s remain.
* `CredentialAuth`: the `httpx.Auth` of the shell's client. It owns the current credential:
  the raw one, or the JWT once JWT mode is on; a 401 whose ``WWW-Authenticate`` says
  ``error="invalid_token"`` gets one refresh and one replay of the request.

No credential value ever reaches a repr, a log record or an exception message: every value
met is added to the shell's `SecretSet`, which redacts error messages and telemetry.

Example:
    >>> import asyncio
    >>> from tinkex_jax._shell._config import Secret
    >>> auth = CredentialAuth(StaticCredential(Secret("tml-doc-key-123")))
    >>> asyncio.run(auth.raw_credential()), repr(auth)
    ('tml-doc-key-123', 'CredentialAuth(<redacted>, jwt=off)')
"""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Generator
from typing import Any, Protocol

import httpx

from ..errors import AuthenticationError, PermissionDeniedError, TinkerError
from ..types import WhoamiResponse
from ._config import (
    CREDENTIAL_CMD_ENV,
    Secret,
    Settings,
    b64_json,
    check_api_key,
    jwt_claims,
)
from ._errors import SecretSet, redact
from ._runtime import REAL_RUNTIME, Runtime

__all__ = [
    "EXCHANGE_EXTENSION",
    "REFRESH_ON_DEMAND_S",
    "REFRESH_RETRY_S",
    "CredentialAuth",
    "CredentialCommand",
    "CredentialSource",
    "JwtCore",
    "StaticCredential",
    "UnavailableCredential",
    "exchange_source",
    "identity_jwt_of_key",
    "is_invalid_token",
    "jwt_claims",
    "primary_source",
    "refresh_delay",
    "validate_jwt",
    "whoami_from_jwt",
]

logger = logging.getLogger("tinkex_jax.auth")

#: Seconds of validity left at which a request refreshes the JWT first.
REFRESH_ON_DEMAND_S = 60.0
#: Seconds between attempts after a failed background refresh.
REFRESH_RETRY_S = 60.0
#: The background refresh fires at this fraction of the JWT's lifetime (plus jitter).
REFRESH_FRACTION = (0.45, 0.55)
#: Request extension marking the token exchange itself (sent with the raw credential).
EXCHANGE_EXTENSION = "tinkex_jax.jwt_exchange"
#: How long TINKER_CREDENTIAL_CMD may run before the request fails.
CREDENTIAL_CMD_TIMEOUT_S = 60.0

_PRINTABLE = re.compile(r"[\x21-\x7e]+")


def _now(runtime: Runtime) -> float:
    return runtime.wall().timestamp()


# ---------------------------------------------------------------------------- JWT helpers


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def validate_jwt(token: str) -> dict[str, Any]:
    """Check a JWT from the exchange: three base64url segments (the signature may be empty),
    a JSON header and payload, numeric ``exp`` and ``iat`` with ``exp > iat``.

    Returns:
        The claims.

    Raises:
        ValueError: why the token is malformed (never the token itself).

    Example:
        >>> import base64, json
        >>> def seg(d): return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")
        >>> token = f'{seg({"alg": "none"})}.{seg({"iat": 100, "exp": 3700})}.'
        >>> validate_jwt(token)["exp"]
        3700
        >>> validate_jwt(f'{seg({"alg": "none"})}.{seg({"iat": 100})}.')
        Traceback (most recent call last):
        ...
        ValueError: the JWT has no numeric 'exp' claim
    """
    if not isinstance(token, str):
        raise ValueError("the token is not a string")
    claims = jwt_claims(token)  # three segments, a JSON-object payload
    header, _, signature = token.split(".")
    if not re.fullmatch(r"[A-Za-z0-9_-]*", signature):
        raise ValueError("the signature segment is not base64url")
    if not isinstance(b64_json(header), dict):
        raise ValueError("the JWT header is not a JSON object")
    exp, iat = _number(claims.get("exp")), _number(claims.get("iat"))
    if exp is None:
        raise ValueError("the JWT has no numeric 'exp' claim")
    if iat is None:
        raise ValueError("the JWT has no numeric 'iat' claim")
    if exp <= iat:
        raise ValueError("the JWT's 'exp' is not after its 'iat'")
    return claims


def refresh_delay(claims: dict[str, Any], random01: float) -> float:
    """Seconds after receiving a JWT to refresh it: a uniform 45–55 % of ``exp - iat``
    (`random01` in [0, 1) picks the point). Both claims come from the server, so local clock
    skew cannot shorten it. Malformed claims give the 60 s retry delay.

    Example:
        >>> refresh_delay({"iat": 0, "exp": 1000}, 0.0), refresh_delay({"iat": 0, "exp": 1000}, 1.0)
        (450.0, 550.0)
        >>> refresh_delay({"iat": 0}, 0.5)
        60.0
    """
    exp, iat = _number(claims.get("exp")), _number(claims.get("iat"))
    if exp is None or iat is None or exp <= iat:
        return REFRESH_RETRY_S
    low, high = REFRESH_FRACTION
    return (exp - iat) * (low + (high - low) * min(max(random01, 0.0), 1.0))


def is_invalid_token(response: httpx.Response) -> bool:
    """Whether a response rejects the request's token itself (401 + ``invalid_token``).

    Example:
        >>> r = httpx.Response(401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        >>> is_invalid_token(r), is_invalid_token(httpx.Response(401))
        (True, False)
    """
    return (response.status_code == 401
            and 'error="invalid_token"' in response.headers.get("www-authenticate", ""))


def identity_jwt_of_key(key: str) -> str | None:
    """A JWT passed directly as the API key carries an identity only when Tinker's identity
    service issued it (``iss`` starting with ``passport-``); else None.

    Example:
        >>> import base64, json
        >>> def seg(d): return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")
        >>> key = f'{seg({"alg": "none"})}.{seg({"iss": "passport-prod", "sub": "u"})}.'
        >>> identity_jwt_of_key(key) == key, identity_jwt_of_key("tml-plain")
        (True, None)
    """
    if not key.startswith("eyJ"):
        return None
    try:
        issuer = jwt_claims(key).get("iss")
    except ValueError:
        return None
    return key if isinstance(issuer, str) and issuer.startswith("passport-") else None


def whoami_from_jwt(token: str) -> WhoamiResponse:
    """The identity in a JWT's claims: ``sub`` → ``user_urn``, ``org_id`` → ``org_urn``
    (``tml:organization:<org_id>``), ``email`` (empty → None).

    Raises:
        TinkerError: the token lacks ``sub`` or ``org_id`` (the message names the claim only).

    Example:
        >>> import base64, json
        >>> def seg(d): return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")
        >>> claims = {"sub": "tml:user:42", "org_id": "o-7", "email": "ada@example.com"}
        >>> whoami_from_jwt(f'{seg({"alg": "none"})}.{seg(claims)}.')
        WhoamiResponse(user_urn='tml:user:42', org_urn='tml:organization:o-7', email='ada@example.com')
    """
    try:
        claims = jwt_claims(token)
    except ValueError as error:
        raise TinkerError(f"RestClient.whoami: the credential's JWT cannot be read ({error})"
                          ) from None
    sub, org_id, email = claims.get("sub"), claims.get("org_id"), claims.get("email")
    if not isinstance(sub, str) or not sub:
        raise TinkerError("RestClient.whoami: the JWT has no 'sub' claim, so the caller's "
                          "identity is unknown")
    if isinstance(org_id, bool) or not isinstance(org_id, str | int) or org_id == "":
        raise TinkerError("RestClient.whoami: the JWT has no 'org_id' claim, so the caller's "
                          "organization is unknown")
    return WhoamiResponse(user_urn=sub, org_urn=f"tml:organization:{org_id}",
                          email=email if isinstance(email, str) and email else None)


# ---------------------------------------------------------------------------- sources


class CredentialSource(Protocol):
    """Something that produces the raw credential for a request."""

    async def get(self) -> str:
        """The credential to send now."""
        ...


class StaticCredential:
    """A fixed key (argument, ``TINKER_API_KEY`` or the credentials file).

    A JWT key is checked for expiry at each use: it cannot be refreshed, so an expired one
    fails here instead of being sent.

    Example:
        >>> import asyncio
        >>> asyncio.run(StaticCredential(Secret("tml-k-123456")).get())
        'tml-k-123456'
    """

    def __init__(self, key: Secret, *, now: Callable[[], float] | None = None) -> None:
        self.key = key
        self._now = now or (lambda: _now(REAL_RUNTIME))

    async def get(self) -> str:
        """The key (JWT keys: only while unexpired)."""
        value = self.key.reveal()
        if value.startswith("eyJ"):
            check_api_key(value, now=self._now())
        return value

    def __repr__(self) -> str:
        return "StaticCredential(<redacted>)"


def _run_shell(command: str, timeout: float) -> tuple[int, bytes]:
    """Run `command` in a shell; return its exit status and stdout (stderr is discarded)."""
    done = subprocess.run(command, shell=True, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=timeout,
                          check=False)
    return done.returncode, done.stdout


class CredentialCommand:
    """``TINKER_CREDENTIAL_CMD``: a shell command run for every request (in a worker thread,
    so the event loop never blocks), whose stdout is the credential.

    Failures raise a `TinkerError` that names the variable but never the command's output.
    The output must be one token of printable ASCII; a JWT must not have expired.

    Example:
        >>> import asyncio
        >>> asyncio.run(CredentialCommand(Secret("echo tml-from-cmd")).get())
        'tml-from-cmd'
        >>> asyncio.run(CredentialCommand(Secret("exit 3")).get())
        Traceback (most recent call last):
        ...
        tinkex_jax.TinkerError: TINKER_CREDENTIAL_CMD failed with exit status 3, so no credential was available for the request (its output is not shown: it may hold a credential). Fix: run the command yourself to see what is wrong, or set TINKER_API_KEY instead.
    """

    def __init__(self, command: Secret, *,
                 run: Callable[[str, float], tuple[int, bytes]] = _run_shell,
                 timeout: float = CREDENTIAL_CMD_TIMEOUT_S,
                 now: Callable[[], float] | None = None) -> None:
        self.command = command
        self._run = run
        self._timeout = timeout
        self._now = now or (lambda: _now(REAL_RUNTIME))
        self.runs = 0

    def _fail(self, what: str) -> TinkerError:
        return TinkerError(
            f"{CREDENTIAL_CMD_ENV} {what}, so no credential was available for the request (its "
            "output is not shown: it may hold a credential). Fix: run the command yourself to "
            "see what is wrong, or set TINKER_API_KEY instead.")

    async def get(self) -> str:
        """Run the command and return what it printed (stripped)."""
        self.runs += 1
        try:
            status, out = await asyncio.to_thread(self._run, self.command.reveal(),
                                                  self._timeout)
        except subprocess.TimeoutExpired:
            raise self._fail(f"did not finish within {self._timeout:g} s") from None
        except OSError as error:
            raise self._fail(f"could not be started ({type(error).__name__})") from None
        if status != 0:
            raise self._fail(f"failed with exit status {status}")
        try:
            value = out.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise self._fail("printed bytes that are not UTF-8") from None
        if not value:
            raise self._fail("printed nothing")
        if not _PRINTABLE.fullmatch(value):
            raise self._fail("printed more than one line or word, or non-ASCII characters "
                             "(it must print exactly one credential)")
        if value.startswith("eyJ"):
            try:
                check_api_key(value, now=self._now())
            except TinkerError:
                raise self._fail("printed an expired JWT") from None
        return value

    def __repr__(self) -> str:
        return "CredentialCommand(<redacted>)"


class UnavailableCredential:
    """A source that cannot produce a credential; `get` raises its message.

    Example:
        >>> import asyncio
        >>> asyncio.run(UnavailableCredential("no way").get())
        Traceback (most recent call last):
        ...
        tinkex_jax.TinkerError: no way
    """

    def __init__(self, message: str) -> None:
        self.message = message

    async def get(self) -> str:
        """Raise the message."""
        raise TinkerError(self.message)

    def __repr__(self) -> str:
        return "UnavailableCredential()"


def primary_source(settings: Settings, runtime: Runtime = REAL_RUNTIME) -> CredentialSource:
    """The raw credential of `settings`: the static key, else ``TINKER_CREDENTIAL_CMD``.

    Example:
        >>> from tinkex_jax._shell._config import resolve_settings
        >>> primary_source(resolve_settings(api_key="tml-abc", env={}))
        StaticCredential(<redacted>)
        >>> primary_source(resolve_settings(env={"TINKER_CREDENTIAL_CMD": "echo tml-x"}))
        CredentialCommand(<redacted>)
    """
    def now() -> float:
        return _now(runtime)

    if settings.api_key is not None:
        return StaticCredential(settings.api_key, now=now)
    if settings.credential_cmd is not None:
        return CredentialCommand(settings.credential_cmd, now=now)
    return UnavailableCredential("No credential is configured. Fix: set TINKER_API_KEY or "
                                 "TINKER_CREDENTIAL_CMD, or pass api_key='tml-...'")


def exchange_source(settings: Settings, credential_default_source: str,
                    primary: CredentialSource, runtime: Runtime = REAL_RUNTIME
                    ) -> CredentialSource:
    """The credential sent to ``auth/token`` (§1.3): ``TINKER_CREDENTIAL_CMD`` when the
    server says ``credential_default_source == "credential_cmd"`` (a JWT passed as the key
    is used as is), else the primary credential.

    Example:
        >>> from tinkex_jax._shell._config import resolve_settings
        >>> s = resolve_settings(api_key="tml-abc", env={"TINKER_CREDENTIAL_CMD": "echo x"})
        >>> exchange_source(s, "credential_cmd", primary_source(s))
        CredentialCommand(<redacted>)
        >>> exchange_source(s, "api_key", primary_source(s))
        StaticCredential(<redacted>)
    """
    if credential_default_source != "credential_cmd":
        return primary
    if settings.api_key is not None and settings.api_key.reveal().startswith("eyJ"):
        return primary
    if settings.credential_cmd is not None:
        return CredentialCommand(settings.credential_cmd, now=lambda: _now(runtime))
    return UnavailableCredential(
        "The server requires a credential from TINKER_CREDENTIAL_CMD for its JWT exchange "
        "(client config: credential_default_source=credential_cmd), but TINKER_CREDENTIAL_CMD "
        "is not set. Fix: set TINKER_CREDENTIAL_CMD to a command that prints a credential.")


# ---------------------------------------------------------------------------- JWT core


class JwtCore:
    """The current JWT of a shell, with its refresh schedule (one per shell, on its loop).

    Args:
        exchange: Sends ``POST /api/v1/auth/token`` with the raw credential and returns the
            JWT it answered (validated here).
        runtime: ``wall`` is the clock compared with ``exp``; ``random`` the refresh jitter;
            ``tick`` the background wait (tests inject a fake and never sleep).
        secrets: Every JWT received is added, so error messages and logs redact it.
        spawn: Starts the background refresh task (returns None when the shell is closing).
    """

    def __init__(self, exchange: Callable[[], Awaitable[str]], *, runtime: Runtime = REAL_RUNTIME,
                 secrets: SecretSet | None = None,
                 spawn: Callable[[Coroutine[Any, Any, None]], object] | None = None) -> None:
        self._exchange = exchange
        self._runtime = runtime
        self._secrets = secrets if secrets is not None else SecretSet()
        self._spawn = spawn
        self._token: str | None = None
        self._lock: asyncio.Lock | None = None
        self._refresher: object | None = None
        self.exchanges = 0

    def __repr__(self) -> str:
        return f"JwtCore(token={'<redacted>' if self._token else None})"

    @property
    def has_token(self) -> bool:
        """Whether a JWT was received."""
        return self._token is not None

    def remaining(self, token: str | None = None) -> float:
        """Seconds until the (current) token expires; -inf without one."""
        token = self._token if token is None else token
        if token is None:
            return float("-inf")
        try:
            exp = _number(jwt_claims(token).get("exp"))
        except ValueError:
            return float("-inf")
        return float("-inf") if exp is None else exp - _now(self._runtime)

    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def _fetch_locked(self) -> str:
        """Exchange for a new JWT (the caller holds the lock)."""
        self.exchanges += 1
        token = await self._exchange()
        self._secrets.add(token)
        validate_jwt(token)  # `exchange` validates too; this keeps the core safe on its own
        self._token = token
        if self._refresher is None and self._spawn is not None:
            self._refresher = self._spawn(self._refresh_loop()) or None
        return token

    async def refresh(self) -> str:
        """Exchange for a new JWT now."""
        async with self._get_lock():
            return await self._fetch_locked()

    async def get(self) -> str:
        """The JWT to send: the current one while more than 60 s remain, else a fresh one.

        When the on-demand refresh fails but the current token has not expired yet, the
        current token is used (and the server decides); a rejected credential (401/403 from
        the exchange) or no live token raises.
        """
        token = self._token
        if token is not None and self.remaining(token) > REFRESH_ON_DEMAND_S:
            return token
        async with self._get_lock():
            token = self._token
            if token is not None and self.remaining(token) > REFRESH_ON_DEMAND_S:
                return token
            try:
                return await self._fetch_locked()
            except (AuthenticationError, PermissionDeniedError):
                raise
            except Exception as error:
                if token is None or self.remaining(token) <= 0:
                    raise
                logger.warning("Refreshing the Tinker JWT on demand failed (%s); using the "
                               "current token until it expires.", self._describe(error))
                return token

    async def replace(self, rejected: str) -> str:
        """A token other than `rejected` (which the server refused): exchanges only if no
        other request already did, so concurrent rejections cost one exchange."""
        if self._token is not None and self._token != rejected:
            return self._token
        async with self._get_lock():
            if self._token is not None and self._token != rejected:
                return self._token
            return await self._fetch_locked()

    def _describe(self, error: BaseException) -> str:
        return redact(f"{type(error).__name__}: {error}", self._secrets)[:500]

    async def _refresh_loop(self) -> None:
        """Refresh at 45–55 % of each token's lifetime; after a failure, every 60 s."""
        failing = False
        delay = self._next_delay()
        while True:
            await self._runtime.tick(delay)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log = logger.debug if failing else logger.warning
                log("Refreshing the Tinker JWT failed (%s); retrying every %.0f s.",
                    self._describe(error), REFRESH_RETRY_S)
                failing = True
                delay = REFRESH_RETRY_S
                continue
            failing = False
            delay = self._next_delay()

    def _next_delay(self) -> float:
        try:
            claims = jwt_claims(self._token or "")
        except ValueError:
            return REFRESH_RETRY_S
        return refresh_delay(claims, self._runtime.random())


# ---------------------------------------------------------------------------- httpx auth


class CredentialAuth(httpx.Auth):
    """The shell's `httpx.Auth`: sets ``X-API-Key`` on every request and owns the credential.

    Without JWT mode each request gets the raw credential (the static key, or a fresh run of
    ``TINKER_CREDENTIAL_CMD``). In JWT mode (`enable_jwt`) requests carry the JWT, except the
    token exchange itself (marked with the `EXCHANGE_EXTENSION` request extension), which
    carries the exchange credential. A 401 marked ``invalid_token`` is answered by one token
    replacement and one replay; a second rejection is returned as is (no loop).
    """

    def __init__(self, primary: CredentialSource, *, secrets: SecretSet | None = None) -> None:
        self.primary = primary
        self._exchange_source: CredentialSource = primary
        self._secrets = secrets if secrets is not None else SecretSet()
        self.jwt: JwtCore | None = None
        self.replays = 0

    def __repr__(self) -> str:
        return f"CredentialAuth(<redacted>, jwt={'on' if self.jwt is not None else 'off'})"

    def enable_jwt(self, core: JwtCore, exchange_source: CredentialSource) -> None:
        """Switch to JWT mode: later requests carry `core`'s JWT."""
        self._exchange_source = exchange_source
        self.jwt = core

    async def raw_credential(self, *, for_exchange: bool = False) -> str:
        """The raw credential now (the exchange credential with `for_exchange`)."""
        source = self._exchange_source if for_exchange else self.primary
        value = await source.get()
        self._secrets.add(value)
        return value

    async def identity_jwt(self) -> str | None:
        """A JWT carrying the caller's identity: the current one in JWT mode (refreshed if
        needed), else a Tinker-issued JWT passed as the key (``iss`` ``passport-…``), else
        None."""
        if self.jwt is not None:
            return await self.jwt.get()
        if isinstance(self.primary, StaticCredential):
            return identity_jwt_of_key(await self.primary.get())
        return None

    async def async_auth_flow(self, request: httpx.Request
                              ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        jwt = self.jwt
        if jwt is None or request.extensions.get(EXCHANGE_EXTENSION):
            request.headers["X-API-Key"] = await self.raw_credential(
                for_exchange=jwt is not None)
            yield request
            return
        token = await jwt.get()
        request.headers["X-API-Key"] = token
        response = yield request
        if not is_invalid_token(response):
            return
        await response.aread()  # release the connection before the exchange
        token = await jwt.replace(token)
        self.replays += 1
        logger.debug("the server rejected the JWT (invalid_token); replaying once with a new one")
        request.headers["X-API-Key"] = token
        yield request

    def sync_auth_flow(self, request: httpx.Request
                       ) -> Generator[httpx.Request, httpx.Response, None]:
        if self.jwt is None and isinstance(self.primary, StaticCredential):
            request.headers["X-API-Key"] = self.primary.key.reveal()
            yield request
            return
        raise TinkerError("tinkex_jax's credential flow (TINKER_CREDENTIAL_CMD, JWT auth) needs "
                          "an httpx.AsyncClient")

