"""Jit-compiled training runtime for the local server: forward, forward_backward, AdamW.

Everything the server calls for training lives here:

* `make_batch` pads ragged datums into a fixed bucket shape (batch size: power of two;
  sequence length: ``16, 24, 32, 48, 64, 96, ...``) with a float mask, so each compiled
  function is reused for every request that falls into the same bucket. `split_outputs`
  cuts the padded results back into per-datum numpy arrays.
* `forward` / `forward_backward` compute per-datum target logprobs (``[B, T]``, or
  ``[B, T, K]`` for 2-D ``target_tokens``), the per-token loss from a pluggable
  ``per_token_loss(target_logprobs, inputs, mask, config)`` (the signature of
  ``losses.BUILTIN_LOSSES[name].per_token``), the summed loss (Tinker semantics: a plain sum
  over tokens and datums) and, for ``forward_backward``, the gradient with respect to the
  LoRA adapter only. Loss hyperparameters are traced: changing one never recompiles.
* `accumulate` sums gradients of several forward_backward calls until the optimizer step.
* `init_optimizer` / `optim_step`: optax AdamW (``inject_hyperparams``) with the semantics of
  ``torch.optim.AdamW`` (decoupled weight decay ``p *= 1 - lr * wd``; bias-corrected moments;
  ``eps`` added to ``sqrt(v_hat)``) and torch-style global-norm clipping only when
  ``grad_clip_norm > 0``. All six hyperparameters are traced per step.
* The model's `RunOptions` (static) add micro-batching by a token budget inside one
  compiled call (`micro_batches`) and, with a mesh, batches split over its data axis and
  gradients / optimizer state sharded like the adapter (`tinkex_jax.local.model.sharding`).

The functions are module-level ``jax.jit`` objects: compiled code is shared by every model and
adapter with the same shapes.

Example:
    >>> import numpy as np
    >>> from tinkex_jax.local.model.config import LoraSpec, ModelConfig
    >>> from tinkex_jax.local.model.decoder import init_params
    >>> from tinkex_jax.local.model.lora import init_lora
    >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1,
    ...                   d_ff=16)
    >>> model = Model(init_params(cfg), cfg)
    >>> lora = init_lora(cfg, LoraSpec(rank=2))
    >>> def ce(lp, inputs, mask, config):
    ...     return -lp * inputs["weights"] * mask
    >>> datum = (np.array([1, 2, 3]), {"target_tokens": np.array([2, 3, 4]),
    ...                                "weights": np.array([0.0, 1.0, 1.0])})
    >>> batch, layout = make_batch([datum])
    >>> out, grads = forward_backward(model, lora, batch, ce, {})
    >>> split_outputs(out, layout)[0]["logprobs"].shape
    (3,)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tinkex_jax.errors import invalid

from .config import ModelConfig
from .decoder import Params, target_logprobs
from .lora import Lora
from .options import RunOptions

__all__ = [
    "ADAM_DEFAULTS",
    "Batch",
    "BatchLayout",
    "Buckets",
    "DEFAULT_BUCKETS",
    "ForwardOutput",
    "Model",
    "OptState",
    "PerTokenLoss",
    "accumulate",
    "forward",
    "forward_backward",
    "init_optimizer",
    "make_batch",
    "micro_batches",
    "optim_step",
    "optimizer_state_from_arrays",
    "optimizer_state_to_arrays",
    "split_outputs",
]

PerTokenLoss = Callable[[jax.Array, Mapping[str, jax.Array], jax.Array, Mapping[str, jax.Array]],
                        jax.Array]
"""``per_token_loss(target_logprobs, inputs, mask, config) -> per-token loss``.

