"""The ``tinkex`` command line.

Subcommands are registered in `COMMANDS`: each is a `Command` with a name, a help line, a
function that adds its arguments to an ``argparse`` parser and a function that runs it.
Add a subcommand by appending one more `Command`. A group such as ``tinkex checkpoint``
is a `Command` without ``configure`` / ``run`` whose ``subcommands`` are the actions
(``tinkex checkpoint list``); groups nest to any depth.

The operations commands (``version``, ``run``, ``checkpoint``, ``sample``) live in
`tinkex_jax._cli_ops`.

Example:
    >>> build_parser().parse_args(["serve", "--port", "9000"]).port
    9000
    >>> build_parser().parse_args(["checkpoint", "set-ttl", "tinker://r/weights/a", "60"]).seconds
    60
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import _cli_ops as ops

__all__ = ["COMMANDS", "Command", "build_parser", "main"]


@dataclass(frozen=True)
class Command:
    """One ``tinkex`` subcommand, or a group of them.

    A leaf has ``configure`` (adds its arguments) and ``run`` (returns the exit status); a
    group has ``subcommands`` instead and makes one of them required.

    Example:
        >>> group = Command("run", "training runs", subcommands=(
        ...     Command("list", "list runs", ops.configure_run_list, ops.cmd_run_list),))
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


# ----------------------------------------------------------------------------- serve


def _configure_serve(parser: argparse.ArgumentParser) -> None:
    from .local._config import DEFAULT_BASE_MODELS, LOCALHOST

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
    parser.add_argument("--long-poll-timeout", type=float, default=30.0,
                        help="seconds retrieve_future waits before answering try_again")
    parser.add_argument("--workers", type=int, default=1,
                        help="compute threads (default 1; XLA already uses every core)")
    parser.add_argument("--no-warm-up", action="store_true",
                        help="load base models on first use instead of at start-up")
    parser.add_argument("--max-pending-samples", type=int, default=None,
                        help="answer sampling requests beyond this many in flight with 429 "
                             "backpressure, as a busy hosted service does (default: no limit)")
    parser.add_argument("--pjwt-auth", action="store_true",
                        help="serve JWT auth (PROTOCOL.md §1.3): clients exchange their key at "
                             "POST /api/v1/auth/token and send the JWT, as on JWT-mode servers")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"])


def _run_serve(args: argparse.Namespace) -> int:
    from .errors import ValidationError
    from .local import ServerConfig, run_server

    api_key = args.api_key or os.environ.get("TINKEX_LOCAL_API_KEY") or None
    try:
        config = ServerConfig.create(
            args.data_dir, args.base_models, host=args.host, port=args.port, api_key=api_key,
            long_poll_timeout_s=args.long_poll_timeout, compute_workers=args.workers,
            warm_up=not args.no_warm_up, pjwt_auth_enabled=args.pjwt_auth,
            max_pending_samples=args.max_pending_samples)
    except ValidationError as exc:
        print(f"tinkex serve: {exc}", file=sys.stderr)
        return 2
    key_hint = "<your --api-key>" if api_key else "tml-local"
    print(f"tinkex local backend on http://{config.host}:{config.port} "
          f"(data: {config.data_dir}; models: {', '.join(config.base_models)})\n"
          f"  connect with: TINKER_BASE_URL=http://{config.host}:{config.port} "
          f"TINKER_API_KEY={key_hint}", file=sys.stderr, flush=True)
    run_server(config, log_level=args.log_level)
    return 0


# ----------------------------------------------------------------------------- demo


def _configure_demo(parser: argparse.ArgumentParser) -> None:
    from .demo import DemoConfig

    defaults = DemoConfig()
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="seeds the words, the LoRA init and sampling (default %(default)s)")
    parser.add_argument("--steps", type=int, default=defaults.steps,
                        help="optimizer steps (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help="words per step (default %(default)s)")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate,
                        help="peak AdamW learning rate, cosine-decayed (default %(default)s)")
    parser.add_argument("--out", type=Path, default=defaults.out_dir,
                        help="directory for the loss-curve PNG (default %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keep the local backend's checkpoints here (default: a temporary "
                             "directory, removed at the end)")


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo
    from .errors import ValidationError

    if args.steps < 1 or args.batch_size < 1:
        print("tinkex demo: --steps and --batch-size must be >= 1", file=sys.stderr)
        return 2
    try:
        run_demo(DemoConfig(seed=args.seed, steps=args.steps, batch_size=args.batch_size,
                            learning_rate=args.learning_rate, out_dir=args.out,
                            data_dir=args.data_dir))
    except ValidationError as exc:
        print(f"tinkex demo: {exc}", file=sys.stderr)
        return 2
    return 0


COMMANDS: list[Command] = [
    Command("demo", "fine-tune tinkex-jax/tiny offline to reverse words (the main job)",
            _configure_demo, _run_demo),
    Command("serve", "run the embedded local Tinker backend (an HTTP server)",
            _configure_serve, _run_serve),
    Command("version", "print the tinkex_jax version", ops.configure_version, ops.cmd_version),
    Command("run", "list and inspect training runs", subcommands=(
        Command("list", "list your training runs, newest first", ops.configure_run_list,
                ops.cmd_run_list),
        Command("info", "show one training run", ops.configure_run_info, ops.cmd_run_info),
    )),
    Command("checkpoint", "list, inspect, publish, expire, delete and download checkpoints",
            subcommands=(
        Command("list", "list checkpoints (one run's, or all of yours)",
                ops.configure_checkpoint_list, ops.cmd_checkpoint_list),
        Command("info", "show one checkpoint", ops.configure_checkpoint_info,
                ops.cmd_checkpoint_info),
        Command("delete", "delete checkpoints", ops.configure_checkpoint_delete,
                ops.cmd_checkpoint_delete),
        Command("publish", "make a checkpoint public", ops.configure_checkpoint_publish,
                ops.cmd_checkpoint_publish),
        Command("unpublish", "make a checkpoint private", ops.configure_checkpoint_publish,
                ops.cmd_checkpoint_unpublish),
        Command("set-ttl", "set (or --remove) a checkpoint's expiry",
                ops.configure_checkpoint_set_ttl, ops.cmd_checkpoint_set_ttl),
        Command("download", "download a checkpoint's adapter files",
                ops.configure_checkpoint_download, ops.cmd_checkpoint_download),
    )),
    Command("sample", "sample completions from a base model or saved weights",
            ops.configure_sample, ops.cmd_sample),
]


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
    child.set_defaults(_run=command.run)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand (groups nested)."""
    parser = argparse.ArgumentParser(prog="tinkex", description="tinkex_jax command line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        _add(sub, command, 1)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tinkex`` console script; returns the exit status.

    Example:
        >>> main(["serve", "--port", "-1"])  # doctest: +SKIP
        2
    """
    args = build_parser().parse_args(argv)
    return int(args._run(args))


if __name__ == "__main__":
    raise SystemExit(main())
