"""The math of ``stable_reinforce``: REINFORCE on-policy, truncated importance weights,
the sequence trust band, prompt positions, the proximal penalty, and its registry form."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import losses
from losses import BUILTIN_LOSSES, stable_reinforce

RNG = np.random.default_rng(7)
B, T = 3, 9


def batch(shift: float = 0.0, spread: float = 0.0) -> tuple[np.ndarray, ...]:
    """Sampling logprobs s, training logprobs t = s + shift + noise, advantages, mask."""
    s = -np.abs(RNG.normal(1.5, 0.8, (B, T)))
    t = s + shift + RNG.normal(0.0, spread, (B, T)) if spread else s + shift
    a = np.repeat(RNG.normal(0.0, 1.0, (B, 1)), T, axis=1)
    where = np.ones((B, T))
    where[:, :3] = 0  # the prompt
    where[1, 7:] = 0  # padding
    return t.astype(np.float64), s.astype(np.float64), a, where


def grad(t: np.ndarray, s: np.ndarray, a: np.ndarray, where: np.ndarray, **cfg: float
         ) -> np.ndarray:
    with jax.enable_x64(True):
        g = jax.grad(lambda x: stable_reinforce(x, s, a, where=where, reduction="sum", **cfg))
        return np.asarray(g(jnp.asarray(t)))


def test_on_policy_gradient_is_reinforce() -> None:
    t, s, a, where = batch()
    for cfg in ({}, {"kl_coeff": 0.7}, {"ratio_cap": 1.0, "sequence_ratio_limit": 1.0}):
        np.testing.assert_allclose(grad(t, s, a, where, **cfg), -a * where, atol=1e-12)
    # ... which is the gradient of the plain REINFORCE surrogate -A log p
    with jax.enable_x64(True):
        reinforce = jax.grad(lambda x: -jnp.sum(x * a * where))(jnp.asarray(t))
    np.testing.assert_allclose(grad(t, s, a, where), np.asarray(reinforce), atol=1e-12)


def test_untruncated_gradient_is_importance_sampling() -> None:
    t, s, a, where = batch(spread=0.3)
    wide = {"ratio_cap": 1e6, "sequence_ratio_limit": 1e6}
    with jax.enable_x64(True):
        is_grad = jax.grad(lambda x: losses.importance_sampling(
            x, s, a, where=where, reduction="sum"))(jnp.asarray(t))
    np.testing.assert_allclose(grad(t, s, a, where, **wide), np.asarray(is_grad), rtol=1e-10)


def test_truncation_bounds_the_weight() -> None:
    t, s, a, where = batch(spread=1.5)  # ratios from ~0.05 to ~90
    ratio = np.exp(t - s)
    assert ratio[where != 0].max() > 5
    for cap in (1.0, 2.0, 4.0):
        g = grad(t, s, a, where, ratio_cap=cap, sequence_ratio_limit=1e6)
        weight = np.where(where != 0, -g / a, 0.0)
        assert weight.max() <= cap + 1e-12
        np.testing.assert_allclose(weight[where != 0], np.minimum(ratio, cap)[where != 0],
                                   rtol=1e-10)


def test_datums_outside_the_trust_band_are_left_out() -> None:
    t, s, a, where = batch()
    t = t.copy()
    t[0] += 1.0  # datum 0: every sampled token e times likelier now (geometric mean e > 2)
    t[1] -= 0.5  # datum 1: 1/1.65, inside [1/2, 2]
    g = grad(t, s, a, where)
    per = np.asarray(stable_reinforce(t, s, a, where=where, reduction="none"))
    assert np.all(g[0] == 0) and np.all(per[0] == 0)
    assert np.all(g[1][where[1] != 0] != 0)
    np.testing.assert_allclose(g[2], -a[2] * where[2], atol=1e-12)  # untouched
    # a wider band keeps datum 0, with capped weights
    g = grad(t, s, a, where, sequence_ratio_limit=3.0)
    np.testing.assert_allclose(g[0], -2.0 * a[0] * where[0], atol=1e-12)


def test_prompt_positions_get_no_loss_and_no_gradient() -> None:
    t, s, a, where = batch(spread=0.2)
    a = a + 5.0  # even a (forbidden on the server) advantage there changes nothing
    per = np.asarray(stable_reinforce(t, s, a, where=where, reduction="none", kl_coeff=0.3))
    g = grad(t, s, a, where, kl_coeff=0.3)
    assert np.all(per[:, :3] == 0) and np.all(g[:, :3] == 0)


def test_the_proximal_penalty_pulls_towards_the_sampler() -> None:
    t, s, a, where = batch(spread=0.2)
    zero = np.zeros_like(a)
    g = grad(t, s, zero, where, kl_coeff=0.5)
    np.testing.assert_allclose(g, 0.5 * (t - s) * where, atol=1e-12)
    value = float(stable_reinforce(t, s, zero, where=where, reduction="sum", kl_coeff=0.5))
    assert value == pytest.approx(float(np.sum(0.25 * (t - s) ** 2 * where)), rel=1e-6)


def test_registry_form_matches_and_does_not_retrace_on_config() -> None:
    t, s, a, where = (x.astype(np.float32) for x in batch(spread=0.4))
    pad = np.ones((B, T), np.float32)
    pad[1, 7:] = 0
    inputs = {"advantages": a, "sampled_logprobs": s, "sampled_mask": where}
    traces = []

    def counted(t_: jax.Array, cfg: dict[str, float]) -> jax.Array:
        traces.append(1)
        return BUILTIN_LOSSES["stable_reinforce"].per_token(t_, inputs, pad, cfg)

    jitted = jax.jit(counted)
    for cfg in (losses.resolve_loss_config("stable_reinforce", None),  # what a server passes
                losses.resolve_loss_config("stable_reinforce", {"ratio_cap": 1.2,
                                                                "kl_coeff": 0.1}),
                losses.resolve_loss_config("stable_reinforce", {"sequence_ratio_limit": 1.1})):
        public = stable_reinforce(t, s, a, where=where * pad, reduction="none", **cfg)
        np.testing.assert_allclose(np.asarray(jitted(t, cfg)), np.asarray(public), rtol=1e-6)
    assert len(traces) == 1


def test_errors() -> None:
    t, s, a, _ = batch()
    with pytest.raises(ValueError, match="reduction must be one of"):
        stable_reinforce(t, s, a, reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot find the token axis"):
        stable_reinforce(t[0, 0], s[0, 0], a[0, 0], reduction="sum")
    with pytest.raises(ValueError, match=r"missing loss_fn_inputs \['sampled_mask'\]"):
        BUILTIN_LOSSES["stable_reinforce"].per_token(
            t, {"advantages": a, "sampled_logprobs": s}, np.ones((B, T)), {})
