"""``tinkex auth ...``: store, remove and check the API key the SDK and the CLI use.

For: ``login`` (check a key against the server and store it as the default key of
``~/.tinker/credentials.json``, the file the SDK reads when no other credential is set),
``logout`` (remove that key from the file), ``status`` (which credential would be used and
whether the server accepts it) and ``whoami`` (who the credential belongs to, from the JWT of
a JWT-auth server). Not for: the file format and the credential order
(`tinkex_jax.cli.credentials`). No command here ever prints a key: only where it comes from
and its stored name.

Example:
    >>> [c.name for c in COMMAND.subcommands]
    ['login', 'logout', 'status', 'whoami']
"""

from __future__ import annotations

import argparse
import getpass
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any

from ..arguments import add_connection_options, add_output_option
from ..command import Command
from ..connection import connect, probe
from ..credentials import (
    add_default_key,
    credentials_file,
    find_credential,
    load_credentials,
    remove_default_key,
    resolve_base_url,
)
from ..errors import EXIT_FAILED, EXIT_USAGE, CLIError, cli_message, guarded, what_happened
from ..output import print_json, print_properties

__all__ = ["COMMAND", "cmd_auth_login", "cmd_auth_logout", "cmd_auth_status",
           "cmd_auth_whoami", "configure_auth_login", "default_key_name"]

_PRECEDENCE = ("TINKER_API_KEY", "TINKER_CREDENTIAL_CMD")


def default_key_name() -> str:
    """The name a stored key gets without ``--name``: ``tinkex-cli-<this machine>``."""
    host = socket.gethostname().split(".", 1)[0].strip()
    return f"tinkex-cli-{host or 'unknown'}"


def _need_file() -> Any:
    path = credentials_file()
    if path is None:
        raise CLIError("cannot tell where to store the key: neither HOME nor USERPROFILE is "
                       "set. Fix: set HOME to your home directory and run the command again.",
                       exit_code=EXIT_USAGE)
    return path


def _shadowed_note() -> None:
    """Say on stderr when an environment variable takes precedence over the stored key."""
    for name in _PRECEDENCE:
        if (os.environ.get(name) or "").strip():
            print(f"note: {name} is set, and it takes precedence over the stored key; unset it "
                  "for the stored key to be used.", file=sys.stderr)
            return


