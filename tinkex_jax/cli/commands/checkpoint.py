"""``tinkex checkpoint ...``: list, inspect, publish, expire, delete and download checkpoints.

For: the command lines of the checkpoint actions and their printed results. Not for: the
download machinery (`tinkex_jax.cli.download`) or formatting (`tinkex_jax.cli.output`). Every
path argument is checked before anything is sent; ``delete`` asks first unless ``--yes``.

Example:
    >>> [c.name for c in COMMAND.subcommands]
    ['list', 'info', 'delete', 'publish', 'unpublish', 'set-ttl', 'download']
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..arguments import add_connection_options, non_negative, parse_checkpoint_path, positive
from ..command import Command
from ..connection import collect_pages, connect
from ..download import download_checkpoint
from ..errors import CLIError, guarded, not_found, one_line, server_detail
from ..output import (
    CHECKPOINT_COLUMNS,
    checkpoint_properties,
    checkpoint_rows,
    format_properties,
    format_size,
    format_table,
    format_time,
    print_json,
    print_listing,
)

if TYPE_CHECKING:
    from ...clients import RestClient
    from ...types import Checkpoint

__all__ = [
    "COMMAND",
    "cmd_checkpoint_delete",
    "cmd_checkpoint_download",
    "cmd_checkpoint_info",
    "cmd_checkpoint_list",
    "cmd_checkpoint_publish",
    "cmd_checkpoint_set_ttl",
    "cmd_checkpoint_unpublish",
    "configure_checkpoint_delete",
    "configure_checkpoint_download",
    "configure_checkpoint_info",
    "configure_checkpoint_list",
    "configure_checkpoint_publish",
    "configure_checkpoint_set_ttl",
]


def configure_checkpoint_list(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex checkpoint list``."""
    parser.add_argument("--run-id", default=None,
                        help="only this training run's checkpoints (default: all of yours)")
    parser.add_argument("--limit", type=non_negative, default=100,
                        help="show at most N checkpoints (default %(default)s; 0 shows all)")
    add_connection_options(parser)


@guarded
def cmd_checkpoint_list(args: argparse.Namespace) -> int:
    """List checkpoints of one run, or all of the user's (newest first)."""
    with connect(args) as service:
        rest = service.create_rest_client()
        total: int | None
        if args.run_id:
            with not_found(f"training run {args.run_id!r}",
                           "`tinkex run list` shows your runs."):
                listed = rest.list_checkpoints(args.run_id).result()
            every = listed.checkpoints
            limit = args.limit or len(every)
            checkpoints, total = every[:limit], len(every)
        else:
            def fetch(offset: int, n: int) -> tuple[list[Checkpoint], int | None]:
                page = rest.list_user_checkpoints(limit=n, offset=offset).result()
                return page.checkpoints, page.cursor.total_count if page.cursor else None

            checkpoints, total = collect_pages(fetch, args.limit)
    return print_listing(args.json, "checkpoints", checkpoints, total, CHECKPOINT_COLUMNS,
                         checkpoint_rows(checkpoints))


def _find_checkpoint(rest: RestClient, tinker_path: str) -> Checkpoint:
    """The checkpoint at `tinker_path` (there is no single-checkpoint endpoint)."""
    parsed = parse_checkpoint_path(tinker_path)
    with not_found(f"training run {parsed.training_run_id!r}",
                   "`tinkex run list` shows your runs."):
        listed = rest.list_checkpoints(parsed.training_run_id).result()
    for ckpt in listed.checkpoints:
        if ckpt.checkpoint_id == parsed.checkpoint_id:
            return ckpt
    raise CLIError(f"checkpoint {tinker_path} was not found. Fix: `tinkex checkpoint list "
                   f"--run-id {parsed.training_run_id}` shows the run's checkpoints.")


def _configure_one_path(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tinker_path", metavar="TINKER_PATH",
                        help="tinker://<run-id>/<kind>/<name>")
    add_connection_options(parser)


