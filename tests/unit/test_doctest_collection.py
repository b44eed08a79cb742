"""Docstring examples are collected by configuration (``--doctest-modules`` over the three
packages), once each, whatever the order of the tests: see ``tests/support/doctest_setup.py``."""

from __future__ import annotations

import doctest
import importlib
import sys

import tinkex_jax


def _claimed_by(cls: type) -> list[str]:
    """The loaded tinkex_jax modules whose doctest collection takes `cls`."""
    finder = doctest.DocTestFinder()
    return sorted(name for name, module in list(sys.modules.items())
                  if (name == "tinkex_jax" or name.startswith("tinkex_jax.")) and module
                  and vars(module).get(cls.__name__) is cls
                  and finder._from_module(module, cls))  # type: ignore[attr-defined]


def test_each_renamed_class_is_collected_once_from_its_defining_module() -> None:
    renamed = [obj for name in tinkex_jax.__all__
               if isinstance(obj := getattr(tinkex_jax, name), type)
               and obj.__module__ == "tinkex_jax"]
    assert {"ServiceClient", "TrainingClient", "RetryConfig"} <= {c.__name__ for c in renamed}
    homes = {cls.__name__: _claimed_by(cls) for cls in renamed}
    assert homes["TrainingClient"] == ["tinkex_jax.clients._training"]
    assert all(len(modules) == 1 for modules in homes.values()), homes


def test_methods_of_a_renamed_class_are_collected_with_it() -> None:
    module = importlib.import_module("tinkex_jax.clients._sampling")
    assert tinkex_jax.RetryConfig is module.RetryConfig  # renamed on first use
    assert module.RetryConfig.__module__ == "tinkex_jax"
    names = [t.name for t in doctest.DocTestFinder().find(module) if t.examples]
    assert any(n.endswith("RetryConfig") for n in names)


def test_modules_left_to_a_fresh_interpreter_name_a_test_that_runs_them() -> None:
    from pathlib import Path

    from tests.support.doctest_setup import FRESH_INTERPRETER

    root = Path(__file__).resolve().parents[2]
    for module_path, test_id in FRESH_INTERPRETER.items():
        test_file, test_name = test_id.split("::")
        module = module_path.removesuffix(".py").replace("/", ".")
        source = (root / test_file).read_text()
        assert (root / module_path).is_file() and f"def {test_name}(" in source
        assert f"import {module}" in source or f"{module} as" in source, (module, test_id)
