"""forward_backward_custom against the embedded local backend, over real HTTP on 127.0.0.1.

Checks that a JAX custom loss trains the model exactly like the equivalent built-in loss,
that the built-in losses computed client-side (the ``losses`` package) equal what the server
reports, that DPO moves the preference margin the right way, and the chain's ordering,
poisoning, pre-send validation and compile-once-per-bucket behaviour.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest

import losses
import tinkex_jax as tinker
from losses import BucketPolicy, LossBatch
from regularizers import entropy, l2
from tests.support.jax_traces import count_traces
from tinkex_jax.builders import datum_from_prompt_completion
from tinkex_jax.custom_loss import CustomLoss

pytestmark = pytest.mark.slow

TINY = "tinkex-jax/tiny"
T = 300  # seconds to wait for any one result


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    from tinkex_jax.local import serve

    with serve(base_models=[TINY]) as running:
        yield running


@pytest.fixture(scope="module")
def service(server: Any) -> Iterator[tinker.ServiceClient]:
    with tinker.ServiceClient(base_url=server.base_url, api_key=server.api_key,
                              telemetry=False) as service:
        yield service


def _datum(prompt: str, completion: str) -> tinker.Datum:
    return datum_from_prompt_completion(list(prompt.encode()), list(completion.encode()))


def reversal_data() -> list[tinker.Datum]:
    words = ("abc", "hello", "xyzzy", "tinker", "jax")
    return [_datum(f"{w}=", f"{w[::-1]}\n") for w in words]


def _logprobs(tc: Any, data: list[tinker.Datum]) -> list[np.ndarray]:
    out = tc.forward(data, "cross_entropy").result(timeout=T)
    return [o["logprobs"].to_numpy() for o in out.loss_fn_outputs]


def nll(logprobs: jnp.ndarray, batch: LossBatch) -> tuple[jnp.ndarray, dict[str, Any]]:
    """Exactly the server's cross_entropy, written as a custom loss."""
    loss = losses.cross_entropy(logprobs, batch.inputs["weights"], where=batch.mask,
                                reduction="sum")
    return loss, {"custom/tokens:sum": jnp.sum(batch.mask)}


def twice_nll(logprobs: jnp.ndarray, batch: LossBatch) -> tuple[jnp.ndarray, dict[str, Any]]:
    return 2.0 * nll(logprobs, batch)[0], {}


def torch_nll(data: list[tinker.Datum], logprobs_list: list[Any]) -> tuple[Any, dict[str, float]]:
    """The same loss written for the official SDK: torch, one tensor per datum."""
    loss = sum(-(lp * d.loss_fn_inputs["weights"].to_torch()).sum()
               for d, lp in zip(data, logprobs_list, strict=True))
    return loss, {"tokens": float(sum(len(lp) for lp in logprobs_list))}


# Adam with a large eps makes the update proportional to the gradient (not to its sign), so
# a custom loss with a wrong gradient scale would give a visibly different update.
LINEAR_ADAM = tinker.AdamParams(learning_rate=0.5, eps=10.0)


def _one_step(service: tinker.ServiceClient, data: list[tinker.Datum], custom: Any
              ) -> tuple[tinker.ForwardBackwardOutput, list[np.ndarray]]:
    tc = service.create_lora_training_client(TINY, rank=4, seed=7).result(timeout=T)
    if custom is None:
        fb = tc.forward_backward(data, "cross_entropy")
    else:
        fb = tc.forward_backward_custom(data, custom)
    opt = tc.optim_step(LINEAR_ADAM)  # submitted before waiting: ordered after both phases
    out = fb.result(timeout=T)
    opt.result(timeout=T)
    return out, _logprobs(tc, data)


