"""Command-line values shared by several ``tinkex`` commands: the connection and output
options, integer argument types and checkpoint paths.

For: adding the common options to a parser and checking argument values with CLI-worded
errors. Not for: connecting to a server (`tinkex_jax.cli.connection`) or anything else with
an effect; only the standard library is imported at module level.

Example:
    >>> parser = argparse.ArgumentParser()
    >>> add_connection_options(parser)
    >>> args = parser.parse_args(["--json", "--base-url", "http://127.0.0.1:8000"])
    >>> args.json, args.base_url, args.api_key
    (True, 'http://127.0.0.1:8000', None)
    >>> non_negative("0"), positive("3")
    (0, 3)
    >>> positive("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected an int >= 1, got 0
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import CLIError

if TYPE_CHECKING:
    from ..types import ParsedCheckpointTinkerPath

__all__ = ["add_connection_options", "add_output_option", "non_negative",
           "parse_checkpoint_path", "positive"]


def add_output_option(parser: argparse.ArgumentParser) -> None:
    """``--json``: print machine-readable JSON instead of a table."""
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """``--base-url``, ``--api-key`` and ``--json`` (every command that talks to a server)."""
    parser.add_argument("--base-url", default=None,
                        help="server URL (default $TINKER_BASE_URL, else the hosted service)")
    parser.add_argument("--api-key", default=None,
                        help="API key (default $TINKER_API_KEY; prefer the variable: "
                             "arguments are visible to other local users)")
    add_output_option(parser)


def _int_at_least(minimum: int, name: str) -> Callable[[str], int]:
    """An ``argparse`` type: an int >= `minimum`; `name` is how argparse calls it when the
    text is no int at all (``invalid <name> value: 'x'``)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {value}")
        return value

    parse.__name__ = parse.__qualname__ = name
    return parse


non_negative = _int_at_least(0, "_non_negative")
"""An ``argparse`` type: an int >= 0 (``non_negative("0") == 0``)."""

positive = _int_at_least(1, "_positive")
"""An ``argparse`` type: an int >= 1 (``positive("0")`` raises ``ArgumentTypeError``)."""


def parse_checkpoint_path(text: str) -> ParsedCheckpointTinkerPath:
    """Parse a ``tinker://RUN/KIND/NAME`` argument, with a CLI-worded error.

    Example:
        >>> parse_checkpoint_path("tinker://r1/sampler_weights/s").checkpoint_id
        'sampler_weights/s'
    """
    from ..builders import parse_tinker_path
    from ..errors import ValidationError

    try:
        return parse_tinker_path(text)
    except ValidationError:
        raise CLIError(f"{text!r} is not a checkpoint path. Fix: pass "
                       "tinker://<run-id>/<weights|sampler_weights|external_weights>/<name>, "
                       "as `tinkex checkpoint list` shows.", exit_code=2) from None
