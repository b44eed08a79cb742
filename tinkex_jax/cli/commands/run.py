"""``tinkex run list`` / ``tinkex run info``: the user's training runs.

For: listing runs (newest first, paged; ``--columns`` picks the table's columns) and showing
one run, as a table or JSON. A run's last checkpoint is its newest of either kind (training
state or sampler weights). Not for: changing runs; nothing here writes.

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
    DEFAULT_RUN_COLUMNS,
    RUN_COLUMNS,
    print_listing,
    print_properties,
    run_headers,
    run_properties,
    run_rows,
)

if TYPE_CHECKING:
    from ...types import TrainingRun

__all__ = ["COMMAND", "cmd_run_info", "cmd_run_list", "configure_run_info",
           "configure_run_list", "parse_columns"]


def parse_columns(text: str) -> list[str]:
    """An ``argparse`` type: a comma-separated list of `RUN_COLUMNS` keys.

    Example:
        >>> parse_columns("id, checkpoint")
        ['id', 'checkpoint']
    """
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in RUN_COLUMNS]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(
            f"unknown column(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(RUN_COLUMNS)}")
    return keys


def configure_run_list(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex run list``."""
    parser.add_argument("--limit", type=non_negative, default=20,
                        help="show at most N runs (default %(default)s; 0 shows all)")
    described = "; ".join(f"{key}: {about}" for key, (_, _, about) in RUN_COLUMNS.items())
    parser.add_argument("--columns", "-c", type=parse_columns, default=None, metavar="KEYS",
                        help="comma-separated columns of the table (default "
                             f"{','.join(DEFAULT_RUN_COLUMNS)}). Columns: {described}")
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
    columns = args.columns or DEFAULT_RUN_COLUMNS
    return print_listing(args.json, "training_runs", runs, total, run_headers(columns),
                         run_rows(runs, columns))


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
    return print_properties(args.json, run, run_properties(run))


COMMAND = Command("run", "list and inspect training runs", subcommands=(
    Command("list", "list your training runs, newest first", configure_run_list, cmd_run_list),
    Command("info", "show one training run", configure_run_info, cmd_run_info),
))
