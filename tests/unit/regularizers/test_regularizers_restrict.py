"""restrict(): a term evaluated on a subset of tokens (e.g. the completion)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from losses import LossBatch
from regularizers import adaptive_kl, compose, entropy, l2, restrict


def _batch() -> LossBatch:
    weights = jnp.array([[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    mask = jnp.array([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    return LossBatch({"weights": weights}, mask, jnp.ones(2), {"ref": jnp.zeros((2, 4))})


def test_only_selected_tokens_count_and_get_gradients() -> None:
    lp = jnp.array([[-1.0, -2.0, -3.0, -9.0], [-4.0, -5.0, -6.0, -7.0]])
    term = jax.jit(restrict(l2(), "weights"))
    value, _ = term(lp, _batch())
    assert float(value) == pytest.approx(((4 + 9) / 2 + 36) / 2)
    grad = jax.grad(lambda x: term(x, _batch())[0])(lp)
    np.testing.assert_array_equal(np.asarray(grad) != 0, np.asarray(_batch().inputs["weights"]) != 0)


def test_callable_where_and_composition() -> None:
    lp = jnp.full((2, 4), -2.0)
    only_first = restrict(entropy(estimator="plugin"), lambda b: (jnp.arange(4) == 0) * b.mask)
    loss = compose(lambda x, b: (jnp.sum(x * 0.0), {}), [("ent", only_first, 1.0)])
    total, report = jax.jit(loss)(lp, _batch())
    assert float(total) == pytest.approx(-2.0)  # -H with H = mean(-lp) over token 0
    assert float(report.terms["ent"].grad_norm) > 0


def test_stateful_terms_are_restricted_too() -> None:
    term = restrict(adaptive_kl(reference="ref", target_kl=0.1, init_coef=1.0), "weights")
    lp = jnp.array([[-5.0, -0.1, -0.1, 0.0], [-5.0, -5.0, -0.1, -5.0]])
    value, _, _ = term.update(lp, _batch(), term.init())
    full, _, _ = adaptive_kl(reference="ref", target_kl=0.1, init_coef=1.0).update(
        lp, _batch(), term.init())
    assert float(value) < float(full)  # the large-KL prompt tokens are left out
    with pytest.raises(TypeError, match="regularizer"):
        restrict(3, "weights")