``target_logprobs`` is ``[B, T]`` (``[B, T, K]`` for 2-D targets), ``inputs`` the float
``loss_fn_inputs`` other than ``target_tokens``, ``mask`` ``[B, T]`` float32 (1 = real
token), ``config`` the loss hyperparameters as traced scalars. The result has the shape of
``target_logprobs`` and is 0 where the mask is 0. Must be hashable (a plain function is):
it is a static argument of the jitted functions, one compile per distinct function."""

OptState = Any
"""The optimizer state pytree (optax ``inject_hyperparams(adamw)`` state over `Lora`)."""

ADAM_DEFAULTS: Mapping[str, float] = {
    "learning_rate": 1e-4, "beta1": 0.9, "beta2": 0.95, "eps": 1e-12, "weight_decay": 0.0,
    "grad_clip_norm": 0.0,
}
"""Tinker's ``AdamParams`` defaults; missing keys in `optim_step` take these values."""


# --------------------------------------------------------------------------------------------
# Model, batch and buckets
# --------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Model:
    """A base model: its parameter pytree (data), `ModelConfig` and `RunOptions` (static).

    Passing a `Model` to a jitted function specialises the compiled code on the config and
    the options (remat, attention, logits chunking, micro-batching, mesh).
    """

    params: Params
    config: ModelConfig = field(metadata={"static": True})
    options: RunOptions = field(default=RunOptions(), metadata={"static": True})


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Batch:
    """A padded, bucket-shaped batch (all device or numpy arrays).

    Attributes:
        tokens: ``[B, T]`` int32 model input.
        targets: ``[B, T]`` or ``[B, T, K]`` int32 target tokens.
        mask: ``[B, T]`` float32, 1 for real positions and 0 for padding.
        inputs: Other ``loss_fn_inputs`` as float32 ``[B, T]`` / ``[B, T, K]`` arrays.
    """

    tokens: Any
    targets: Any
    mask: Any
    inputs: dict[str, Any]


@dataclass(frozen=True)
class BatchLayout:
    """Host-side facts needed to unpad results: datum count and lengths."""

    lengths: tuple[int, ...]

    @property
    def num_datums(self) -> int:
        """Number of real datums (the rest of the batch is padding)."""
        return len(self.lengths)


def _bucket_sizes(minimum: int, fine: bool) -> Any:
    value = minimum
    while True:
        yield value
        if fine and value >= 16 and value % 2 == 0:
            yield value * 3 // 2
        value *= 2


@dataclass(frozen=True)
class Buckets:
    """Shape buckets: batch sizes are powers of two; sequence lengths are
    ``min_seq * 2**k`` and, when ``fine``, also the midpoints ``1.5 * min_seq * 2**k``.

    Example:
        >>> b = Buckets()
        >>> b.batch(5), b.seq(17), b.seq(40), b.seq(100)
        (8, 24, 48, 128)
    """

    min_batch: int = 1
    min_seq: int = 16
    fine: bool = True

    def batch(self, n: int) -> int:
        """The batch-size bucket for ``n`` datums."""
        return 1 << max(0, math.ceil(math.log2(max(n, self.min_batch, 1))))

    def seq(self, t: int) -> int:
        """The sequence-length bucket for a longest datum of ``t`` tokens."""
        for size in _bucket_sizes(self.min_seq, self.fine):
            if size >= t:
                return size
        raise AssertionError("unreachable")


DEFAULT_BUCKETS = Buckets()