def configure_auth_login(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex auth login``."""
    parser.add_argument("--base-url", default=None,
                        help="server to check the key against (default $TINKER_BASE_URL, else "
                             "the hosted service)")
    parser.add_argument("--name", default=None,
                        help="name to store the key under, when the server does not name it "
                             "(default: tinkex-cli-<this machine>)")
    parser.add_argument("--no-verify", action="store_true",
                        help="store the key without asking the server whether it is valid")
    add_output_option(parser)


def _read_key() -> str:
    """The key from the terminal (hidden) or one line of stdin."""
    if sys.stdin.isatty():
        try:
            return getpass.getpass("Paste your Tinker API key (input hidden): ").strip()
        except EOFError:
            return ""
    return sys.stdin.readline().strip()


@dataclass(frozen=True)
class _KeyInfo:
    """What the server says about a key (all optional)."""

    key_id: str | None = None
    name: str | None = None
    note: str | None = None
    details: dict[str, Any] | None = None


def _refused(base_url: str, status: int, detail: str) -> CLIError:
    said = f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
    return CLIError(f"the server at {base_url} refused the key ({said}). Fix: copy the key again "
                    "from the Tinker console and run `tinkex auth login` again.")


def _verify(base_url: str, key: str) -> _KeyInfo:
    """Ask the server whether `key` is valid: its key endpoint (hosted service), else, where
    the server has none (a local backend), an authenticated call through the SDK."""
    import httpx

    from ..._shell import build_download_client
    from ...clients import ServiceClient
    from ...errors import AuthenticationError, PermissionDeniedError, TinkerError

    try:
        probe(base_url)
    except CLIError:
        raise CLIError(f"cannot reach the Tinker server at {base_url} to check the key. Fix: "
                       "check --base-url / TINKER_BASE_URL, or pass --no-verify to store the "
                       "key without checking it.") from None
    with build_download_client(headers={"X-API-Key": key}) as http:
        try:
            answer = http.get(f"{base_url}/api/v1/auth/apikey/me", timeout=30.0)
        except httpx.TransportError as exc:
            raise CLIError(f"the server at {base_url} did not answer ({type(exc).__name__}). "
                           "Fix: run the command again, or pass --no-verify.") from None
    detail = ""
    try:
        body = answer.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        detail = what_happened(body["detail"])
    if answer.status_code in (401, 403):
        raise _refused(base_url, answer.status_code, detail)
    if answer.is_success and isinstance(body, dict):
        details = body.get("details")
        return _KeyInfo(str(body["key_id"]) if body.get("key_id") is not None else None,
                        str(body["name"]) if body.get("name") else None,
                        str(body["note"]) if body.get("note") else None,
                        details if isinstance(details, dict) else None)
    # No key endpoint here (a local backend, another server): an authenticated call instead.
    try:
        with ServiceClient(base_url=base_url, api_key=key) as service:
            service.create_rest_client().get_server_capabilities().result()
    except (AuthenticationError, PermissionDeniedError) as exc:
        raise _refused(base_url, exc.status_code, what_happened(exc.message)) from None
    except TinkerError as exc:
        raise CLIError(cli_message(exc, "tinkex auth login")[0]) from None
    return _KeyInfo()


def _identity(details: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """(email, organization) from the key details the server sent."""
    if not details:
        return None, None
    user, org = details.get("user_details"), details.get("org_details")
    email = user.get("email") if isinstance(user, dict) else None
    name = org.get("name") if isinstance(org, dict) else None
    return (str(email) if email else None), (str(name) if name else None)


@guarded
def cmd_auth_login(args: argparse.Namespace) -> int:
    """Check a key and store it as the default credential."""
    from ..._shell._config import check_api_key
    from ...errors import TinkerError

    path = _need_file()
    stored = load_credentials(path)
    current = stored.get("default")
    if current is not None and current in stored["keys"]:
        name = stored["keys"][current].get("name", current)
        raise CLIError(f"a default key ({name!r}) is already stored in {path}. Fix: run "
                       "`tinkex auth logout` first, then `tinkex auth login`.")
    base_url = None if args.no_verify else resolve_base_url(args.base_url)
    key = _read_key()
    if not key:
        raise CLIError("no key was given. Fix: paste the key at the prompt, or pipe it in, "
                       "e.g. `printenv MY_TINKER_KEY | tinkex auth login`.",
                       exit_code=EXIT_USAGE)
    try:
        check_api_key(key)
    except TinkerError:
        reason = ("the JWT has expired" if key.startswith("eyJ") else
                  "a Tinker key starts with 'tml-' (or is a JWT starting with 'eyJ')")
        raise CLIError(f"that is not a usable Tinker API key: {reason}. Fix: copy the key from "
                       "the Tinker console and run `tinkex auth login` again.",
                       exit_code=EXIT_USAGE) from None
    info = _verify(base_url, key) if base_url is not None else _KeyInfo()
    name = info.name or args.name or default_key_name()
    record: dict[str, Any] = {"type": "manual", "key": key, "name": name}
    if info.note:
        record["note"] = info.note
    if info.details:
        record["details"] = info.details
    add_default_key(path, info.key_id or name, record)
    email, organization = _identity(info.details)
    if args.json:
        print_json({"credentials_file": str(path), "key_id": info.key_id or name,
                    "key_name": name, "verified": base_url is not None, "base_url": base_url,
                    "email": email, "organization": organization})
    else:
        who = f" as {email}" + (f" ({organization})" if organization else "") if email else ""
        checked = (f"The server at {base_url} accepted it{who}." if base_url else
                   "It was not checked (--no-verify).")
        print(f"Stored the API key {name!r} as the default credential in {path}. {checked}")
    _shadowed_note()
    return 0


@guarded
def cmd_auth_logout(args: argparse.Namespace) -> int:
    """Remove the default key from the credentials file."""
    path = _need_file()
    record = remove_default_key(path)
    if record is None:
        raise CLIError(f"no default key is stored in {path}, so there is nothing to remove. "
                       "Fix: nothing to do; `tinkex auth status` shows which credential "
                       "commands use.")
    name = str(record.get("name") or "unnamed")
    if args.json:
        print_json({"removed": True, "key_name": name, "credentials_file": str(path)})
    else:
        print(f"Removed the API key {name!r} from {path}. The key itself stays valid on the "
              "server: revoke it in the Tinker console if it should stop working.")
    for env in _PRECEDENCE:
        if (os.environ.get(env) or "").strip():
            print(f"note: {env} is still set, so commands still have a credential.",
                  file=sys.stderr)
    return 0


@guarded
def cmd_auth_status(args: argparse.Namespace) -> int:
    """Which credential commands use, and whether the server accepts it; 1 when it does
    not (or there is none)."""
    from ...errors import TinkerError

    found = find_credential(args.api_key, args.base_url)
    report: dict[str, Any] = {
        "base_url": found.base_url, "credentials_available": found.problem is None,
        "credential_source": found.origin, "credential": found.describe(),
        "stored_key_name": found.key_name, "credentials_file": str(found.path or
                                                                    credentials_file() or ""),
        "accessible": False, "models": None, "error": None}
    if found.problem is None:
        try:
            with connect(args) as service:
                models = service.create_rest_client().get_server_capabilities().result()
            report["accessible"] = True
            report["models"] = len(models.supported_models)
        except CLIError as exc:
            report["error"] = str(exc)
        except TinkerError as exc:
            report["error"] = cli_message(exc, args._prog)[0]
    else:
        report["error"] = (f"{found.problem}. Fix: run `tinkex auth login` to store a key, or "
                           "set TINKER_API_KEY.")
    count = report["models"]
    access = (f"yes ({count} model{'s' * (count != 1)} offered)" if report["accessible"]
              else "no")
    print_properties(args.json, report, [
        ("Server", found.base_url), ("Credential", found.describe()),
        ("Credentials file", report["credentials_file"] or "-"), ("Accessible", access)])
    if report["error"]:
        print(f"{args._prog}: {report['error']}", file=sys.stderr)
        return EXIT_FAILED
    return 0


@guarded
def cmd_auth_whoami(args: argparse.Namespace) -> int:
    """Show the user and organization of the credential in use."""
    from ...errors import APIError, TinkerError

    with connect(args) as service:
        try:
            me = service.create_rest_client().whoami().result()
        except APIError:
            raise
        except TinkerError:
            raise CLIError(f"the server at {service.base_url} does not say who a plain API key "
                           "belongs to (its JWT auth is off). Fix: `tinkex auth status` checks "
                           "that the key works; a local backend started with `tinkex serve "
                           "--pjwt-auth` answers whoami.") from None
    return print_properties(args.json, me, [("Email", me.email or "-"), ("User", me.user_urn),
                                            ("Organization", me.org_urn)])


COMMAND = Command("auth", "store, remove and check your Tinker API key", subcommands=(
    Command("login", "check an API key and store it as the default credential "
            "(~/.tinker/credentials.json)", configure_auth_login, cmd_auth_login),
    Command("logout", "remove the stored default key", add_output_option, cmd_auth_logout),
    Command("status", "show which credential is used and whether the server accepts it",
            add_connection_options, cmd_auth_status),
    Command("whoami", "show the user and organization of the credential in use",
            add_connection_options, cmd_auth_whoami),
))
