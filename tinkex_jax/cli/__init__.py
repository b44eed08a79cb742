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

Example:
    >>> build_parser().parse_args(["serve", "--port", "9000"]).port
    9000
    >>> build_parser().parse_args(["checkpoint", "set-ttl", "tinker://r/weights/a", "60"]).seconds
    60
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .command import Command, add_commands
from .commands import checkpoint, demo, run, sample, serve, version

__all__ = ["COMMANDS", "Command", "build_parser", "main"]

COMMANDS: list[Command] = [demo.COMMAND, serve.COMMAND, version.COMMAND, run.COMMAND,
                           checkpoint.COMMAND, sample.COMMAND]
"""Every ``tinkex`` subcommand, in the order ``tinkex --help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand (groups nested)."""
    parser = argparse.ArgumentParser(prog="tinkex", description="tinkex_jax command line")
    add_commands(parser, COMMANDS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tinkex`` console script; returns the exit status.

    Example:
        >>> main(["serve", "--port", "-1"])  # doctest: +SKIP
        2
    """
    args = build_parser().parse_args(argv)
    return int(args._run(args))