def make_batch(datums: Sequence[tuple[Any, Mapping[str, Any]]], *,
               buckets: Buckets = DEFAULT_BUCKETS, max_seq_len: int | None = None,
               ) -> tuple[Batch, BatchLayout]:
    """Pads datums into one bucket-shaped `Batch` (numpy arrays).

    Args:
        datums: ``(tokens, loss_fn_inputs)`` per datum: ``tokens`` a 1-D int sequence of
            length ``N``; ``loss_fn_inputs`` holds ``target_tokens`` (``[N]`` or ``[N, K]``)
            and any other per-token inputs (``[N]`` or ``[N, K]``), converted to float32.
        buckets: The bucket policy.
        max_seq_len: Reject datums longer than this (e.g. ``config.max_seq_len``).

    Returns:
        ``(batch, layout)``; pass ``layout`` to `split_outputs`.

    Raises:
        ValidationError: Empty batch, missing ``target_tokens``, mismatched lengths, mixed
            target ranks or ``K``, inconsistent input keys, or too-long datums.

    Example:
        >>> import numpy as np
        >>> batch, layout = make_batch([([1, 2], {"target_tokens": [2, 3]}),
        ...                             ([5], {"target_tokens": [6]})])
        >>> batch.tokens.shape, batch.mask[1].tolist()[:3], layout.lengths
        ((2, 16), [1.0, 0.0, 0.0], (2, 1))
    """
    if not datums:
        raise invalid("forward_backward data", "at least one datum", "<empty list>")
    keys = None
    lengths: list[int] = []
    tail: tuple[int, ...] | None = None
    parsed: list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] = []
    for i, (tokens, inputs) in enumerate(datums):
        where = f"data[{i}]"
        tok = np.asarray(tokens)
        if tok.ndim != 1 or tok.size == 0 or not np.issubdtype(tok.dtype, np.integer):
            raise invalid(f"{where}.model_input", "a non-empty 1-D sequence of int token ids",
                          f"<array shape {tok.shape} dtype {tok.dtype}>")
        if "target_tokens" not in inputs:
            raise invalid(f"{where}.loss_fn_inputs", "a 'target_tokens' entry",
                          sorted(inputs), "add target_tokens (the inputs shifted by one)")
        n = tok.shape[0]
        tgt = np.asarray(inputs["target_tokens"])
        if tgt.ndim not in (1, 2) or tgt.shape[0] != n:
            raise invalid(f"{where}.loss_fn_inputs['target_tokens']",
                          f"shape [{n}] or [{n}, K] (one row per input token)",
                          f"<shape {tgt.shape}>")
        if tail is None:
            tail = tgt.shape[1:]
        elif tgt.shape[1:] != tail:
            raise invalid(f"{where}.loss_fn_inputs['target_tokens']",
                          f"the same trailing shape as data[0] ({list(tail)})",
                          f"<shape {tgt.shape}>", "send datums with one target layout per call")
        others: dict[str, np.ndarray] = {}
        for key, value in inputs.items():
            if key == "target_tokens":
                continue
            arr = np.asarray(value, dtype=np.float32)
            if arr.ndim == 0 or arr.shape[0] != n or arr.ndim > 1 + len(tail):
                raise invalid(f"{where}.loss_fn_inputs[{key!r}]", f"shape [{n}] or "
                              f"[{n}, ...] matching target_tokens", f"<shape {arr.shape}>")
            others[key] = arr
        if keys is None:
            keys = sorted(others)
        elif sorted(others) != keys:
            raise invalid(f"{where}.loss_fn_inputs", f"the same keys as data[0] ({keys})",
                          sorted(others))
        if max_seq_len is not None and n > max_seq_len:
            raise invalid(f"{where}.model_input", f"at most {max_seq_len} tokens (the model's "
                          "max_seq_len)", f"<{n} tokens>", "truncate or split the datum")
        lengths.append(n)
        parsed.append((tok, tgt, others))
    assert tail is not None and keys is not None
    B, T = buckets.batch(len(datums)), buckets.seq(max(lengths))
    tokens_out = np.zeros((B, T), np.int32)
    targets_out = np.zeros((B, T, *tail), np.int32)
    mask = np.zeros((B, T), np.float32)
    inputs_out = {k: np.zeros((B, T, *parsed[0][2][k].shape[1:]), np.float32) for k in keys}
    for i, (tok, tgt, others) in enumerate(parsed):
        n = tok.shape[0]
        tokens_out[i, :n] = tok
        targets_out[i, :n] = tgt
        mask[i, :n] = 1.0
        for k, v in others.items():
            if inputs_out[k].shape[2:] != v.shape[1:]:
                raise invalid(f"data[{i}].loss_fn_inputs[{k!r}]", "the same trailing shape "
                              f"as data[0] ({list(inputs_out[k].shape[2:])})",
                              f"<shape {v.shape}>")
            inputs_out[k][i, :n] = v
    return Batch(tokens_out, targets_out, mask, inputs_out), BatchLayout(tuple(lengths))


