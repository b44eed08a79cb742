"""Custom losses as jit-compiled JAX functions that really train the model.

``TrainingClient.forward_backward_custom(data, loss_fn, regularizers=...)`` follows
PROTOCOL.md §8.1:

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
gradient norm) and the loss's own metrics.

A loss is a pure function ``loss_fn(logprobs, batch) -> (loss, metrics)``: ``logprobs`` is
``[B, T]`` (``[B, T, K]`` for 2-D targets) and ``batch`` a :class:`losses.LossBatch` holding
every ``loss_fn_inputs`` key of every datum, the token and datum masks, and any side arrays
(``extras`` for batch-level arrays such as pair indices, ``datum_extras`` for per-datum
arrays such as reference logprobs). Padded positions have logprob 0 and mask 0.

This module imports JAX; ``import tinkex_jax`` does not (the TrainingClient loads it on the
first ``forward_backward_custom``).
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from losses import DEFAULT_BUCKET_POLICY, BucketPolicy, LossBatch, make_loss_batch, pad_to_bucket
from losses import unpad as unpad_batch
from regularizers import ComposedLoss, ComposedState, TermSpec, compose, report_metrics

from ._loss_signature import loss_kind
from ._shell import Future
from ._torch_loss import require_torch, torch_loss_gradients
from .builders import validate_training_data
from .errors import ValidationError, invalid
from .types import Datum, ForwardBackwardOutput, TensorData

if TYPE_CHECKING:
    from .clients import TrainingClient

__all__ = [
    "CustomLoss",
    "CustomLossFn",
    "CustomLossOutput",
    "PreparedBatch",
    "forward_backward_custom",
    "merge_custom_metrics",
    "surrogate_data",
    "surrogate_forward_data",
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


def surrogate_forward_data(data: Sequence[Datum]) -> list[Datum]:
    """The datums the forward phase sends: ``target_tokens`` and ``weights`` only.

    Missing ``weights`` become zeros of the targets' shape; the other ``loss_fn_inputs`` stay
    on the client (the loss still sees them). Model inputs and provenance spans are kept.

    Raises:
        ValidationError: a datum without ``target_tokens``.

    Example:
        >>> from tinkex_jax.builders import datum_from_tokens
        >>> d = datum_from_tokens([1, 2, 3])
        >>> d = Datum(model_input=d.model_input, loss_fn_inputs={
        ...     "target_tokens": d.loss_fn_inputs["target_tokens"], "ref": [0.5, 0.5]})
        >>> fwd, = surrogate_forward_data([d])
        >>> sorted(fwd.loss_fn_inputs), fwd.loss_fn_inputs["weights"].tolist()
        (['target_tokens', 'weights'], [0.0, 0.0])
    """
    out: list[Datum] = []
    for i, datum in enumerate(_datums(data)):
        inputs = datum.loss_fn_inputs
        if "target_tokens" not in inputs:
            raise invalid(f"data[{i}].loss_fn_inputs", "a 'target_tokens' entry",
                          f"<keys {sorted(inputs)}>",
                          "a custom loss differentiates the logprobs of target_tokens; add them "
                          "(the input shifted by one)")
        targets = inputs["target_tokens"]
        weights = inputs.get("weights")
        if weights is None:
            weights = TensorData.from_numpy(np.zeros(targets.to_numpy().shape, np.float32))
        out.append(_with_inputs(datum, {"target_tokens": targets, "weights": weights}))
    return out


def _with_inputs(datum: Datum, inputs: Mapping[str, Any]) -> Datum:
    return Datum(model_input=datum.model_input, loss_fn_inputs=dict(inputs),
                 model_input_spans=datum.model_input_spans,
                 loss_fn_input_spans=datum.loss_fn_input_spans)


def surrogate_data(forward_data: Sequence[Datum], grads: Sequence[np.ndarray]) -> list[Datum]:
    """The backward phase's datums: the same targets, ``weights = -grad`` (float32).

    Example:
        >>> import numpy as np
        >>> from tinkex_jax.builders import datum_from_tokens
        >>> d = surrogate_forward_data([datum_from_tokens([1, 2, 3])])
        >>> surrogate_data(d, [np.array([0.5, -1.0])])[0].loss_fn_inputs["weights"].tolist()
        [-0.5, 1.0]
    """
    if len(grads) != len(forward_data):
        raise ValueError(f"surrogate_data: {len(grads)} gradients for {len(forward_data)} datums")
    return [
        _with_inputs(datum, {"target_tokens": datum.loss_fn_inputs["target_tokens"],
                             "weights": TensorData.from_numpy(np.negative(grad, dtype=np.float32))})
        for datum, grad in zip(forward_data, grads, strict=True)
    ]


def _split_like(items: Sequence[Datum], chunks: Sequence[Sequence[Datum]]) -> list[list[Datum]]:
    out: list[list[Datum]] = []
    start = 0
    for chunk in chunks:
        out.append(list(items[start:start + len(chunk)]))
        start += len(chunk)
    return out


def merge_custom_metrics(backward: Mapping[str, float], custom_loss: float,
                         loss_metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics of a custom step, as the official SDK reports them (PROTOCOL.md §8.1 step 8).

    The server's ``loss:sum`` (the linear surrogate) becomes ``surrogate_loss:sum`` (left
    out when an older server reports none); the loss's metrics are added; ``loss:sum`` is
    the custom loss.

    Example:
        >>> merge_custom_metrics({"loss:sum": 3.0, "tokens:sum": 8.0}, 1.5, {"acc:mean": 0.5})
        {'tokens:sum': 8.0, 'acc:mean': 0.5, 'loss:sum': 1.5, 'surrogate_loss:sum': 3.0}
    """
    merged = dict(backward)
    surrogate = merged.pop("loss:sum", None)
    merged.update(loss_metrics)
    merged["loss:sum"] = float(custom_loss)
    if surrogate is not None:
        merged["surrogate_loss:sum"] = float(surrogate)
    return merged


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


