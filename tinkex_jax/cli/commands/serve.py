"""``tinkex serve``: run the embedded local Tinker backend (an HTTP server) in the foreground.

For: the command line of the server (its options, the start-up banner, the exit status on a
bad configuration). Not for: anything the server does; that is `tinkex_jax.local`, which is
imported only when the command runs.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> configure_serve(parser)
    >>> args = parser.parse_args(["--port", "9000", "--base-model", "tinkex-jax/tiny"])
    >>> args.port, args.base_models, args.host
    (9000, ['tinkex-jax/tiny'], '127.0.0.1')
"""

from __future__ import annotations

import argparse
import os
import sys

from ..command import Command
from ..errors import guarded

__all__ = ["COMMAND", "cmd_serve", "configure_serve"]


def configure_serve(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex serve``."""
    from ...local import DEFAULT_BASE_MODELS, LOCALHOST

    parser.add_argument("--host", default=LOCALHOST,
                        help="interface to bind (default %(default)s; use 0.0.0.0 only if you "
                             "mean to expose the server to your network)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default %(default)s)")
    parser.add_argument("--data-dir", default=None,
                        help="directory for checkpoints and metadata (default "
                             "$TINKEX_LOCAL_DATA_DIR or ~/.tinkex/local)")
    parser.add_argument("--api-key", default=None,
                        help="accept only this key (must start with 'tml-'; default: any "
                             "'tml-' key). Also read from $TINKEX_LOCAL_API_KEY.")
    parser.add_argument("--base-model", action="append", dest="base_models", default=None,
                        metavar="NAME_OR_DIR",
                        help="a base model to offer: a preset or a local Hugging Face "
                             f"directory; repeatable (default: {', '.join(DEFAULT_BASE_MODELS)})")
    parser.add_argument("--long-poll-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="how long the server holds a client's request for a result that "
                             "is not ready before telling it to ask again (more than 0, at most "
                             "40; default %(default)s)")
    parser.add_argument("--workers", type=int, default=1,
                        help="compute threads (default %(default)s; XLA already uses every "
                             "core)")
    parser.add_argument("--no-warm-up", action="store_true",
                        help="load base models on first use instead of at start-up")
    parser.add_argument("--max-pending-samples", type=int, default=None,
                        help="answer sampling requests beyond this many in flight with 429 "
                             "backpressure, as a busy hosted service does (default: no limit)")
    parser.add_argument("--pjwt-auth", action="store_true",
                        help="serve JWT auth (docs/protocol.md §1.3): clients exchange their "
                             "key at POST /api/v1/auth/token and send the JWT, as on JWT-mode "
                             "servers; `tinkex auth whoami` then answers")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"],
                        help="how much the server logs to stderr: start-up and notable events "
                             "at info, problems only at warning or above, details at debug "
                             "(default %(default)s)")


@guarded
def cmd_serve(args: argparse.Namespace) -> int:
    """Start the server and serve until interrupted; 2 for a bad configuration (the message
    names the flag)."""
    from ...local import ServerConfig, run_server

    api_key = args.api_key or os.environ.get("TINKEX_LOCAL_API_KEY") or None
    config = ServerConfig.create(
        args.data_dir, args.base_models, host=args.host, port=args.port, api_key=api_key,
        long_poll_timeout_s=args.long_poll_timeout, compute_workers=args.workers,
        warm_up=not args.no_warm_up, pjwt_auth_enabled=args.pjwt_auth,
        max_pending_samples=args.max_pending_samples)
    key_hint = "<your --api-key>" if api_key else "tml-local"
    print(f"tinkex local backend on http://{config.host}:{config.port} "
          f"(data: {config.data_dir}; models: {', '.join(config.base_models)})\n"
          f"  connect with: TINKER_BASE_URL=http://{config.host}:{config.port} "
          f"TINKER_API_KEY={key_hint}", file=sys.stderr, flush=True)
    run_server(config, log_level=args.log_level)
    return 0


COMMAND = Command("serve", "run the embedded local Tinker backend (an HTTP server)",
                  configure_serve, cmd_serve)
