"""The client-side half of forward_backward_custom, with no server: padding, compile counts,
gradients, side arrays, stateful terms and the surrogate datums."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import losses
from losses import BucketPolicy, LossBatch
from regularizers import adaptive_kl, entropy, l2
from tests.support.jax_traces import count_traces
from tinkex_jax import Datum, ModelInput, TensorData, ValidationError
from tinkex_jax.builders import (
    datum_from_tokens,
    merge_custom_metrics,
    surrogate_data,
    surrogate_forward_data,
)
from tinkex_jax.custom_loss import CustomLoss, _custom_loss_for


def nll(logprobs: jax.Array, batch: LossBatch) -> tuple[jax.Array, dict[str, Any]]:
    return losses.cross_entropy(logprobs, batch.inputs["weights"], where=batch.mask,
                                reduction="sum"), {"seen/tokens:sum": jnp.sum(batch.mask)}


def _inputs(lengths: tuple[int, ...], seed: int = 0) -> tuple[list[dict[str, np.ndarray]],
                                                                list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    inputs = [{"target_tokens": rng.integers(0, 50, n),
               "weights": rng.uniform(0, 1, n).astype(np.float32)} for n in lengths]
    logprobs = [rng.uniform(-5, -0.1, n).astype(np.float32) for n in lengths]
    return inputs, logprobs


def test_gradients_are_the_per_datum_gradients_of_the_unpadded_loss() -> None:
    inputs, logprobs = _inputs((3, 7, 5))
    custom = CustomLoss(nll, [("l2", l2(), 0.3)])
    out = custom(inputs, logprobs)

    def reference(lps: list[jax.Array]) -> jax.Array:  # the same loss, datum by datum
        ce = sum(-jnp.sum(lp * d["weights"]) for lp, d in zip(lps, inputs, strict=True))
        per_datum_l2 = jnp.stack([jnp.mean(lp ** 2) for lp in lps])
        return ce + 0.3 * jnp.mean(per_datum_l2)

    value, grads = jax.value_and_grad(reference)([jnp.asarray(lp) for lp in logprobs])
    assert out.loss == pytest.approx(float(value), rel=1e-5)
    assert [g.shape for g in out.grads] == [(3,), (7,), (5,)]
    for got, want in zip(out.grads, grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert out.metrics["seen/tokens:sum"] == 15.0
    assert out.metrics["reg/l2/weight:mean"] == pytest.approx(0.3)
    assert out.metrics["loss/total:sum"] == pytest.approx(out.loss, rel=1e-6)


def test_one_trace_per_bucket() -> None:
    custom = CustomLoss(nll)
    with count_traces("_value_and_grad") as traces:
        for lengths in ((3, 5), (16, 1), (9, 2), (4, 4)):  # B = 2, T = 16 every time
            custom(*_inputs(lengths))
        assert traces.count == 1
        custom(*_inputs((17, 2)))  # T = 32
        custom(*_inputs((3, 3, 3)))  # B = 4
        assert traces.count == 3
        custom(*_inputs((30, 20)))
        assert traces.count == 3


def test_extras_and_datum_extras_reach_the_loss() -> None:
    inputs, logprobs = _inputs((4, 6))
    reference = [lp - 1.0 for lp in logprobs]

    def uses_side_arrays(lp: jax.Array, batch: LossBatch) -> tuple[jax.Array, dict[str, Any]]:
        diff = (lp - batch.extras["ref"]) * batch.mask
        return jnp.sum(diff) * batch.extras["scale"], {}

    out = CustomLoss(uses_side_arrays)(inputs, logprobs, extras={"scale": np.float32(2.0)},
                                       datum_extras=[{"ref": r} for r in reference])
    assert out.loss == pytest.approx(2.0 * 10)
    np.testing.assert_allclose(np.concatenate(out.grads), 2.0)


def test_two_dimensional_targets() -> None:
    inputs = [{"target_tokens": np.zeros((n, 3), np.int32)} for n in (2, 5)]
    logprobs = [np.full((n, 3), -1.0, np.float32) for n in (2, 5)]

    def topk(lp: jax.Array, batch: LossBatch) -> tuple[jax.Array, dict[str, Any]]:
        return -jnp.sum(lp * batch.mask[..., None]), {}

    out = CustomLoss(topk)(inputs, logprobs)
    assert out.loss == pytest.approx(21.0)
    assert [g.shape for g in out.grads] == [(2, 3), (5, 3)]


def test_state_is_explicit_and_threaded_by_the_caller() -> None:
    inputs, logprobs = _inputs((5, 5))
    term = adaptive_kl(reference="ref", target_kl=0.01, horizon=10.0, init_coef=0.2)
    custom = CustomLoss(nll, [("kl", term, 1.0)])
    refs = [{"ref": lp + 0.5} for lp in logprobs]
    coefs = []
    state = custom.init()
    with count_traces("_value_and_grad") as traces:
        for _ in range(3):  # KL far above its target: the coefficient grows every call
            out = custom(inputs, logprobs, state=state, datum_extras=refs)
            coefs.append(out.metrics["reg/kl/coef:mean"])
            state = out.state
    assert coefs[0] == pytest.approx(0.2)
    assert coefs[0] < coefs[1] < coefs[2]
    assert traces.count == 1
    # the object holds no state: the same call from the initial state gives the first value
    again = custom(inputs, logprobs, state=custom.init(), datum_extras=refs)
    assert again.metrics["reg/kl/coef:mean"] == pytest.approx(coefs[0])
    assert custom(inputs, logprobs, datum_extras=refs).metrics["reg/kl/coef:mean"] == (
        pytest.approx(coefs[0]))  # no state given: starts from init


def test_errors_are_raised_before_evaluation() -> None:
    inputs, logprobs = _inputs((3,))
    with pytest.raises(ValidationError, match="must be a scalar"):
        CustomLoss(lambda lp, b: (lp, {}))(inputs, logprobs)
    with pytest.raises(ValidationError, match=r"Expected loss_fn\(logprobs"):
        CustomLoss(lambda data, lps: (lps[0].item(), {}))(inputs, logprobs)
    with pytest.raises(ValidationError, match="regularizers"):
        CustomLoss(nll, [("bad name", l2(), 1.0)])
    with pytest.raises(ValidationError, match="target_tokens"):
        CustomLoss(nll).prepare([{"weights": np.ones(3)}])
    with pytest.raises(ValueError, match="shape"):
        custom = CustomLoss(nll)
        custom.evaluate([np.zeros(4)], custom.prepare(inputs))


def test_non_finite_loss_is_refused() -> None:
    inputs, logprobs = _inputs((3,))
    with pytest.raises(ValueError, match="not finite"):
        CustomLoss(lambda lp, b: (jnp.sum(jnp.log(lp * 0.0)), {}))(inputs, logprobs)


def test_plain_functions_share_one_cached_compile() -> None:
    reg = [("ent", entropy(), 0.1)]
    first, key = _custom_loss_for(nll, reg, None)
    assert _custom_loss_for(nll, reg, None) == (first, key)
    assert _custom_loss_for(nll, None, None)[0] is not first
    assert _custom_loss_for(nll, reg, BucketPolicy(min_datums=2))[0] is not first
    assert _custom_loss_for(first, None, None) == (first, first)  # its own key
    with pytest.raises(ValidationError, match="CustomLoss"):
        _custom_loss_for(first, reg, None)


def test_surrogate_datums() -> None:
    base = datum_from_tokens([5, 6, 7, 8], [0.0, 0.0, 1.0, 1.0])
    datum = Datum(model_input=base.model_input, loss_fn_inputs={
        "target_tokens": base.loss_fn_inputs["target_tokens"], "advantages": [1.0, 2.0, 3.0]})
    forward = surrogate_forward_data([datum])
    assert sorted(forward[0].loss_fn_inputs) == ["target_tokens", "weights"]
    assert forward[0].loss_fn_inputs["weights"].tolist() == [0.0, 0.0, 0.0]
    backward = surrogate_data(forward, [np.array([1.0, -2.0, 0.5])])
    assert backward[0].loss_fn_inputs["weights"].tolist() == [-1.0, 2.0, -0.5]
    assert backward[0].loss_fn_inputs["target_tokens"].tolist() == [6, 7, 8]
    assert backward[0].model_input == datum.model_input
    with pytest.raises(ValidationError, match="target_tokens"):
        surrogate_forward_data([Datum(model_input=ModelInput.from_ints([1]),
                                      loss_fn_inputs={"weights": [1.0]})])
    assert surrogate_forward_data([]) == []  # pure: the client refuses empty data


def test_metric_merge_follows_the_official_sdk() -> None:
    merged = merge_custom_metrics({"loss:sum": 4.0, "num_tokens:sum": 9.0}, 1.25,
                                  {"mine:mean": 0.5})
    assert merged == {"num_tokens:sum": 9.0, "mine:mean": 0.5, "loss:sum": 1.25,
                      "surrogate_loss:sum": 4.0}
    # an older server that reports no loss:sum: the custom loss still gets reported
    assert merge_custom_metrics({"num_tokens:sum": 9.0}, 1.0, {}) == {"num_tokens:sum": 9.0,
                                                                    "loss:sum": 1.0}


# ----------------------------------------------------------------------------- official torch losses


def test_loss_kind_reads_the_signature() -> None:
    from tinkex_jax._loss_signature import loss_kind

    def official(data: list[Datum], logprobs_list: list[Any]) -> Any: ...
    def official_untyped(data, logprobs_list): ...
    def renamed_but_typed(xs: list[Datum], ys: list[Any]) -> Any: ...
    def ours(logprobs, batch): ...
    def ours_typed(lp: jax.Array, b: LossBatch) -> Any: ...
    def no_signal(a, b): ...
    def both(data: jax.Array, batch: LossBatch) -> Any: ...

    assert [loss_kind(f) for f in (official, official_untyped, renamed_but_typed)] == [
        "torch"] * 3
    assert [loss_kind(f) for f in (ours, ours_typed, no_signal)] == ["jax"] * 3
    with pytest.raises(ValidationError, match="loss_signature='jax' or loss_signature='torch'"):
        loss_kind(both)
    assert loss_kind(both, "torch") == "torch" and loss_kind(official, "jax") == "jax"
    with pytest.raises(ValidationError, match="loss_signature"):
        loss_kind(ours, "pytorch")


def test_torch_loss_gradients_match_the_jax_loss() -> None:
    torch = pytest.importorskip("torch")
    from tinkex_jax._torch_loss import torch_loss_gradients

    data = [datum_from_tokens([1, 2, 3, 4]), datum_from_tokens([5, 6])]
    logprobs = [np.array([-1.0, -2.0, -0.5], np.float32), np.array([-3.0], np.float32)]

    def official(data: list[Datum], logprobs_list: list[Any]) -> tuple[Any, dict[str, Any]]:
        per = [(lp.exp() * d.loss_fn_inputs["weights"].to_torch()).sum()
               for d, lp in zip(data, logprobs_list, strict=True)]
        loss = -torch.stack(per).log().sum()
        return loss, {"n": torch.tensor(len(per)), "first": per[0]}

    loss, grads, metrics = torch_loss_gradients(official, data, logprobs)

    def same_in_jax(lps: jax.Array, batch: LossBatch) -> tuple[jax.Array, dict[str, Any]]:
        per = jnp.sum(jnp.exp(lps) * batch.inputs["weights"] * batch.mask, axis=1)
        return -jnp.sum(jnp.log(jnp.where(batch.datum_mask > 0, per, 1.0))), {}

    expected = CustomLoss(same_in_jax)(
        [{k: v.to_numpy() for k, v in d.loss_fn_inputs.items()} for d in data], logprobs)
    assert loss == pytest.approx(expected.loss, rel=1e-6)
    for got, want in zip(grads, expected.grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert metrics["n"] == 2.0 and metrics["first"] == pytest.approx(
        float(np.exp(logprobs[0]).sum()), rel=1e-6)


def test_torch_loss_gradients_refuse_what_the_official_sdk_cannot_train_on() -> None:
    torch = pytest.importorskip("torch")
    from tinkex_jax._torch_loss import torch_loss_gradients

    data = [datum_from_tokens([1, 2, 3])]
    lps = [np.array([-1.0, -2.0], np.float32)]
    with pytest.raises(ValueError, match=r"scalar torch\.Tensor"):
        torch_loss_gradients(lambda d, lp: (lp[0], {}), data, lps)
    with pytest.raises(ValueError, match="expected loss_fn"):
        torch_loss_gradients(lambda d, lp: lp[0].sum(), data, lps)
    with pytest.raises(ValueError, match="not finite"):
        torch_loss_gradients(lambda d, lp: ((lp[0] * 0).log().sum(), {}), data, lps)
    # a datum the loss ignores gets a zero gradient, not an error
    two = data * 2
    _, grads, _ = torch_loss_gradients(lambda d, lp: (lp[0].sum() + torch.tensor(0.0), {}),
                                       two, lps * 2)
    assert grads[0].tolist() == [1.0, 1.0] and grads[1].tolist() == [0.0, 0.0]


def test_torch_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from tinkex_jax._torch_loss import require_torch

    real_import = builtins.__import__

    def no_torch(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(ValidationError, match=r"pip install 'tinkex-jax\[torch\]'"):
        require_torch()
    with pytest.raises(ImportError, match=r"tinkex-jax\[torch\]"):
        TensorData(data=[1.0], dtype="float32").to_torch()
