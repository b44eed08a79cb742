"""How a ``tinkex`` command fails: `CLIError` and the guard that turns expected errors into one
line on stderr and an exit status.

For: the error type commands raise, the wording helpers for server errors and the `guarded`
decorator every command's ``run`` goes through. Not for: deciding what is an error (the
commands, the SDK and the archive / download checks do), printing results, or showing a
traceback for an expected failure.

Example:
    >>> one_line("two\\n  lines")
    'two lines'
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..errors import APIError

__all__ = ["CLIError", "guarded", "not_found", "one_line", "server_detail"]


class CLIError(Exception):
    """An expected failure: printed as one line on stderr, exit status `exit_code`.

    Example:
        >>> CLIError("no such run. Fix: run `tinkex run list`", exit_code=1).exit_code
        1
    """

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def one_line(text: str) -> str:
    """`text` with every run of white space (newlines included) folded to one blank."""
    return " ".join(text.split())


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


@contextlib.contextmanager
def not_found(what: str, fix: str) -> Iterator[None]:
    """Turn the SDK's `NotFoundError` into a short CLI message about `what`."""
    from ..errors import NotFoundError

    try:
        yield
    except NotFoundError as exc:
        detail = server_detail(exc).split(" Fix:")[0].rstrip(". ")
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
        from ..errors import TinkerError, ValidationError

        try:
            return fn(args)
        except CLIError as exc:
            return _fail(args, str(exc), exc.exit_code)
        except ValidationError as exc:
            return _fail(args, str(exc), 2)
        except TinkerError as exc:
            return _fail(args, str(exc), 1)
        except OSError as exc:
            return _fail(args, f"{exc}. Fix: check the path and its permissions.", 1)
        except KeyboardInterrupt:
            return _fail(args, "interrupted", 130)

    return run
