"""Each module of tinkex_jax.tokenizer and tinkex_jax.renderers lists its public definitions
and says what it is for (their docstring examples run as doctests: pyproject.toml's
``--doctest-modules``)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import tinkex_jax.renderers
import tinkex_jax.tokenizer

MODULES = ["tinkex_jax.tokenizer", "tinkex_jax.renderers",
           *sorted(info.name for info in pkgutil.iter_modules(tinkex_jax.tokenizer.__path__,
                                                              "tinkex_jax.tokenizer."))]


@pytest.mark.parametrize("name", MODULES)
def test_all_lists_every_public_definition(name: str) -> None:
    module = importlib.import_module(name)
    assert all(hasattr(module, n) for n in module.__all__)
    defined = {n for n, value in vars(module).items()
               if not n.startswith("_") and inspect.isfunction(value) | inspect.isclass(value)
               and value.__module__ == module.__name__}
    assert defined <= set(module.__all__)


def test_the_package_exports_its_public_api() -> None:
    assert sorted(tinkex_jax.tokenizer.__all__) == [
        "KIMI_PAT_STR", "LLAMA3_TOKENIZER_ID", "PRESETS_ROOT", "PRESET_PREFIX", "Tokenizer",
        "TokenizerDownloadError", "byte_tokenizer", "clear_tokenizer_cache",
        "find_preset_tokenizer", "get_tokenizer", "hf_hub_cache_dir", "hub_tokenizer_id"]


@pytest.mark.parametrize("name", [m for m in MODULES if m != "tinkex_jax.renderers"])
def test_every_module_says_what_it_is_for(name: str) -> None:
    doc = importlib.import_module(name).__doc__ or ""
    assert "For:" in doc and "Not for:" in doc
