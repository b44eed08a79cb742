"""The ``tinkex`` command line: the entry point `main` and the table of subcommands.

For: turning an argument list into one registered command's run and its exit status. Each
command group lives in its own module of `tinkex_jax.cli.commands` and is listed once in
`COMMANDS`; add a subcommand by writing its module and appending its `Command` there. A group
such as ``tinkex checkpoint`` is a `Command` without ``configure`` / ``run`` whose
``subcommands`` are the actions (``tinkex checkpoint list``); groups nest to any depth.

Not for: formatting (`tinkex_jax.cli.output`), archive safety (`tinkex_jax.cli.archive`),
downloads (`tinkex_jax.cli.download`) or talking to a server; and nothing heavy is imported
here: the commands import the SDK, httpx and msgspec inside the functions that need them,
so ``tinkex --help`` stays fast.

The command groups and commands of the official ``tinker`` CLI are all here under the same
names and flags (``auth``, ``billing``, ``checkpoint``, ``model``, ``run``, ``session``,
``version``), with ``--json`` on every command that prints a result (the official
``--format json`` / ``-f json`` before the command works too), plus this package's own
(``demo``, ``serve``, ``plan``, ``sample``).

Example:
    >>> build_parser().parse_args(["serve", "--port", "9000"]).port
    9000
    >>> build_parser().parse_args(["-f", "json", "model", "list"]).output_format
    'json'
    >>> build_parser().parse_args(["checkpoint", "set-ttl", "tinker://r/weights/a", "60"]).seconds
    60
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .command import Command, add_commands
from .commands import (
    auth,
    billing,
    checkpoint,
    demo,
    model,
    plan,
    run,
    sample,
    serve,
    session,
    version,
)

__all__ = ["COMMANDS", "Command", "build_parser", "main"]

COMMANDS: list[Command] = [
    # this package's own: the offline demo, the local backend and its memory plans
    demo.COMMAND, serve.COMMAND, plan.COMMAND,
    # the official CLI's groups, same names and flags
    auth.COMMAND, model.COMMAND, run.COMMAND, checkpoint.COMMAND, session.COMMAND,
    billing.COMMAND, version.COMMAND,
    # this package's own: sampling from the command line
    sample.COMMAND,
]
"""Every ``tinkex`` subcommand, in the order ``tinkex --help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand (groups nested)."""
    parser = argparse.ArgumentParser(
        prog="tinkex", description="tinkex_jax command line: the official tinker CLI's "
        "commands, a local backend (serve) and an offline demo. `tinkex COMMAND --help` "
        "describes each command; docs/cli.md has the guide.")
    parser.add_argument("--format", "-f", dest="output_format", choices=["table", "json"],
                        default="table",
                        help="output of the command: a table, or JSON (the same as the "
                             "command's --json; default %(default)s)")
    add_commands(parser, COMMANDS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tinkex`` console script; returns the exit status.

    Example:
        >>> main(["serve", "--port", "-1"])  # doctest: +SKIP
        2
    """
    args = build_parser().parse_args(argv)
    if args.output_format == "json" and hasattr(args, "json"):
        args.json = True
    return int(args._run(args))
