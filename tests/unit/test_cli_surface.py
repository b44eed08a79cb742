"""The surface of the ``tinkex`` command line: every option of every command has help text,
every command and flag of the official ``tinker`` CLI exists here under the same name, and
every command that prints a result takes ``--json``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from tinkex_jax.cli import build_parser, main

# Our own commands that print no result (a server, a demo with its own report).
NO_RESULT = {("serve",), ("demo",)}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
         ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (command path, parser) pair, groups included."""
    yield path, parser
    for name, child in _subparsers(parser).items():
        yield from walk(child, (*path, name))


def leaves() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    return [(path, p) for path, p in walk(build_parser()) if path and not _subparsers(p)]


def find(path: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        parser = _subparsers(parser)[name]
    return parser


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def test_every_option_and_argument_of_every_command_has_help() -> None:
    checked = 0
    for path, parser in walk(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            name = "/".join(action.option_strings) or action.dest
            assert action.help and action.help != argparse.SUPPRESS and action.help.strip(), (
                f"tinkex {' '.join(path)}: {name} has no help text")
            checked += 1
    assert checked > 80  # the walk really reached the nested commands


def test_every_command_has_a_help_line_and_help_renders() -> None:
    root = build_parser()
    for path, parser in walk(root):
        if path:
            assert parser.description and parser.description.strip(), path
        text = parser.format_help()
        assert "%(" not in text and "PROTOCOL.md" not in text, path


def _official_commands() -> Iterator[tuple[tuple[str, ...], list[list[str]]]]:
    """Every official command path and the option strings of each of its options."""
    click = pytest.importorskip("click")
    main_cli = pytest.importorskip("tinker.cli.__main__").main_cli  # the official SDK's CLI

    def visit(cmd: click.Command, ctx: click.Context, path: tuple[str, ...]
              ) -> Iterator[tuple[tuple[str, ...], list[list[str]]]]:
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None
                yield from visit(sub, click.Context(sub, parent=ctx, info_name=name),
                                 (*path, name))
        else:
            yield path, [list(p.opts) for p in cmd.params if isinstance(p, click.Option)]

    yield from visit(main_cli, click.Context(main_cli), ())


def test_every_official_command_and_flag_exists_under_the_same_name() -> None:
    official = dict(_official_commands())
    assert {path[0] for path in official} >= {"auth", "billing", "checkpoint", "model", "run",
                                              "session", "version"}
    for path, options in official.items():
        parser = find(path)  # KeyError names a missing command
        ours = option_strings(parser)
        for opts in options:
            assert set(opts) <= ours, f"tinkex {' '.join(path)} lacks {opts}"
    assert {"--format", "-f"} <= option_strings(build_parser())


def test_every_command_that_prints_a_result_takes_json() -> None:
    for path, parser in leaves():
        if path not in NO_RESULT:
            assert "--json" in option_strings(parser), path


def test_format_json_before_the_command_means_json(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["--format", "json", "version"]) == 0
    assert "tinkex_jax" in json.loads(capsys.readouterr().out)
    assert main(["-f", "table", "version"]) == 0
    assert capsys.readouterr().out.startswith("tinkex_jax ")


def test_serve_help_explains_log_level_and_long_poll_timeout() -> None:
    text = " ".join(find(("serve",)).format_help().split())
    assert "--log-level" in text and "how much the server logs" in text
    assert "--long-poll-timeout SECONDS" in text and "ask again" in text
