"""The docstring examples of the local backend and the CLI run and pass."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "tinkex_jax.cli",
    "tinkex_jax.local._app",
    "tinkex_jax.local._catalog",
    "tinkex_jax.local._checkpoints",
    "tinkex_jax.local._config",
    "tinkex_jax.local._convert",
    "tinkex_jax.local._core",
    "tinkex_jax.local._effects",
    "tinkex_jax.local._engine",
    "tinkex_jax.local._errors",
    "tinkex_jax.local._futures",
    "tinkex_jax.local._info",
    "tinkex_jax.local._peft",
    "tinkex_jax.local._rest",
    "tinkex_jax.local._sampling",
    "tinkex_jax.local._scheduler",
    "tinkex_jax.local._stability",
    "tinkex_jax.local._server",
    "tinkex_jax.local._sessions",
    "tinkex_jax.local._storage",
    "tinkex_jax.local._training",
    "tinkex_jax.local._weights",
]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name),
                             optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
