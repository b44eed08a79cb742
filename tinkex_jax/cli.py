"""The ``tinkex`` command line.

Subcommands are registered in `COMMANDS`: each is a `Command` with a name, a help line, a
function that adds its arguments to an ``argparse`` parser and a function that runs it.
Add a subcommand by appending one more `Command`.

Example:
    >>> build_parser().parse_args(["serve", "--port", "9000"]).port
    9000
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["COMMANDS", "Command", "build_parser", "main"]


@dataclass(frozen=True)
class Command:
    """One ``tinkex`` subcommand."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


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
            warm_up=not args.no_warm_up)
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
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="tinkex", description="tinkex_jax command line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        child = sub.add_parser(command.name, help=command.help, description=command.help)
        command.configure(child)
        child.set_defaults(_run=command.run)
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
