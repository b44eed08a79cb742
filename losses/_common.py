"""Shared helpers for the loss functions: reductions, masks and shape alignment.

Shape convention used everywhere in :mod:`losses`: a per-token array has shape ``[..., T]``
(``[B, T]`` for a padded batch, ``[T]`` for a single datum), or ``[..., T, K]`` when the
targets are 2-D (``target_tokens`` of shape ``[T, K]``, e.g. a teacher's top-k ids). Inputs and
masks are aligned on their *leading* axes: an array whose shape is a prefix of the per-token
shape (``[B, T]`` against ``[B, T, K]``) applies to every one of the trailing entries. This is
unlike NumPy broadcasting, which aligns trailing axes.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

__all__ = [
    "REDUCTIONS",
    "Reduction",
    "align",
    "as_float",
    "check_choice",
    "check_reduction",
    "masked_log_softmax",
    "masked_mean",
    "reduce_tokens",
    "token_mask",
]

Reduction: TypeAlias = Literal["sum", "mean", "none"]
"""How a loss reduces its per-token values.

* ``"sum"``: sum over every unmasked element (Tinker's server semantics: no length
  normalisation).
* ``"mean"``: the sum divided by the number of unmasked elements (0 when nothing is
  unmasked).
* ``"none"``: the per-token array itself, exactly 0 at masked positions.
"""

REDUCTIONS: tuple[str, ...] = ("sum", "mean", "none")


def check_choice(value: object, choices: tuple[str, ...], *, name: str, where: str) -> None:
    """Raises a ``ValueError`` unless ``value`` is one of ``choices``.

    Example:
      >>> from losses import check_choice
      >>> check_choice("sum", ("sum", "mean"), name="reduction", where="my_loss")
      >>> check_choice("max", ("sum", "mean"), name="reduction", where="my_loss")
      Traceback (most recent call last):
      ...
      ValueError: my_loss: reduction must be one of 'sum', 'mean'; got 'max'.
    """
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"{where}: {name} must be one of {', '.join(repr(c) for c in choices)}; "
            f"got {value!r}."
        )


def check_reduction(reduction: object, *, where: str) -> None:
    """Raises a ``ValueError`` unless ``reduction`` is ``"sum"``, ``"mean"`` or ``"none"``."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(
            f"{where}: reduction must be one of 'sum' (Tinker's server semantics: token sum), "
            f"'mean' (mean over unmasked tokens) or 'none' (per-token values); got "
            f"{reduction!r}. Pass it explicitly, e.g. reduction='sum'."
        )


def as_float(x: ArrayLike, *, name: str, where: str) -> Array:
    """Converts ``x`` to a floating JAX array (integers become the default float type)."""
    arr = jnp.asarray(x)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        if jnp.issubdtype(arr.dtype, jnp.complexfloating):
            raise TypeError(f"{where}: {name} must be real; got dtype {arr.dtype}.")
        arr = arr.astype(jnp.result_type(float))
    return arr


def align(x: Array, shape: tuple[int, ...], *, name: str, like: str, where: str) -> Array:
    """Broadcasts ``x`` to ``shape`` aligning *leading* axes.

    ``x.shape`` must be a prefix of ``shape`` (size-1 axes broadcast). A ``[B, T]`` array is
    thus applied to every ``K`` of a ``[B, T, K]`` shape.

    Raises:
      ValueError: when the shapes are incompatible.

    Example:
      >>> import jax.numpy as jnp
      >>> from losses import align
      >>> align(jnp.ones((2, 3)), (2, 3, 4), name="mask", like="logprobs", where="demo").shape
      (2, 3, 4)
    """
    xs = tuple(x.shape)
    if len(xs) > len(shape) or any(a not in (b, 1) for a, b in zip(xs, shape)):
        raise ValueError(
            f"{where}: {name} has shape {xs} but {like} has shape {shape}; {name} must have "
            f"the same shape or a prefix of it (e.g. [B, T] for [B, T, K] targets). Fix: pad "
            f"or reshape {name} so that its leading axes match {like}."
        )
    return jnp.broadcast_to(x.reshape(xs + (1,) * (len(shape) - len(xs))), shape)


def token_mask(
    where_: ArrayLike | None,
    shape: tuple[int, ...],
    *,
    where: str,
    name: str = "where",
    like: str = "the loss",
) -> Array:
    """Returns a boolean mask of ``shape`` (``True`` = real token) from an optional ``where=``.

    ``None`` means every position is real; any non-zero value counts as real.
    """
    if where_ is None:
        return jnp.ones(shape, dtype=bool)
    m = jnp.asarray(where_)
    m = m if m.dtype == jnp.bool_ else m != 0
    return align(m, shape, name=name, like=like, where=where)


def reduce_tokens(per_token: Array, mask: Array, reduction: str) -> Array:
    """Applies ``reduction`` to ``per_token`` (already 0 at masked positions)."""
    if reduction == "none":
        return per_token
    total = jnp.sum(per_token)
    if reduction == "sum":
        return total
    count = jnp.sum(mask.astype(per_token.dtype))
    return total / jnp.maximum(count, 1)


def masked_mean(x: Array, mask: Array, axis: int | tuple[int, ...] | None = None) -> Array:
    """Mean of ``x`` over ``mask`` along ``axis``; 0 where the mask is empty."""
    m = mask.astype(bool)
    total = jnp.sum(jnp.where(m, x, 0), axis=axis)
    return total / jnp.maximum(jnp.sum(m.astype(x.dtype), axis=axis), 1)


def masked_log_softmax(x: Array, support: Array) -> Array:
    """Log-softmax over the last axis restricted to ``support`` (0 outside it, never NaN).

    Example:
      >>> import jax.numpy as jnp
      >>> from losses import masked_log_softmax
      >>> out = masked_log_softmax(jnp.log(jnp.array([1.0, 3.0, 9.0])),
      ...                          jnp.array([True, True, False]))
      >>> [round(v, 4) for v in jnp.exp(out).tolist()]  # renormalised over the support
      [0.25, 0.75, 1.0]
    """
    safe = jnp.where(support, x, 0)
    any_support = jnp.any(support, axis=-1, keepdims=True)
    # Rows without support use a dummy full support so that nothing becomes inf/NaN.
    eff = jnp.where(any_support, support, True)
    lse = jax.nn.logsumexp(jnp.where(eff, safe, -jnp.inf), axis=-1, keepdims=True)
    return jnp.where(support, safe - lse, 0)
