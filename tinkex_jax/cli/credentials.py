"""Which credential a ``tinkex`` command would use, and the credentials file that
``tinkex auth login`` writes and the SDK reads.

For: finding the credential the way the SDK does (``--api-key``, ``TINKER_API_KEY``,
``TINKER_CREDENTIAL_CMD``, the default key of ``~/.tinker/credentials.json``, and ``tml-local``
for a server on this machine; docs/protocol.md §1.2) with CLI-worded errors, and reading and
writing that file safely (owner-only permissions, written whole or not at all). Not for:
talking to a server (`tinkex_jax.cli.connection`, `tinkex_jax.cli.commands.auth`), and never
for showing a key: nothing here returns a key inside a message or a repr.

Example:
    >>> import tempfile
    >>> home = Path(tempfile.mkdtemp())
    >>> path = credentials_file({"HOME": str(home)})
    >>> add_default_key(path, "k1", {"type": "manual", "name": "laptop", "key": "tml-abc"})
    >>> found = find_credential(None, "https://tinker.example", {"HOME": str(home)})
    >>> found.origin, found.key_name, found.key == "tml-abc"
    ('credentials file', 'laptop', True)
    >>> remove_default_key(path)["name"]
    'laptop'
    >>> find_credential(None, "http://127.0.0.1:8000", {"HOME": str(home)}).origin
    'local default'
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import EXIT_USAGE, CLIError

__all__ = ["Credential", "add_default_key", "credentials_file", "find_credential",
           "load_credentials", "remove_default_key", "require_usable", "resolve_base_url"]

_LOGIN_FIX = ("run `tinkex auth login` to store a key, or set TINKER_API_KEY (a server on this "
              "machine needs none)")


def credentials_file(env: Mapping[str, str] | None = None) -> Path | None:
    """Where the SDK looks for stored keys: ``<home>/.tinker/credentials.json`` (None when
    neither ``HOME`` nor ``USERPROFILE`` is set)."""
    from .._shell import credentials_path

    return credentials_path(os.environ if env is None else env)


def resolve_base_url(base_url: str | None, env: Mapping[str, str] | None = None) -> str:
    """The server a command talks to: ``--base-url``, else ``TINKER_BASE_URL``, else the
    hosted service; without a trailing slash. Raises `CLIError` for a URL that is not
    http(s).

    Example:
        >>> resolve_base_url("http://127.0.0.1:8000/", {})
        'http://127.0.0.1:8000'
    """
    from .._shell import DEFAULT_BASE_URL

    environ = os.environ if env is None else env
    given = base_url or (environ.get("TINKER_BASE_URL") or "").strip() or DEFAULT_BASE_URL
    parts = urllib.parse.urlsplit(given.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        source = "--base-url" if base_url else "TINKER_BASE_URL"
        raise CLIError(f"{source} {given!r} is not an http(s) URL. Fix: pass e.g. --base-url "
                       "http://127.0.0.1:8000 (a local backend) or leave it unset for the "
                       "hosted service.", exit_code=EXIT_USAGE)
    return given.strip().rstrip("/")


def _is_loopback(base_url: str) -> bool:
    host = urllib.parse.urlsplit(base_url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


@dataclass(frozen=True)
class Credential:
    """Where a command's credential comes from; `key` is never shown (not in the repr).

    `origin` is one of ``"--api-key"``, ``"TINKER_API_KEY"``, ``"TINKER_CREDENTIAL_CMD"``,
    ``"credentials file"``, ``"local default"`` or ``"none"``; `problem` says why it cannot
    be used (None when it can).
    """

    origin: str
    base_url: str
    key: str | None = field(default=None, repr=False)
    key_name: str | None = None
    path: Path | None = None
    problem: str | None = None

    def describe(self) -> str:
        """The credential's source in words (never the key).

        Example:
            >>> Credential("TINKER_API_KEY", "https://x").describe()
            'the TINKER_API_KEY environment variable'
        """
        return {
            "--api-key": "the --api-key option",
            "TINKER_API_KEY": "the TINKER_API_KEY environment variable",
            "TINKER_CREDENTIAL_CMD": "the command in TINKER_CREDENTIAL_CMD",
            "credentials file": f"the key {self.key_name!r} stored in {self.path}",
            "local default": "the local backend's default key (a server on this machine "
                             "needs none)",
        }.get(self.origin, "none")


def load_credentials(path: Path) -> dict[str, Any]:
    """The credentials file as a dict (``{"version": 1, "default": None, "keys": {}}`` when
    it does not exist); `CLIError` when it cannot be read or has another shape."""
    fix = (f"Fix: move {path} away and run `tinkex auth login` again, or set TINKER_API_KEY "
           "(it takes precedence over the file).")
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {"version": 1, "default": None, "keys": {}}
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"the credentials file {path} cannot be read ({type(exc).__name__}). "
                       f"{fix}") from None
    try:
        data = json.loads(raw)
    except ValueError:
        raise CLIError(f"the credentials file {path} is not valid JSON. {fix}") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys", {}), dict):
        raise CLIError(f"the credentials file {path} does not have the expected shape (an "
                       f"object with 'keys'). {fix}")
    data.setdefault("version", 1)
    data.setdefault("keys", {})
    data.setdefault("default", None)
    return data


def _save(path: Path, data: Mapping[str, Any]) -> None:
    """Write `data` to `path` whole (temporary file, then rename), readable by the owner
    only; the directory is made owner-only too."""
    directory = path.parent
    if not directory.is_dir():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2)
            out.write("\n")
        os.chmod(temp, 0o600)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def add_default_key(path: Path, key_id: str, record: Mapping[str, Any]) -> None:
    """Store `record` (``{"type": "manual", "name": ..., "key": ...}``) under `key_id` and
    make it the default key."""
    data = load_credentials(path)
    data["keys"][key_id] = dict(record)
    data["default"] = key_id
    _save(path, data)


def remove_default_key(path: Path) -> dict[str, Any] | None:
    """Remove the default key from the file; return its record (None when there is none).
    Other stored keys stay."""
    data = load_credentials(path)
    key_id = data.get("default")
    if key_id is None or key_id not in data["keys"]:
        return None
    record = data["keys"].pop(key_id)
    data["default"] = None
    _save(path, data)
    return dict(record) if isinstance(record, dict) else {}


def _stored(path: Path | None, base_url: str) -> Credential:
    if path is None:
        return Credential("none", base_url)
    data = load_credentials(path)
    key_id = data.get("default")
    record = data["keys"].get(key_id) if key_id is not None else None
    if record is None:
        return Credential("none", base_url, path=path)
    key = record.get("key") if isinstance(record, dict) else None
    name = str(record.get("name") or key_id) if isinstance(record, dict) else str(key_id)
    if not isinstance(key, str) or not key.strip():
        return Credential("credentials file", base_url, key_name=name, path=path,
                          problem=f"the default key {name!r} in {path} has no key text")
    return Credential("credentials file", base_url, key=key.strip(), key_name=name, path=path)


def _check_shape(found: Credential) -> Credential:
    from .._shell import check_api_key
    from ..errors import TinkerError

    if found.key is None:
        return found
    try:
        check_api_key(found.key)
    except TinkerError:
        reason = ("the JWT has expired" if found.key.startswith("eyJ") else
                  "a Tinker key starts with 'tml-' (or is a JWT starting with 'eyJ')")
        return Credential(found.origin, found.base_url, key_name=found.key_name,
                          path=found.path, problem=f"the key from {found.describe()} cannot "
                          f"be used: {reason}")
    return found


def find_credential(api_key: str | None, base_url: str | None,
                    env: Mapping[str, str] | None = None) -> Credential:
    """The credential a command would use, first match wins: `api_key` (``--api-key``),
    ``TINKER_API_KEY``, ``TINKER_CREDENTIAL_CMD``, the default stored key, and for a server
    on this machine ``tml-local``. A malformed key or an unusable file sets ``problem``
    rather than raising (``tinkex auth status`` reports it); `CLIError` only for a file that
    cannot be read at all or a bad base URL."""
    environ = os.environ if env is None else env
    url = resolve_base_url(base_url, environ)
    if api_key:
        return _check_shape(Credential("--api-key", url, key=api_key.strip()))
    from_env = (environ.get("TINKER_API_KEY") or "").strip()
    if from_env:
        return _check_shape(Credential("TINKER_API_KEY", url, key=from_env))
    if (environ.get("TINKER_CREDENTIAL_CMD") or "").strip():
        return Credential("TINKER_CREDENTIAL_CMD", url)
    found = _stored(credentials_file(environ), url)
    if found.origin != "none":
        return _check_shape(found)
    if _is_loopback(url):
        from .._shell import LOCAL_API_KEY

        return Credential("local default", url, key=LOCAL_API_KEY)
    return Credential("none", url, path=found.path,
                      problem=f"no API key is set for {url}")


def require_usable(found: Credential) -> None:
    """Raise `CLIError` (exit 2) when `found` cannot be used, saying what to do.

    Example:
        >>> require_usable(Credential("none", "https://x", problem="no API key is set for https://x"))
        Traceback (most recent call last):
        ...
        tinkex_jax.cli.errors.CLIError: no API key is set for https://x. Fix: run `tinkex auth login` to store a key, or set TINKER_API_KEY (a server on this machine needs none).
    """
    if found.problem is not None:
        raise CLIError(f"{found.problem.rstrip('. ')}. Fix: {_LOGIN_FIX}.",
                       exit_code=EXIT_USAGE)
