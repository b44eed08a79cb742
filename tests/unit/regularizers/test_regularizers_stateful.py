"""Stateful terms: explicit state updates replayed in NumPy, gradients, no retracing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import regularizers as R
from losses import LossBatch

B, T = 4, 5
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], float)
DMASK = np.array([1.0, 1.0, 1.0, 0.0])
REAL = (MASK != 0) & (DMASK[:, None] != 0)


def make_batch(seed, *, shift=0.0):
    rng = np.random.default_rng(seed)
    lp = -rng.uniform(0.2, 2.0, (B, T))
    ref = lp - shift + rng.normal(0, 0.1, (B, T))
    rewards = rng.normal(size=B)
    rewards[3] = 1e6  # a padded datum's reward must not matter
    batch = LossBatch(
        inputs={"ref_logprobs": ref}, mask=MASK, datum_mask=DMASK, extras={"rewards": rewards}
    )
    return np.where(REAL, lp, -30.0), batch


def reduce_mean(per_token):
    counts = np.maximum(REAL.sum(1), 1)
    return (np.where(REAL, per_token, 0).sum(1) / counts)[DMASK != 0].mean()


def fd_grad(f, x, eps=1e-6):
    flat = x.reshape(-1)
    basis = np.eye(flat.size).reshape((flat.size, *x.shape)) * eps
    fv = jax.jit(jax.vmap(f))
    return ((np.asarray(fv(x + basis)) - np.asarray(fv(x - basis))) / (2 * eps)).reshape(x.shape)


def test_adaptive_kl_updates_coefficient_like_the_formula():
    with jax.enable_x64(True):
        target, horizon, beta = 0.02, 50.0, 0.5
        term = R.adaptive_kl(reference="ref_logprobs", target_kl=target, horizon=horizon,
                             init_coef=beta)
        state = term.init()
        assert isinstance(state, R.AdaptiveKLState)
        assert state.coef.dtype == jnp.float32 and float(state.coef) == 0.5
        traces = []

        def counted(lp, batch, st):
            traces.append(1)
            return term.update(lp, batch, st)

        update = jax.jit(counted)
        coef = beta
        history = []
        for step, shift in enumerate([0.6, 0.5, 0.0, 0.01]):  # big KL first, then small
            lp, batch = make_batch(step, shift=shift)
            ell = lp - batch.inputs["ref_logprobs"]
            kl = reduce_mean(np.exp(-ell) - 1 + ell)
            value, metrics, state = update(lp, batch, state)
            np.testing.assert_allclose(float(metrics["kl"]), kl, rtol=1e-9)
            np.testing.assert_allclose(float(metrics["coef"]), coef, rtol=1e-6)
            np.testing.assert_allclose(float(value), np.float32(coef) * kl, rtol=1e-6)
            error = np.clip(kl / target - 1, -0.2, 0.2)
            coef = coef * (1 + error * 3 / horizon)  # 3 real datums
            np.testing.assert_allclose(float(state.coef), coef, rtol=1e-6)
            assert state.coef.dtype == jnp.float32 and state.kl.dtype == jnp.float32
            history.append(float(state.coef))
        assert history[0] > beta and history[1] > history[0]  # KL above target: β grows
        assert history[2] < history[1] and history[3] < history[2]  # below target: β shrinks
        assert len(traces) == 1  # the state keeps its structure and dtypes: no retrace


def test_adaptive_kl_gradient_is_coef_times_kl_gradient():
    with jax.enable_x64(True):
        lp, batch = make_batch(0, shift=0.3)
        term = R.adaptive_kl(reference="ref_logprobs", target_kl=0.01, init_coef=0.25)
        state = term.init()

        def f(x):
            return term.update(x, batch, state)[0]

        grad = np.asarray(jax.jit(jax.grad(f))(lp))
        kl_grad = np.asarray(jax.jit(jax.grad(lambda x: R.kl(reference="ref_logprobs")(x, batch)[0]))(lp))
        np.testing.assert_allclose(grad, 0.25 * kl_grad, rtol=1e-6)
        np.testing.assert_allclose(grad, fd_grad(f, lp), rtol=1e-5, atol=1e-8)
        assert np.all(grad[REAL] != 0) and np.all(grad[~REAL] == 0)
        # the state is not differentiated
        g_state = jax.grad(lambda c: term.update(lp, batch, state._replace(coef=c))[0])(
            state.coef
        )
        assert float(g_state) == 0.0


def test_adaptive_kl_validation():
    for kwargs, message in [
        ({"target_kl": 0.0}, "target_kl must be a finite"),
        ({"target_kl": 0.1, "horizon": -1.0}, "horizon must be"),
        ({"target_kl": 0.1, "init_coef": float("nan")}, "init_coef must be"),
    ]:
        try:
            R.adaptive_kl(reference="r", **kwargs)
        except ValueError as e:
            assert message in str(e)
        else:
            raise AssertionError(f"no error for {kwargs}")


def test_ema_baseline_replay_and_gradient():
    with jax.enable_x64(True):
        decay = 0.8
        term = R.ema_baseline(reward="rewards", decay=decay)
        state = term.init()
        assert int(state.num_updates) == 0 and float(state.ema) == 0.0
        update = jax.jit(term.update)
        ema = 0.0
        for count in range(4):  # count = the number of updates so far
            lp, batch = make_batch(10 + count)
            r = batch.extras["rewards"]
            baseline = ema / (1 - decay**count) if count else 0.0
            adv = np.where(DMASK != 0, r - baseline, 0)
            score = np.where(REAL, lp, 0).sum(1) / np.maximum(REAL.sum(1), 1)
            expected = -(adv * score)[DMASK != 0].mean()
            value, metrics, new_state = update(lp, batch, state)
            np.testing.assert_allclose(float(metrics["baseline"]), baseline, rtol=1e-6)
            np.testing.assert_allclose(float(value), expected, rtol=1e-6)
            ema = decay * ema + (1 - decay) * r[DMASK != 0].mean()
            np.testing.assert_allclose(float(new_state.ema), ema, rtol=1e-6)
            assert int(new_state.num_updates) == count + 1

            def f(x, batch=batch, state=state):
                return term.update(x, batch, state)[0]

            grad = np.asarray(jax.jit(jax.grad(f))(lp))
            analytic = np.where(REAL, -adv[:, None] / np.maximum(REAL.sum(1), 1)[:, None] / 3, 0)
            np.testing.assert_allclose(grad, analytic, rtol=1e-6, atol=1e-12)
            assert np.all(grad[REAL] != 0) and np.all(grad[~REAL] == 0)
            state = new_state
        np.testing.assert_allclose(grad, fd_grad(f, lp), rtol=1e-5, atol=1e-8)


def test_ema_baseline_skips_batches_without_real_datums():
    term = R.ema_baseline(decay=0.5)
    lp, batch = make_batch(0)
    state = term.update(lp, batch, term.init())[2]
    empty = batch._replace(datum_mask=np.zeros(B), mask=np.zeros((B, T)))
    value, _, after = jax.jit(term.update)(lp, empty, state)
    assert float(value) == 0.0
    assert int(after.num_updates) == int(state.num_updates) == 1
    assert float(after.ema) == float(state.ema)
