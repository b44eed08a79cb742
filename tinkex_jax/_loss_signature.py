"""Telling a JAX custom loss from an official-SDK torch loss, without calling it.

``TrainingClient.forward_backward_custom`` accepts two kinds of ``loss_fn``:

- **JAX** (ours, first-class): ``loss_fn(logprobs, batch) -> (loss, metrics)`` where
  ``logprobs`` is a padded ``[B, T]`` array and ``batch`` a ``losses.LossBatch``; it is
  jit-compiled and differentiated with ``jax.value_and_grad``.
- **torch** (the official SDK's): ``loss_fn(data, logprobs_list) -> (loss, metrics)`` where
  ``data`` is the list of datums and ``logprobs_list`` one torch tensor per datum; it is
  differentiated with ``loss.backward()``. Needs PyTorch.

The kind is read from the function's signature: an explicit ``loss_signature="jax" |
"torch"`` wins; otherwise parameter annotations that name torch or ``Datum`` (or JAX,
``Array``, ``LossBatch``) decide, then the parameter names of each convention (``data`` /
``datums`` first or ``logprobs_list`` second for torch; ``logprobs`` first or ``batch``
second for JAX). Signals for both kinds are an error that says how to choose; a function
with no signal at all is treated as a JAX loss (and if it then fails to trace, the error
says how to run it as a torch loss instead). So a loss is never run as the wrong kind
silently.

Example:
    >>> def dpo(data, logprobs_list): ...
    >>> def nll(logprobs, batch): ...
    >>> loss_kind(dpo), loss_kind(nll), loss_kind(lambda lp, b: None)
    ('torch', 'jax', 'jax')
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal

from .errors import invalid

__all__ = ["LossKind", "loss_kind"]

LossKind = Literal["jax", "torch"]

_TORCH_FIRST = frozenset({"data", "datums", "data_d", "batch_data"})
_TORCH_SECOND = frozenset({"logprobs_list", "logprob_list", "logprobs_d", "logprobs_list_d"})
_JAX_FIRST = frozenset({"logprobs", "logprob", "logp", "lp"})
_JAX_SECOND = frozenset({"batch", "loss_batch"})
_TORCH_WORDS = ("torch", "Datum")
_JAX_WORDS = ("jax", "jnp", "Array", "LossBatch", "ArrayLike")


def _annotation_text(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    return annotation if isinstance(annotation, str) else repr(annotation)


def _signals(loss_fn: Callable[..., Any]) -> tuple[list[str], list[str]]:
    """Reasons to think `loss_fn` is a torch loss, and reasons to think it is a JAX one."""
    try:
        params = list(inspect.signature(loss_fn).parameters.values())[:2]
    except (TypeError, ValueError):  # builtins, some C callables
        return [], []
    torch_why: list[str] = []
    jax_why: list[str] = []
    for param in params:
        text = _annotation_text(param.annotation)
        if any(word in text for word in _TORCH_WORDS):
            torch_why.append(f"parameter {param.name!r} is annotated {text}")
        elif any(word in text for word in _JAX_WORDS):
            jax_why.append(f"parameter {param.name!r} is annotated {text}")
    names = [p.name.lower() for p in params]
    if names[:1] and names[0] in _TORCH_FIRST:
        torch_why.append(f"its first parameter is named {params[0].name!r}")
    if names[1:2] and names[1] in _TORCH_SECOND:
        torch_why.append(f"its second parameter is named {params[1].name!r}")
    if names[:1] and names[0] in _JAX_FIRST:
        jax_why.append(f"its first parameter is named {params[0].name!r}")
    if names[1:2] and names[1] in _JAX_SECOND:
        jax_why.append(f"its second parameter is named {params[1].name!r}")
    return torch_why, jax_why


def loss_kind(loss_fn: Callable[..., Any], declared: str | None = None) -> LossKind:
    """Whether `loss_fn` is a JAX loss or an official-SDK torch loss (see the module doc).

    Args:
        loss_fn: the custom loss.
        declared: ``"jax"`` or ``"torch"`` to say it explicitly, or None to infer it.

    Raises:
        ValidationError: `declared` is not one of the two, or the signature points both ways.
    """
    if declared is not None:
        if declared not in ("jax", "torch"):
            raise invalid("loss_signature", "'jax', 'torch' or None (infer)", declared)
        return declared  # type: ignore[return-value]
    torch_why, jax_why = _signals(loss_fn)
    if torch_why and jax_why:
        raise invalid(
            "loss_fn", "a JAX loss (logprobs, batch) or an official-SDK torch loss "
            "(data, logprobs_list), recognisably one of them",
            f"<{getattr(loss_fn, '__name__', type(loss_fn).__name__)}: "
            f"{'; '.join(torch_why)}, but {'; '.join(jax_why)}>",
            "pass loss_signature='jax' or loss_signature='torch' to forward_backward_custom")
    return "torch" if torch_why else "jax"
