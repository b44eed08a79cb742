"""Custom losses as jit-compiled JAX functions that really train the model.

``TrainingClient.forward_backward_custom(data, loss_fn, regularizers=...)`` follows
docs/protocol.md §8.1:

1. a forward pass (loss ``cross_entropy``, only ``target_tokens`` and ``weights`` sent) gives
   the per-token logprobs of every datum;
2. the datums are padded into a length bucket (:class:`losses.BucketPolicy`) and one
   jit-compiled function evaluates ``jax.value_and_grad`` of the loss (plus the weighted
   regularizer terms of :func:`regularizers.compose`) with respect to the logprobs, metrics
   as aux, evaluated once;
3. a ``forward_backward`` with ``cross_entropy`` and ``weights = -dLoss/dlogprobs`` (the
   server's loss is ``Σ -logprob · weight``, so its parameter gradient equals the custom
   loss's) applies the gradient, with the same chunk boundaries as the forward pass.

Request ids for both phases are reserved before anything is sent, so an ``optim_step``
submitted right after waits behind both. A failure anywhere in the chain poisons the
client. The result reports ``loss:sum`` = the custom loss, ``surrogate_loss:sum`` = the
server's linear surrogate, the composition's per-term metrics (value, weight, contribution,
gradient norm) and the loss's own metrics. The two requests, the chunking and the metric
merge are the client's (`TrainingClient.forward_backward_surrogate`, with the pure pieces in
`tinkex_jax.builders`); this module only turns logprobs into gradients.

State is explicit, optax-style: a `CustomLoss` holds no state. Stateful terms (an adaptive
KL coefficient, ...) start from `CustomLoss.init` and every evaluation returns the next
state; `forward_backward_custom` keeps it in the training client's ``loss_states``, so two
clients never share it and it lives as long as the client. Compiled functions are cached by
what determines the compilation (the loss function, its terms and the bucket policy), and
hold nothing else.

A loss is a pure function ``loss_fn(logprobs, batch) -> (loss, metrics)``: ``logprobs`` is
``[B, T]`` (``[B, T, K]`` for 2-D targets) and ``batch`` a :class:`losses.LossBatch` holding
every ``loss_fn_inputs`` key of every datum, the token and datum masks, and any side arrays
(``extras`` for batch-level arrays such as pair indices, ``datum_extras`` for per-datum
arrays such as reference logprobs). Padded positions have logprob 0 and mask 0.

This module imports JAX; ``import tinkex_jax`` does not (the TrainingClient loads it on the
first ``forward_backward_custom``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from losses import (
    DEFAULT_BUCKET_POLICY,
    BucketPolicy,
    LossBatch,
    make_loss_batch,
    pad_to_bucket,
    unpad as unpad_batch,
)
from regularizers import ComposedLoss, ComposedState, TermSpec, compose, report_metrics

from ._loss_signature import loss_kind
from ._shell import Future
from ._torch_loss import require_torch, torch_loss_gradients
from .builders import SurrogateGradients
from .errors import ValidationError, invalid
from .types import Datum, ForwardBackwardOutput

if TYPE_CHECKING:
    from .clients import TrainingClient

__all__ = [
    "CustomLoss",
    "CustomLossFn",
    "CustomLossOutput",
    "PreparedBatch",
    "forward_backward_custom",
]

CustomLossFn = Callable[[jax.Array, LossBatch], tuple[jax.Array, Mapping[str, Any]]]
"""``(logprobs [B, T], batch: LossBatch) -> (scalar loss, {metric name: scalar})``."""

_EXPECTED_SIGNATURE = (
    "loss_fn(logprobs: jax.Array [B, T], batch: losses.LossBatch) -> (scalar jax.Array, "
    "dict[str, scalar])"
)


# ----------------------------------------------------------------------------- pure pieces


def _datums(data: Sequence[Datum]) -> list[Datum]:
    if isinstance(data, Datum) or not isinstance(data, Sequence):
        raise invalid("data", "a list of Datum", f"<{type(data).__name__}>")
    if not data:
        raise invalid("data", "at least one Datum", "[]", "pass a non-empty list")
    for i, datum in enumerate(data):
        if not isinstance(datum, Datum):
            raise invalid(f"data[{i}]", "a Datum", f"<{type(datum).__name__}>")
    return [datum.snapshot() for datum in data]


# ----------------------------------------------------------------------------- the loss


@dataclass(frozen=True)
class PreparedBatch:
    """A :class:`losses.LossBatch` padded to a bucket (NumPy, on the host), ready for logprobs.

    Attributes:
        batch: the padded inputs, masks and extras.
        lengths: ``[n]`` the real number of tokens of each datum.
        logprob_shapes: the shape each datum's logprobs must have (its ``target_tokens``).
    """

    batch: LossBatch
    lengths: np.ndarray
    logprob_shapes: tuple[tuple[int, ...], ...]

    @property
    def logprobs_shape(self) -> tuple[int, ...]:
        """The padded logprobs shape ``[B, T]`` (or ``[B, T, K]``)."""
        return self.batch.inputs["target_tokens"].shape


CustomLossOutput = SurrogateGradients
"""What one evaluation gives, on the host: ``loss`` (the loss plus weighted terms),
``grads`` (``dLoss / dlogprobs`` per datum, unpadded, float32), ``metrics`` (the loss's own
and the composition's: ``loss/total:sum``, ``reg/<name>/contribution:sum``, gradient
norms, ...) and ``state`` (the terms' next state, or None when no term keeps any)."""


class CustomLoss:
    """A custom loss plus regularizer terms, jit-compiled once per length bucket.

    It holds no state: the compiled function (one per padded shape, by JAX) and what
    determines it. Stateful terms (:func:`regularizers.adaptive_kl`, ...) start from `init`,
    and every `evaluate` takes a state and returns the next one in its output (optax's
    ``init`` / ``update`` shape); ``forward_backward_custom`` threads it through the training
    client's ``loss_states`` in call order.

    Args:
        loss_fn: ``(logprobs [B, T], batch: LossBatch) -> (scalar, metrics)``.
        regularizers: ``TermSpec(name, term, weight)`` or ``(name, term[, weight])`` tuples.
        policy: the padding buckets (``BucketPolicy(min_datums=2)`` for pair losses).
        pad_values: padding value per ``loss_fn_inputs`` / ``datum_extras`` key (default 0).

    Example:
        >>> import numpy as np, jax.numpy as jnp
        >>> from regularizers import l2
        >>> def nll(logprobs, batch):
        ...     return -jnp.sum(logprobs * batch.mask), {}
        >>> loss = CustomLoss(nll, [("l2", l2(), 0.5)])
        >>> out = loss({"target_tokens": np.array([1, 2])}, [np.array([-1.0, -3.0])])
        >>> round(out.loss, 3), [g.tolist() for g in out.grads]  # 4 + 0.5 * (1 + 9) / 2
        (6.5, [[-1.5, -2.5]])
        >>> out.state is None  # no term keeps state
        True
    """

    def __init__(self, loss_fn: CustomLossFn,
                 regularizers: Sequence[TermSpec | tuple[Any, ...]] = (), *,
                 policy: BucketPolicy = DEFAULT_BUCKET_POLICY,
                 pad_values: Mapping[str, float] | None = None) -> None:
        if isinstance(loss_fn, CustomLoss) or not callable(loss_fn):
            raise invalid("loss_fn", f"a function {_EXPECTED_SIGNATURE}",
                          f"<{type(loss_fn).__name__}>")
        if not isinstance(policy, BucketPolicy):
            raise invalid("policy", "a losses.BucketPolicy", f"<{type(policy).__name__}>")
        try:
            self.composed: ComposedLoss = compose(loss_fn, list(regularizers))
        except (TypeError, ValueError) as error:
            raise ValidationError(f"regularizers: {error}", where="regularizers") from error
        self.loss_fn = loss_fn
        self.policy = policy
        self.pad_values = dict(pad_values or {})
        self._jitted = jax.jit(self._value_and_grad)

    def __repr__(self) -> str:
        return f"CustomLoss({self.composed!r})"

    def init(self) -> ComposedState | None:
        """The initial state of the stateful terms (None when no term keeps state)."""
        return self.composed.init() if self.composed.stateful else None

    def _value_and_grad(self, logprobs: jax.Array, batch: LossBatch,
                        state: ComposedState | None
                        ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array], Any]:
        if state is None:
            (total, report), grad = self.composed.value_and_grad(logprobs, batch)
            new_state = None
        else:
            (total, report, new_state), grad = self.composed.value_and_grad(logprobs, batch,
                                                                             state)
        return total, grad, report_metrics(report), new_state

    def _state_or_init(self, state: ComposedState | None) -> ComposedState | None:
        if not self.composed.stateful:
            return None
        return self.composed.init() if state is None else state

    def prepare(self, inputs: Sequence[Mapping[str, ArrayLike]], *,
                extras: Mapping[str, ArrayLike] | None = None,
                datum_extras: Sequence[Mapping[str, ArrayLike]] | None = None
                ) -> PreparedBatch:
        """Pad per-datum ``loss_fn_inputs`` (and side arrays) into a bucket.

        Raises:
            ValidationError: no ``target_tokens``, mismatched keys, lengths or shapes.
        """
        if isinstance(inputs, Mapping):
            inputs = [inputs]
        for i, datum in enumerate(inputs):
            if "target_tokens" not in datum:
                raise invalid(f"data[{i}].loss_fn_inputs", "a 'target_tokens' entry",
                              f"<keys {sorted(datum)}>")
        try:
            batch, lengths = make_loss_batch(inputs, policy=self.policy, extras=extras,
                                             datum_extras=datum_extras,
                                             pad_values=self.pad_values)
        except (TypeError, ValueError) as error:
            raise ValidationError(f"forward_backward_custom: {error}",
                                  where="data") from error
        shapes = tuple(tuple(np.shape(d["target_tokens"])) for d in inputs)
        return PreparedBatch(batch=batch, lengths=lengths, logprob_shapes=shapes)

    def check(self, prepared: PreparedBatch) -> None:
        """Trace the loss on abstract logprobs (nothing runs) to catch errors before sending.

        The trace is the one the real call reuses, so checking costs no extra compile.

        Raises:
            ValidationError: the loss fails, returns a non-scalar, or bad metric names.
        """
        logprobs = jax.ShapeDtypeStruct(prepared.logprobs_shape, jnp.float32)
        try:
            self._jitted.eval_shape(logprobs, prepared.batch, self.init())
        except Exception as error:
            raise ValidationError(
                f"loss_fn: calling it on logprobs float32{list(prepared.logprobs_shape)} and "
                f"a LossBatch with inputs {sorted(prepared.batch.inputs)} and extras "
                f"{sorted(prepared.batch.extras)} failed with {type(error).__name__}: {error}. "
                f"Expected {_EXPECTED_SIGNATURE}, pure JAX (no torch, no .item()); padded "
                f"positions have batch.mask == 0. If it is an official-SDK torch loss "
                f"(data, logprobs_list), pass loss_signature='torch'.", where="loss_fn") from error

    def evaluate(self, logprobs: Sequence[ArrayLike], prepared: PreparedBatch,
                 state: ComposedState | None = None) -> CustomLossOutput:
        """Run the compiled loss on per-datum logprobs from `state` (None: `init`).

        Returns:
            The loss, the per-datum gradients, the metrics and the terms' next state.

        Raises:
            ValueError: logprobs of the wrong number or shape, or a non-finite loss or
                gradient (nothing would be learnt from it).
        """
        arrays = [np.asarray(lp, dtype=np.float32) for lp in logprobs]
        if len(arrays) != len(prepared.logprob_shapes):
            raise ValueError(f"custom loss: {len(arrays)} logprob arrays for "
                             f"{len(prepared.logprob_shapes)} datums")
        for i, (array, shape) in enumerate(zip(arrays, prepared.logprob_shapes, strict=True)):
            if array.shape != shape:
                raise ValueError(f"custom loss: logprobs of datum {i} have shape {array.shape}, "
                                 f"its target_tokens {shape}")
        batch_shape = prepared.logprobs_shape
        padded, _ = pad_to_bucket(arrays, length=batch_shape[1], num_datums=batch_shape[0],
                                  dtype=np.float32, name="logprobs")
        total, grad, metrics, new_state = self._jitted(padded, prepared.batch,
                                                       self._state_or_init(state))
        total, grad, metrics = jax.device_get((total, grad, metrics))
        if not np.isfinite(total) or not np.all(np.isfinite(grad)):
            raise ValueError(
                f"custom loss: the loss ({float(total)}) or its gradient is not finite; "
                f"nothing was sent for the backward pass. Check for log(0), division by a "
                f"zero mask sum or exp overflow (padded logprobs are 0).")
        return CustomLossOutput(loss=float(total), grads=unpad_batch(grad, prepared.lengths),
                                metrics={k: float(v) for k, v in metrics.items()},
                                state=new_state)

    def __call__(self, inputs: Sequence[Mapping[str, ArrayLike]] | Mapping[str, ArrayLike],
                 logprobs: Sequence[ArrayLike], *, state: ComposedState | None = None,
                 extras: Mapping[str, ArrayLike] | None = None,
                 datum_extras: Sequence[Mapping[str, ArrayLike]] | None = None
                 ) -> CustomLossOutput:
        """Prepare, check and evaluate in one go, with no server (for tests and notebooks)."""
        prepared = self.prepare(inputs if not isinstance(inputs, Mapping) else [inputs],
                                extras=extras, datum_extras=datum_extras)
        self.check(prepared)
        return self.evaluate(logprobs, prepared, state)