class ForwardOutput(NamedTuple):
    """Padded results of `forward` / `forward_backward` (device arrays).

    Attributes:
        logprobs: Target logprobs ``[B, T]`` or ``[B, T, K]`` (0 at padding).
        per_token_loss: The loss per token, same shape (0 at padding; 0 without a loss).
        loss: The summed loss (float32 scalar).
    """

    logprobs: jax.Array
    per_token_loss: jax.Array
    loss: jax.Array


def split_outputs(out: ForwardOutput, layout: BatchLayout) -> list[dict[str, np.ndarray]]:
    """Per-datum host arrays ``{"logprobs": [N(,K)], "elementwise_loss": [N(,K)]}``.

    Example:
        >>> import numpy as np
        >>> out = ForwardOutput(np.ones((2, 4)), np.zeros((2, 4)), np.float32(0))
        >>> [d["logprobs"].shape for d in split_outputs(out, BatchLayout((3, 1)))]
        [(3,), (1,)]
    """
    lp = np.asarray(out.logprobs, dtype=np.float32)
    loss = np.asarray(out.per_token_loss, dtype=np.float32)
    return [{"logprobs": lp[i, :n].copy(), "elementwise_loss": loss[i, :n].copy()}
            for i, n in enumerate(layout.lengths)]


# --------------------------------------------------------------------------------------------
# Forward / forward_backward
# --------------------------------------------------------------------------------------------


def _as_f32_config(config: Mapping[str, Any]) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v, jnp.float32) for k, v in config.items()}


