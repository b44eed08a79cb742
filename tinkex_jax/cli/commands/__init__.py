"""The ``tinkex`` subcommands, one module per command group.

For: the command groups themselves. Each module defines its arguments (``configure_*``
functions adding to an ``argparse`` parser), its runs (``cmd_*`` functions returning the
exit status) and one ``COMMAND`` (a `tinkex_jax.cli.command.Command`, a leaf or a group)
that `tinkex_jax.cli` lists. A command module reads its arguments, calls the SDK or the
local backend, and prints through `tinkex_jax.cli.output`.

Not for: code shared between commands (it lives in the modules of `tinkex_jax.cli`:
arguments, connection, errors, output, archive, download), or heavy imports at module level:
``tinkex --help`` imports every command module, so the SDK, the local backend, httpx and
msgspec are imported inside the functions that use them.

Example:
    >>> from tinkex_jax.cli.commands import checkpoint, version
    >>> version.COMMAND.name, [c.name for c in checkpoint.COMMAND.subcommands][:2]
    ('version', ['list', 'info'])
"""
