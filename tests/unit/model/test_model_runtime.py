"""Training runtime: batching, forward/backward, gradient accumulation, AdamW, buckets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.support.jax_traces import count_traces
from tests.support.model_testlib import (
    CFG,
    cross_entropy,
    jit_logits,
    reversal_datum,
    scaled_cross_entropy,
)
from tinkex_jax.errors import ValidationError
from tinkex_jax.local.model import (
    Buckets,
    LoraSpec,
    accumulate,
    forward,
    forward_backward,
    init_lora,
    init_optimizer,
    logits,
    lora_to_arrays,
    make_batch,
    optim_step,
    optimizer_state_from_arrays,
    optimizer_state_to_arrays,
    split_outputs,
)
from tinkex_jax.local.model.lora import Lora

WORDS = ["cat", "horse", "zebra", "ab", "python", "lizard", "owl"]


@pytest.fixture(scope="module")
def data():
    return [reversal_datum(w) for w in WORDS]


def _reference_logprobs(model, lora, tokens, targets):
    lg = jit_logits(model.params, lora, jnp.asarray(tokens)[None], config=CFG)[0]
    lp = jax.nn.log_softmax(lg, axis=-1)
    return np.asarray(jnp.take_along_axis(lp, jnp.asarray(targets).reshape(len(tokens), -1),
                                          axis=-1)).reshape(np.shape(targets))


def test_make_batch_pads_to_buckets(data):
    batch, layout = make_batch(data)
    assert batch.tokens.shape == (8, 16) and batch.tokens.dtype == np.int32
    assert layout.lengths == tuple(len(d[0]) for d in data)
    assert batch.mask.sum() == sum(layout.lengths) and batch.mask.dtype == np.float32
    assert not batch.mask[len(data):].any()  # padded datums are fully masked
    assert Buckets().seq(17) == 24 and Buckets(fine=False).seq(17) == 32
    assert Buckets().batch(1) == 1 and Buckets().batch(9) == 16


def test_make_batch_errors_say_what_is_wrong():
    with pytest.raises(ValidationError, match="target_tokens"):
        make_batch([([1, 2], {"weights": [1.0, 1.0]})])
    with pytest.raises(ValidationError, match=r"shape \[2\]"):
        make_batch([([1, 2], {"target_tokens": [1, 2, 3]})])
    with pytest.raises(ValidationError, match="same keys"):
        make_batch([([1], {"target_tokens": [1], "weights": [1.0]}),
                    ([1], {"target_tokens": [1]})])
    with pytest.raises(ValidationError, match="max_seq_len"):
        make_batch([([1] * 10, {"target_tokens": [1] * 10})], max_seq_len=8)
    with pytest.raises(ValidationError, match="at least one datum"):
        make_batch([])


def test_forward_matches_reference_and_sums_loss(model, lora, data):
    batch, layout = make_batch(data)
    out = forward(model, lora, batch, cross_entropy)
    per = split_outputs(out, layout)
    total = 0.0
    for (tokens, inputs), got in zip(data, per):
        ref = _reference_logprobs(model, lora, tokens, inputs["target_tokens"])
        np.testing.assert_allclose(got["logprobs"], ref, atol=1e-5)
        np.testing.assert_allclose(got["elementwise_loss"], -ref * inputs["weights"],
                                   atol=1e-5)
        total += float(np.sum(-ref * inputs["weights"]))
    assert float(out.loss) == pytest.approx(total, rel=1e-5)  # a plain sum, no normalisation
    assert not np.asarray(out.logprobs)[len(data):].any()


def test_two_dimensional_targets(model, lora):
    tokens = np.array([4, 8, 15, 16, 23])
    targets = np.array([[8, 1, 2], [15, 3, 4], [16, 5, 6], [23, 7, 8], [42, 9, 10]])
    weights = np.ones((5, 3), np.float32)
    batch, layout = make_batch([(tokens, {"target_tokens": targets, "weights": weights})])
    assert batch.targets.shape == (1, 16, 3)
    out = forward(model, lora, batch, cross_entropy)
    got = split_outputs(out, layout)[0]["logprobs"]
    assert got.shape == (5, 3)
    np.testing.assert_allclose(got, _reference_logprobs(model, lora, tokens, targets),
                               atol=1e-5)
    assert float(out.loss) == pytest.approx(float(-got.sum()), rel=1e-5)


def test_gradients_flow_only_into_lora(model, data):
    lora = init_lora(CFG, LoraSpec(rank=4, seed=3))
    batch, _ = make_batch(data)
    out, grads = forward_backward(model, lora, batch, cross_entropy)
    assert isinstance(grads, Lora)
    assert jax.tree.structure(grads) == jax.tree.structure(lora)
    g = lora_to_arrays(grads)
    # with B = 0 at init, dL/dA = 0 and dL/dB != 0
    assert not g["layers.wq.a"].any() and np.abs(g["layers.wq.b"]).max() > 0
    assert np.abs(g["unembed.b"]).max() > 0

    # the gradient equals jax.grad of the reference objective
    def objective(adapter):
        lg = logits(model.params, adapter, jnp.asarray(batch.tokens), CFG)
        lp = jnp.take_along_axis(jax.nn.log_softmax(lg), jnp.asarray(batch.targets)[..., None],
                                 axis=-1)[..., 0]
        return jnp.sum(-lp * batch.inputs["weights"] * batch.mask)

    ref_loss, ref_grad = jax.jit(jax.value_and_grad(objective))(lora)
    ref = lora_to_arrays(ref_grad)
    for k in g:
        np.testing.assert_allclose(g[k], ref[k], atol=1e-4, rtol=1e-4)
    assert float(out.loss) == pytest.approx(float(ref_loss), rel=1e-5)


def test_no_recompilation_inside_a_bucket(model, lora, data):
    forward_backward(model, lora, make_batch(data[:5])[0], scaled_cross_entropy, {"scale": 1.0})
    with count_traces("_forward_backward_impl") as traces:
        for n, scale in [(6, 2.0), (7, 0.5), (5, 3.0)]:  # same (8, 16) bucket, new config
            out, _ = forward_backward(model, lora, make_batch(data[:n])[0],
                                      scaled_cross_entropy, {"scale": scale})
        assert traces.count == 0
        # the traced loss config really is used
        base, _ = forward_backward(model, lora, make_batch(data[:5])[0], scaled_cross_entropy,
                                   {"scale": 1.0})
        assert float(out.loss) == pytest.approx(3.0 * float(base.loss), rel=1e-5)
        # a new bucket compiles once more
        long = [reversal_datum("abcdefghijkl")]
        forward_backward(model, lora, make_batch(long)[0], scaled_cross_entropy, {"scale": 1.0})
        assert traces.count == 1


def test_accumulate_sums_gradients(model, lora, data):
    b1, _ = make_batch(data[:3])
    b2, _ = make_batch(data[3:6])
    both, _ = make_batch(data[:6])
    _, g1 = forward_backward(model, lora, b1, cross_entropy)
    _, g2 = forward_backward(model, lora, b2, cross_entropy)
    _, g12 = forward_backward(model, lora, both, cross_entropy)
    acc = accumulate(None, g1)
    acc = accumulate(acc, g2)
    for k, v in lora_to_arrays(acc).items():
        np.testing.assert_allclose(v, lora_to_arrays(g12)[k], atol=1e-4)


def _torch_adamw(p, grads, hp):
    """Hand-written torch.optim.AdamW (+ clip_grad_norm_) over flat numpy arrays."""
    p = {k: v.astype(np.float64) for k, v in p.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v_ = {k: np.zeros_like(v) for k, v in p.items()}
    for t, g in enumerate(grads, start=1):
        g = {k: x.astype(np.float64) for k, x in g.items()}
        if hp["grad_clip_norm"] > 0:
            norm = np.sqrt(sum(np.sum(x * x) for x in g.values()))
            coef = min(1.0, hp["grad_clip_norm"] / (norm + 1e-6))
            g = {k: x * coef for k, x in g.items()}
        for k in p:
            p[k] = p[k] * (1 - hp["learning_rate"] * hp["weight_decay"])
            m[k] = hp["beta1"] * m[k] + (1 - hp["beta1"]) * g[k]
            v_[k] = hp["beta2"] * v_[k] + (1 - hp["beta2"]) * g[k] ** 2
            mhat = m[k] / (1 - hp["beta1"] ** t)
            vhat = v_[k] / (1 - hp["beta2"] ** t)
            p[k] = p[k] - hp["learning_rate"] * mhat / (np.sqrt(vhat) + hp["eps"])
    return p


@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_adamw_matches_torch_semantics(clip):
    rng = np.random.default_rng(0)
    params = {"a": rng.normal(size=(3, 2)).astype(np.float32),
              "b": rng.normal(size=(2, 4)).astype(np.float32)}
    grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
             for _ in range(3)]
    hps = [dict(learning_rate=lr, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1,
                grad_clip_norm=clip) for lr in (0.1, 0.05, 0.02)]
    lora = Lora({"unembed": {k: jnp.asarray(v) for k, v in params.items()}})
    state = init_optimizer(lora)
    with count_traces("_optim_step_impl") as traces:
        for g, hp in zip(grads, hps):
            glora = Lora({"unembed": {k: jnp.asarray(v) for k, v in g.items()}})
            lora, state, metrics = optim_step(lora, state, glora, hp)
            norm = np.sqrt(sum(np.sum(x.astype(np.float64) ** 2) for x in g.values()))
            assert float(metrics["grad_norm"]) == pytest.approx(norm, rel=1e-5)
            assert float(metrics["learning_rate"]) == pytest.approx(hp["learning_rate"])
            if clip:
                assert float(metrics["grad_norm_clipped"]) == pytest.approx(clip, rel=1e-4)
    # one trace at most for the three steps: the learning rate is traced
    assert traces.count <= 1
    # reference: per-step hyperparameters through the same moments
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v2 = {k: np.zeros_like(v) for k, v in p.items()}
    for t, (g, hp) in enumerate(zip(grads, hps), start=1):
        gg = {k: x.astype(np.float64) for k, x in g.items()}
        if clip:
            norm = np.sqrt(sum(np.sum(x * x) for x in gg.values()))
            gg = {k: x * min(1.0, clip / (norm + 1e-6)) for k, x in gg.items()}
        for k in p:
            p[k] *= 1 - hp["learning_rate"] * hp["weight_decay"]
            m[k] = 0.9 * m[k] + 0.1 * gg[k]
            v2[k] = 0.95 * v2[k] + 0.05 * gg[k] ** 2
            p[k] -= hp["learning_rate"] * (m[k] / (1 - 0.9**t)) / (
                np.sqrt(v2[k] / (1 - 0.95**t)) + 1e-8)
    for k in p:
        np.testing.assert_allclose(np.asarray(lora.weights["unembed"][k]), p[k], atol=1e-5)
    # constant hyperparameters: the helper above agrees too
    const = _torch_adamw(params, grads, hps[0])
    lora2 = Lora({"unembed": {k: jnp.asarray(v) for k, v in params.items()}})
    state2 = init_optimizer(lora2)
    for g in grads:
        lora2, state2, _ = optim_step(lora2, state2, Lora(
            {"unembed": {k: jnp.asarray(v) for k, v in g.items()}}), hps[0])
    for k in const:
        np.testing.assert_allclose(np.asarray(lora2.weights["unembed"][k]), const[k],
                                   atol=1e-5)


def test_optimizer_state_round_trip():
    lora = Lora({"unembed": {"a": jnp.ones((3, 2)), "b": jnp.zeros((2, 3))}})
    grads = Lora({"unembed": {"a": jnp.full((3, 2), 0.5), "b": jnp.ones((2, 3))}})
    state = init_optimizer(lora)
    lora, state, _ = optim_step(lora, state, grads, {"learning_rate": 0.1})
    arrays = optimizer_state_to_arrays(state)
    restored = optimizer_state_from_arrays(arrays, lora)
    assert int(restored.count) == 1
    for k, v in optimizer_state_to_arrays(restored).items():
        np.testing.assert_array_equal(v, arrays[k])
    with pytest.raises(ValidationError, match="AdamParams"):
        optim_step(lora, restored, grads, {"lr": 0.1})


def test_training_reduces_the_loss_and_leaves_the_base_alone(model, data):
    base_before = jax.tree.map(np.array, model.params)
    lora = init_lora(CFG, LoraSpec(rank=4, seed=0))
    state = init_optimizer(lora)
    batch, _ = make_batch(data)
    losses = []
    for _ in range(15):
        out, grads = forward_backward(model, lora, batch, cross_entropy)
        lora, state, _ = optim_step(lora, state, grads, {"learning_rate": 1e-2})
        losses.append(float(out.loss))
    assert losses[-1] < 0.5 * losses[0]
    for a, b in zip(jax.tree.leaves(base_before), jax.tree.leaves(model.params)):
        np.testing.assert_array_equal(a, np.asarray(b))
