"""Session-scoped fixtures for the model-layer tests, so compiled functions are shared."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.model_testlib import CFG, perturb
from tinkex_jax.local.model import LoraSpec, Model, init_lora, init_params


@pytest.fixture(scope="session")
def model() -> Model:
    return Model(init_params(CFG, seed=0), CFG)


@pytest.fixture(scope="session")
def lora() -> Any:
    return perturb(init_lora(CFG, LoraSpec(rank=4, seed=0)), seed=1)