_CACHE_SIZE = 32
_cache: OrderedDict[tuple[Any, ...], CustomLoss] = OrderedDict()
_cache_lock = threading.Lock()


def _compile_key(loss_fn: Callable[..., Any], terms: Sequence[TermSpec | tuple[Any, ...]],
                 policy: BucketPolicy) -> tuple[Any, ...]:
    """What determines a plain function's compiled loss: the function, its term objects and
    weights, the bucket policy."""
    return (loss_fn, tuple((t[0], id(t[1]), t[2] if len(t) > 2 else 1.0)
                           if isinstance(t, tuple) else (type(t).__name__, id(t), 0)
                           for t in terms), policy)


def _custom_loss_for(loss_fn: CustomLossFn | CustomLoss,
                     regularizers: Sequence[TermSpec | tuple[Any, ...]] | None,
                     policy: BucketPolicy | None) -> tuple[CustomLoss, Any]:
    """The `CustomLoss` for `loss_fn` and the key its state lives under in a client.

    A plain function's CustomLoss is cached by `_compile_key`, so repeated calls reuse its
    compiles (the cache holds no state: it lives in the client, under that key).
    """
    if isinstance(loss_fn, CustomLoss):
        if regularizers is not None or policy is not None:
            raise invalid("forward_backward_custom", "regularizers / policy given once",
                          "<a CustomLoss and regularizers= or policy=>",
                          "pass them to CustomLoss(...) instead")
        return loss_fn, loss_fn
    terms = list(regularizers or ())
    key = _compile_key(loss_fn, terms, policy or DEFAULT_BUCKET_POLICY)
    with _cache_lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
            return found, key
    custom = CustomLoss(loss_fn, terms, policy=policy or DEFAULT_BUCKET_POLICY)
    with _cache_lock:
        _cache[key] = custom
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return custom, key


