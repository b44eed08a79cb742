"""How a ``tinkex`` command fails: `CLIError`, the CLI wording of the SDK's errors, and the
guard that turns expected errors into one line on stderr and an exit status.

For: the error type commands raise, the wording helpers for server errors and the `guarded`
decorator every command's ``run`` goes through. Every message it prints has two parts: one
sentence of what happened and one (after ``Fix:``) of what to do, in command-line terms
(flags, commands, environment variables), never Python advice. Not for: deciding what is an
error (the commands, the SDK and the archive / download checks do), printing results, or
showing a traceback for an expected failure.

Example:
    >>> one_line("two\\n  lines")
    'two lines'
    >>> what_happened("RestClient.get_session: no such session. Fix: pass session_id='x'")
    'no such session'
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import re
import sys
import urllib.parse
from collections.abc import Callable, Collection, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..errors import APIError, TinkerError

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "CLIError", "cli_message", "guarded", "not_found",
           "one_line", "server_detail", "what_happened"]

EXIT_FAILED = 1
"""Exit status of a command the server refused, or that failed (the message says why)."""

EXIT_USAGE = 2
"""Exit status of a bad command line (argparse uses it too)."""

# Where the SDK's own advice starts in its messages: written for Python callers, so the CLI
# drops it and says what to do on the command line instead.
_ADVICE = re.compile(r"\s*(?:\(?What to do:|Fix:|\(command line:).*$", re.S)
# A leading "Class.method: " or "func(arg): " naming the Python call that failed.
_PY_WHERE = re.compile(r"^[A-Za-z_][\w.]*(?:\([^)]*\))?: ")
# Settings whose command-line flag is not simply "--" + the name with dashes.
_FLAG_OF = {"long_poll_timeout_s": "--long-poll-timeout", "compute_workers": "--workers",
            "base_models": "--base-model", "pjwt_auth_enabled": "--pjwt-auth",
            "ttl_seconds": "--ttl", "out_dir": "--out"}


def _flag(where: str, options: Collection[str]) -> str | None:
    """The flag of `options` a validation error's place (``"SamplingParams.top_p"``,
    ``"set_checkpoint_ttl(ttl_seconds)"``) stands for, if there is one."""
    inner = re.search(r"\((\w+)\)$", where)
    name = inner.group(1) if inner else where.rsplit(".", 1)[-1]
    flag = _FLAG_OF.get(name, "--" + name.replace("_", "-"))
    return flag if flag in options else None


class CLIError(Exception):
    """An expected failure: printed as one line on stderr, exit status `exit_code`.

    Example:
        >>> CLIError("no such run. Fix: run `tinkex run list`", exit_code=1).exit_code
        1
    """

    def __init__(self, message: str, *, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def one_line(text: str) -> str:
    """`text` with every run of white space (newlines included) folded to one blank."""
    return " ".join(text.split())


def what_happened(text: str) -> str:
    """The part of an SDK or server message that says what happened: on one line, without
    the Python call it names first, without its advice and without a final full stop.

    Example:
        >>> what_happened("set_checkpoint_ttl(ttl_seconds): expected None, got 60.")
        'expected None, got 60'
    """
    text = _ADVICE.sub("", one_line(text))
    text = _PY_WHERE.sub("", text)
    return text.rstrip(" .")


def server_detail(error: APIError) -> str:
    """The server's own message in an API error's body (``detail`` / ``message`` / ``error``),
    on one line; ``""`` when the body has none."""
    body = error.body
    if isinstance(body, dict):
        for key in ("detail", "message", "error"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return one_line(value)
    return ""


def _origin(url: str | None) -> str:
    """``scheme://host[:port]`` of a request URL, or "the server" when unknown."""
    parts = urllib.parse.urlsplit(url or "")
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else "the server"


