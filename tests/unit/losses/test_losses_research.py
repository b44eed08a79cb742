"""Research losses and the KL estimators: references, exactness, gradients."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

from losses import (
    bradley_terry,
    dpo,
    kl_estimate,
    kl_penalized_policy_gradient,
    sequence_logprobs,
    topk_distillation,
)

SEED = 7


def jit_call(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` under jit (keyword arguments are static)."""
    return jax.jit(functools.partial(fn, **kwargs))(*args)


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


# --------------------------------------------------------------------------- KL estimators


@pytest.mark.parametrize("direction", ["reverse", "forward", "symmetric"])
def test_k1_and_k3_are_unbiased_for_exact_kl(direction):
    """E_{x~π_θ}[k(x)] equals the exact KL for k1 and k3 (computed by summation)."""
    rng = np.random.default_rng(SEED)
    p = rng.dirichlet(np.ones(6))  # the policy
    q = rng.dirichlet(np.ones(6))  # the reference
    exact = {
        "reverse": np.sum(p * np.log(p / q)),
        "forward": np.sum(q * np.log(q / p)),
    }
    exact["symmetric"] = exact["reverse"] + exact["forward"]
    with jax.enable_x64(True):
        for est in ("k1", "k3"):
            per = np.asarray(
                kl_estimate(np.log(p), np.log(q), reduction="none", estimator=est,
                            direction=direction)
            )
            np.testing.assert_allclose(np.sum(p * per), exact[direction], rtol=1e-10)
            if est == "k3":
                assert np.all(per >= 0)


def test_kl_estimate_reference_values_and_mask():
    t = np.array([[-1.0, -2.0, -0.3], [-0.5, -0.1, -9.0]])
    r = np.array([[-1.5, -1.0, -0.3], [-0.2, -0.4, 0.0]])
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    ell = t - r
    w = np.exp(-ell)
    refs = {
        ("k1", "reverse"): ell,
        ("k2", "reverse"): ell**2 / 2,
        ("k3", "reverse"): np.exp(-ell) - 1 + ell,
        ("k1", "forward"): w * np.log(w),
        ("k2", "forward"): w * ell**2 / 2,
        ("k3", "forward"): 1 - w + w * np.log(w),
    }
    for (est, direction), ref in refs.items():
        ref = np.where(mask == 1, ref, 0)
        got = kl_estimate(t, r, where=mask, reduction="none", estimator=est, direction=direction)
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-6)
        total = kl_estimate(t, r, where=mask, reduction="mean", estimator=est,
                            direction=direction)
        np.testing.assert_allclose(float(total), ref.sum() / 5, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="estimator must be one of"):
        kl_estimate(t, r, reduction="sum", estimator="k4")


# --------------------------------------------------------------------------------- DPO / BT


def np_dpo(pc, pr, rc, rr, beta, eps=0.0, variant="sigmoid"):
    h = (pc - rc) - (pr - rr)
    if variant == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    return -(1 - eps) * log_sigmoid(beta * h) - eps * log_sigmoid(-beta * h)


@pytest.mark.parametrize(
    ("variant", "eps"), [("sigmoid", 0.0), ("sigmoid", 0.1), ("ipo", 0.0)]
)
def test_dpo_reference_and_grads(variant, eps):
    rng = np.random.default_rng(SEED)
    pc, pr, rc, rr = (rng.normal(-20, 3, 5) for _ in range(4))
    pair_mask = np.array([1, 1, 1, 1, 0])
    beta = 0.2
    ref = np.where(pair_mask == 1, np_dpo(pc, pr, rc, rr, beta, eps, variant), 0)
    got = jit_call(dpo, pc, pr, rc, rr, where=pair_mask, reduction="none", beta=beta,
                   label_smoothing=eps, variant=variant)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5)
    mean = jit_call(dpo, pc, pr, rc, rr, where=pair_mask, reduction="mean", beta=beta,
                    label_smoothing=eps, variant=variant)
    np.testing.assert_allclose(float(mean), ref.sum() / 4, rtol=1e-5)
    with jax.enable_x64(True):
        def f(c, r):
            return dpo(c, r, rc, rr, where=pair_mask, reduction="sum", beta=beta,
                       label_smoothing=eps, variant=variant)

        args = (jnp.asarray(pc), jnp.asarray(pr))
        jax.test_util.check_grads(jax.jit(f), args, order=1, modes=("rev",))
        gc, gr = jax.jit(jax.grad(f, argnums=(0, 1)))(*args)
        assert np.all(np.asarray(gc)[:4] != 0) and np.all(np.asarray(gr)[:4] != 0)
        assert np.asarray(gc)[4] == 0 and np.asarray(gr)[4] == 0


