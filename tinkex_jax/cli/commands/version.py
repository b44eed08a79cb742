"""``tinkex version``: print the package and protocol versions.

For: that one line (or its JSON). Not for: talking to a server; nothing here connects.

Example:
    >>> import argparse
    >>> cmd_version(argparse.Namespace(json=False))  # doctest: +ELLIPSIS
    tinkex_jax ... (Tinker protocol ..., Python ...)
    0
"""

from __future__ import annotations

import argparse

from ..arguments import add_output_option
from ..command import Command
from ..errors import guarded
from ..output import print_json

__all__ = ["COMMAND", "cmd_version", "configure_version"]


def configure_version(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex version``."""
    add_output_option(parser)


@guarded
def cmd_version(args: argparse.Namespace) -> int:
    """Print the package and protocol versions."""
    import platform

    from ..._shell._constants import PACKAGE_VERSION, PROTOCOL_VERSION

    info = {"tinkex_jax": PACKAGE_VERSION, "protocol": PROTOCOL_VERSION,
            "python": platform.python_version()}
    if args.json:
        print_json(info)
    else:
        print(f"tinkex_jax {PACKAGE_VERSION} (Tinker protocol {PROTOCOL_VERSION}, "
              f"Python {info['python']})")
    return 0


COMMAND = Command("version", "print the tinkex_jax version", configure_version, cmd_version)
