"""``tinkex model list``: the base models the server can train and sample.

For: listing the server's capabilities (``get_server_capabilities``), optionally only the
models whose name contains a substring, as a table or JSON. Not for: loading or describing
model weights; nothing here writes.

Example:
    >>> [c.name for c in COMMAND.subcommands]
    ['list']
"""

from __future__ import annotations

import argparse

from ..arguments import add_connection_options
from ..command import Command
from ..connection import connect
from ..errors import CLIError, guarded
from ..output import format_table, print_json

__all__ = ["COMMAND", "cmd_model_list", "configure_model_list"]


def configure_model_list(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex model list``."""
    parser.add_argument("substring", metavar="SUBSTRING", nargs="?", default=None,
                        help="show only models whose name contains this text (any case)")
    add_connection_options(parser)


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


@guarded
def cmd_model_list(args: argparse.Namespace) -> int:
    """List the models the server offers; 1 when none matches SUBSTRING."""
    with connect(args) as service:
        models = list(service.create_rest_client().get_server_capabilities().result()
                      .supported_models)
        base_url = service.base_url
    if args.substring is not None:
        wanted = args.substring.lower()
        models = [m for m in models if m.model_name and wanted in m.model_name.lower()]
        if not models:
            raise CLIError(f"no model name on {base_url} contains {args.substring!r}. Fix: "
                           "run `tinkex model list` to see every model it offers.")
    if args.json:
        print_json({"models": models})
        return 0
    print(f"{len(models)} model{'s' * (len(models) != 1)}")
    print(format_table(["Model", "Max context", "Trainable", "Sampleable"],
                       [[m.model_name or "-", str(m.max_context_length or "-"),
                         _yes_no(m.trainable), _yes_no(m.sampleable)] for m in models]))
    return 0


COMMAND = Command("model", "list the models the server can train and sample", subcommands=(
    Command("list", "list the base models the server offers", configure_model_list,
            cmd_model_list),
))
