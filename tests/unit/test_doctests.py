"""The runnable examples in the docstrings of the SDK core modules (the shell, clients,
tokenizer, model and local backend have their own doctest files)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import tinkex_jax.builders
import tinkex_jax.types
import tinkex_jax.wire

MODULES = sorted(
    [f"{package.__name__}.{info.name}"
     for package in (tinkex_jax.types, tinkex_jax.builders, tinkex_jax.wire)
     for info in pkgutil.iter_modules(package.__path__) if not info.name.endswith("_pb2")]
    + ["tinkex_jax.errors", "tinkex_jax.training_loop", "tinkex_jax.custom_loss",
       "tinkex_jax.demo", "tinkex_jax.cli", "tinkex_jax.checkpointing"])


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_the_public_examples_exist() -> None:
    attempted = sum(doctest.testmod(importlib.import_module(name)).attempted
                    for name in ("tinkex_jax.custom_loss", "tinkex_jax.builders._datums"))
    assert attempted > 5
