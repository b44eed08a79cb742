"""A LoRA training step through the server (over HTTP) equals the same step computed directly
with the JAX model and optax: unpadded per-datum logprobs, ``jax.grad`` of the token-sum
cross-entropy, ``optax.adamw`` (+ global-norm clipping), two steps with different
hyperparameters and gradient accumulation across two forward_backward calls."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from safetensors.numpy import load_file

from tests.support.jax_traces import count_traces
from tests.support.local_support import TINY, RawClient, datum
from tinkex_jax.local.model import decoder
from tinkex_jax.local.model.config import LoraSpec
from tinkex_jax.local.model.lora import Lora, init_lora, lora_to_arrays

pytestmark = pytest.mark.slow

TEXTS = ["abc=abc\nxyz=xyz", "hello world!", "12+7=19\n3+4=7\n5+5=10"]
STEPS = [
    {"learning_rate": 2e-2, "beta1": 0.9, "beta2": 0.95, "eps": 1e-4, "weight_decay": 0.1,
     "grad_clip_norm": 0.5},
    {"learning_rate": 5e-3, "beta1": 0.8, "beta2": 0.99, "eps": 1e-5, "weight_decay": 0.0,
     "grad_clip_norm": 0.0},
]


def reference_loss(lora: Lora, base: Any, cfg: Any, seqs: tuple[tuple[int, ...], ...]
                   ) -> jax.Array:
    """Token-sum cross-entropy, one unpadded forward per sequence."""
    total = jnp.float32(0.0)
    for toks in seqs:
        x = jnp.asarray(toks[:-1], jnp.int32)[None]
        y = jnp.asarray(toks[1:], jnp.int32)[None]
        total = total - decoder.target_logprobs(base, lora, x, y, cfg).sum()
    return total


_value_and_grad = jax.jit(jax.value_and_grad(reference_loss), static_argnums=(2, 3))


def reference_steps(base: Any, cfg: Any, seqs: tuple[tuple[int, ...], ...]
                    ) -> tuple[Lora, list[float]]:
    """The adapter after `STEPS` and the loss before each step."""
    lora = init_lora(cfg, LoraSpec(rank=8, seed=0))
    state = None
    losses = []
    for hp in STEPS:
        loss, grads = _value_and_grad(lora, base, cfg, seqs)
        losses.append(float(loss))
        parts = [optax.clip_by_global_norm(hp["grad_clip_norm"])] if hp["grad_clip_norm"] else []
        tx = optax.chain(*parts, optax.adamw(hp["learning_rate"], b1=hp["beta1"],
                                              b2=hp["beta2"], eps=hp["eps"],
                                              weight_decay=hp["weight_decay"]))
        inner = tx.init(lora.weights)
        if state is not None:  # carry the Adam moments; the clip stage is stateless
            inner = (*inner[:-1], state) if parts else (state,)
        updates, inner = tx.update(grads.weights, inner, lora.weights)
        state = inner[-1]
        lora = Lora(weights=optax.apply_updates(lora.weights, updates), scale=lora.scale)
    return lora, losses


@pytest.fixture(scope="module")
def reference(jax_backend: Any) -> dict[str, Any]:
    loaded = jax_backend._load(TINY)
    seqs = tuple(tuple(t.encode()) for t in TEXTS)
    lora, losses = reference_steps(loaded.model.params, loaded.config, seqs)
    final = [np.asarray(decoder.target_logprobs(
        loaded.model.params, lora, jnp.asarray(s[:-1])[None], jnp.asarray(s[1:])[None],
        loaded.config))[0] for s in seqs]
    return {"arrays": {k: np.asarray(v) for k, v in lora_to_arrays(lora).items()},
            "losses": losses, "logprobs": final}


def test_server_step_equals_direct_jax_optax_step(tiny_server: Any,
                                                 reference: dict[str, Any]) -> None:
    raw = RawClient(tiny_server)
    seqs = [list(t.encode()) for t in TEXTS]
    model = raw.create_model(raw.session(), base=TINY, rank=8)
    compiled_after_first = 0
    with count_traces("_optim_step_impl") as traces:
        for i, hp in enumerate(STEPS):
            a = raw.fb(model, 3 * i + 1, [datum(s) for s in seqs[:2]])  # accumulates over 2
            b = raw.fb(model, 3 * i + 2, [datum(seqs[2])])
            assert a.metrics["loss:sum"] + b.metrics["loss:sum"] == pytest.approx(
                reference["losses"][i], rel=1e-5)
            fut = raw.ok("optim_step", {"model_id": model, "seq_id": 3 * i + 3,
                                        "type": "optim_step", "adam_params": hp})
            metrics = raw.result(fut["request_id"])["metrics"]
            assert metrics["learning_rate:mean"] == pytest.approx(hp["learning_rate"])
            if i == 0:
                compiled_after_first = traces.count
    # new hyperparameters are traced values: the second step compiled nothing new
    assert traces.count == compiled_after_first
    path = raw.result(raw.ok("save_weights", {"model_id": model, "path": "numerics",
                                              "seq_id": 7, "type": "save_weights"})
                      ["request_id"])["path"]
    storage = tiny_server.engine.storage
    row = storage.get_checkpoint(model, "weights/numerics")
    assert row is not None and row.tinker_path == path
    served = load_file(str(storage.checkpoint_path(row) / "adapter.safetensors"))
    want = reference["arrays"]
    assert sorted(served) == sorted(want)
    # Adam divides by sqrt(v) + eps: where a gradient is tiny (B = 0 at init makes many of
    # them ~0) float32 summation-order noise is amplified, so eps is not tiny in STEPS and a
    # few elements may still differ by a small fraction of lr.
    lr = max(hp["learning_rate"] for hp in STEPS)
    for key, expected in want.items():
        close = np.isclose(served[key], expected, rtol=1e-4, atol=1e-6)
        assert close.mean() > 0.999, (key, close.mean())
        np.testing.assert_allclose(served[key], expected, atol=0.01 * lr, err_msg=key)
    assert max(float(np.abs(v).max()) for v in want.values()) > 1e-3  # the adapter moved
    after = raw.fb(model, 8, [datum(s) for s in seqs], forward_only=True)
    for got, expected in zip(after.loss_fn_outputs, reference["logprobs"]):
        np.testing.assert_allclose(got["logprobs"].to_numpy(), expected, atol=5e-5)
