"""Fixtures for tokenizer and renderer tests.

Nothing here touches the network or the real Hugging Face cache: every test runs with the
HF_* variables cleared and HOME pointed at a temporary directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.tokenizer_helpers import HF_ENV
from tinkex_jax import tokenizer as tokmod


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for var in HF_ENV:
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    tokmod.clear_tokenizer_cache()
    yield
    tokmod.clear_tokenizer_cache()