def test_custom_cross_entropy_gives_the_builtin_update(service: tinker.ServiceClient) -> None:
    data = reversal_data()
    before = _logprobs(service.create_lora_training_client(TINY, rank=4, seed=7)
                       .result(timeout=T), data)
    builtin_out, builtin_after = _one_step(service, data, None)
    custom_out, custom_after = _one_step(service, data, nll)
    torch_out, torch_after = _one_step(service, data, torch_nll)
    _, twice_after = _one_step(service, data, twice_nll)

    builtin_loss = builtin_out.metrics["loss:sum"]
    assert custom_out.metrics["loss:sum"] == pytest.approx(builtin_loss, rel=1e-5)
    # weights = -grad = the datum weights, so the server's surrogate is the same CE value
    assert custom_out.metrics["surrogate_loss:sum"] == pytest.approx(builtin_loss, rel=1e-5)
    tokens = sum(float(np.sum(d.loss_fn_inputs["weights"].to_numpy() >= 0)) for d in data)
    assert custom_out.metrics["custom/tokens:sum"] == tokens
    assert custom_out.metrics["loss/total/grad_norm:mean"] > 0
    assert len(custom_out.loss_fn_outputs) == len(data)

    moved = max(float(np.abs(a - b).max()) for a, b in zip(builtin_after, before, strict=True))
    assert moved > 1e-2, "the step must change the model for the comparison to mean anything"
    for a, b in zip(custom_after, builtin_after, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
    # an official-SDK torch loss runs unchanged and gives the same loss and update
    assert torch_out.metrics["loss:sum"] == pytest.approx(builtin_loss, rel=1e-5)
    assert torch_out.metrics["tokens"] == sum(len(d.loss_fn_inputs["weights"].data) for d in data)
    for a, b in zip(torch_after, builtin_after, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
    doubled = max(float(np.abs(a - b).max())
                  for a, b in zip(twice_after, builtin_after, strict=True))
    assert doubled > 1e-3, "a loss with twice the gradient must give a different update"


def _rl_data(rng: np.random.Generator) -> tuple[list[tinker.Datum], dict[str, float]]:
    """RL-style datums with every input any built-in loss needs."""
    out = []
    for prompt, completion in (("abc=", "cba\n"), ("tinker=", "reknit\n"), ("q=", "q\n")):
        base = _datum(prompt, completion)
        n = base.loss_fn_inputs["target_tokens"].shape[0]
        inputs = dict(base.loss_fn_inputs)
        inputs["logprobs"] = rng.uniform(-4.0, -0.5, n).astype(np.float32)
        inputs["advantages"] = rng.normal(size=n).astype(np.float32)
        inputs["sequence_ratio_mask"] = (base.loss_fn_inputs["weights"].to_numpy() > 0
                                         ).astype(np.float32)
        out.append(tinker.Datum(model_input=base.model_input, loss_fn_inputs=inputs))
    return out, {"clip_low_threshold": 0.7, "clip_high_threshold": 1.4}


def _client_side(name: str, target: np.ndarray, inputs: dict[str, np.ndarray],
                 config: dict[str, float], reduction: str) -> np.ndarray:
    """A built-in loss through its public function in ``losses`` (not the server's table)."""
    where = np.ones_like(target)
    s, a = inputs["logprobs"], inputs["advantages"]
    clip = {k: v for k, v in config.items() if k.startswith("clip")}
    calls = {
        "cross_entropy": lambda: losses.cross_entropy(target, inputs["weights"], where=where,
                                                      reduction=reduction),
        "importance_sampling": lambda: losses.importance_sampling(target, s, a, where=where,
                                                                  reduction=reduction),
        "ppo": lambda: losses.ppo(target, s, a, where=where, reduction=reduction, **clip),
        "cispo": lambda: losses.cispo(target, s, a, where=where, reduction=reduction, **clip),
        "dro": lambda: losses.dro(target, s, a, where=where, reduction=reduction,
                                  beta=config.get("beta", losses.DEFAULT_DRO_BETA)),
        "gspo": lambda: losses.gspo(target, s, a, inputs["sequence_ratio_mask"], where=where,
                                    reduction=reduction, **clip),
    }
    return np.asarray(calls[name]())


# stable_reinforce needs recorded samples: tests/local/test_local_stable_reinforce_e2e.py
@pytest.mark.parametrize("name", sorted(n for n, loss in losses.BUILTIN_LOSSES.items()
                                        if not loss.spec.needs_provenance))
def test_builtin_losses_client_side_equal_the_server(service: tinker.ServiceClient,
                                                     name: str) -> None:
    tc = service.create_lora_training_client(TINY, rank=4, seed=1).result(timeout=T)
    data, clip = _rl_data(np.random.default_rng(0))
    spec = losses.BUILTIN_LOSSES[name]
    config = {k: v for k, v in {**clip, "beta": 0.3}.items() if k in spec.config_defaults}
    needed = {"target_tokens", "weights" if name == "cross_entropy" else "", *spec.required_inputs}
    sent = [tinker.Datum(model_input=d.model_input,
                         loss_fn_inputs={k: v for k, v in d.loss_fn_inputs.items() if k in needed})
            for d in data]
    out = tc.forward(sent, name, config or None).result(timeout=T)
    total = 0.0
    for datum, result in zip(data, out.loss_fn_outputs, strict=True):
        target = result["logprobs"].to_numpy()
        inputs = {k: v.to_numpy() for k, v in datum.loss_fn_inputs.items()}
        per_token = _client_side(name, target, inputs, config, "none")
        np.testing.assert_allclose(per_token, result["elementwise_loss"].to_numpy(),
                                   rtol=1e-5, atol=1e-6)
        total += float(_client_side(name, target, inputs, config, "sum"))
    assert out.metrics["loss:sum"] == pytest.approx(total, rel=1e-5, abs=1e-6)
    assert np.isfinite(total) and total != 0.0


def test_custom_ppo_reports_the_server_ppo_loss(service: tinker.ServiceClient) -> None:
    """A custom loss sees every loss_fn_input (logprobs, advantages) that is never sent."""
    tc = service.create_lora_training_client(TINY, rank=4, seed=1).result(timeout=T)
    data, clip = _rl_data(np.random.default_rng(1))

    def ppo(logprobs: jnp.ndarray, batch: LossBatch) -> tuple[jnp.ndarray, dict[str, Any]]:
        return losses.ppo(logprobs, batch.inputs["logprobs"], batch.inputs["advantages"],
                          where=batch.mask, reduction="sum", **clip), {}

    server = tc.forward([tinker.Datum(model_input=d.model_input, loss_fn_inputs={
        k: d.loss_fn_inputs[k] for k in ("target_tokens", "logprobs", "advantages")})
        for d in data], "ppo", clip).result(timeout=T)
    custom = tc.forward_backward_custom(data, ppo).result(timeout=T)
    assert custom.metrics["loss:sum"] == pytest.approx(server.metrics["loss:sum"], rel=1e-5)


def _pairs() -> list[tuple[str, str, str]]:
    words = ("abc", "hello", "xyzzy", "tinker", "jax", "lora", "optax", "chex")
    return [(f"{w}=", f"{w[::-1]}\n", f"{w}\n") for w in words]


def _margin(tc: Any, data: list[tinker.Datum]) -> float:
    lps = _logprobs(tc, data)
    seq = [float(np.sum(lp * d.loss_fn_inputs["weights"].to_numpy()))
           for lp, d in zip(lps, data, strict=True)]
    return float(np.mean(np.array(seq[0::2]) - np.array(seq[1::2])))


def test_dpo_moves_the_preference_margin(service: tinker.ServiceClient) -> None:
    data = [_datum(p, c) for prompt, chosen, rejected in _pairs()
            for p, c in ((prompt, chosen), (prompt, rejected))]
    tc = service.create_lora_training_client(TINY, rank=8, seed=0).result(timeout=T)
    reference = _logprobs(tc, data)  # the frozen reference model = the start point
    pairs = np.arange(len(data)).reshape(-1, 2)

    def dpo_loss(logprobs: jnp.ndarray, batch: LossBatch) -> tuple[jnp.ndarray, dict[str, Any]]:
        mask = batch.mask * batch.inputs["weights"]  # completion tokens only
        policy = losses.sequence_logprobs(logprobs, where=mask)
        ref = losses.sequence_logprobs(batch.extras["reference"], where=mask)
        chosen, rejected = batch.extras["pairs"][:, 0], batch.extras["pairs"][:, 1]
        loss = losses.dpo(policy[chosen], policy[rejected], ref[chosen], ref[rejected],
                          reduction="mean", beta=0.5)
        return loss, {"dpo/margin:mean": jnp.mean(policy[chosen] - policy[rejected])}

    dpo = CustomLoss(dpo_loss, policy=BucketPolicy(min_datums=2))
    margin_before = _margin(tc, data)
    results = []
    with count_traces("_value_and_grad") as traces:
        for _ in range(6):
            fb = tc.forward_backward_custom(data, dpo, extras={"pairs": pairs},
                                            datum_extras=[{"reference": r} for r in reference])
            tc.optim_step(tinker.AdamParams(learning_rate=2e-3))
            results.append(fb.result(timeout=T))
    margin_after = _margin(tc, data)
    assert traces.count == 1
    assert results[0].metrics["dpo/margin:mean"] == pytest.approx(margin_before, abs=1e-3)
    assert results[0].metrics["loss:sum"] == pytest.approx(np.log(2), abs=1e-3)  # h = 0
    assert results[-1].metrics["loss:sum"] < results[0].metrics["loss:sum"] - 0.1
    assert margin_after > margin_before + 1.0, (margin_before, margin_after)


def test_regularizer_contributions_reach_the_metrics(service: tinker.ServiceClient) -> None:
    tc = service.create_lora_training_client(TINY, rank=4, seed=2).result(timeout=T)
    data = reversal_data()
    custom = CustomLoss(nll, [("l2", l2(), 0.01), ("entropy", entropy(), 0.1)])
    out = tc.forward_backward_custom(data, custom).result(timeout=T)
    m = out.metrics
    parts = m["loss/base:sum"] + m["reg/l2/contribution:sum"] + m["reg/entropy/contribution:sum"]
    assert m["loss:sum"] == pytest.approx(parts, rel=1e-5)
    assert m["loss/total:sum"] == pytest.approx(m["loss:sum"], rel=1e-6)
    assert m["reg/l2/weight:mean"] == pytest.approx(0.01)
    assert m["reg/l2/contribution:sum"] > 0 and m["reg/entropy/grad_norm:mean"] > 0
    # the server's linear surrogate is sum(-logprob * weight) with weight = -grad
    assert m["surrogate_loss:sum"] != pytest.approx(m["loss:sum"])


def test_one_compile_per_bucket_over_real_calls(service: tinker.ServiceClient) -> None:
    tc = service.create_lora_training_client(TINY, rank=4, seed=3).result(timeout=T)
    custom = CustomLoss(nll)
    with count_traces("_value_and_grad") as traces:
        for words in (("ab", "cde"), ("fghij", "k", "lm"), ("nopq", "r")):  # lengths <= 16
            tc.forward_backward_custom([_datum(f"{w}=", f"{w[::-1]}\n") for w in words],
                                       custom).result(timeout=T)
        assert traces.count == 2  # datum buckets 2 and 4, one length bucket (16)
        tc.forward_backward_custom([_datum("a" * 20 + "=", "a" * 20 + "\n")], custom).result(
            timeout=T)
        assert traces.count == 3  # length bucket 64


def test_failed_chain_poisons_the_client_and_orders_later_calls(
        service: tinker.ServiceClient) -> None:
    tc = service.create_lora_training_client(TINY, rank=4, seed=4).result(timeout=T)

    def not_finite(logprobs: jnp.ndarray, batch: LossBatch) -> tuple[jnp.ndarray, dict[str, Any]]:
        return jnp.sum(jnp.log(logprobs * 0.0) * batch.mask), {}

    fb = tc.forward_backward_custom(reversal_data(), not_finite)
    opt = tc.optim_step(tinker.AdamParams(learning_rate=1e-3))  # queued behind both phases
    with pytest.raises(ValueError, match="not finite"):
        fb.result(timeout=T)
    with pytest.raises(tinker.ClientPoisonedError):
        opt.result(timeout=T)
    with pytest.raises(tinker.ClientPoisonedError):
        tc.forward(reversal_data(), "cross_entropy").result(timeout=T)


def test_bad_losses_are_rejected_before_anything_is_sent(service: tinker.ServiceClient) -> None:
    tc = service.create_lora_training_client(TINY, rank=4, seed=5).result(timeout=T)
    data = reversal_data()

    def mixed_signals(data: jnp.ndarray, batch: LossBatch) -> tuple[Any, dict[str, Any]]:
        return jnp.sum(data), {}

    def torch_no_signal(d: Any, lps: Any) -> tuple[Any, dict[str, Any]]:
        return sum(lp.sum() for lp in lps), {}

    def not_scalar(logprobs: jnp.ndarray, batch: LossBatch) -> tuple[jnp.ndarray, dict[str, Any]]:
        return -logprobs * batch.mask, {}

    def bad_metric(logprobs: jnp.ndarray, batch: LossBatch) -> tuple[jnp.ndarray, dict[str, Any]]:
        return -jnp.sum(logprobs * batch.mask), {"a:b:mean": jnp.sum(logprobs)}

    counter = tc._counter
    with pytest.raises(tinker.ValidationError, match="loss_signature"):
        tc.forward_backward_custom(data, mixed_signals)
    with pytest.raises(tinker.ValidationError, match="loss_signature='torch'"):
        tc.forward_backward_custom(data, torch_no_signal)  # traced as JAX: the error says how
    with pytest.raises(tinker.ValidationError, match="JAX-only"):
        tc.forward_backward_custom(data, torch_nll, regularizers=[("l2", l2(), 0.1)])
    with pytest.raises(tinker.ValidationError, match="must be a scalar"):
        tc.forward_backward_custom(data, not_scalar)
    with pytest.raises(tinker.ValidationError, match="exactly one ':'"):
        tc.forward_backward_custom(data, bad_metric)
    with pytest.raises(tinker.ValidationError, match="target_tokens"):
        tc.forward_backward_custom([tinker.Datum(model_input=data[0].model_input,
                                                 loss_fn_inputs={"weights": [1.0] * 4})], nll)
    with pytest.raises(tinker.ValidationError, match="datum_extras"):
        tc.forward_backward_custom(data, nll, datum_extras=[{"r": [0.0]}])
    assert tc._counter == counter  # no request id was used: nothing was sent
    out = tc.forward_backward_custom(data, nll).result(timeout=T)  # the client still works
    assert np.isfinite(out.metrics["loss:sum"])
