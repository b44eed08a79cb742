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
"""

from __future__ import annotations

import argparse
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


def non_negative(text: str) -> int:
    """An ``argparse`` type: an int >= 0.

    Example:
        >>> non_negative("0")
        0
    """
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {value}")
    return value


def positive(text: str) -> int:
    """An ``argparse`` type: an int >= 1.

    Example:
        >>> positive("0")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected an int >= 1, got 0
    """
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value}")
    return value


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
