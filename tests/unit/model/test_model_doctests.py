"""Every docstring example of the model layer runs; the package surface is explicit."""

from __future__ import annotations

import doctest
import importlib

import pytest

import tinkex_jax.local.model as model_pkg

MODULES = ["config", "decoder", "lora", "runtime", "sampler", "tokenizer", "hf", "presets",
           "tasks", "pretrain", "options", "sharding", "plan", "__init__"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = model_pkg if name == "__init__" else importlib.import_module(
        f"tinkex_jax.local.model.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


def test_public_surface_is_sorted_and_complete():
    assert model_pkg.__all__ == sorted(model_pkg.__all__)
    public = {n for n in dir(model_pkg) if not n.startswith("_")}
    modules = {"config", "decoder", "lora", "runtime", "sampler", "tokenizer", "hf", "presets",
               "tasks", "pretrain", "options", "sharding", "plan"}
    assert set(model_pkg.__all__) <= public
    assert public - set(model_pkg.__all__) - modules == set()
