"""``tinkex_jax.install_as_tinker()``: make ``import tinker`` mean tinkex_jax in this process.

For code you do not control (a library, a recipe collection) that does ``import tinker`` or
``from tinker.types.tensor_data import TensorData`` itself. After the call, every import of
``tinker`` or of one of its public modules, anywhere in the process, gets the corresponding
tinkex_jax module: ``tinker`` is `tinkex_jax`, ``tinker.types`` is `tinkex_jax.types`,
``tinker.lib.public_interfaces.rest_client`` is ``tinkex_jax.lib.public_interfaces
.rest_client`` (the official module paths are listed in `tinkex_jax._official_layout`).

How: a finder placed first on `sys.meta_path` answers for ``tinker`` and ``tinker.*`` and
hands out the already-imported tinkex_jax modules, which `sys.modules` then holds under both
names. Nothing is copied and no module is imported twice.

Rules:

* Call it before anything imports ``tinker``. If the official SDK is already imported, the
  objects other modules hold cannot be swapped, so the call raises `RuntimeError` saying so.
* A module of the official SDK that tinkex_jax does not provide (``tinker.cli``,
  ``tinker.lib.retry_handler``, any private module) raises `ModuleNotFoundError` naming the
  module and what to do.
* `uninstall_as_tinker` (or leaving the ``with`` block of the returned handle) removes the
  finder and the ``tinker`` entries from `sys.modules`; modules that already imported
  ``tinker`` keep what they got.

See docs/porting.md for what is and is not provided.

Example:
    >>> import tinkex_jax
    >>> with tinkex_jax.install_as_tinker():
    ...     import tinker
    ...     from tinker.types.tensor_data import TensorData
    ...     tinker is tinkex_jax, TensorData is tinkex_jax.TensorData
    (True, True)
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types
from collections.abc import Sequence
from typing import Any

__all__ = ["TinkerAlias", "install_as_tinker", "uninstall_as_tinker"]

ALIAS = "tinker"
TARGET = "tinkex_jax"
_DOCS = "docs/porting.md"


class _AliasLoader:
    """Gives the import system an existing tinkex_jax module for a ``tinker`` name."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._own_spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = importlib.import_module(self.target)
        self._own_spec = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        # The import system points ``__spec__`` at the alias spec; the module keeps its own.
        module.__spec__ = self._own_spec


class _TinkerFinder:
    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != ALIAS and not fullname.startswith(ALIAS + "."):
            return None
        from ._modules import layout

        relative = fullname[len(ALIAS) + 1:]
        table = layout()
        if fullname != ALIAS and relative not in table:
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: `import tinker` is tinkex_jax in this process "
                "(tinkex_jax.install_as_tinker() was called), and tinkex_jax has no "
                f"counterpart of the official module {fullname}. Use the public names of "
                "tinker / tinker.types / tinker.lib.public_interfaces instead, or call "
                "tinkex_jax.uninstall_as_tinker() before importing the official SDK "
                f"(see {_DOCS}).", name=fullname)
        target_name = f"{TARGET}.{relative}" if relative else TARGET
        is_package = fullname == ALIAS or any(k.startswith(relative + ".") for k in table)
        loader: Any = _AliasLoader(target_name)  # a loader by protocol, not importlib.abc
        return importlib.machinery.ModuleSpec(fullname, loader, is_package=is_package)


class TinkerAlias:
    """The installed switch: `uninstall` it, or use it as a context manager.

    Example:
        >>> import tinkex_jax
        >>> handle = tinkex_jax.install_as_tinker()
        >>> import tinker.types
        >>> tinker.types is tinkex_jax.types
        True
        >>> handle.uninstall()
        >>> "tinker" in __import__("sys").modules
        False
    """

    def __init__(self, finder: _TinkerFinder) -> None:
        self._finder = finder

    @property
    def installed(self) -> bool:
        """Whether this switch is still on `sys.meta_path`."""
        return any(f is self._finder for f in sys.meta_path)

    def uninstall(self) -> None:
        """Turn the switch off (see `uninstall_as_tinker`)."""
        uninstall_as_tinker()

    def __enter__(self) -> TinkerAlias:
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()


def _current() -> _TinkerFinder | None:
    return next((f for f in sys.meta_path if isinstance(f, _TinkerFinder)), None)


def _official_loaded() -> str | None:
    module = sys.modules.get(ALIAS)
    if module is not None and not module.__name__.startswith(TARGET):
        return getattr(module, "__file__", None) or repr(module)
    for name, module in list(sys.modules.items()):
        if name.startswith(ALIAS + ".") and module is not None and not getattr(
                module, "__name__", "").startswith(TARGET):
            return name
    return None


def install_as_tinker() -> TinkerAlias:
    """Make ``import tinker`` (and its public submodules) resolve to tinkex_jax, process-wide.

    Idempotent: calling it again returns a handle to the same switch.

    Raises:
        RuntimeError: the official ``tinker`` package (or one of its modules) is already
            imported in this process.

    Example:
        >>> import tinkex_jax
        >>> with tinkex_jax.install_as_tinker():
        ...     from tinker import types
        ...     types.ModelInput is tinkex_jax.ModelInput
        True
    """
    existing = _current()
    if existing is not None:
        return TinkerAlias(existing)
    loaded = _official_loaded()
    if loaded is not None:
        raise RuntimeError(
            f"The official tinker SDK is already imported ({loaded}), so code that imported "
            "it keeps the official objects. Call tinkex_jax.install_as_tinker() before "
            "anything imports tinker: first thing in your entry script (before importing the "
            f"library that uses tinker). See {_DOCS}.")
    finder = _TinkerFinder()
    sys.meta_path.insert(0, finder)
    return TinkerAlias(finder)


def uninstall_as_tinker() -> None:
    """Undo `install_as_tinker`: drop the finder and the ``tinker`` entries of `sys.modules`.

    Modules that imported ``tinker`` while the switch was on keep the tinkex_jax objects they
    got. A no-op when the switch is off.
    """
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TinkerFinder)]
    for name in [n for n in sys.modules if n == ALIAS or n.startswith(ALIAS + ".")]:
        module = sys.modules[name]
        if module is None or getattr(module, "__name__", "").startswith(TARGET):
            del sys.modules[name]