@dataclass(frozen=True)
class CustomLossOutput:
    """What one evaluation of a custom loss gives, on the host.

    Attributes:
        loss: the total (loss plus weighted terms).
        grads: ``dLoss / dlogprobs`` for each datum, unpadded, float32.
        metrics: ``name:reduction`` metrics: the loss's own and the composition's
            (``loss/total:sum``, ``reg/<name>/contribution:sum``, gradient norms, ...).
    """

    loss: float
    grads: list[np.ndarray]
    metrics: dict[str, float]


class CustomLoss:
    """A custom loss plus regularizer terms, jit-compiled once per length bucket.

    Build it once and reuse it: the compiled functions live on the object (one per padded
    shape), and so does the state of stateful terms (:func:`regularizers.adaptive_kl`, ...),
    which is threaded through the calls in program order.

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
        >>> loss.trace_count
        1
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
        self.state: ComposedState | None = self.composed.init() if self.composed.stateful else None
        self._traces = 0
        self._lock = threading.Lock()
        self._jitted = jax.jit(self._value_and_grad)

    def __repr__(self) -> str:
        return f"CustomLoss({self.composed!r}, traces={self._traces})"

    @property
    def trace_count(self) -> int:
        """How many times the loss was traced (= compiled): one per bucket shape."""
        return self._traces

    def _value_and_grad(self, logprobs: jax.Array, batch: LossBatch,
                        state: ComposedState | None
                        ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array], Any]:
        self._traces += 1
        if state is None:
            (total, report), grad = self.composed.value_and_grad(logprobs, batch)
            new_state = None
        else:
            (total, report, new_state), grad = self.composed.value_and_grad(logprobs, batch,
                                                                             state)
        return total, grad, report_metrics(report), new_state

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
            with self._lock:
                self._jitted.eval_shape(logprobs, prepared.batch, self.state)
        except Exception as error:
            raise ValidationError(
                f"loss_fn: calling it on logprobs float32{list(prepared.logprobs_shape)} and "
                f"a LossBatch with inputs {sorted(prepared.batch.inputs)} and extras "
                f"{sorted(prepared.batch.extras)} failed with {type(error).__name__}: {error}. "
                f"Expected {_EXPECTED_SIGNATURE}, pure JAX (no torch, no .item()); padded "
                f"positions have batch.mask == 0. If it is an official-SDK torch loss "
                f"(data, logprobs_list), pass loss_signature='torch'.", where="loss_fn") from error

    def evaluate(self, logprobs: Sequence[ArrayLike], prepared: PreparedBatch
                 ) -> CustomLossOutput:
        """Run the compiled loss on per-datum logprobs; advance the terms' state.

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
        with self._lock:  # the state advances in call order
            total, grad, metrics, new_state = self._jitted(padded, prepared.batch, self.state)
            total, grad, metrics = jax.device_get((total, grad, metrics))
            if not np.isfinite(total) or not np.all(np.isfinite(grad)):
                raise ValueError(
                    f"custom loss: the loss ({float(total)}) or its gradient is not finite; "
                    f"nothing was sent for the backward pass. Check for log(0), division by a "
                    f"zero mask sum or exp overflow (padded logprobs are 0).")
            if self.state is not None:
                self.state = new_state
        grads = unpad_batch(grad, prepared.lengths)
        return CustomLossOutput(loss=float(total), grads=grads,
                                metrics={k: float(v) for k, v in metrics.items()})

    def __call__(self, inputs: Sequence[Mapping[str, ArrayLike]] | Mapping[str, ArrayLike],
                 logprobs: Sequence[ArrayLike], *,
                 extras: Mapping[str, ArrayLike] | None = None,
                 datum_extras: Sequence[Mapping[str, ArrayLike]] | None = None
                 ) -> CustomLossOutput:
        """Prepare, check and evaluate in one go, with no server (for tests and notebooks)."""
        prepared = self.prepare(inputs if not isinstance(inputs, Mapping) else [inputs],
                                extras=extras, datum_extras=datum_extras)
        self.check(prepared)
        return self.evaluate(logprobs, prepared)


