"""The ``losses`` package: public surface, lazy imports, runnable docstring examples."""

from __future__ import annotations

import doctest
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import losses

REPO = Path(__file__).resolve().parents[3]


def test_public_surface_is_sorted_and_resolvable():
    assert losses.__all__ == sorted(losses.__all__)
    assert set(losses.__all__) == set(losses._MODULE_OF)
    for name in losses.__all__:
        value = getattr(losses, name)
        module = losses._MODULE_OF[name]
        assert value is getattr(importlib.import_module(module), name)
    assert set(losses.__all__) <= set(dir(losses))
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        losses.nope  # noqa: B018


def test_signatures_match_the_registry():
    for name, loss in losses.BUILTIN_LOSSES.items():
        sig = losses.LOSS_SIGNATURES[name]
        assert loss.required_inputs == sig.required_inputs
        assert dict(loss.config_defaults) == dict(sig.config_defaults)
    assert sorted(losses.BUILTIN_LOSSES) == sorted(losses.LOSS_SIGNATURES)


def test_validation_and_padding_do_not_import_jax():
    code = (
        "import sys, numpy as np, losses\n"
        "losses.validate_loss_request('ppo', ['target_tokens', 'logprobs', 'advantages'], [])\n"
        "losses.resolve_loss_config('dro', None)\n"
        "losses.make_loss_batch([{'target_tokens': np.arange(3)}])\n"
        "assert not any(m == 'jax' or m.startswith('jax.') for m in sys.modules), 'jax imported'\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr


MODULES = ["losses._spec", "losses._builtin", "losses._kl", "losses._research", "losses._batch"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


def test_the_sdk_loss_table_agrees_with_the_losses_package():
    # tinkex_jax.builders keeps its own JAX-free copy for request validation
    from tinkex_jax.builders import LOSS_SPECS

    assert sorted(LOSS_SPECS) == sorted(losses.LOSS_SIGNATURES)
    for name, spec in LOSS_SPECS.items():
        sig = losses.LOSS_SIGNATURES[name]
        assert spec.required_inputs == ("target_tokens", *sig.required_inputs), name
        assert dict(spec.config_defaults) == dict(sig.config_defaults), name
