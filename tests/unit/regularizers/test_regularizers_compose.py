"""compose(): report correctness, one jit function, state threading, metrics, surrogate."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import regularizers as R
from losses import LossBatch, importance_sampling
from regularizers import TermSpec, compose, report_metrics

B, T = 4, 5
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], float)
DMASK = np.array([1.0, 1.0, 1.0, 0.0])
REAL = (MASK != 0) & (DMASK[:, None] != 0)


def make_batch(seed=0):
    rng = np.random.default_rng(seed)
    lp = np.where(REAL, -rng.uniform(0.2, 2.0, (B, T)), -40.0)
    batch = LossBatch(
        inputs={
            "logprobs": lp + rng.normal(0, 0.2, (B, T)),
            "advantages": rng.normal(size=(B, T)),
            "ref_logprobs": lp + rng.normal(0, 0.3, (B, T)),
        },
        mask=MASK,
        datum_mask=DMASK,
        extras={"rewards": rng.normal(size=B), "target": lp + rng.normal(0, 0.2, (B, T))},
    )
    return lp, batch


def base_loss(lp, batch):
    value = importance_sampling(
        lp, batch.inputs["logprobs"], batch.inputs["advantages"], where=batch.mask,
        reduction="sum",
    )
    ratio = jnp.sum(jnp.exp(lp - batch.inputs["logprobs"]) * batch.mask) / jnp.sum(batch.mask)
    return value, {"custom/ratio:mean": ratio, "tokens": jnp.sum(batch.mask)}


def stateless_terms():
    return [
        TermSpec("kl", R.kl(reference="ref_logprobs"), 0.1),
        TermSpec("entropy", R.entropy(), 0.01),
        ("l2", R.l2(center="ref_logprobs"), 0.5),
        TermSpec("consistency", R.consistency(target="target", metric="cosine"), 2.0),
    ]


def all_terms():
    return [
        *stateless_terms(),
        TermSpec("l1", R.l1(), 0.05),
        TermSpec("elastic", R.elastic_net(), 0.05),
        TermSpec("orth", R.orthogonality(mode="spectral"), 0.3),
        TermSpec("pairs", R.consistency(pairs="interleaved", metric="kl"), 0.3),
        TermSpec("gp", R.gradient_penalty(base_loss), 0.01),
        TermSpec("akl", R.adaptive_kl(reference="ref_logprobs", target_kl=0.01), 1.0),
        TermSpec("ema", R.ema_baseline(reward="rewards"), 0.2),
    ]


def norm(x):
    return float(np.sqrt(np.sum(np.square(np.asarray(x)))))


def test_report_matches_separately_computed_terms():
    with jax.enable_x64(True):
        lp, batch = make_batch()
        specs = all_terms()
        composed = compose(base_loss, specs)
        state = composed.init()
        assert set(state.terms) == {"akl", "ema"}
        total, report, new_state = jax.jit(composed)(lp, batch, state)
        assert sorted(report.terms) == sorted(s[0] for s in specs)  # jit sorts dict keys
        expected_total = float(jax.jit(base_loss)(lp, batch)[0])
        np.testing.assert_allclose(float(report.base), expected_total, rtol=1e-12)
        base_grad = jax.jit(jax.grad(lambda x: base_loss(x, batch)[0]))(lp)
        np.testing.assert_allclose(float(report.base_grad_norm), norm(base_grad), rtol=1e-10)
        total_grad = np.asarray(base_grad)
        for spec in specs:
            name, term, weight = TermSpec(*spec) if isinstance(spec, tuple) else spec
            tr = report.terms[name]
            if isinstance(term, R.StatefulRegularizer):
                def f(x, term=term, name=name):
                    return term.update(x, batch, state.terms[name])[0]

                expected_state = jax.jit(term.update)(lp, batch, state.terms[name])[2]
                for got, exp in zip(new_state.terms[name], expected_state):
                    np.testing.assert_allclose(np.asarray(got), np.asarray(exp), rtol=1e-12)
            else:
                def f(x, term=term):
                    return term(x, batch)[0]

            value, grad = jax.jit(jax.value_and_grad(f))(lp)
            np.testing.assert_allclose(float(tr.value), float(value), rtol=1e-10, atol=1e-14)
            assert float(tr.weight) == weight
            assert float(tr.contribution) == pytest.approx(weight * float(tr.value), rel=1e-12)
            np.testing.assert_allclose(float(tr.grad_norm), norm(grad), rtol=1e-8)
            assert float(tr.grad_norm) > 0, f"term {name!r} has a zero gradient"
            assert np.all(np.asarray(grad)[~REAL] == 0)
            expected_total += weight * float(value)
            total_grad = total_grad + weight * np.asarray(grad)
        np.testing.assert_allclose(float(total), expected_total, rtol=1e-10)
        np.testing.assert_allclose(float(report.total), float(total))
        np.testing.assert_allclose(float(report.total_grad_norm), norm(total_grad), rtol=1e-8)
        # the gradient of the ONE composed function equals the sum of the weighted gradients,
        # and value_and_grad returns it without a second backward pass
        outer = jax.jit(jax.grad(lambda x: composed(x, batch, state)[0]))(lp)
        np.testing.assert_allclose(np.asarray(outer), total_grad, rtol=1e-8, atol=1e-12)
        (_, _, _), vg = jax.jit(composed.value_and_grad)(lp, batch, state)
        np.testing.assert_allclose(np.asarray(vg), total_grad, rtol=1e-8, atol=1e-12)


def test_stateless_composition_signature_and_no_retrace():
    lp, batch = make_batch()
    composed = compose(base_loss, stateless_terms())
    assert not composed.stateful
    traces = []

    def counted(x, b):
        traces.append(1)
        return composed(x, b)

    step = jax.jit(jax.value_and_grad(counted, has_aux=True))
    for seed in range(3):
        lp, batch = make_batch(seed)
        (_, report), grad = step(lp.astype(np.float32), batch)
        assert report.total.shape == () and grad.shape == (B, T)
        assert np.all(np.asarray(grad)[~REAL] == 0)
    assert len(traces) == 1


def test_stateful_composition_threads_state_without_retrace():
    composed = compose(base_loss, [TermSpec("akl", R.adaptive_kl(reference="ref_logprobs",
                                                               target_kl=1e-4), 1.0)])
    state = composed.init()
    traces = []

    def counted(x, b, s):
        traces.append(1)
        return composed(x, b, s)

    step = jax.jit(counted)
    coefs = []
    for seed in range(3):
        lp, batch = make_batch(seed)
        _, report, state = step(lp.astype(np.float32), batch, state)
        coefs.append(float(state.terms["akl"].coef))
        assert float(report.terms["akl"].metrics["coef"]) == pytest.approx(
            coefs[-2] if len(coefs) > 1 else 0.1
        )
    assert coefs[0] < coefs[1] < coefs[2]  # KL far above the target
    assert len(traces) == 1
    with pytest.raises(ValueError, match=r"terms \['akl'\] are stateful"):
        composed(lp, batch)


def test_surrogate_weights_reproduce_the_composed_gradient():
    """docs/protocol.md §8: sending weights = -grad with cross_entropy gives the custom gradient."""
    with jax.enable_x64(True):
        _, batch = make_batch()
        composed = compose(base_loss, stateless_terms())
        theta = np.random.default_rng(3).normal(size=(B, T))

        def logprobs_of(th):  # a stand-in model: per-token logprobs as a function of params
            return -jax.nn.softplus(th)

        lp = jax.jit(logprobs_of)(theta)
        (_, _), grad_lp = jax.jit(composed.value_and_grad)(lp, batch)
        weights = -np.asarray(grad_lp)

        def surrogate(th):  # the server's cross_entropy: sum(-logprobs * weights)
            return jnp.sum(-logprobs_of(th) * weights)

        custom = jax.jit(jax.grad(lambda th: composed(logprobs_of(th), batch)[0]))(theta)
        np.testing.assert_allclose(np.asarray(jax.jit(jax.grad(surrogate))(theta)), np.asarray(custom),
                                   rtol=1e-10, atol=1e-12)


def test_report_metrics_keys_and_values():
    lp, batch = make_batch()
    composed = compose(base_loss, stateless_terms())
    total, report = jax.jit(composed)(lp.astype(np.float32), batch)
    metrics = report_metrics(report)
    for key, value in metrics.items():
        name, reduction = key.split(":")  # exactly one colon
        assert name and reduction in {"sum", "mean", "min", "max"}
        assert jnp.asarray(value).shape == ()
    assert float(metrics["loss/total:sum"]) == float(total)
    assert float(metrics["loss/base:sum"]) == float(report.base)
    assert float(metrics["loss/total/grad_norm:mean"]) == float(report.total_grad_norm)
    assert float(metrics["custom/ratio:mean"]) == float(report.base_metrics["custom/ratio:mean"])
    assert float(metrics["tokens:mean"]) == REAL.sum() == 11
    for name in ("kl", "entropy", "l2", "consistency"):
        tr = report.terms[name]
        assert float(metrics[f"reg/{name}/value:mean"]) == float(tr.value)
        assert float(metrics[f"reg/{name}/weight:mean"]) == float(tr.weight)
        assert float(metrics[f"reg/{name}/contribution:sum"]) == float(tr.contribution)
        assert float(metrics[f"reg/{name}/grad_norm:mean"]) == float(tr.grad_norm)
    assert "reg/entropy/entropy:mean" in metrics
    bad = report._replace(base_metrics={"loss/total:sum": report.total})
    with pytest.raises(ValueError, match="produced twice"):
        report_metrics(bad)
    with pytest.raises(ValueError, match="exactly one ':'"):
        report_metrics(report._replace(base_metrics={"a:b:mean": report.total}))
    with pytest.raises(ValueError, match="must be a scalar"):
        report_metrics(report._replace(base_metrics={"vec": jnp.ones(3)}))
    with pytest.raises(ValueError, match="exactly one ':'"):
        R.validate_metric_key("loss:median")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (TermSpec("kl", R.l2(), -0.1), "must be a finite Python number >= 0"),
        (TermSpec("kl", R.l2(), float("nan")), "must be a finite Python number >= 0"),
        (TermSpec("kl", R.l2(), True), "must be a finite Python number >= 0"),
        (TermSpec("a:b", R.l2(), 1.0), "not a valid term name"),
        (TermSpec("reg/x", R.l2(), 1.0), "not a valid term name"),
        (TermSpec("x", 3.0, 1.0), "must be a function"),
    ],
)
def test_compose_validation(spec, message):
    with pytest.raises((ValueError, TypeError), match=message):
        compose(base_loss, [spec])


def test_compose_rejects_duplicates_and_bad_base():
    with pytest.raises(ValueError, match="duplicate term name 'a'"):
        compose(base_loss, [("a", R.l1()), ("a", R.l2())])
    lp, batch = make_batch()
    composed = compose(lambda x, b: jnp.sum(x), [("a", R.l1())])
    with pytest.raises(TypeError, match="base_loss must return"):
        composed(lp, batch)
    composed = compose(lambda x, b: (x, {}), [("a", R.l1())])
    with pytest.raises(ValueError, match="base loss value must be a scalar"):
        composed(lp, batch)
