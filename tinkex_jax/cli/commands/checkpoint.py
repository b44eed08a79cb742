"""``tinkex checkpoint ...``: list, inspect, publish, expire, delete, download and push
checkpoints to the Hugging Face Hub.

For: the command lines of the checkpoint actions and their printed results. Lists are newest
first, with or without ``--run-id``. Not for: the download machinery
(`tinkex_jax.cli.download`), the Hub upload (`tinkex_jax.cli.hub`) or formatting
(`tinkex_jax.cli.output`). Every path argument is checked before anything is sent;
``delete`` asks first unless ``--yes``.

Example:
    >>> [c.name for c in COMMAND.subcommands]
    ['list', 'info', 'delete', 'publish', 'unpublish', 'set-ttl', 'download', 'push-hf']
    >>> check_ttl(86400, "--ttl")
    86400
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..archive import ExtractionLimits, parse_size
from ..arguments import add_connection_options, non_negative, parse_checkpoint_path, positive
from ..command import Command
from ..connection import collect_pages, connect
from ..download import download_checkpoint
from ..errors import EXIT_USAGE, CLIError, guarded, not_found, one_line, server_detail
from ..output import (
    CHECKPOINT_COLUMNS,
    checkpoint_properties,
    checkpoint_rows,
    format_size,
    format_table,
    format_time,
    print_json,
    print_listing,
    print_properties,
)

if TYPE_CHECKING:
    from ...clients import RestClient
    from ...types import Checkpoint

__all__ = [
    "COMMAND",
    "MAX_TTL_SECONDS",
    "MIN_TTL_SECONDS",
    "check_ttl",
    "cmd_checkpoint_push_hf",
    "configure_checkpoint_push_hf",
    "newest_first",
    "parse_utc_date",
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

MIN_TTL_SECONDS = 3600
"""The shortest expiry a checkpoint accepts: one hour from now."""

MAX_TTL_SECONDS = 10 * 365 * 24 * 3600
"""The longest expiry a checkpoint accepts: ten years (of 365 days) from now."""

# --type of ``checkpoint delete``: the path kinds and the listed types both name one type.
_TYPES = {"weights": "training", "sampler_weights": "sampler",
          "external_weights": "external", "training": "training", "sampler": "sampler",
          "external": "external"}


def newest_first(checkpoints: list[Checkpoint]) -> list[Checkpoint]:
    """`checkpoints` ordered newest first (ties keep the server's order), the one order of
    every checkpoint listing."""
    return sorted(checkpoints, key=lambda c: c.time, reverse=True)


def check_ttl(seconds: int, flag: str) -> int:
    """`seconds` when it is an expiry a checkpoint accepts; else `CLIError` (exit 2).

    Example:
        >>> check_ttl(60, "--ttl")
        Traceback (most recent call last):
        ...
        tinkex_jax.cli.errors.CLIError: --ttl 60 is too short: a checkpoint can expire 3600 s (1 hour) to 315360000 s (10 years) from now. Fix: pass --ttl 3600 or more, or --remove to keep it forever.
    """
    if seconds < MIN_TTL_SECONDS:
        raise CLIError(f"{flag} {seconds} is too short: a checkpoint can expire "
                       f"{MIN_TTL_SECONDS} s (1 hour) to {MAX_TTL_SECONDS} s (10 years) from "
                       f"now. Fix: pass --ttl {MIN_TTL_SECONDS} or more, or --remove to keep "
                       "it forever.", exit_code=EXIT_USAGE)
    if seconds > MAX_TTL_SECONDS:
        raise CLIError(f"{flag} {seconds} is too long: a checkpoint can expire at most "
                       f"{MAX_TTL_SECONDS} s (10 years) from now. Fix: pass a smaller --ttl, "
                       "or --remove to keep it forever.", exit_code=EXIT_USAGE)
    return seconds


def parse_utc_date(text: str) -> dt.datetime:
    """An ``argparse`` type: an ISO 8601 date or time, UTC unless it names a zone.

    Example:
        >>> parse_utc_date("2026-01-02").isoformat()
        '2026-01-02T00:00:00+00:00'
        >>> parse_utc_date("2026-01-02T08:30:00Z").hour
        8
    """
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 date such as 2026-01-31 or 2026-01-31T08:00:00Z, got "
            f"{text!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def configure_checkpoint_list(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex checkpoint list``."""
    parser.add_argument("--run-id", default=None,
                        help="only this training run's checkpoints (default: all of yours)")
    parser.add_argument("--limit", type=non_negative, default=100,
                        help="show at most N checkpoints (default %(default)s; 0 shows all)")
    add_connection_options(parser)


@guarded
def cmd_checkpoint_list(args: argparse.Namespace) -> int:
    """List checkpoints of one run, or all of the user's (newest first either way)."""
    with connect(args) as service:
        rest = service.create_rest_client()
        total: int | None
        if args.run_id:
            with not_found(f"training run {args.run_id!r}",
                           "`tinkex run list` shows your runs."):
                listed = rest.list_checkpoints(args.run_id).result()
            every = newest_first(list(listed.checkpoints))
            limit = args.limit or len(every)
            checkpoints, total = every[:limit], len(every)
        else:
            def fetch(offset: int, n: int) -> tuple[list[Checkpoint], int | None]:
                page = rest.list_user_checkpoints(limit=n, offset=offset).result()
                return page.checkpoints, page.cursor.total_count if page.cursor else None

            checkpoints, total = collect_pages(fetch, args.limit)
            checkpoints = newest_first(checkpoints)
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
    return print_properties(args.json, ckpt, checkpoint_properties(ckpt, run))


def configure_checkpoint_delete(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex checkpoint delete``."""
    parser.add_argument("tinker_paths", metavar="TINKER_PATH", nargs="*",
                        help="checkpoints to delete (or give --run-id instead)")
    parser.add_argument("--run-id", default=None,
                        help="delete this training run's checkpoints (all of them, or those "
                             "--type / --before / --after select)")
    parser.add_argument("--type", dest="checkpoint_type", choices=sorted(_TYPES),
                        default=None, metavar="TYPE",
                        help="with --run-id: only checkpoints of this type (weights, "
                             "sampler_weights or external_weights)")
    parser.add_argument("--before", type=parse_utc_date, default=None, metavar="DATE",
                        help="with --run-id: only checkpoints created before this ISO 8601 "
                             "date or time (UTC unless it names a zone), e.g. 2026-06-01")
    parser.add_argument("--after", type=parse_utc_date, default=None, metavar="DATE",
                        help="with --run-id: only checkpoints created after this date or time")
    parser.add_argument("--yes", "-y", action="store_true",
                        help="do not ask for confirmation (needed when stdin is no terminal)")
    add_connection_options(parser)


def _confirm(question: str) -> bool:
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _selected(rest: RestClient, args: argparse.Namespace) -> list[Checkpoint]:
    """The checkpoints of ``--run-id`` that ``--type`` / ``--before`` / ``--after`` select."""
    with not_found(f"training run {args.run_id!r}", "`tinkex run list` shows your runs."):
        listed = newest_first(list(rest.list_checkpoints(args.run_id).result().checkpoints))
    kind = _TYPES.get(args.checkpoint_type or "")
    return [c for c in listed if (kind is None or c.checkpoint_type == kind)
            and (args.before is None or c.time < args.before)
            and (args.after is None or c.time > args.after)]


def _check_delete_arguments(args: argparse.Namespace) -> list[str]:
    """The explicit paths to delete (checked), or [] with --run-id; usage errors raise."""
    if bool(args.tinker_paths) == bool(args.run_id):
        raise CLIError("give either checkpoint paths or --run-id. Fix: e.g. `tinkex checkpoint "
                       "delete tinker://RUN/weights/NAME`, or `tinkex checkpoint delete "
                       "--run-id RUN --type weights --before 2026-06-01`.",
                       exit_code=EXIT_USAGE)
    if not args.run_id and (args.checkpoint_type or args.before or args.after):
        raise CLIError("--type, --before and --after select among one run's checkpoints. "
                       "Fix: add --run-id RUN (and leave out the paths).", exit_code=EXIT_USAGE)
    paths = list(dict.fromkeys(args.tinker_paths))
    for path in paths:
        parse_checkpoint_path(path)
    return paths


@guarded
def cmd_checkpoint_delete(args: argparse.Namespace) -> int:
    """Delete checkpoints (given paths, or a run's selection); every path is checked and the
    deletion confirmed before anything is deleted."""
    from ...errors import APIError

    paths = _check_delete_arguments(args)
    if not args.yes and not sys.stdin.isatty():
        raise CLIError("refusing to delete checkpoints without confirmation (stdin is no "
                       "terminal to ask on). Fix: pass --yes.", exit_code=EXIT_USAGE)
    deleted: list[str] = []
    failed: list[dict[str, str]] = []
    with connect(args) as service:
        rest = service.create_rest_client()
        if args.run_id:
            chosen = _selected(rest, args)
            paths = [c.tinker_path for c in chosen]
            if not paths:
                if args.json:
                    print_json({"deleted": [], "deleted_count": 0, "failed": []})
                else:
                    print(f"No checkpoints of run {args.run_id} match; nothing deleted.")
                return 0
            if not args.yes:
                total = sum(c.size_bytes or 0 for c in chosen)
                for c in chosen:
                    print(f"  {c.tinker_path}  ({format_size(c.size_bytes)}, created "
                          f"{format_time(c.time)})", file=sys.stderr)
                print(f"  total: {format_size(total)}", file=sys.stderr)
        if not args.yes and not _confirm(f"Delete {len(paths)} checkpoint(s)? This cannot be "
                                         "undone."):
            print("Nothing deleted.", file=sys.stderr)
            return 1
        for path in paths:
            try:
                rest.delete_checkpoint_from_tinker_path(path).result()
                deleted.append(path)
            except APIError as exc:
                failed.append({"tinker_path": path,
                               "error": server_detail(exc) or one_line(str(exc))})
    if args.json:
        print_json({"deleted": deleted, "deleted_count": len(deleted), "failed": failed})
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
                        help="the same as --ttl SECONDS")
    parser.add_argument("--ttl", type=positive, default=None, metavar="SECONDS",
                        help=f"expire this many seconds from now ({MIN_TTL_SECONDS} = 1 hour "
                             f"to {MAX_TTL_SECONDS} = 10 years)")
    parser.add_argument("--remove", action="store_true",
                        help="remove the expiry: keep the checkpoint until it is deleted")
    add_connection_options(parser)


@guarded
def cmd_checkpoint_set_ttl(args: argparse.Namespace) -> int:
    """Set or remove a checkpoint's expiry."""
    if args.seconds is not None and args.ttl is not None:
        raise CLIError("SECONDS and --ttl say the same thing twice. Fix: give only --ttl "
                       "SECONDS.", exit_code=EXIT_USAGE)
    seconds = args.ttl if args.ttl is not None else args.seconds
    if (seconds is None) == (not args.remove):
        raise CLIError("give either --ttl SECONDS or --remove. Fix: e.g. `tinkex checkpoint "
                       "set-ttl tinker://RUN/weights/NAME --ttl 86400`.", exit_code=EXIT_USAGE)
    if seconds is not None:
        check_ttl(seconds, "--ttl" if args.ttl is not None else "SECONDS")
    parse_checkpoint_path(args.tinker_path)
    with connect(args) as service:
        rest = service.create_rest_client()
        with not_found(f"checkpoint {args.tinker_path}", "`tinkex checkpoint list` shows "
                       "your checkpoints."):
            rest.set_checkpoint_ttl_from_tinker_path(args.tinker_path, seconds).result()
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
    defaults = ExtractionLimits()
    parser.add_argument("--max-size", type=_size, default=defaults.max_bytes, metavar="SIZE",
                        help="refuse a download whose files (archives extracted) would take "
                             "more than this, e.g. 500M or 100G (default 64G)")
    parser.add_argument("--max-files", type=positive, default=defaults.max_files,
                        metavar="N", help="refuse archives with more members than this "
                                          "(default %(default)s)")
    parser.add_argument("--max-ratio", type=_ratio, default=defaults.max_ratio, metavar="R",
                        help="refuse archives that expand more than R times, as archive "
                             "bombs do (default %(default)g)")
    add_connection_options(parser)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 1 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a ratio >= 1 (e.g. 100)")
    return value


@guarded
def cmd_checkpoint_download(args: argparse.Namespace) -> int:
    """Download a checkpoint's adapter files (Hugging Face PEFT format)."""
    parse_checkpoint_path(args.tinker_path)
    with connect(args) as service:
        stored = _find_checkpoint(service.create_rest_client(), args.tinker_path)
        with not_found(f"checkpoint {args.tinker_path}", "`tinkex checkpoint list` shows "
                       "your checkpoints."):
            result = download_checkpoint(service, args.tinker_path, args.output,
                                         force=args.force, limits=ExtractionLimits(
                                             max_bytes=args.max_size,
                                             max_files=args.max_files,
                                             max_ratio=args.max_ratio),
                                         show_progress=sys.stderr.isatty() and not args.json)
    if args.json:
        print_json({"tinker_path": result.tinker_path,
                    "destination": str(result.destination), "files": result.files,
                    "size_bytes": result.size_bytes, "stored_size_bytes": stored.size_bytes})
        return 0
    print(f"Downloaded {result.tinker_path} to {result.destination}: {len(result.files)} "
          f"files, {format_size(result.size_bytes)} as a Hugging Face PEFT adapter")
    if stored.size_bytes is not None and stored.size_bytes != result.size_bytes:
        print(f"(the checkpoint takes {format_size(stored.size_bytes)} as stored on the "
              "server, which is what `tinkex checkpoint info` shows; the formats differ)")
    sizes = [format_size((result.destination / f).stat().st_size) for f in result.files]
    print(format_table(["File", "Size"], [[f, s] for f, s in zip(result.files, sizes)]))
    return 0


def configure_checkpoint_push_hf(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex checkpoint push-hf``."""
    parser.add_argument("tinker_path", metavar="TINKER_PATH",
                        help="the checkpoint to upload, tinker://<run-id>/<kind>/<name>")
    parser.add_argument("--repo", "-r", dest="repo_id", default=None, metavar="REPO_ID",
                        help="Hugging Face repository, e.g. ada/my-adapter (default: "
                             "<your Hub user>/tinker-<base model>-<run id>)")
    parser.add_argument("--public", action="store_true",
                        help="create the repository public (default: private; an existing "
                             "repository keeps its visibility)")
    parser.add_argument("--revision", default=None,
                        help="branch to upload to, created if missing (default: main)")
    parser.add_argument("--commit-message", default=None,
                        help="message of the Hub commit (default: 'Upload <path> with tinkex')")
    parser.add_argument("--create-pr", action="store_true",
                        help="open a pull request on the repository instead of committing "
                             "to the branch")
    parser.add_argument("--allow-pattern", action="append", dest="allow_patterns",
                        default=None, metavar="GLOB",
                        help="upload only files matching this pattern (repeatable)")
    parser.add_argument("--ignore-pattern", action="append", dest="ignore_patterns",
                        default=None, metavar="GLOB",
                        help="leave out files matching this pattern (repeatable)")
    parser.add_argument("--no-model-card", action="store_true",
                        help="do not add a README.md model card")
    add_connection_options(parser)


@guarded
def cmd_checkpoint_push_hf(args: argparse.Namespace) -> int:
    """Upload a checkpoint to the Hugging Face Hub as a PEFT adapter with a model card."""
    from ..hub import push_to_hub

    parse_checkpoint_path(args.tinker_path)
    if args.create_pr and args.revision:
        raise CLIError("--create-pr opens a pull request against the main branch, so it takes "
                       "no --revision. Fix: leave out one of them.", exit_code=EXIT_USAGE)
    with connect(args) as service:
        _find_checkpoint(service.create_rest_client(), args.tinker_path)
        upload = push_to_hub(service, args.tinker_path, repo_id=args.repo_id,
                             public=args.public, revision=args.revision,
                             commit_message=args.commit_message, create_pr=args.create_pr,
                             allow_patterns=args.allow_patterns,
                             ignore_patterns=args.ignore_patterns,
                             add_model_card=not args.no_model_card,
                             show_progress=sys.stderr.isatty() and not args.json)
    if args.json:
        print_json(upload)
        return 0
    where = upload.pr_url or upload.commit_url or upload.repo_url
    print(f"Uploaded {upload.tinker_path} to {upload.repo_id} "
          f"({'public' if upload.public else 'private'}): {where}")
    print(format_table(["File"], [[f] for f in upload.files]))
    return 0


COMMAND = Command("checkpoint", "list, inspect, publish, expire, delete, download and upload "
                  "checkpoints",
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
    Command("push-hf", "upload a checkpoint to the Hugging Face Hub as a PEFT adapter",
            configure_checkpoint_push_hf, cmd_checkpoint_push_hf),
))