def test_dpo_from_per_token_logprobs_of_interleaved_datums():
    """The documented recipe: per-token logprobs -> sequence scores -> pairs -> DPO."""
    rng = np.random.default_rng(SEED)
    with jax.enable_x64(True):
        lp = rng.normal(-2, 0.5, (4, 6))
        ref_lp = lp + rng.normal(0, 0.3, (4, 6))
        mask = np.ones((4, 6))
        mask[:, :2] = 0  # prompt tokens do not count
        mask[3, 5] = 0  # padding

        def loss(x):
            seq = sequence_logprobs(x, where=mask)
            ref = sequence_logprobs(ref_lp, where=mask)
            return dpo(seq[0::2], seq[1::2], ref[0::2], ref[1::2], reduction="sum", beta=0.5)

        grad = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(lp)))
        assert np.all(grad[mask == 0] == 0)
        assert np.all(grad[mask == 1] != 0)
        # chosen rows are pushed up (negative loss gradient), rejected rows down
        assert np.all(grad[0::2][mask[0::2] == 1] < 0) and np.all(grad[1::2][mask[1::2] == 1] > 0)
        jax.test_util.check_grads(jax.jit(loss), (jnp.asarray(lp),), order=1, modes=("rev",))


def test_dpo_argument_errors():
    x = np.zeros(2)
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo(x, x, x, x, reduction="sum", beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo(x, x, x, x, reduction="sum", label_smoothing=0.7)
    with pytest.raises(ValueError, match="variant must be one of"):
        dpo(x, x, x, x, reduction="sum", variant="hinge")
    with pytest.raises(ValueError, match="policy_rejected_logprobs has shape"):
        dpo(x, np.zeros(3), x, x, reduction="sum")


def test_bradley_terry_reference_and_grads():
    rng = np.random.default_rng(SEED)
    sc, sr = rng.normal(size=6), rng.normal(size=6)
    ref = -log_sigmoid(2.0 * (sc - sr) - 0.5)
    got = jit_call(bradley_terry, sc, sr, reduction="none", beta=2.0, margin=0.5)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5)
    with jax.enable_x64(True):
        def f(a, b):
            return bradley_terry(a, b, reduction="mean", beta=2.0, margin=0.5)

        args = (jnp.asarray(sc), jnp.asarray(sr))
        jax.test_util.check_grads(jax.jit(f), args, order=1, modes=("rev",))
        ga, gb = jax.jit(jax.grad(f, argnums=(0, 1)))(*args)
        assert np.all(np.asarray(ga) < 0) and np.all(np.asarray(gb) > 0)


# ------------------------------------------------------------------ KL-penalised PG


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
@pytest.mark.parametrize("clip", [False, True])
def test_kl_penalized_policy_gradient(estimator, clip):
    rng = np.random.default_rng(SEED)
    shape = (2, 5)
    t = -np.abs(rng.normal(1, 0.5, shape))
    s = t + rng.normal(0, 0.2, shape)
    ref = t + rng.normal(0, 0.4, shape)
    a = rng.normal(size=shape)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    r = np.exp(t - s)
    pg = -r * a if not clip else -np.minimum(r * a, np.clip(r, 0.8, 1.2) * a)
    ell = t - ref
    kl = {"k1": ell, "k2": ell**2 / 2, "k3": np.exp(-ell) - 1 + ell}[estimator]
    expected = np.where(mask == 1, pg + 0.3 * kl, 0)
    kw = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2} if clip else {}
    got = jit_call(
        kl_penalized_policy_gradient, t, s, ref, a, where=mask, reduction="none", kl_coef=0.3,
        estimator=estimator, **kw
    )
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)
    with jax.enable_x64(True):
        def f(x):
            return kl_penalized_policy_gradient(
                x, s, ref, a, where=mask, reduction="sum", kl_coef=0.3, estimator=estimator, **kw
            )

        jax.test_util.check_grads(jax.jit(f), (jnp.asarray(t),), order=1, modes=("rev",))
        # the KL part alone has its own nonzero gradient (advantages 0): k2 gives β·ℓ
        def kl_only(x):
            return kl_penalized_policy_gradient(
                x, s, ref, np.zeros(shape), where=mask, reduction="sum", kl_coef=0.3,
                estimator=estimator, **kw
            )

        g = np.asarray(jax.jit(jax.grad(kl_only))(jnp.asarray(t)))
        assert np.all(g[mask == 1] != 0) and np.all(g[mask == 0] == 0)
        if estimator == "k2":
            np.testing.assert_allclose(g, np.where(mask == 1, 0.3 * ell, 0), rtol=1e-10)