def cli_message(error: TinkerError, prog: str = "tinkex",
                options: Collection[str] = ()) -> tuple[str, int]:
    """The one-line CLI message and exit status for an error the SDK raised; a bad value
    is named by its flag when it came from one of `options`.

    Example:
        >>> from tinkex_jax.errors import AuthenticationError, invalid
        >>> cli_message(AuthenticationError("bad key", url="http://127.0.0.1:8000/api/v1/x"))[0]
        'the server at http://127.0.0.1:8000 refused the API key (HTTP 401: bad key). Fix: check it with `tinkex auth status`, then store a working key with `tinkex auth login` or set TINKER_API_KEY.'
        >>> cli_message(invalid("SamplingParams.top_p", "a number in (0, 1]", 2.0), "tinkex sample",
        ...             {"--top-p"})
        ('--top-p: expected a number in (0, 1], got 2.0. Fix: pass another --top-p (`tinkex sample --help` describes it).', 2)
    """
    from ..errors import (
        APIConnectionError,
        APIError,
        APIResponseValidationError,
        APIStatusError,
        AuthenticationError,
        BillingError,
        NotFoundError,
        PermissionDeniedError,
        RateLimitError,
        RequestFailedError,
        ValidationError,
    )

    if isinstance(error, ValidationError):
        flag = _flag(str(getattr(error, "where", "") or ""), options)
        if flag is not None:
            return (f"{flag}: {what_happened(str(error))}. Fix: pass another {flag} "
                    f"(`{prog} --help` describes it).", EXIT_USAGE)
        text = _ADVICE.sub("", one_line(str(error))).rstrip(" .")
        return (f"{text}. Fix: check the values on the command line (`{prog} --help` lists "
                "them).", EXIT_USAGE)
    if isinstance(error, APIError):
        server = _origin(error.url)
        said = what_happened(server_detail(error) or error.message)
        if isinstance(error, APIConnectionError):
            return (f"no answer from the Tinker server at {server} ({said}). Fix: check "
                    "--base-url / TINKER_BASE_URL and your network, then run the command "
                    "again.", EXIT_FAILED)
        if isinstance(error, APIResponseValidationError):
            return (f"the answer of {server} could not be read ({said}). Fix: check that "
                    "--base-url points at a Tinker server and that tinkex_jax is up to date "
                    "(`tinkex version`).", EXIT_FAILED)
        status = error.status_code if isinstance(error, APIStatusError) else None
        http = f"HTTP {status}: {said}" if status else said
        if isinstance(error, AuthenticationError):
            return (f"the server at {server} refused the API key ({http}). Fix: check it with "
                    "`tinkex auth status`, then store a working key with `tinkex auth login` "
                    "or set TINKER_API_KEY.", EXIT_FAILED)
        if isinstance(error, PermissionDeniedError):
            return (f"the server at {server} refused access ({http}). Fix: use a key of the "
                    "organization that owns it (`tinkex auth whoami` shows yours).",
                    EXIT_FAILED)
        if isinstance(error, BillingError):
            return (f"the server at {server} reports a billing problem ({http}). Fix: resolve "
                    "it in the Tinker console, then run the command again.", EXIT_FAILED)
        if isinstance(error, NotFoundError):
            return (f"the server at {server} has no such resource ({http}). Fix: check the "
                    f"name or id (the `list` commands show them; `{prog} --help`).",
                    EXIT_FAILED)
        if isinstance(error, RateLimitError):
            return (f"the server at {server} is busy ({http}). Fix: wait a minute and run the "
                    "command again.", EXIT_FAILED)
        if status is not None and status >= 500:
            return (f"the server at {server} failed ({http}). Fix: run the command again; if "
                    "it keeps failing, check the server's log or status page.", EXIT_FAILED)
        return (f"the server at {server} refused the request ({http}). Fix: check the "
                f"arguments (`{prog} --help`).", EXIT_FAILED)
    if isinstance(error, RequestFailedError):
        fix = ("check the arguments" if error.category == "user"
               else "run the command again; if it keeps failing, check the server's log")
        return (f"the server accepted the request, then it failed "
                f"({what_happened(error.message)}). Fix: {fix}.", EXIT_FAILED)
    return (f"{what_happened(str(error))}. Fix: check the command line (`{prog} --help`).",
            EXIT_FAILED)


@contextlib.contextmanager
def not_found(what: str, fix: str) -> Iterator[None]:
    """Turn the SDK's `NotFoundError` into a short CLI message about `what`."""
    from ..errors import NotFoundError

    try:
        yield
    except NotFoundError as exc:
        detail = what_happened(server_detail(exc))
        said = f" (server: {detail})" if detail else ""
        raise CLIError(f"{what} was not found{said}. Fix: {fix}") from None


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    prog = getattr(args, "_prog", "tinkex")
    print(f"{prog}: {one_line(message)}", file=sys.stderr)
    return code


def guarded(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Expected errors become one line on stderr and an exit status, never a traceback."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        from ..errors import TinkerError

        try:
            return fn(args)
        except CLIError as exc:
            return _fail(args, str(exc), exc.exit_code)
        except TinkerError as exc:
            message, code = cli_message(exc, getattr(args, "_prog", "tinkex"),
                                        getattr(args, "_options", ()))
            return _fail(args, message, code)
        except OSError as exc:
            return _fail(args, f"{exc}. Fix: check the path and its permissions.", EXIT_FAILED)
        except KeyboardInterrupt:
            return _fail(args, "interrupted. Fix: run the command again to finish.", 130)

    return run
