"""Official-SDK custom losses: ``loss_fn(data, logprobs_list)`` over torch tensors.

Code written for the official SDK passes ``forward_backward_custom`` a torch function of the
datums and one logprobs tensor per datum. `torch_loss_gradients` runs it as the official SDK
does (each tensor a leaf that requires grad, ``loss.backward()``) and returns the loss, the
gradient of every datum's logprobs and the metrics, so the caller can send
``weights = -grad`` for the backward pass. PyTorch is imported here, on first use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .errors import ValidationError
from .types import Datum

__all__ = ["require_torch", "torch_loss_gradients"]

_EXPECTED = ("loss_fn(data: list[Datum], logprobs_list: list[torch.Tensor]) -> "
             "(scalar torch.Tensor, dict[str, float])")


def require_torch() -> Any:
    """The torch module; a ValidationError saying what to install when it is missing."""
    try:
        import torch
    except ImportError:
        raise ValidationError(
            "loss_fn: this looks like an official-SDK torch loss (data, logprobs_list), which "
            "needs PyTorch. Fix: pip install torch (or pip install 'tinkex-jax[torch]'), or "
            "write the loss in JAX as loss_fn(logprobs, batch) (see docs/custom-losses.md).",
            where="loss_fn") from None
    return torch


def _metric(name: str, value: Any) -> float:
    if hasattr(value, "detach"):  # a tensor: no autograd warning, no graph kept alive
        value = value.detach()
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"custom loss: metric {name!r} is {type(value).__name__}, not a "
                         f"number; return float or 0-d tensor metrics") from None


def torch_loss_gradients(loss_fn: Callable[..., Any], data: Sequence[Datum],
                         logprobs: Sequence[np.ndarray]
                         ) -> tuple[float, list[np.ndarray], dict[str, float]]:
    """Run an official-SDK torch loss and differentiate it with respect to the logprobs.

    Args:
        loss_fn: ``(data, logprobs_list) -> (loss, metrics)``.
        data: the datums as the caller gave them (every ``loss_fn_inputs`` key).
        logprobs: each datum's logprobs from the forward pass, shaped like its
            ``target_tokens``.

    Returns:
        ``(loss, grads, metrics)``: the loss as a float, ``dLoss / dlogprobs`` per datum
        (float32; zeros for a datum the loss does not use) and the metrics as floats.

    Raises:
        ValidationError: torch is not installed.
        ValueError: the loss does not return ``(scalar tensor, dict)``, or its value or a
            gradient is not finite (nothing would be learnt from it).

    Example:
        >>> import numpy as np  # doctest: +SKIP
        >>> from tinkex_jax.builders import datum_from_tokens  # doctest: +SKIP
        >>> loss, grads, _ = torch_loss_gradients(  # doctest: +SKIP
        ...     lambda data, lps: (-sum(lp.sum() for lp in lps), {}),
        ...     [datum_from_tokens([1, 2, 3])], [np.array([-1.0, -2.0], np.float32)])
        >>> loss, grads[0].tolist()  # doctest: +SKIP
        (3.0, [-1.0, -1.0])
    """
    torch = require_torch()
    tensors = [torch.tensor(np.asarray(lp, dtype=np.float32)).requires_grad_(True)
               for lp in logprobs]
    result = loss_fn(list(data), tensors)
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Mapping)):
        raise ValueError(f"custom loss: loss_fn returned {type(result).__name__}; expected "
                         f"{_EXPECTED}")
    loss, metrics = result
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(f"custom loss: the loss must be a scalar torch.Tensor that depends on "
                         f"logprobs_list; got {type(loss).__name__}"
                         f"{list(loss.shape) if isinstance(loss, torch.Tensor) else ''}. "
                         f"Expected {_EXPECTED}")
    value = float(loss.detach().sum().item())
    if loss.requires_grad:
        loss.sum().backward()
    grads = [t.grad.numpy().astype(np.float32, copy=True) if t.grad is not None
             else np.zeros(t.shape, np.float32) for t in tensors]
    if not math.isfinite(value) or not all(np.all(np.isfinite(g)) for g in grads):
        raise ValueError(
            f"custom loss: the loss ({value}) or its gradient is not finite; nothing was sent "
            f"for the backward pass. Check for log(0), division by zero or exp overflow.")
    return value, grads, {str(k): _metric(str(k), v) for k, v in metrics.items()}
