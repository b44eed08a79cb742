"""``tinkex demo``: fine-tune ``tinkex-jax/tiny`` offline to reverse words (the main job).

For: the command line of the demo (its options and exit status). Not for: the demo itself,
which is `tinkex_jax.demo`, imported only when the command runs.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> configure_demo(parser)
    >>> parser.parse_args(["--steps", "3"]).steps
    3
    >>> parser.parse_args(["--quick"]).quick
    True
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..command import Command
from ..errors import EXIT_USAGE, CLIError, guarded

__all__ = ["COMMAND", "cmd_demo", "configure_demo"]


def configure_demo(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex demo`` (defaults from `tinkex_jax.demo.DemoConfig`)."""
    from ...demo import DemoConfig

    defaults, quick = DemoConfig(), DemoConfig.quick()
    parser.add_argument("--quick", action="store_true",
                        help=f"a first taste in under a minute: {quick.steps} steps, "
                             f"{quick.heldout} held-out words of at most {quick.max_length} "
                             "letters (--steps and --batch-size still apply)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="seeds the words, the LoRA init and sampling (default %(default)s)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"optimizer steps (default {defaults.steps}, {quick.steps} with "
                             "--quick)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"words per step (default {defaults.batch_size})")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate,
                        help="peak AdamW learning rate, cosine-decayed (default %(default)s)")
    parser.add_argument("--out", type=Path, default=defaults.out_dir,
                        help="directory for the loss-curve PNG (default %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keep the local backend's checkpoints here (default: a temporary "
                             "directory, removed at the end)")


@guarded
def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo; 2 for bad arguments (the message names the flag)."""
    from ...demo import DemoConfig, run_demo

    if (args.steps is not None and args.steps < 1) or (
            args.batch_size is not None and args.batch_size < 1):
        raise CLIError("--steps and --batch-size must be at least 1. Fix: pass e.g. --steps 40 "
                       "--batch-size 16.", exit_code=EXIT_USAGE)
    base = DemoConfig.quick() if args.quick else DemoConfig()
    explicit = {name: value for name, value in (("steps", args.steps),
                                                ("batch_size", args.batch_size))
                if value is not None}
    run_demo(dataclasses.replace(base, seed=args.seed, learning_rate=args.learning_rate,
                                 out_dir=args.out, data_dir=args.data_dir, **explicit))
    return 0


COMMAND = Command("demo", "fine-tune tinkex-jax/tiny offline to reverse words (the main job)",
                  configure_demo, cmd_demo)
