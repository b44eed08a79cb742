"""The examples in the docstrings of tinkex_jax.tokenizer and tinkex_jax.renderers run."""

from __future__ import annotations

import doctest
import inspect

import pytest

import tinkex_jax.renderers
import tinkex_jax.tokenizer


@pytest.mark.parametrize("module", [tinkex_jax.tokenizer, tinkex_jax.renderers],
                         ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 5 and result.failed == 0


@pytest.mark.parametrize("module", [tinkex_jax.tokenizer, tinkex_jax.renderers],
                         ids=lambda m: m.__name__)
def test_all_lists_every_public_definition(module):
    assert all(hasattr(module, name) for name in module.__all__)
    defined = {name for name, value in vars(module).items()
               if not name.startswith("_") and inspect.isfunction(value) | inspect.isclass(value)
               and value.__module__ == module.__name__}
    assert defined <= set(module.__all__)
