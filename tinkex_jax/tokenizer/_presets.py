"""The built-in presets of the local backend: ``tinkex-jax/<name>`` ids and where their
tokenizer files lie.

For: mapping a preset name to its tokenizer file under `tinkex_jax.tokenizer.PRESETS_ROOT`
(read at call time, so it can be pointed elsewhere), and listing the presets installed.
Not for: loading the file (`_files`) or anything on the network.

Example:
    >>> find_preset_tokenizer("tinkex-jax/../etc")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tinkex_jax.ValidationError: preset name: expected letters, digits, '.', '_' or '-' ...
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import invalid
from ._files import TOKENIZER_JSON

__all__ = ["PRESET_PREFIX", "find_preset_tokenizer"]

PRESET_PREFIX = "tinkex-jax/"
"""Ids starting with this prefix name a built-in local-backend preset."""

_PRESET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _default_root() -> Path:
    """``tinkex_jax.tokenizer.PRESETS_ROOT`` as it is now (callers may repoint it)."""
    from .. import tokenizer

    return Path(tokenizer.PRESETS_ROOT)


def find_preset_tokenizer(name: str, *, presets_root: str | os.PathLike[str] | None = None
                          ) -> Path:
    """Path of a built-in preset's tokenizer file.

    A preset ``tinkex-jax/<name>`` is looked up under `presets_root` (default `PRESETS_ROOT`,
    ``tinkex_jax/local/model/presets/``), first as ``<root>/<name>/tokenizer.json`` (a
    Hugging Face style model directory), then as ``<root>/<name>.tokenizer.json`` (a flat
    file; its configs, if any, are ``<name>.tokenizer_config.json`` and so on).

    Args:
        name: ``"tiny"`` or ``"tinkex-jax/tiny"``; letters, digits, ``.``, ``_``, ``-``.
        presets_root: The presets directory; `PRESETS_ROOT` (read at call time) when None.

    Returns:
        The path of the tokenizer file.

    Raises:
        ValidationError: The name is malformed or no file exists; the message lists the
            paths searched and the presets available.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> (root / "tiny").mkdir()
        >>> _ = (root / "tiny" / "tokenizer.json").write_text("{}")
        >>> find_preset_tokenizer("tinkex-jax/tiny", presets_root=root).name
        'tokenizer.json'
    """
    bare = name[len(PRESET_PREFIX):] if name.startswith(PRESET_PREFIX) else name
    bare = bare.split(":", 1)[0]
    if not _PRESET_NAME_RE.match(bare):
        raise invalid("preset name", "letters, digits, '.', '_' or '-' (e.g. 'tinkex-jax/tiny')",
                      name)
    root = _default_root() if presets_root is None else Path(presets_root)
    candidates = [root / bare / TOKENIZER_JSON, root / f"{bare}.{TOKENIZER_JSON}"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    available = _available_presets(root)
    raise invalid(f"preset {PRESET_PREFIX}{bare}",
                  f"a tokenizer file at {' or '.join(str(c) for c in candidates)}",
                  "<no such file>",
                  f"use one of the presets {available}" if available else
                  f"no presets are installed under {root}; pass a tokenizer directory instead")


def _available_presets(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    names = {p.name for p in root.iterdir() if (p / TOKENIZER_JSON).is_file()}
    names |= {p.name[: -len("." + TOKENIZER_JSON)] for p in root.glob(f"*.{TOKENIZER_JSON}")}
    return sorted(PRESET_PREFIX + n for n in names)

