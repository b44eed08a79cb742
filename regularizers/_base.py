"""Types and helpers shared by the regularizer terms.

A *stateless term* is a function ``(logprobs, batch) -> (value, metrics)``; a *stateful term*
is a :class:`StatefulRegularizer` ``(init, update)`` pair of pure functions with an explicit
state pytree, in the shape of optax's ``GradientTransformation``.

``logprobs`` is ``[B, T]`` (per-token logprobs of the target tokens, padded like ``batch``)
or ``[B, T, K]`` for 2-D targets (e.g. the logprobs of K candidate tokens per position, such
as a teacher's top-k ids). Terms that compare *distributions* use the ``[B, T, K]`` form as a
distribution over the K candidates, renormalised on that support ("top-k mode"); with
``[B, T]`` they estimate the quantity from the sampled tokens ("sampled mode").

Every term is computed per datum: each datum's real tokens are reduced (``reduction="mean"``:
mean over the datum's real tokens; ``"sum"``: sum), then the datums are reduced using
``batch.datum_mask`` (mean over real datums, or sum). Padded tokens and datums never
contribute, and their gradients are exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Generic, Literal, NamedTuple, Protocol, TypeAlias, TypeVar

import jax.numpy as jnp
from jax import Array, lax
from jax.typing import ArrayLike

from losses import LossBatch, align, check_choice

__all__ = [
    "DatumReduction",
    "Metrics",
    "Reference",
    "Regularizer",
    "StatefulRegularizer",
    "batch_masks",
    "check_nonnegative",
    "check_reduction",
    "is_topk",
    "lookup",
    "over_datums",
    "per_datum",
    "resolve_reference",
    "restrict",
    "transform",
]

Metrics: TypeAlias = dict[str, Array]
"""Scalar JAX arrays keyed by a metric name (no ``:``; the reduction suffix is added when the
composition report is flattened)."""

DatumReduction: TypeAlias = Literal["mean", "sum"]
"""``"mean"``: mean over each datum's real tokens, then over real datums (length-normalised).
``"sum"``: sum over every real token of every real datum (Tinker's token-sum semantics)."""

Reference: TypeAlias = str | ArrayLike | Callable[[LossBatch], ArrayLike]
"""Where a term finds reference values (reference logprobs, a target, a center):

* ``str``: a key of ``batch.inputs`` (a per-datum ``loss_fn_inputs`` field) or of
  ``batch.extras`` (a side array); a key present in both is an error;
* a callable ``batch -> array``: computed from the batch inside the jitted function;
* an array or number: used as-is (it becomes a compile-time constant; prefer a key for
  values that change every step, or the function recompiles).

Reference values are always treated as constants (``stop_gradient``)."""

State = TypeVar("State")


class Regularizer(Protocol):
    """A stateless term: ``(logprobs [B, T], batch) -> (scalar value, metrics)``."""

    def __call__(self, logprobs: Array, batch: LossBatch, /) -> tuple[Array, Metrics]: ...


class StatefulRegularizer(NamedTuple, Generic[State]):
    """A stateful term as an optax-style pair of pure functions.

    Attributes:
      init: ``init() -> state``, the initial state (a NamedTuple pytree of arrays).
      update: ``update(logprobs, batch, state) -> (value, metrics, new_state)``.
    """

    init: Callable[[], State]
    update: Callable[[Array, LossBatch, State], tuple[Array, Metrics, State]]


def lookup(batch: LossBatch, key: str, *, where: str) -> Array:
    """Returns ``batch.inputs[key]`` or ``batch.extras[key]`` (error if in neither or both)."""
    in_inputs, in_extras = key in batch.inputs, key in batch.extras
    if in_inputs and in_extras:
        raise ValueError(
            f"{where}: key {key!r} is both in batch.inputs and in batch.extras; rename the "
            f"side array so that the reference is unambiguous."
        )
    if not (in_inputs or in_extras):
        raise ValueError(
            f"{where}: key {key!r} is not in the batch (inputs: {sorted(batch.inputs)}; "
            f"extras: {sorted(batch.extras)}). Fix: add it to every datum's loss_fn_inputs or "
            f"pass it as an extra array."
        )
    return jnp.asarray(batch.inputs[key] if in_inputs else batch.extras[key])


def resolve_reference(
    ref: Reference, batch: LossBatch, shape: tuple[int, ...], dtype: Any, *, where: str,
    name: str = "reference",
) -> Array:
    """Resolves a :data:`Reference` to a constant array broadcast to ``shape``."""
    if isinstance(ref, str):
        value = lookup(batch, ref, where=where)
        label = f"{name} {ref!r}"
    elif callable(ref):
        value = jnp.asarray(ref(batch))
        label = f"{name} (computed)"
    else:
        value = jnp.asarray(ref)
        label = name
    value = align(value.astype(dtype), shape, name=label, like="logprobs", where=where)
    return lax.stop_gradient(value)


def is_topk(logprobs: Array, batch: LossBatch) -> bool:
    """Whether ``logprobs`` is ``[B, T, K]`` (a distribution over K candidates per token)."""
    return logprobs.ndim == jnp.ndim(batch.mask) + 1


def batch_masks(logprobs: Array, batch: LossBatch, *, where: str) -> tuple[Array, Array]:
    """Returns boolean ``(token_mask aligned to logprobs, datum_mask [B])``.

    The token mask is ``batch.mask & batch.datum_mask`` broadcast to ``logprobs.shape``.
    """
    mask = jnp.asarray(batch.mask)
    dmask = jnp.asarray(batch.datum_mask) != 0
    if mask.ndim != 2:
        raise ValueError(f"{where}: batch.mask must be [B, T]; got shape {tuple(mask.shape)}.")
    if logprobs.ndim not in (2, 3) or tuple(logprobs.shape[:2]) != tuple(mask.shape):
        raise ValueError(
            f"{where}: logprobs has shape {tuple(logprobs.shape)} but batch.mask has shape "
            f"{tuple(mask.shape)}; expected logprobs [B, T] or [B, T, K] padded like the batch."
        )
    if tuple(dmask.shape) != (mask.shape[0],):
        raise ValueError(
            f"{where}: batch.datum_mask has shape {tuple(dmask.shape)}; expected "
            f"({mask.shape[0]},)."
        )
    tmask = (mask != 0) & dmask[:, None]
    return align(tmask, tuple(logprobs.shape), name="batch.mask", like="logprobs",
                 where=where), dmask


def per_datum(values: Array, tmask: Array, reduction: str) -> Array:
    """Reduces ``values [B, ...]`` over each datum's real entries -> ``[B]``."""
    axes = tuple(range(1, values.ndim))
    total = jnp.sum(jnp.where(tmask, values, 0), axis=axes)
    if reduction == "sum":
        return total
    return total / jnp.maximum(jnp.sum(tmask.astype(values.dtype), axis=axes), 1)


def over_datums(values: Array, dmask: Array, reduction: str) -> Array:
    """Reduces per-datum ``values [B]`` over real datums (mean or sum) -> scalar."""
    total = jnp.sum(jnp.where(dmask, values, 0))
    if reduction == "sum":
        return total
    return total / jnp.maximum(jnp.sum(dmask.astype(values.dtype)), 1)


def transform(logprobs: Array, on: str, *, where: str) -> Array:
    """``on="logprobs"``: the logprobs; ``on="probs"``: ``exp(logprobs)``."""
    check_choice(on, ("logprobs", "probs"), name="on", where=where)
    return logprobs if on == "logprobs" else jnp.exp(logprobs)


def check_reduction(reduction: object, *, where: str) -> None:
    """Raises unless ``reduction`` is ``"mean"`` or ``"sum"``."""
    check_choice(reduction, ("mean", "sum"), name="reduction", where=where)


def check_nonnegative(value: object, *, name: str, where: str, strict: bool = False) -> float:
    """Returns ``value`` as a float; raises unless it is a finite number ``>= 0`` (``> 0``)."""
    bound = "> 0" if strict else ">= 0"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(
            f"{where}: {name} must be a finite Python number {bound}; got {value!r} "
            f"({type(value).__name__})."
        )
    v = float(value)
    if not math.isfinite(v) or v < 0 or (strict and v == 0):
        raise ValueError(f"{where}: {name} must be a finite number {bound}; got {value!r}.")
    return v


def restrict(term: Any, where: Reference) -> Any:
    """Evaluates a term only on the tokens where ``where`` is non-zero (e.g. the completion).

    Terms see every real token by default (``batch.mask``), prompt tokens included. With
    ``restrict(term, "weights")`` they see only the tokens a datum trains on. ``where`` is a
    :data:`Reference` (a ``loss_fn_inputs`` / extras key, a function of the batch, or an
    array); it is multiplied into ``batch.mask``, so a datum without any selected token counts
    as empty (its per-datum mean is 0). Works for stateless and stateful terms.

    Examples:
      >>> import jax.numpy as jnp
      >>> from losses import LossBatch
      >>> from regularizers import l2, restrict
      >>> batch = LossBatch({"weights": jnp.array([[0.0, 1.0]])}, jnp.ones((1, 2)),
      ...                   jnp.ones(1), {})
      >>> lp = jnp.array([[-3.0, -1.0]])
      >>> float(l2()(lp, batch)[0]), float(restrict(l2(), "weights")(lp, batch)[0])
      (5.0, 1.0)
    """
    fn = "regularizers.restrict"

    def narrowed(logprobs: Array, batch: LossBatch) -> LossBatch:
        mask = jnp.asarray(batch.mask)
        selected = resolve_reference(where, batch, tuple(mask.shape), mask.dtype, where=fn,
                                     name="where")
        return batch._replace(mask=mask * (selected != 0).astype(mask.dtype))

    if isinstance(term, StatefulRegularizer):
        def update(logprobs: Array, batch: LossBatch, state: Any) -> Any:
            return term.update(logprobs, narrowed(logprobs, batch), state)

        return StatefulRegularizer(init=term.init, update=update)
    if not callable(term):
        raise TypeError(f"{fn}: term must be a regularizer; got {type(term).__name__}.")

    def restricted(logprobs: Array, batch: LossBatch) -> tuple[Array, Metrics]:
        result: tuple[Array, Metrics] = term(logprobs, narrowed(logprobs, batch))
        return result

    return restricted
