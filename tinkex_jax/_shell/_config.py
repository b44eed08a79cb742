"""Client settings as frozen values, resolved by one function (docs/protocol.md §0, §1).

Precedence is always: explicit argument > environment variable > default. `resolve_settings`
takes the environment as a mapping so tests pass their own; its only I/O is reading the
stored credentials file (``~/.tinker/credentials.json``, located from that mapping's
``HOME``) when no other credential is configured.

Credentials (§1.2), first match wins: the ``api_key`` argument, ``TINKER_API_KEY``,
``TINKER_CREDENTIAL_CMD`` (a shell command printing a credential, run for every request by
the auth flow in `tinkex_jax._shell._auth`), the default key stored by ``tinkex auth login``
(or the official ``tinker auth login``), and on a loopback base URL the local backend's
``tml-local``.

Example:
    >>> s = resolve_settings(api_key="tml-abc", env={"TINKER_TAGS": "b,a,b"})
    >>> s.base_url, s.tags
    ('https://tinker.thinkingmachines.dev/services/tinker-prod', ('a', 'b'))
    >>> "tml-abc" in repr(s)
    False
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import platform
import re
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from ..errors import TinkerError
from ._constants import (
    DEFAULT_BASE_URL,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    DEFAULT_WAIT_FOR_SERVER,
    PACKAGE_VERSION,
    PROTOCOL_VERSION,
)

__all__ = [
    "CREDENTIAL_CMD_ENV",
    "LOCAL_API_KEY",
    "CredentialOrigin",
    "Secret",
    "Settings",
    "check_api_key",
    "credentials_path",
    "join_url",
    "jwt_claims",
    "parse_bool",
    "parse_tags",
    "platform_headers",
    "read_stored_key",
    "resolve_settings",
]

#: The key used when no key is configured and the base URL is a loopback address (the
#: embedded local backend accepts any ``tml-`` key).
LOCAL_API_KEY = "tml-local"
#: The environment variable naming a shell command that prints a credential (§1.2).
CREDENTIAL_CMD_ENV = "TINKER_CREDENTIAL_CMD"
#: Where the credential in use came from (shown in messages; never the value).
CredentialOrigin = Literal["api_key argument", "TINKER_API_KEY", "TINKER_CREDENTIAL_CMD",
                           "credentials file", "local default"]
_JWT_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class Secret:
    """A credential that never shows itself: repr, str, pickling and f-strings are redacted.

    Example:
        >>> s = Secret("tml-very-secret")
        >>> repr(s), str(s), f"{s}", s.reveal()
        ("Secret('<redacted>')", '<redacted>', '<redacted>', 'tml-very-secret')
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret value, for the one place that must send it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('<redacted>')"

    def __str__(self) -> str:
        return "<redacted>"

    def __format__(self, spec: str) -> str:
        return "<redacted>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> Any:
        raise TypeError("a Secret (API key) is never pickled; each process resolves its own key "
                        "from api_key= or TINKER_API_KEY")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Resolved client settings. Build them with `resolve_settings`.

    Attributes:
        base_url: Base URL without a trailing slash (may carry a path prefix).
        api_key: The static credential (a `Secret`), or None when the credential comes from
            ``TINKER_CREDENTIAL_CMD`` on every request.
        project_id: Default project of new sessions.
        tags: Session tags, sorted and de-duplicated.
        telemetry: Whether telemetry events are sent.
        log_level: Level for the ``tinkex_jax`` logger from ``TINKER_LOG`` (None: unchanged).
        cloudflare_client_id: CF-Access client id header value, if set.
        cloudflare_client_secret: CF-Access client secret, if set.
        default_headers: Extra headers sent on every request (override the defaults).
        timeout: Default request timeout.
        max_retries: Default base-client retries (§6.1).
        wait_for_server: Seconds to keep retrying a refused connection, an unknown host or a
            connect timeout while no server at `base_url` has answered this client yet;
            after that the request fails (a server that has answered once gets the full
            retry policy of §6 instead).
        proxy: Explicit proxy URL (None: the standard proxy variables, via trust_env).
        trust_env: Whether httpx reads ``HTTP(S)_PROXY`` / ``NO_PROXY`` / ``SSL_CERT_FILE``.
        credential_cmd: ``TINKER_CREDENTIAL_CMD`` when set (also when a static key wins: a
            server may ask for the command's credential in the JWT exchange, §1.3).
        credential_origin: Where the credential in use comes from.
    """

    base_url: str
    api_key: Secret | None
    project_id: str | None = None
    tags: tuple[str, ...] = ()
    telemetry: bool = True
    log_level: str | None = None
    cloudflare_client_id: str | None = None
    cloudflare_client_secret: Secret | None = None
    default_headers: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: MappingProxyType({}))
    timeout: httpx.Timeout = dataclasses.field(
        default_factory=lambda: httpx.Timeout(DEFAULT_TIMEOUT, connect=DEFAULT_CONNECT_TIMEOUT))
    max_retries: int = DEFAULT_MAX_RETRIES
    wait_for_server: float = DEFAULT_WAIT_FOR_SERVER
    proxy: Secret | None = None
    trust_env: bool = True
    credential_cmd: Secret | None = None
    credential_origin: CredentialOrigin = "api_key argument"

    def __repr__(self) -> str:
        headers = sorted(self.default_headers)
        key = "<redacted>" if self.api_key is not None else None
        return (f"Settings(base_url={self.base_url!r}, api_key={key}, "
                f"credential_origin={self.credential_origin!r}, "
                f"project_id={self.project_id!r}, tags={self.tags!r}, "
                f"telemetry={self.telemetry}, default_headers={headers!r} (values redacted), "
                f"max_retries={self.max_retries}, wait_for_server={self.wait_for_server:g}, "
                f"proxy={'<set>' if self.proxy else None})")

    def secrets(self) -> tuple[str, ...]:
        """Every secret string, for redaction of messages and logs."""
        out = [self.api_key.reveal()] if self.api_key is not None else []
        if self.credential_cmd is not None and len(self.credential_cmd.reveal()) >= 8:
            out.append(self.credential_cmd.reveal())
        if self.cloudflare_client_secret is not None:
            out.append(self.cloudflare_client_secret.reveal())
        if self.proxy is not None:
            password = urlsplit(self.proxy.reveal()).password
            if password:
                out.append(password)
        out.extend(v for v in self.default_headers.values() if len(v) >= 8)
        return tuple(s for s in out if s)


def parse_bool(value: str | None, default: bool) -> bool:
    """Parse an environment flag (``1/true/yes/on``, ``0/false/no/off``); else `default`.

    Example:
        >>> parse_bool("Off", True), parse_bool(None, True), parse_bool("yes", False)
        (False, True, True)
    """
    if value is None or not value.strip():
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    return default


def parse_tags(value: str | None) -> tuple[str, ...]:
    """Split a comma list of tags, dropping blanks and duplicates (sorted).

    Example:
        >>> parse_tags(" b, a,,b ")
        ('a', 'b')
    """
    if not value:
        return ()
    return tuple(sorted({t.strip() for t in value.split(",") if t.strip()}))


def b64_json(segment: str) -> Any:
    """The JSON value of one base64url JWT segment (ValueError if it is not one)."""
    if not segment or not _JWT_SEGMENT.fullmatch(segment):
        raise ValueError("a segment is empty or not base64url")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        return json.loads(raw)
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise ValueError("a segment does not decode to JSON") from None


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload claims of a JWT, not verified (the server checks signatures).

    Raises:
        ValueError: not a JWT; the message never contains the token.

    Example:
        >>> jwt_claims("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1In0.")
        {'sub': 'u'}
    """
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 3:
        raise ValueError("a JWT has three dot-separated segments")
    claims = b64_json(parts[1])
    if not isinstance(claims, dict):
        raise ValueError("the JWT payload is not a JSON object")
    return claims


def _jwt_exp(token: str) -> float | None:
    try:
        exp = jwt_claims(token).get("exp")
    except ValueError:
        return None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def check_api_key(key: str, *, now: float | None = None, where: str = "api_key") -> None:
    """Check the shape of a credential; the message never contains the key.

    A key must start with ``tml-``, or be a JWT (``eyJ…``) that has not expired. `where`
    names the key's origin at the start of the message.

    Raises:
        TinkerError: the key has the wrong shape or the JWT expired.

    Example:
        >>> check_api_key("tml-123")
        >>> check_api_key("sk-123")
        Traceback (most recent call last):
        ...
        tinkex_jax.TinkerError: api_key: expected a Tinker API key starting with 'tml-' (or a JWT starting with 'eyJ'), got a 6-character string starting with 'sk'. Fix: copy the key from the Tinker console into TINKER_API_KEY, or pass api_key='tml-...'
    """
    if not isinstance(key, str) or not key:
        raise TinkerError(f"{where}: expected a non-empty string. Fix: pass api_key='tml-...' "
                          "or set TINKER_API_KEY")
    if key.startswith("tml-"):
        return
    if key.startswith("eyJ"):
        exp = _jwt_exp(key)
        if exp is not None and exp <= (time.time() if now is None else now):
            raise TinkerError(f"{where}: the JWT passed as the API key has expired. Fix: pass a "
                              "fresh token or a 'tml-' API key")
        return
    raise TinkerError(
        f"{where}: expected a Tinker API key starting with 'tml-' (or a JWT starting with "
        "'eyJ'), "
        f"got a {len(key)}-character string starting with {key[:2]!r}. Fix: copy the key from "
        "the Tinker console into TINKER_API_KEY, or pass api_key='tml-...'")


def credentials_path(env: Mapping[str, str]) -> Path | None:
    """Where ``tinkex auth login`` (and the official ``tinker auth login``) store keys:
    ``<home>/.tinker/credentials.json``, the home directory taken from `env` (``HOME``, else
    ``USERPROFILE``); None without either.

    Example:
        >>> credentials_path({"HOME": "/home/ada"}).as_posix()
        '/home/ada/.tinker/credentials.json'
        >>> credentials_path({}) is None
        True
    """
    home = env.get("HOME") or env.get("USERPROFILE")
    return Path(home) / ".tinker" / "credentials.json" if home else None


def read_stored_key(path: Path | None) -> str | None:
    """The default key of a credentials file (the shape ``tinkex auth login`` writes).

    The file is ``{"version": 1, "default": "<name>", "keys": {"<name>": {"key": "tml-...",
    ...}}}``; several keys may be stored, the one named by ``default`` is used. A missing
    file, or one without a default, gives None. Messages name the file, never a key.

    Raises:
        TinkerError: the file exists but cannot be read or is not of that shape.

    Example:
        >>> import json, tempfile
        >>> p = Path(tempfile.mkdtemp()) / "credentials.json"
        >>> _ = p.write_text(json.dumps({"version": 1, "default": "work", "keys": {
        ...     "home": {"type": "manual", "name": "home", "key": "tml-home"},
        ...     "work": {"type": "manual", "name": "work", "key": "tml-work"}}}))
        >>> read_stored_key(p), read_stored_key(p.with_name("missing.json"))
        ('tml-work', None)
    """
    if path is None:
        return None
    fix = ("Fix: run `tinkex auth login` again, or set TINKER_API_KEY (which takes "
           "precedence over the file)")
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise TinkerError(f"The stored credentials file {path} could not be read "
                          f"({type(error).__name__}). {fix}") from None
    try:
        data = json.loads(raw)
    except ValueError:
        raise TinkerError(f"The stored credentials file {path} is not valid JSON. {fix}"
                          ) from None
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(keys, dict):
        raise TinkerError(f"The stored credentials file {path} does not have the expected "
                          f"shape (an object with 'keys'). {fix}")
    default = data.get("default")
    if default is None or default not in keys:
        return None
    record = keys[default]
    key = record.get("key") if isinstance(record, dict) else None
    if not isinstance(key, str) or not key.strip():
        raise TinkerError(f"The stored credentials file {path}: the default key record "
                          f"{default!r} has no 'key' string. {fix}")
    return key.strip()


def _is_loopback(base_url: str) -> bool:
    host = urlsplit(base_url).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def _normalise_base_url(base_url: str) -> str:
    url = base_url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise TinkerError(f"base_url: expected an http(s) URL such as {DEFAULT_BASE_URL!r}, "
                          f"got {base_url!r}. Fix: pass base_url= or set TINKER_BASE_URL")
    return url


def join_url(base_url: str, path: str) -> str:
    """Join an API path to the base URL, keeping any path prefix of the base (docs/protocol.md §0).

    Example:
        >>> join_url("https://host/services/tinker-prod", "/api/v1/create_session")
        'https://host/services/tinker-prod/api/v1/create_session'
        >>> join_url("http://127.0.0.1:8000/", "api/v1/healthz")
        'http://127.0.0.1:8000/api/v1/healthz'
    """
    return base_url.rstrip("/") + "/" + path.lstrip("/")


def _timeout(value: float | httpx.Timeout | None) -> httpx.Timeout:
    if value is None:
        return httpx.Timeout(DEFAULT_TIMEOUT, connect=DEFAULT_CONNECT_TIMEOUT)
    if isinstance(value, httpx.Timeout):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise TinkerError(f"timeout: expected seconds > 0 or an httpx.Timeout, got {value!r}")
    return httpx.Timeout(float(value), connect=min(float(value), DEFAULT_CONNECT_TIMEOUT))


def _wait_for_server(value: float | None, env_text: str | None) -> float:
    """`value`, else ``TINKEX_WAIT_FOR_SERVER``, else the default; seconds >= 0."""
    if value is None and env_text is not None:
        try:
            parsed = float(env_text)
        except ValueError:
            parsed = -1.0
        if not parsed >= 0:  # also NaN
            raise TinkerError(f"TINKEX_WAIT_FOR_SERVER: expected seconds >= 0 such as 120, got "
                              f"{env_text!r}. Fix: set it to a number, or unset it for the "
                              f"default ({DEFAULT_WAIT_FOR_SERVER:g} s)")
        return parsed
    if value is None:
        return DEFAULT_WAIT_FOR_SERVER
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise TinkerError(f"wait_for_server: expected seconds >= 0 such as 120, got {value!r}. "
                          "Fix: pass a number (0 fails on the first refused connection)")
    return float(value)


def resolve_settings(
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    project_id: str | None = None,
    tags: tuple[str, ...] | list[str] | None = None,
    telemetry: bool | None = None,
    default_headers: Mapping[str, str] | None = None,
    timeout: float | httpx.Timeout | None = None,
    max_retries: int | None = None,
    wait_for_server: float | None = None,
    proxy: str | None = None,
    trust_env: bool = True,
    env: Mapping[str, str],
    credentials_file: str | os.PathLike[str] | None = None,
) -> Settings:
    """Resolve settings: argument > environment > default. `env` is passed in.

    Environment: ``TINKER_API_KEY``, ``TINKER_CREDENTIAL_CMD``, ``TINKER_BASE_URL``,
    ``TINKER_PROJECT_ID``, ``TINKER_TAGS``, ``TINKER_TELEMETRY``, ``TINKER_LOG``,
    ``CLOUDFLARE_ACCESS_CLIENT_ID`` / ``_SECRET``, ``TINKEX_WAIT_FOR_SERVER`` (seconds), and
    ``HOME`` to find the stored credentials. Empty values count as unset.

    The credential (docs/protocol.md §1.2), first match wins: `api_key`, ``TINKER_API_KEY``,
    ``TINKER_CREDENTIAL_CMD`` (not run here: the auth flow runs it for every request), the
    default key in `credentials_file` (default ``$HOME/.tinker/credentials.json``), and for
    a loopback base URL (the embedded local backend) ``tml-local``. A static key must start
    with ``tml-`` or be an unexpired JWT.

    Raises:
        TinkerError: no credential, a malformed key, an unreadable credentials file, a bad
            base URL, timeout, max_retries or wait_for_server.

    Example:
        >>> env = {"TINKER_BASE_URL": "http://127.0.0.1:8000/", "TINKER_TELEMETRY": "0"}
        >>> s = resolve_settings(env=env)
        >>> s.base_url, s.telemetry, s.api_key.reveal()
        ('http://127.0.0.1:8000', False, 'tml-local')
        >>> resolve_settings(base_url="http://10.0.0.1", api_key="tml-x", env=env).base_url
        'http://10.0.0.1'
    """
    def env_value(name: str) -> str | None:
        value = env.get(name)
        return value if value and value.strip() else None

    url = _normalise_base_url(base_url or env_value("TINKER_BASE_URL") or DEFAULT_BASE_URL)
    command = env_value(CREDENTIAL_CMD_ENV)
    origin: CredentialOrigin
    key: str | None
    where = "api_key"
    if api_key:
        key, origin = api_key, "api_key argument"
    elif env_value("TINKER_API_KEY"):
        key, origin, where = env_value("TINKER_API_KEY"), "TINKER_API_KEY", "TINKER_API_KEY"
    elif command is not None:
        key, origin = None, "TINKER_CREDENTIAL_CMD"
    else:
        stored = (Path(credentials_file) if credentials_file is not None
                  else credentials_path(env))
        key, origin, where = read_stored_key(stored), "credentials file", (
            f"the default key stored in {stored}")
        if key is None:
            if not _is_loopback(url):
                raise TinkerError(
                    "The API key is not set. Fix: set TINKER_API_KEY, or pass "
                    "ServiceClient(api_key='tml-...'), or set TINKER_CREDENTIAL_CMD to a command "
                    "that prints a credential, or store a default key with `tinkex auth login` "
                    "(~/.tinker/credentials.json). (The embedded local backend on 127.0.0.1 "
                    "needs no key.)")
            key, origin = LOCAL_API_KEY, "local default"
    if key is not None:
        key = key.strip()
        check_api_key(key, where=where)
    if max_retries is not None and (isinstance(max_retries, bool) or not isinstance(
            max_retries, int) or max_retries < 0):
        raise TinkerError(f"max_retries: expected an int >= 0, got {max_retries!r}")
    wait = _wait_for_server(wait_for_server, env_value("TINKEX_WAIT_FOR_SERVER"))
    cf_secret = env_value("CLOUDFLARE_ACCESS_CLIENT_SECRET")
    headers = {str(k): str(v) for k, v in (default_headers or {}).items()}
    return Settings(
        base_url=url,
        api_key=Secret(key) if key is not None else None,
        project_id=project_id or env_value("TINKER_PROJECT_ID"),
        tags=tuple(sorted(set(tags))) if tags is not None else parse_tags(env.get("TINKER_TAGS")),
        telemetry=telemetry if telemetry is not None else parse_bool(env.get("TINKER_TELEMETRY"),
                                                                        True),
        log_level=(env_value("TINKER_LOG") or "").upper() or None,
        cloudflare_client_id=env_value("CLOUDFLARE_ACCESS_CLIENT_ID"),
        cloudflare_client_secret=Secret(cf_secret) if cf_secret else None,
        default_headers=MappingProxyType(headers),
        timeout=_timeout(timeout),
        max_retries=DEFAULT_MAX_RETRIES if max_retries is None else max_retries,
        wait_for_server=wait,
        proxy=Secret(proxy) if proxy else None,
        trust_env=trust_env,
        credential_cmd=Secret(command.strip()) if command is not None else None,
        credential_origin=origin,
    )


def platform_headers() -> dict[str, str]:
    """Headers describing this client and platform (sent on every request)."""
    system = platform.system() or "Unknown"
    return {
        "User-Agent": f"tinkex-jax/{PACKAGE_VERSION} (tinker-protocol {PROTOCOL_VERSION}; "
                      f"Python {platform.python_version()})",
        "X-Stainless-Package-Version": PACKAGE_VERSION,
        "X-Stainless-OS": {"Darwin": "MacOS", "Windows": "Windows", "Linux": "Linux"}.get(
            system, f"Other:{system}"),
        "X-Stainless-Arch": platform.machine() or "unknown",
        "X-Stainless-Runtime": platform.python_implementation(),
        "X-Stainless-Runtime-Version": platform.python_version(),
        "X-Stainless-Async": "async:asyncio",
    }
