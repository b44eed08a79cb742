"""What a ``tinkex`` subcommand is: the `Command` record and how a tree of them becomes an
``argparse`` parser.

For: describing a subcommand (name, help line, how it adds its arguments, how it runs) and
wiring a tree of them into nested sub-parsers. Not for: running anything, talking to a
server or printing; the commands themselves live in `tinkex_jax.cli.commands`.

Example:
    >>> leaf = Command("hello", "say hello", run=lambda args: 0)
    >>> parser = argparse.ArgumentParser(prog="demo")
    >>> add_commands(parser, [leaf])
    >>> args = parser.parse_args(["hello"])
    >>> args._prog, args._run(args)
    ('demo hello', 0)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Command", "add_commands"]


@dataclass(frozen=True)
class Command:
    """One ``tinkex`` subcommand, or a group of them.

    A leaf has ``configure`` (adds its arguments) and ``run`` (returns the exit status); a
    group has ``subcommands`` instead and makes one of them required.

    Example:
        >>> group = Command("run", "training runs", subcommands=(
        ...     Command("list", "list runs", run=lambda args: 0),))
        >>> [c.name for c in group.subcommands]
        ['list']
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None] | None = None
    run: Callable[[argparse.Namespace], int] | None = None
    subcommands: tuple[Command, ...] = ()

    def __post_init__(self) -> None:
        if bool(self.subcommands) == (self.run is not None):
            raise ValueError(f"Command {self.name!r}: give either run (a leaf) or "
                             "subcommands (a group), not both or neither")


def _add(sub: argparse._SubParsersAction[argparse.ArgumentParser], command: Command,
         depth: int) -> None:
    child = sub.add_parser(command.name, help=command.help, description=command.help)
    child.set_defaults(_prog=child.prog)
    if command.subcommands:
        nested = child.add_subparsers(dest=f"_action{depth}", metavar="ACTION", required=True)
        for action in command.subcommands:
            _add(nested, action, depth + 1)
        return
    if command.configure is not None:
        command.configure(child)
    options = frozenset(s for action in child._actions for s in action.option_strings)
    child.set_defaults(_run=command.run, _options=options)


def add_commands(parser: argparse.ArgumentParser, commands: Sequence[Command]) -> None:
    """Add `commands` (groups nested) to `parser` as required sub-parsers.

    Each leaf's parser records ``_prog`` (its full name, for messages), ``_run`` and
    ``_options`` (its option strings, so errors can name the flag a bad value came from).
    """
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in commands:
        _add(sub, command, 1)
