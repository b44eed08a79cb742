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
    """Every name of the stub (the one list) resolves to its module's object."""
    assert losses.__all__ == sorted(losses.__all__)
    assert len(losses.__all__) > 30
    for name in losses.__all__:
        value = getattr(losses, name)
        module = losses._MODULE_OF[name]
        assert value is getattr(importlib.import_module(module), name)
    assert set(losses.__all__) <= set(dir(losses))
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        losses.nope  # noqa: B018


def test_builtin_losses_are_the_served_entries_of_the_table():
    served = [name for name, spec in losses.LOSS_SPECS.items() if spec.served]
    assert sorted(losses.BUILTIN_LOSSES) == sorted(served) == list(losses.served_losses())
    for name, loss in losses.BUILTIN_LOSSES.items():
        assert loss.spec is losses.LOSS_SPECS[name]
        assert loss.name == name
        assert loss.required_inputs == (*loss.spec.required_inputs,
                                        *loss.spec.provenance_inputs)
    assert not losses.LOSS_SPECS["custom"].served
    assert [n for n, s in losses.LOSS_SPECS.items() if s.needs_provenance] == ["stable_reinforce"]


def test_validation_and_padding_do_not_import_jax():
    code = (
        "import sys, numpy as np, losses\n"
        "losses.validate_loss_request('ppo', ['target_tokens', 'logprobs', 'advantages'], [])\n"
        "losses.resolve_loss_config('dro', None)\n"
        "losses.resolve_loss_config('stable_reinforce', {'ratio_cap': 3})\n"
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


def test_there_is_one_loss_table():
    """The SDK's table, its wire literal and its client check are the losses package's."""
    from typing import get_args

    import tinkex_jax
    from tinkex_jax.builders import LOSS_SPECS
    from tinkex_jax.clients._training import _WIRE_LOSSES

    assert LOSS_SPECS is losses.LOSS_SPECS
    assert get_args(tinkex_jax.LossFnType) == tuple(losses.LOSS_SPECS)
    assert tuple(losses.LOSS_SPECS) == _WIRE_LOSSES


def test_the_table_names_the_official_sdks_losses():
    tinker_types = pytest.importorskip("tinker.types")
    from typing import get_args

    assert set(get_args(tinker_types.LossFnType)) == set(losses.LOSS_SPECS)


def test_the_sdk_imports_without_jax_and_checks_with_the_table():
    code = (
        "import sys, tinkex_jax\n"
        "from tinkex_jax.builders import validate_loss_config\n"
        "try:\n"
        "    validate_loss_config('ppo', {'clip_low_threshold': 1.5})\n"
        "except tinkex_jax.ValidationError as e:\n"
        "    assert 'clip_low_threshold <= clip_high_threshold' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('clip_low > clip_high was accepted')\n"
        "assert not any(m == 'jax' or m.startswith('jax.') for m in sys.modules), 'jax imported'\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
