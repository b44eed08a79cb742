"""``tinkex billing ...``: your organization's usage and checkpoint storage, from the hosted
service.

For: ``usage`` (hourly usage rows of a window of at most 14 days) and ``checkpoint-storage``
(checkpoints stored now and their projected monthly cost), as a table, JSON or CSV. These are
organization-admin calls of the hosted service (``RestClient.get_billing_usage`` and
``get_current_checkpoint_storage_usage``). A server without them (the local backend bills
nothing) gets a clear message and exit status 3 (`EXIT_UNSUPPORTED`). Not for: invoices or
amounts due: the costs are gross estimates before credits.

Example:
    >>> [c.name for c in COMMAND.subcommands]
    ['usage', 'checkpoint-storage']
    >>> parse_hour("2026-07-13T05:00:00Z").isoformat()
    '2026-07-13T05:00:00+00:00'
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..arguments import add_connection_options
from ..command import Command
from ..connection import connect
from ..errors import EXIT_USAGE, CLIError, guarded, server_detail, what_happened
from ..output import format_table, print_json

if TYPE_CHECKING:
    from ..._shell import Future
    from ...clients import RestClient

__all__ = ["COMMAND", "EXIT_UNSUPPORTED", "cmd_billing_checkpoint_storage",
           "cmd_billing_usage", "configure_billing_checkpoint_storage",
           "configure_billing_usage", "flat_rows", "parse_hour"]

EXIT_UNSUPPORTED = 3
"""Exit status when the server does not offer billing data (e.g. the local backend)."""

_MAX_WINDOW = dt.timedelta(days=14)
T = TypeVar("T")


def parse_hour(text: str) -> dt.datetime:
    """An ``argparse`` type: an RFC 3339 time on a whole UTC hour (``Z`` or an offset; a
    date alone means its midnight UTC).

    Example:
        >>> parse_hour("2026-07-13").isoformat()
        '2026-07-13T00:00:00+00:00'
    """
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an RFC 3339 time such as 2026-07-13T00:00:00Z, got {text!r}") from None
    when = (when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    if when.minute or when.second or when.microsecond:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not on a whole hour; billing windows start and end on UTC hours, "
            "e.g. 2026-07-13T05:00:00Z")
    return when


def _rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _unsupported(args: argparse.Namespace, base_url: str, detail: str) -> int:
    said = f" (HTTP 404: {detail})" if detail else " (HTTP 404)"
    message = (f"the server at {base_url} does not offer billing data{said}. Fix: billing is "
               "a feature of the hosted Tinker service: point --base-url / TINKER_BASE_URL at "
               "it (the local backend bills nothing).")
    if args.json:
        print_json({"available": False, "base_url": base_url, "error": message})
    print(f"{args._prog}: {message}", file=sys.stderr)
    return EXIT_UNSUPPORTED


def _fetch(args: argparse.Namespace, call: Callable[[RestClient], Future[T]]
           ) -> tuple[T, str, str] | tuple[None, str, str]:
    """The answer of a billing call (None when the server has no such endpoint), the server's
    URL and what it said with its 404."""
    from ...errors import NotFoundError, PermissionDeniedError

    with connect(args) as service:
        try:
            answer = call(service.create_rest_client()).result()
            return answer, service.base_url, ""
        except NotFoundError as exc:
            return None, service.base_url, what_happened(server_detail(exc))
        except PermissionDeniedError as exc:
            raise CLIError(f"the server at {service.base_url} refused billing data "
                           f"(HTTP 403: {what_happened(server_detail(exc) or exc.message)}). "
                           "Fix: billing data needs the admin or billing-admin role in your "
                           "organization; ask an admin for it.") from None


def flat_rows(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Rows with a nested ``event_info`` merged in where it stands, and the columns in
    first-seen order.

    Example:
        >>> flat_rows([{"bucket_start": "t", "event_info": {"type": "training", "token_count": 5}}])
        (['bucket_start', 'type', 'token_count'], [{'bucket_start': 't', 'type': 'training', 'token_count': 5}])
    """
    flat: list[dict[str, Any]] = []
    columns: list[str] = []
    for row in rows:
        merged: dict[str, Any] = {}
        for key, value in row.items():
            if key == "event_info" and isinstance(value, Mapping):
                merged.update(value)
            else:
                merged[key] = value
        flat.append(merged)
        columns += [k for k in merged if k not in columns]
    return columns, flat


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _write_csv(path: str, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """CSV of `rows` to `path` ('-': stdout); blank cells for missing values."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([[_cell(row.get(c)) for c in columns] for row in rows])
    if path == "-":
        sys.stdout.write(out.getvalue())
    else:
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(out.getvalue())
        print(f"Wrote {len(rows)} row(s) to {path}", file=sys.stderr)


def _print_table(title: str, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    print(title)
    if rows:
        print(format_table(list(columns), [[_cell(r.get(c)) or "-" for c in columns]
                                           for r in rows]))


def configure_billing_usage(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex billing usage``."""
    parser.add_argument("starting_on", metavar="STARTING_ON", type=parse_hour,
                        help="start of the window (included): an RFC 3339 time on a whole UTC "
                             "hour, e.g. 2026-07-13T00:00:00Z, not in the future")
    parser.add_argument("ending_before", metavar="ENDING_BEFORE", type=parse_hour,
                        help="end of the window (excluded), at most 14 days after STARTING_ON")
    parser.add_argument("--csv", dest="csv_path", default=None, metavar="PATH",
                        help="write the usage rows as CSV to PATH ('-' for stdout) instead of "
                             "a table or JSON")
    parser.add_argument("--sessions-csv", dest="sessions_csv_path", default=None,
                        metavar="PATH",
                        help="also write the sessions of the usage (session_id, user_metadata) "
                             "as CSV to PATH ('-' for stdout), to join on session_id")
    add_connection_options(parser)


@guarded
def cmd_billing_usage(args: argparse.Namespace) -> int:
    """Show hourly usage of the organization in a window; 3 where no billing is offered."""
    import msgspec

    start, end = args.starting_on, args.ending_before
    if not start < end <= start + _MAX_WINDOW:
        raise CLIError(f"the window from {_rfc3339(start)} to {_rfc3339(end)} is not 1 hour "
                       "to 14 days long. Fix: pass an ENDING_BEFORE after STARTING_ON and at most "
                       "14 days later.", exit_code=EXIT_USAGE)
    answer, base_url, detail = _fetch(args, lambda rest: rest.get_billing_usage(start, end))
    if answer is None:
        return _unsupported(args, base_url, detail)
    data = msgspec.to_builtins(answer)
    columns, rows = flat_rows(data["data"])
    sessions = [{"session_id": sid, "user_metadata": s.get("user_metadata")}
                for sid, s in data["sessions"].items()]
    if args.sessions_csv_path is not None:
        _write_csv(args.sessions_csv_path, ["session_id", "user_metadata"], sessions)
    if args.csv_path is not None:
        _write_csv(args.csv_path, columns, rows)
    if args.csv_path is None and args.sessions_csv_path is None:
        if args.json:
            print_json(data)
        else:
            _print_table(f"{len(rows)} hourly usage row(s) from {_rfc3339(start)} to "
                         f"{_rfc3339(end)} (costs are gross estimates before credits)",
                         columns, rows)
    return 0


def configure_billing_checkpoint_storage(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex billing checkpoint-storage``."""
    parser.add_argument("--project-id", default=None,
                        help="only this project's storage (default: the whole organization)")
    parser.add_argument("--csv", dest="csv_path", default=None, metavar="PATH",
                        help="write the storage rows as CSV to PATH ('-' for stdout) instead "
                             "of a table or JSON")
    add_connection_options(parser)


@guarded
def cmd_billing_checkpoint_storage(args: argparse.Namespace) -> int:
    """Show checkpoint storage now and its projected cost; 3 where no billing is offered."""
    import msgspec

    answer, base_url, detail = _fetch(
        args, lambda rest: rest.get_current_checkpoint_storage_usage(args.project_id))
    if answer is None:
        return _unsupported(args, base_url, detail)
    data = msgspec.to_builtins(answer)
    rate = data.get("effective_rate_usd_per_gigabyte_month")
    rows = [{**row, "effective_rate_usd_per_gigabyte_month": rate} for row in data["data"]]
    columns, rows = flat_rows(rows)
    if args.csv_path is not None:
        _write_csv(args.csv_path, columns, rows)
    elif args.json:
        print_json(data)
    else:
        _print_table("Checkpoint storage now (monthly costs are gross 720-hour projections "
                     "before credits)" if rows else "No checkpoint storage now", columns, rows)
    return 0


COMMAND = Command("billing", "your organization's usage and checkpoint storage (hosted "
                  "service)", subcommands=(
    Command("usage", "show hourly usage rows of a window of up to 14 days",
            configure_billing_usage, cmd_billing_usage),
    Command("checkpoint-storage", "show checkpoint storage now and its projected cost",
            configure_billing_checkpoint_storage, cmd_billing_checkpoint_storage),
))