# ----------------------------------------------------------------------------- the call


def forward_backward_custom(
    training_client: TrainingClient,
    data: Sequence[Datum],
    loss_fn: CustomLossFn | CustomLoss | Callable[..., Any],
    *,
    regularizers: Sequence[TermSpec | tuple[Any, ...]] | None = None,
    extras: Mapping[str, ArrayLike] | None = None,
    datum_extras: Sequence[Mapping[str, ArrayLike]] | None = None,
    policy: BucketPolicy | None = None,
    loss_signature: str | None = None,
) -> Future[ForwardBackwardOutput]:
    """Forward, differentiate a custom loss of the logprobs, and apply it (docs/protocol.md §8.1).

    Call it as ``training_client.forward_backward_custom(data, loss_fn, ...)``. The loss is
    either a JAX function ``(logprobs [B, T], batch: LossBatch) -> (loss, metrics)`` (jit-
    compiled, with regularizers and side arrays) or an official-SDK torch function
    ``(data, logprobs_list) -> (loss, metrics)`` (needs PyTorch); `tinkex_jax._loss_signature`
    says how the two are told apart, and `loss_signature` says it explicitly. The requests
    go through `TrainingClient.forward_backward_surrogate`.

    Args:
        training_client: the client whose model trains; it keeps the loss terms' state.
        data: the datums; every ``loss_fn_inputs`` key reaches the loss, only
            ``target_tokens`` and ``weights`` reach the server.
        loss_fn: the loss, or a :class:`CustomLoss` (which carries its regularizers and
            policy).
        regularizers: weighted terms added to a JAX loss (``TermSpec`` or tuples). Build them
            once: a new term object means a new compile (and a new state).
        extras: batch-level side arrays (e.g. ``[P, 2]`` pair indices) in ``batch.extras``.
        datum_extras: one mapping of side arrays per datum (e.g. reference logprobs),
            padded like the inputs into ``batch.extras``.
        policy: the padding buckets (default :data:`losses.DEFAULT_BUCKET_POLICY`).
        loss_signature: ``"jax"`` or ``"torch"``; None infers it from the signature.

    Returns:
        A Future of the backward phase's `ForwardBackwardOutput` with the merged metrics.

    Raises:
        ValidationError: bad data, side arrays, a JAX loss that fails to trace, or a torch
            loss without PyTorch or with JAX-only options (before anything is sent).

    Example:
        >>> import jax.numpy as jnp
        >>> from regularizers import entropy, l2
        >>> def weighted_nll(logprobs, batch):
        ...     return -jnp.sum(logprobs * batch.inputs["weights"] * batch.mask), {}
        >>> fut = tc.forward_backward_custom(  # doctest: +SKIP
        ...     data, weighted_nll, regularizers=[("l2", l2(), 1e-3), ("ent", entropy(), 0.01)])
        >>> fut.result().metrics["reg/l2/contribution:sum"]  # doctest: +SKIP
    """
    kind = "jax" if isinstance(loss_fn, CustomLoss) and loss_signature is None else loss_kind(
        loss_fn, loss_signature)
    datums = _datums(data)
    gradients: Callable[[list[np.ndarray]], SurrogateGradients]
    if kind == "torch":
        jax_only = [name for name, value in (("regularizers", regularizers), ("extras", extras),
                                            ("datum_extras", datum_extras), ("policy", policy))
                    if value is not None]
        if jax_only or isinstance(loss_fn, CustomLoss):
            raise invalid("forward_backward_custom", "no JAX-only options with a torch loss",
                          f"<a torch loss (data, logprobs_list) with {jax_only or 'CustomLoss'}>",
                          "write the loss in JAX as loss_fn(logprobs, batch) to use "
                          "regularizers, extras or policies, or drop them")
        require_torch()  # a clear error now, not after the forward pass, when torch is missing

        def gradients(logprobs: list[np.ndarray]) -> SurrogateGradients:
            loss, grads, metrics = torch_loss_gradients(loss_fn, datums, logprobs)
            return SurrogateGradients(loss=loss, grads=grads, metrics=metrics)
    else:
        custom, state_key = _custom_loss_for(loss_fn, regularizers, policy)
        prepared = custom.prepare([{k: v.to_numpy() for k, v in d.loss_fn_inputs.items()}
                                   for d in datums], extras=extras, datum_extras=datum_extras)
        custom.check(prepared)
        states = training_client.loss_states

        def gradients(logprobs: list[np.ndarray]) -> SurrogateGradients:
            out = custom.evaluate(logprobs, prepared, states.get(state_key))
            if out.state is not None:  # calls of one client run in submission order
                states[state_key] = out.state
            return out
    return training_client.forward_backward_surrogate(datums, gradients,
                                                      sdk_method="forward_backward_custom")
