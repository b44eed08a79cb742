"""``tinkex run list`` / ``tinkex run info``: the user's training runs.

For: listing runs (newest first, paged) and showing one run, as a table or JSON. Not for:
changing runs; nothing here writes.

Example:
    >>> [c.name for c in COMMAND.subcommands]
    ['list', 'info']
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..arguments import add_connection_options, non_negative, parse_checkpoint_path
from ..command import Command
from ..connection import collect_pages, connect
from ..errors import guarded, not_found
from ..output import (
    RUN_COLUMNS,
    format_properties,
    print_json,
    print_listing,
    run_properties,
    run_rows,
)

if TYPE_CHECKING:
    from ...types import TrainingRun

__all__ = ["COMMAND", "cmd_run_info", "cmd_run_list", "configure_run_info",
           "configure_run_list"]


def configure_run_list(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex run list``."""
    parser.add_argument("--limit", type=non_negative, default=20,
                        help="show at most N runs (default %(default)s; 0 shows all)")
    add_connection_options(parser)


@guarded
def cmd_run_list(args: argparse.Namespace) -> int:
    """List training runs, newest first."""
    with connect(args) as service:
        rest = service.create_rest_client()

        def fetch(offset: int, n: int) -> tuple[list[TrainingRun], int | None]:
            page = rest.list_training_runs(limit=n, offset=offset).result()
            return page.training_runs, page.cursor.total_count if page.cursor else None

        runs, total = collect_pages(fetch, args.limit)
    return print_listing(args.json, "training_runs", runs, total, RUN_COLUMNS, run_rows(runs))


def configure_run_info(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex run info``."""
    parser.add_argument("run", metavar="RUN_ID_OR_TINKER_PATH",
                        help="a training run id, or a tinker:// path of one of its checkpoints")
    add_connection_options(parser)


@guarded
def cmd_run_info(args: argparse.Namespace) -> int:
    """Show one training run."""
    run_id = args.run
    if run_id.startswith("tinker://"):
        run_id = parse_checkpoint_path(run_id).training_run_id
    with connect(args) as service, not_found(
            f"training run {run_id!r}", "`tinkex run list` shows your runs."):
        run = service.create_rest_client().get_training_run(run_id).result()
    if args.json:
        print_json(run)
    else:
        print(format_properties(run_properties(run)))
    return 0


COMMAND = Command("run", "list and inspect training runs", subcommands=(
    Command("list", "list your training runs, newest first", configure_run_list, cmd_run_list),
    Command("info", "show one training run", configure_run_info, cmd_run_info),
))
