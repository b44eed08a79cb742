"""``tinkex session ...``: list your sessions, show one, and export a session's trace.

For: ``list`` (session ids, newest first), ``info`` (the training runs and samplers a session
created) and ``export-trace`` (ask the server for a Perfetto trace of a session's requests and
download it, or print its URL). A server that records no traces (the local backend) answers
the export with a failure, which is reported as such. Not for: creating or ending sessions
(the SDK's clients do that) or reading traces.

Example:
    >>> [c.name for c in COMMAND.subcommands]
    ['list', 'info', 'export-trace']
    >>> trace_file_name("sess-1:x")
    'sess-1_x.pftrace'
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import uuid
from pathlib import Path

from ..arguments import add_connection_options, non_negative
from ..command import Command
from ..connection import collect_pages, connect
from ..errors import CLIError, guarded, not_found, what_happened
from ..output import Progress, format_size, print_json, print_listing, print_properties

__all__ = ["COMMAND", "cmd_session_export_trace", "cmd_session_info", "cmd_session_list",
           "configure_session_export_trace", "trace_file_name"]

_SESSIONS_FIX = "`tinkex session list` shows your sessions."


def trace_file_name(session_id: str) -> str:
    """The default file of ``export-trace``: the session id, made filename-safe, + .pftrace."""
    return (re.sub(r"[^A-Za-z0-9._-]", "_", session_id).strip(".") or "session") + ".pftrace"


def _configure_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=non_negative, default=20,
                        help="show at most N sessions (default %(default)s; 0 shows all)")
    add_connection_options(parser)


@guarded
def cmd_session_list(args: argparse.Namespace) -> int:
    """List session ids, newest first."""
    with connect(args) as service:
        rest = service.create_rest_client()

        def fetch(offset: int, n: int) -> tuple[list[str], int | None]:
            return list(rest.list_sessions(limit=n, offset=offset).result().sessions), None

        sessions, _ = collect_pages(fetch, args.limit)
    return print_listing(args.json, "sessions", sessions, None, ["Session ID"],
                         [[s] for s in sessions])


def _configure_info(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("session_id", metavar="SESSION_ID",
                        help="a session id, as `tinkex session list` shows")
    add_connection_options(parser)


@guarded
def cmd_session_info(args: argparse.Namespace) -> int:
    """Show what a session created."""
    import msgspec

    with connect(args) as service, not_found(f"session {args.session_id!r}", _SESSIONS_FIX):
        info = service.create_rest_client().get_session(args.session_id).result()
    pairs = [("Session ID", args.session_id), ("Display name", info.display_name or "-"),
             ("Training runs", ", ".join(info.training_run_ids) or "-"),
             ("Samplers", ", ".join(info.sampler_ids) or "-")]
    pairs += [(f"Metadata {k}", str(v)) for k, v in sorted((info.user_metadata or {}).items())]
    data = {"session_id": args.session_id, **msgspec.to_builtins(info)}
    return print_properties(args.json, data, pairs)


def configure_session_export_trace(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex session export-trace``."""
    parser.add_argument("session_id", metavar="SESSION_ID",
                        help="a session id, as `tinkex session list` shows")
    parser.add_argument("--output", "-o", type=Path, default=None, metavar="FILE",
                        help="where to write the trace (default: ./<session-id>.pftrace; an "
                             "existing file is replaced once the new one is complete)")
    parser.add_argument("--url-only", action="store_true",
                        help="print the trace's download URL (it expires after a while) "
                             "instead of downloading it")
    add_connection_options(parser)


@guarded
def cmd_session_export_trace(args: argparse.Namespace) -> int:
    """Export a session's trace and download it (or print its URL)."""
    from ..._shell import build_download_client
    from ...errors import APIResponseValidationError
    from ..download import fetch_file

    if not args.json:
        print(f"Exporting the trace of session {args.session_id} (the server builds it; this "
              "can take a while)...", file=sys.stderr)
    with connect(args) as service, not_found(f"session {args.session_id!r}", _SESSIONS_FIX):
        try:
            url = service.create_rest_client().export_session_trace(args.session_id).result()
        except APIResponseValidationError as exc:
            if "the export of session" not in exc.message:
                raise
            reason = what_happened(exc.message.split(" failed: ", 1)[-1])
            raise CLIError(f"the server could not export a trace of session "
                           f"{args.session_id}: {reason}. Fix: export traces from a server "
                           "that records them (the hosted service); the local backend records "
                           "none.") from None
    if args.url_only:
        if args.json:
            print_json({"session_id": args.session_id, "url": url})
        else:
            print(url)
        return 0
    target: Path = args.output or Path(trace_file_name(args.session_id))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with build_download_client() as http:
            size = fetch_file(http, url, partial, label=target.name,
                              progress=Progress(sys.stderr, sys.stderr.isatty() and
                                                not args.json))
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    if args.json:
        print_json({"session_id": args.session_id, "destination": str(target),
                    "file_size_bytes": size})
    else:
        print(f"Saved the trace of session {args.session_id} to {target} ({format_size(size)}). "
              "Open it at https://ui.perfetto.dev.")
    return 0


COMMAND = Command("session", "list sessions, show one, export a session's trace", subcommands=(
    Command("list", "list your session ids, newest first", _configure_list, cmd_session_list),
    Command("info", "show the training runs and samplers of a session", _configure_info,
            cmd_session_info),
    Command("export-trace", "export a session's requests as a Perfetto trace (.pftrace)",
            configure_session_export_trace, cmd_session_export_trace),
))