def _loss_terms(model: Model, lora: Lora | None, batch: Batch,
                per_token_loss: PerTokenLoss | None, loss_config: Mapping[str, jax.Array],
                ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    lp = target_logprobs(model.params, lora, batch.tokens, batch.targets, model.config,
                         model.options)
    mask = batch.mask
    expand = mask.reshape(mask.shape + (1,) * (lp.ndim - mask.ndim)) > 0
    lp = jnp.where(expand, lp, 0.0)
    if per_token_loss is None:
        per = jnp.zeros_like(lp)
    else:
        per = per_token_loss(lp, batch.inputs, mask, loss_config)
        per = jnp.where(expand, per.astype(jnp.float32), 0.0)
    return jnp.sum(per), (lp, per)


def _forward_impl(model: Model, lora: Lora | None, batch: Batch,
                  per_token_loss: PerTokenLoss | None,
                  loss_config: Mapping[str, jax.Array]) -> ForwardOutput:
    n = micro_batches(model, batch.tokens.shape)
    if n == 1:
        loss, (lp, per) = _loss_terms(model, lora, batch, per_token_loss, loss_config)
        return ForwardOutput(lp, per, loss)

    def body(total: jax.Array, micro: Batch) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        loss, outs = _loss_terms(model, lora, micro, per_token_loss, loss_config)
        return total + loss, outs

    loss, (lp, per) = jax.lax.scan(body, jnp.zeros((), jnp.float32), _split_micro(batch, n))
    return ForwardOutput(_join_micro(lp), _join_micro(per), loss)


def _forward_backward_impl(model: Model, lora: Lora, batch: Batch,
                           per_token_loss: PerTokenLoss,
                           loss_config: Mapping[str, jax.Array]) -> tuple[ForwardOutput, Lora]:

    def objective(adapter: Lora, micro: Batch) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        return _loss_terms(model, adapter, micro, per_token_loss, loss_config)

    grad_fn = jax.value_and_grad(objective, has_aux=True)
    n = micro_batches(model, batch.tokens.shape)
    if n == 1:
        (loss, (lp, per)), grads = grad_fn(lora, batch)
        return ForwardOutput(lp, per, loss), _constrain_lora(grads, model.options)

    def body(carry: tuple[jax.Array, Lora], micro: Batch,
             ) -> tuple[tuple[jax.Array, Lora], tuple[jax.Array, jax.Array]]:
        total, acc = carry
        (loss, outs), grads = grad_fn(lora, micro)
        acc = jax.tree.map(jnp.add, acc, _constrain_lora(grads, model.options))
        return (total + loss, acc), outs

    zero = jax.tree.map(jnp.zeros_like, lora)
    (loss, grads), (lp, per) = jax.lax.scan(
        body, (jnp.zeros((), jnp.float32), _constrain_lora(zero, model.options)),
        _split_micro(batch, n))
    return ForwardOutput(_join_micro(lp), _join_micro(per), loss), grads


def micro_batches(model: Model, shape: Sequence[int]) -> int:
    """How many micro-batches a training call on a ``[B, T]`` batch is split into.

    Each micro-batch holds at most ``model.options.token_budget`` tokens (``B' * T``, with
    ``B'`` a divisor of ``B`` and a multiple of the mesh's data axis); 1 when the budget is
    0 or the batch fits. A single sequence longer than the budget is never split.

    Example:
        >>> from tinkex_jax.local.model.options import RunOptions
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2,
        ...                   n_kv_heads=1, d_ff=16)
        >>> m = Model({}, cfg, RunOptions(token_budget=64))
        >>> micro_batches(m, (8, 16)), micro_batches(m, (2, 16)), micro_batches(m, (4, 128))
        (2, 1, 4)
    """
    B, T = int(shape[0]), int(shape[1])
    budget = model.options.token_budget
    if not budget or budget >= B * T:
        return 1
    from .sharding import DATA_AXIS, mesh_shape

    data = mesh_shape(model.options.mesh)[DATA_AXIS]
    rows = max(1, budget // T)
    for size in range(min(rows, B), 0, -1):
        if B % size == 0 and size % data == 0:
            return B // size
    return 1 if B % data else B // data


def _split_micro(batch: Batch, n: int) -> Batch:
    """``[B, ...] -> [n, B/n, ...]``; micro-batch ``k`` holds rows ``k, n + k, 2n + k, ...``
    so that each one keeps rows from every block of a data-sharded batch."""

    def split(x: jax.Array) -> jax.Array:
        return jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1)

    result: Batch = jax.tree.map(split, batch)
    return result


def _join_micro(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, 0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def _constrain_lora(tree: Lora, options: RunOptions) -> Lora:
    """Pins a LoRA-shaped tree (gradients) to the adapter's shardings on the mesh."""
    if options.mesh is None:
        return tree
    from .sharding import lora_shardings

    weights = jax.lax.with_sharding_constraint(
        tree.weights, lora_shardings(tree.weights, options.mesh))
    return Lora(weights=weights, scale=tree.scale)


def _place_batch(model: Model, batch: Batch) -> Batch:
    """Splits the batch over the mesh's data axis (padding rows as needed)."""
    if model.options.mesh is None:
        return batch
    from .sharding import shard_batch

    placed: Batch = shard_batch(batch, model.options.mesh)
    return placed


_forward_jit = jax.jit(_forward_impl, static_argnames=("per_token_loss",))
_forward_backward_jit = jax.jit(_forward_backward_impl, static_argnames=("per_token_loss",))


def forward(model: Model, lora: Lora | None, batch: Batch,
            per_token_loss: PerTokenLoss | None = None,
            loss_config: Mapping[str, Any] | None = None) -> ForwardOutput:
    """Target logprobs and loss without gradients (Tinker ``forward``).

    Args:
        model: The frozen base.
        lora: The adapter, or None for the base model alone.
        batch: A bucket-shaped batch from `make_batch`.
        per_token_loss: The loss (see `PerTokenLoss`); None to skip the loss (zeros).
        loss_config: Loss hyperparameters (scalars; traced, so changes never recompile).

    Returns:
        A `ForwardOutput` of device arrays. With a mesh in ``model.options`` the batch rows
        are padded to a multiple of the data axis, so outputs may have more (masked) rows
        than the batch; `split_outputs` cuts them off.

    Example:
        >>> import numpy as np
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> from tinkex_jax.local.model.decoder import init_params
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2,
        ...                   n_kv_heads=1, d_ff=16)
        >>> batch, _ = make_batch([([1, 2], {"target_tokens": [[2, 3], [3, 4]]})])
        >>> forward(Model(init_params(cfg), cfg), None, batch).logprobs.shape
        (1, 16, 2)
    """
    return _forward_jit(model, lora, _place_batch(model, batch), per_token_loss,
                        _as_f32_config(loss_config or {}))


def forward_backward(model: Model, lora: Lora, batch: Batch, per_token_loss: PerTokenLoss,
                     loss_config: Mapping[str, Any] | None = None,
                     ) -> tuple[ForwardOutput, Lora]:
    """Forward pass plus the gradient of the summed loss with respect to the adapter only.

    Args:
        model: The frozen base (never differentiated).
        lora: The adapter being trained.
        batch: A bucket-shaped batch from `make_batch`.
        per_token_loss: The loss (see `PerTokenLoss`).
        loss_config: Loss hyperparameters (traced).

    With ``model.options.token_budget`` set, a batch over the budget is split into
    micro-batches (`micro_batches`) whose gradients and losses are summed inside the same
    compiled function: the results equal one pass over the whole batch (up to float
    rounding) while activations are held for one micro-batch at a time.

    Returns:
        ``(outputs, grads)``: a `ForwardOutput` and a float32 `Lora`-shaped gradient, to be
        summed with `accumulate` and applied with `optim_step`.

    Example:
        >>> import numpy as np
        >>> from tinkex_jax.local.model.config import LoraSpec, ModelConfig
        >>> from tinkex_jax.local.model.decoder import init_params
        >>> from tinkex_jax.local.model.lora import init_lora
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2,
        ...                   n_kv_heads=1, d_ff=16)
        >>> batch, _ = make_batch([([1, 2], {"target_tokens": [2, 3]})])
        >>> nll = lambda lp, inputs, mask, config: -lp * mask
        >>> out, g = forward_backward(Model(init_params(cfg), cfg),
        ...                           init_lora(cfg, LoraSpec(rank=2)), batch, nll)
        >>> g.weights["layers"]["wq"]["b"].shape
        (1, 2, 8)
    """
    return _forward_backward_jit(model, lora, _place_batch(model, batch), per_token_loss,
                                 _as_f32_config(loss_config or {}))


def _accumulate_impl(acc: Lora, grads: Lora) -> Lora:
    return jax.tree.map(jnp.add, acc, grads)


_accumulate_jit = jax.jit(_accumulate_impl, donate_argnums=(0,))


def accumulate(acc: Lora | None, grads: Lora) -> Lora:
    """Sums gradients across forward_backward calls (``acc`` may be None at the start).

    ``acc`` is donated: do not use it after the call.

    Example:
        >>> import jax.numpy as jnp
        >>> g = Lora({"unembed": {"a": jnp.ones((2, 1)), "b": jnp.ones((1, 2))}})
        >>> acc = accumulate(None, g)
        >>> float(accumulate(acc, g).weights["unembed"]["a"].sum())
        4.0
    """
    if acc is None:
        return jax.tree.map(jnp.copy, grads)
    return _accumulate_jit(acc, grads)


# --------------------------------------------------------------------------------------------
# Optimizer
# --------------------------------------------------------------------------------------------

_ADAMW = optax.inject_hyperparams(optax.adamw)(
    learning_rate=ADAM_DEFAULTS["learning_rate"], b1=ADAM_DEFAULTS["beta1"],
    b2=ADAM_DEFAULTS["beta2"], eps=ADAM_DEFAULTS["eps"],
    weight_decay=ADAM_DEFAULTS["weight_decay"],
)


def init_optimizer(lora: Lora) -> OptState:
    """Fresh AdamW state (zero moments, step 0) for an adapter.

    The moments have the adapter's dtype (float32) and, when the adapter is sharded over a
    mesh, the shardings of the leaves they track (`sharding.optimizer_shardings`).

    Example:
        >>> import jax.numpy as jnp
        >>> state = init_optimizer(Lora({"unembed": {"a": jnp.ones((2, 1)),
        ...                                          "b": jnp.zeros((1, 2))}}))
        >>> int(state.count)
        0
    """
    state = _ADAMW.init(lora.weights)
    mesh = _mesh_of(lora.weights)
    if mesh is not None:
        from .sharding import optimizer_shardings

        state = jax.device_put(state, optimizer_shardings(state, lora.weights, mesh))
    return state


def _mesh_of(tree: Any) -> Any:
    """The mesh a tree's arrays are sharded over (None for single-device arrays)."""
    for leaf in jax.tree.leaves(tree):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh.size > 1:
            return sharding.mesh
        return None
    return None


def _optim_step_impl(lora: Lora, state: OptState, grads: Lora,
                     hp: Mapping[str, jax.Array]) -> tuple[Lora, OptState, dict[str, jax.Array]]:
    g = grads.weights
    grad_norm = optax.tree.norm(g)
    clip = hp["grad_clip_norm"]
    # torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), clamped to 1.
    factor = jnp.where(clip > 0, jnp.minimum(1.0, clip / (grad_norm + 1e-6)), 1.0)
    g = jax.tree.map(lambda x: x * factor.astype(x.dtype), g)
    hyper = dict(state.hyperparams)
    hyper.update(learning_rate=hp["learning_rate"], b1=hp["beta1"], b2=hp["beta2"],
                 eps=hp["eps"], weight_decay=hp["weight_decay"])
    updates, new_state = _ADAMW.update(g, state._replace(hyperparams=hyper), lora.weights)
    weights = optax.apply_updates(lora.weights, updates)
    metrics = {
        "grad_norm": grad_norm,
        "grad_norm_clipped": grad_norm * factor,
        "learning_rate": hp["learning_rate"],
        "update_norm": optax.tree.norm(updates),
        "param_norm": optax.tree.norm(weights),
    }
    # A step with a non-finite norm is skipped in the graph (the old state is donated, so
    # only here can it be kept): weights and optimizer state come back unchanged.
    finite = jnp.all(jnp.isfinite(jnp.stack([metrics["grad_norm"], metrics["update_norm"],
                                             metrics["param_norm"]])))
    weights = jax.tree.map(lambda new, old: jnp.where(finite, new, old), weights, lora.weights)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    return Lora(weights=weights, scale=lora.scale), new_state, metrics


_optim_step_jit = jax.jit(_optim_step_impl, donate_argnums=(1, 2))


def _optim_step_sharded_impl(lora: Lora, state: OptState, grads: Lora,
                             hp: Mapping[str, jax.Array], mesh: Any,
                             ) -> tuple[Lora, OptState, dict[str, jax.Array]]:
    from .sharding import lora_shardings, optimizer_shardings

    new, new_state, metrics = _optim_step_impl(lora, state, grads, hp)
    weights = jax.lax.with_sharding_constraint(new.weights,
                                               lora_shardings(new.weights, mesh))
    new_state = jax.lax.with_sharding_constraint(
        new_state, optimizer_shardings(new_state, new.weights, mesh))
    return Lora(weights=weights, scale=new.scale), new_state, metrics


_optim_step_sharded_jit = jax.jit(_optim_step_sharded_impl, static_argnames=("mesh",),
                                  donate_argnums=(1, 2))


def optim_step(lora: Lora, state: OptState, grads: Lora,
               adam_params: Mapping[str, float] | None = None,
               ) -> tuple[Lora, OptState, dict[str, jax.Array]]:
    """One AdamW step with Tinker's semantics (``torch.optim.AdamW`` + optional clipping).

    ``p <- p * (1 - lr * wd) - lr * m_hat / (sqrt(v_hat) + eps)`` after scaling the gradient
    by ``min(1, grad_clip_norm / (||g|| + 1e-6))`` when ``grad_clip_norm > 0``.

    Args:
        lora: The adapter (not donated: sampler snapshots may still hold it).
        state: The optimizer state (donated).
        grads: The summed gradient (donated).
        adam_params: ``learning_rate, beta1, beta2, eps, weight_decay, grad_clip_norm``
            (missing keys: `ADAM_DEFAULTS`). Traced: changing them never recompiles.

    Returns:
        ``(new_lora, new_state, metrics)``; metrics are scalar device arrays:
        ``grad_norm`` (before clipping), ``grad_norm_clipped``, ``learning_rate``,
        ``update_norm``, ``param_norm``. When ``grad_norm``, ``update_norm`` or
        ``param_norm`` is not finite the step is skipped: the adapter and the optimizer
        state come back unchanged (the metrics still show the non-finite values).

    Raises:
        ValidationError: Unknown hyperparameter names.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> lora = Lora({"unembed": {"a": jnp.ones((2, 1)), "b": jnp.zeros((1, 2))}})
        >>> grads = jax.tree.map(jnp.ones_like, lora)
        >>> new, state, m = optim_step(lora, init_optimizer(lora), grads,
        ...                            {"learning_rate": 0.1})
        >>> round(float(new.weights["unembed"]["a"][0, 0]), 4), round(float(m["grad_norm"]), 3)
        (0.9, 2.0)
    """
    given = dict(adam_params or {})
    unknown = sorted(set(given) - set(ADAM_DEFAULTS))
    if unknown:
        raise invalid("AdamParams", f"keys among {sorted(ADAM_DEFAULTS)}", unknown)
    hp = {k: jnp.asarray(given.get(k, v), jnp.float32) for k, v in ADAM_DEFAULTS.items()}
    mesh = _mesh_of(lora.weights)
    if mesh is not None:  # keep the adapter's and the moments' shardings across steps
        return _optim_step_sharded_jit(lora, state, grads, hp, mesh=mesh)
    return _optim_step_jit(lora, state, grads, hp)


def optimizer_state_to_arrays(state: OptState) -> dict[str, np.ndarray]:
    """Flat host arrays of an optimizer state, keyed by pytree path (for checkpoints).

    Example:
        >>> import jax.numpy as jnp
        >>> s = init_optimizer(Lora({"unembed": {"a": jnp.ones((2, 1)),
        ...                                      "b": jnp.zeros((1, 2))}}))
        >>> "count" in optimizer_state_to_arrays(s)
        True
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    return {_path_key(path): np.asarray(leaf) for path, leaf in flat}


def _path_key(path: Sequence[Any]) -> str:
    parts = []
    for p in path:
        for attr in ("key", "name", "idx"):
            if hasattr(p, attr):
                parts.append(str(getattr(p, attr)))
                break
    return ".".join(parts)


def optimizer_state_from_arrays(arrays: Mapping[str, Any], lora: Lora) -> OptState:
    """Rebuilds an optimizer state for `lora` from `optimizer_state_to_arrays` output.

    Raises:
        ValidationError: The arrays do not match the adapter's structure or shapes.

    Example:
        >>> import jax.numpy as jnp
        >>> lora = Lora({"unembed": {"a": jnp.ones((2, 1)), "b": jnp.zeros((1, 2))}})
        >>> s = optimizer_state_from_arrays(optimizer_state_to_arrays(init_optimizer(lora)),
        ...                                 lora)
        >>> int(s.count)
        0
    """
    template = init_optimizer(lora)
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for path, leaf in flat:
        key = _path_key(path)
        if key not in arrays:
            raise invalid("optimizer state", f"an entry {key!r} for this adapter",
                          sorted(arrays)[:8], "load the state saved with this adapter")
        value = np.asarray(arrays[key])
        if value.shape != leaf.shape:
            raise invalid(f"optimizer state[{key!r}]", f"shape {tuple(leaf.shape)}",
                          f"<shape {value.shape}>")
        leaves.append(jax.device_put(value.astype(leaf.dtype), leaf.sharding))
    return jax.tree_util.tree_unflatten(treedef, leaves)
