"""Every docstring example in ``regularizers`` runs; the public surface is explicit."""

from __future__ import annotations

import doctest
import importlib

import pytest

import regularizers

MODULES = ["regularizers._terms", "regularizers._stateful", "regularizers._compose"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


def test_public_surface_is_every_reexport():
    public = {n for n in dir(regularizers) if not n.startswith("_")}
    assert regularizers.__all__ == sorted(public) and len(public) > 20
    assert {"compose", "restrict", "adaptive_kl", "l2", "TermSpec"} <= public