_CACHE_SIZE = 32
_cache: OrderedDict[tuple[Any, ...], CustomLoss] = OrderedDict()
_cache_lock = threading.Lock()


def _custom_loss_for(loss_fn: CustomLossFn | CustomLoss,
                     regularizers: Sequence[TermSpec | tuple[Any, ...]] | None,
                     policy: BucketPolicy | None) -> CustomLoss:
    """The `CustomLoss` for a plain function, cached so repeated calls reuse its compiles."""
    if isinstance(loss_fn, CustomLoss):
        if regularizers is not None or policy is not None:
            raise invalid("forward_backward_custom", "regularizers / policy given once",
                          "<a CustomLoss and regularizers= or policy=>",
                          "pass them to CustomLoss(...) instead")
        return loss_fn
    terms = list(regularizers or ())
    key = (loss_fn, tuple((t[0], id(t[1]), t[2] if len(t) > 2 else 1.0)
                          if isinstance(t, tuple) else (type(t).__name__, id(t), 0)
                          for t in terms), policy or DEFAULT_BUCKET_POLICY)
    with _cache_lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
            return found
    custom = CustomLoss(loss_fn, terms, policy=policy or DEFAULT_BUCKET_POLICY)
    with _cache_lock:
        _cache[key] = custom
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return custom


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
    """Forward, differentiate a custom loss of the logprobs, and apply it (PROTOCOL.md §8.1).

    Call it as ``training_client.forward_backward_custom(data, loss_fn, ...)``. The loss is
    either a JAX function ``(logprobs [B, T], batch: LossBatch) -> (loss, metrics)`` (jit-
    compiled, with regularizers and side arrays) or an official-SDK torch function
    ``(data, logprobs_list) -> (loss, metrics)`` (needs PyTorch); `tinkex_jax._loss_signature`
    says how the two are told apart, and `loss_signature` says it explicitly.

    Args:
        training_client: the client whose model trains.
        data: the datums; every ``loss_fn_inputs`` key reaches the loss, only
            ``target_tokens`` and ``weights`` reach the server.
        loss_fn: the loss, or a :class:`CustomLoss` (which carries its regularizers, policy
            and state).
        regularizers: weighted terms added to a JAX loss (``TermSpec`` or tuples). Build them
            once: a new term object means a new compile.
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
    forward_data = surrogate_forward_data(datums)
    validate_training_data(forward_data, "cross_entropy")
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

        def evaluate(logprobs: list[np.ndarray]) -> CustomLossOutput:
            loss, grads, metrics = torch_loss_gradients(loss_fn, datums, logprobs)
            return CustomLossOutput(loss=loss, grads=grads, metrics=metrics)
    else:
        custom = _custom_loss_for(loss_fn, regularizers, policy)
        prepared = custom.prepare([{k: v.to_numpy() for k, v in d.loss_fn_inputs.items()}
                                   for d in datums], extras=extras, datum_extras=datum_extras)
        custom.check(prepared)

        def evaluate(logprobs: list[np.ndarray]) -> CustomLossOutput:
            return custom.evaluate(logprobs, prepared)
    return _two_phases(training_client, forward_data, evaluate)


def _two_phases(training_client: TrainingClient, forward_data: list[Datum],
                evaluate: Callable[[list[np.ndarray]], CustomLossOutput]
                ) -> Future[ForwardBackwardOutput]:
    """Reserve both phases' request ids, then: forward, `evaluate` in a worker thread, and
    the backward pass with ``weights = -grad`` over the same chunk boundaries."""
    chunks = training_client._chunk(forward_data)
    n = len(chunks)
    ids = training_client._reserve_request_ids(2 * n)

    async def run() -> ForwardBackwardOutput:
        forward = await training_client._send_forward_backward(
            ids[:n], chunks, "cross_entropy", None, forward_only=True)
        logprobs = [out["logprobs"].to_numpy() for out in forward.loss_fn_outputs]
        result = await asyncio.to_thread(evaluate, logprobs)
        backward_chunks = _split_like(surrogate_data(forward_data, result.grads), chunks)
        backward = await training_client._send_forward_backward(
            ids[n:], backward_chunks, "cross_entropy", None, forward_only=False)
        metrics = merge_custom_metrics(backward.metrics, result.loss, result.metrics)
        return ForwardBackwardOutput(loss_fn_output_type=backward.loss_fn_output_type,
                                     loss_fn_outputs=backward.loss_fn_outputs, metrics=metrics)

    return training_client._submit(run, request_ids=ids, sdk_method="forward_backward_custom",
                                   poison_on_failure=True)
