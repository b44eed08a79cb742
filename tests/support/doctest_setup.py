"""A pytest plugin, loaded by ``addopts`` in pyproject.toml, that runs the docstring examples
of every module of the three packages (``tinkex_jax``, ``losses``, ``regularizers``) as tests,
with pyproject's ``doctest_optionflags``. Not pytest's ``--doctest-modules``: that would
also import every script under ``tests/`` (some need the official SDK, which the lowest-
versions job does not install).

``tinkex_jax`` re-exports its clients and a few other classes lazily and renames their
``__module__`` to ``tinkex_jax`` on first use, so that reprs show the public name. A doctest
finder takes an object only from the module its ``__module__`` names, so such a class's
examples (and its methods') would be collected from its defining module or from
``tinkex_jax``, or from neither, depending on which test touched ``tinkex_jax`` first. This
plugin makes it one answer whatever the order: a renamed class belongs to the module its
methods were defined in (which holds it under its name), and runs there with that module's
globals.
"""

from __future__ import annotations

import doctest
import inspect
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from _pytest.doctest import DoctestModule

#: The folders (beside pyproject.toml) whose modules' examples run.
PACKAGES = ("tinkex_jax", "losses", "regularizers")
#: Modules whose examples need a process that has not imported the official ``tinker`` SDK
#: (the suite imports it), and the test that runs them in a fresh interpreter instead.
FRESH_INTERPRETER = {
    "tinkex_jax/_as_tinker.py":
        "tests/unit/test_as_tinker.py::test_uninstall_and_the_context_manager",
}

_original_from_module = doctest.DocTestFinder._from_module  # type: ignore[attr-defined]


def _defining_module(cls: type) -> str | None:
    """The module the first function in `cls`'s body was defined in (None: it has none)."""
    for value in vars(cls).values():
        func = getattr(value, "fget", None) or getattr(value, "__func__", value)
        if inspect.isfunction(func):
            return func.__module__
    return None


def _from_module(self: doctest.DocTestFinder, module: ModuleType | None, obj: Any) -> bool:
    if isinstance(obj, type) and obj.__module__ == "tinkex_jax" and module is not None:
        home = _defining_module(obj) or "tinkex_jax"
        return home == module.__name__ and vars(module).get(obj.__name__) is obj
    return bool(_original_from_module(self, module, obj))


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix != ".py" or parent.config.option.doctestmodules:
        return None
    if not file_path.is_relative_to(parent.config.rootpath):
        return None
    relative = file_path.relative_to(parent.config.rootpath).parts
    if relative[0] not in PACKAGES or "/".join(relative) in FRESH_INTERPRETER:
        return None
    module: pytest.Collector = DoctestModule.from_parent(parent, path=file_path)
    return module


def pytest_configure(config: pytest.Config) -> None:
    doctest.DocTestFinder._from_module = _from_module  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    doctest.DocTestFinder._from_module = _original_from_module  # type: ignore[attr-defined]