def configure_checkpoint_info(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex checkpoint info``."""
    _configure_one_path(parser)


@guarded
def cmd_checkpoint_info(args: argparse.Namespace) -> int:
    """Show one checkpoint and its run's model."""
    parse_checkpoint_path(args.tinker_path)
    with connect(args) as service:
        rest = service.create_rest_client()
        ckpt = _find_checkpoint(rest, args.tinker_path)
        run = None
        if not args.json:
            with contextlib.suppress(Exception):
                run = rest.get_training_run_by_tinker_path(args.tinker_path).result()
    if args.json:
        print_json(ckpt)
    else:
        print(format_properties(checkpoint_properties(ckpt, run)))
    return 0


def configure_checkpoint_delete(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex checkpoint delete``."""
    parser.add_argument("tinker_paths", metavar="TINKER_PATH", nargs="+",
                        help="checkpoints to delete")
    parser.add_argument("--yes", "-y", action="store_true",
                        help="do not ask for confirmation (needed when stdin is no terminal)")
    add_connection_options(parser)


def _confirm(question: str) -> bool:
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


@guarded
def cmd_checkpoint_delete(args: argparse.Namespace) -> int:
    """Delete checkpoints; every path is checked before anything is deleted."""
    from ...errors import APIError

    paths = list(dict.fromkeys(args.tinker_paths))
    for path in paths:
        parse_checkpoint_path(path)
    if not args.yes:
        if not sys.stdin.isatty():
            raise CLIError(f"refusing to delete {len(paths)} checkpoint(s) without "
                           "confirmation. Fix: pass --yes.", exit_code=2)
        if not _confirm(f"Delete {len(paths)} checkpoint(s)? This cannot be undone."):
            print("Nothing deleted.", file=sys.stderr)
            return 1
    deleted: list[str] = []
    failed: list[dict[str, str]] = []
    with connect(args) as service:
        rest = service.create_rest_client()
        for path in paths:
            try:
                rest.delete_checkpoint_from_tinker_path(path).result()
                deleted.append(path)
            except APIError as exc:
                failed.append({"tinker_path": path,
                               "error": server_detail(exc) or one_line(str(exc))})
    if args.json:
        print_json({"deleted": deleted, "failed": failed})
    else:
        for path in deleted:
            print(f"Deleted {path}")
        for item in failed:
            print(f"{args._prog}: could not delete {item['tinker_path']}: {item['error']}",
                  file=sys.stderr)
    return 1 if failed else 0


def configure_checkpoint_publish(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex checkpoint publish`` / ``unpublish``."""
    _configure_one_path(parser)


def _set_public(args: argparse.Namespace, public: bool) -> int:
    parse_checkpoint_path(args.tinker_path)
    with connect(args) as service:
        rest = service.create_rest_client()
        ckpt = _find_checkpoint(rest, args.tinker_path)
        if ckpt.public != public:  # a second publish would be a 409, retried for minutes
            call = (rest.publish_checkpoint_from_tinker_path if public
                    else rest.unpublish_checkpoint_from_tinker_path)
            call(args.tinker_path).result()
            ckpt = _find_checkpoint(rest, args.tinker_path)
    if args.json:
        print_json(ckpt)
    else:
        state = "public" if ckpt.public else "private"
        print(f"{args.tinker_path} is now {state}.")
    return 0


@guarded
def cmd_checkpoint_publish(args: argparse.Namespace) -> int:
    """Make a checkpoint public."""
    return _set_public(args, True)


@guarded
def cmd_checkpoint_unpublish(args: argparse.Namespace) -> int:
    """Make a checkpoint private."""
    return _set_public(args, False)


def configure_checkpoint_set_ttl(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex checkpoint set-ttl``."""
    parser.add_argument("tinker_path", metavar="TINKER_PATH",
                        help="tinker://<run-id>/<kind>/<name>")
    parser.add_argument("seconds", metavar="SECONDS", nargs="?", type=positive, default=None,
                        help="expire this many seconds from now (the API accepts 3600 s to 10 years)")
    parser.add_argument("--remove", action="store_true", help="never expire")
    add_connection_options(parser)


@guarded
def cmd_checkpoint_set_ttl(args: argparse.Namespace) -> int:
    """Set or remove a checkpoint's expiry."""
    if (args.seconds is None) == (not args.remove):
        raise CLIError("give either SECONDS or --remove. Fix: e.g. `tinkex checkpoint set-ttl "
                       "tinker://RUN/weights/NAME 86400`.", exit_code=2)
    parse_checkpoint_path(args.tinker_path)
    with connect(args) as service:
        rest = service.create_rest_client()
        with not_found(f"checkpoint {args.tinker_path}", "`tinkex checkpoint list` shows "
                       "your checkpoints."):
            rest.set_checkpoint_ttl_from_tinker_path(args.tinker_path, args.seconds).result()
        ckpt = _find_checkpoint(rest, args.tinker_path)
    if args.json:
        print_json(ckpt)
    else:
        print(f"{args.tinker_path} expires: {format_time(ckpt.expires_at, missing='never')}")
    return 0


def configure_checkpoint_download(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex checkpoint download``."""
    parser.add_argument("tinker_path", metavar="TINKER_PATH",
                        help="tinker://<run-id>/<weights|sampler_weights|external_weights>/"
                             "<name>")
    parser.add_argument("--output", "-o", type=Path, default=Path("."),
                        help="parent directory of the download (default: the current one)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing download (only once the new one is complete)")
    add_connection_options(parser)


@guarded
def cmd_checkpoint_download(args: argparse.Namespace) -> int:
    """Download a checkpoint's adapter files (Hugging Face PEFT format)."""
    parse_checkpoint_path(args.tinker_path)
    with connect(args) as service, not_found(
            f"checkpoint {args.tinker_path}", "`tinkex checkpoint list` shows your "
            "checkpoints."):
        result = download_checkpoint(service, args.tinker_path, args.output, force=args.force,
                                     show_progress=sys.stderr.isatty() and not args.json)
    if args.json:
        print_json({"tinker_path": result.tinker_path,
                    "destination": str(result.destination), "files": result.files,
                    "size_bytes": result.size_bytes})
    else:
        print(f"Downloaded {result.tinker_path} to {result.destination} "
              f"({len(result.files)} files, {format_size(result.size_bytes)})")
        sizes = [format_size((result.destination / f).stat().st_size) for f in result.files]
        print(format_table(["File", "Size"], [[f, s] for f, s in zip(result.files, sizes)]))
    return 0


COMMAND = Command("checkpoint", "list, inspect, publish, expire, delete and download checkpoints",
                  subcommands=(
    Command("list", "list checkpoints (one run's, or all of yours)", configure_checkpoint_list,
            cmd_checkpoint_list),
    Command("info", "show one checkpoint", configure_checkpoint_info, cmd_checkpoint_info),
    Command("delete", "delete checkpoints", configure_checkpoint_delete, cmd_checkpoint_delete),
    Command("publish", "make a checkpoint public", configure_checkpoint_publish,
            cmd_checkpoint_publish),
    Command("unpublish", "make a checkpoint private", configure_checkpoint_publish,
            cmd_checkpoint_unpublish),
    Command("set-ttl", "set (or --remove) a checkpoint's expiry", configure_checkpoint_set_ttl,
            cmd_checkpoint_set_ttl),
    Command("download", "download a checkpoint's adapter files",
            configure_checkpoint_download, cmd_checkpoint_download),
))