def test_kl_penalized_policy_gradient_errors():
    x = np.zeros(3)
    with pytest.raises(TypeError):
        kl_penalized_policy_gradient(x, x, x, x, reduction="sum")  # kl_coef is required
    with pytest.raises(ValueError, match="pass both clip_low_threshold"):
        kl_penalized_policy_gradient(x, x, x, x, reduction="sum", kl_coef=0.1,
                                     clip_low_threshold=0.8)
    with pytest.raises(ValueError, match="kl_coef must be >= 0"):
        kl_penalized_policy_gradient(x, x, x, x, reduction="sum", kl_coef=-1.0)


# ------------------------------------------------------------------- top-k distillation


def np_topk(student, teacher, support, direction, tau, renorm):
    out = np.zeros(student.shape[:-1])
    for idx in itertools.product(*(range(n) for n in student.shape[:-1])):
        sup = support[idx]
        if not sup.any():
            continue
        tt = teacher[idx][sup] / tau
        p = np.exp(tt - np.logaddexp.reduce(tt))
        ss = student[idx][sup]
        logq = ss - np.logaddexp.reduce(ss) if renorm else ss
        if direction == "forward":
            out[idx] = np.sum(p * (np.log(p) - logq))
        else:
            q = np.exp(logq)
            out[idx] = np.sum(q * (logq - np.log(p)))
    return out


@pytest.mark.parametrize(
    ("direction", "renorm", "tau"),
    [("forward", True, 1.0), ("forward", False, 1.0), ("reverse", True, 1.0),
     ("forward", True, 2.0)],
)
def test_topk_distillation_reference_and_grads(direction, renorm, tau):
    rng = np.random.default_rng(SEED)
    n, k = 6, 4
    teacher = np.log(rng.dirichlet(np.ones(k + 2), n)[:, :k])  # top-k of a bigger vocab
    student = np.log(rng.dirichlet(np.ones(k + 3), n)[:, :k])
    pos_mask = np.array([1, 1, 1, 1, 1, 0])
    support = np.ones((n, k), bool)
    support[1, 3] = False  # only 3 candidates at position 1
    support[2] = False  # no candidates at position 2
    expected = np_topk(student, teacher, support & (pos_mask[:, None] == 1), direction, tau,
                       renorm)
    got = jit_call(topk_distillation, student, teacher, where=pos_mask, support_where=support,
                   reduction="none", direction=direction, temperature=tau,
                   renormalize_student=renorm)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(got) >= -1e-6)
    mean = jit_call(topk_distillation, student, teacher, where=pos_mask, support_where=support,
                    reduction="mean", direction=direction, temperature=tau,
                    renormalize_student=renorm)
    np.testing.assert_allclose(float(mean), expected.sum() / 4, rtol=1e-5)  # 4 real positions
    with jax.enable_x64(True):
        def f(s):
            return topk_distillation(s, teacher, where=pos_mask, support_where=support,
                                     reduction="sum", direction=direction, temperature=tau,
                                     renormalize_student=renorm)

        jax.test_util.check_grads(jax.jit(f), (jnp.asarray(student),), order=1, modes=("rev",))
        g = np.asarray(jax.jit(jax.grad(f))(jnp.asarray(student)))
        live = support & (pos_mask[:, None] == 1)
        assert np.all(np.isfinite(g))
        assert np.all(g[~live] == 0)
        assert np.count_nonzero(g[live]) == live.sum()
        if renorm:  # shift invariance on the renormalised support
            np.testing.assert_allclose(g.sum(axis=1), 0, atol=1e-12)


def test_topk_distillation_zero_when_shapes_match_and_errors():
    teacher = np.log(np.array([[0.5, 0.3, 0.1]]))
    student = teacher - 1.0  # same distribution on the support, less total mass
    assert abs(float(topk_distillation(student, teacher, reduction="sum"))) < 1e-6
    unnorm = float(topk_distillation(student, teacher, reduction="sum",
                                     renormalize_student=False))
    assert unnorm > 0.5  # the unnormalised variant also pulls mass into the support
    with pytest.raises(ValueError, match="renormalize_student"):
        topk_distillation(student, teacher, reduction="sum", direction="reverse",
                          renormalize_student=False)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        topk_distillation(student, teacher, reduction="sum", temperature=0.0)


def test_sequence_logprobs():
    lp = np.array([[[-1.0, -2.0], [-3.0, -4.0]]])  # [B=1, T=2, K=2]
    assert float(sequence_logprobs(lp, where=np.array([[1, 0]]))[0]) == -3.0
    assert sequence_logprobs(lp).shape == (1, 2)  # no where: last axis is the token axis
    norm = sequence_logprobs(np.array([[-1.0, -3.0, 0.0]]), where=np.array([[1, 1, 0]]),
                             normalize=True)
    assert float(norm[0]) == -2.0
