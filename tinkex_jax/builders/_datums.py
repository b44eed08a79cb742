"""Datum helpers that do the shift-by-one for you (pure; no I/O)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import invalid
from ..types import Datum, ModelInput, TensorData

__all__ = [
    "datum_from_prompt_completion",
    "datum_from_tokens",
    "full_sequence",
    "rl_datum",
]

_Tokens = Sequence[int] | npt.NDArray[Any]


def _tokens(where: str, tokens: _Tokens) -> np.ndarray:
    arr = np.asarray(tokens)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise invalid(where, "a flat list or 1-D array of token ids",
                      f"<shape {arr.shape}, dtype {arr.dtype}>")
    return arr.astype(np.int64, copy=False)


def _weights(where: str, weights: Any, n: int) -> np.ndarray:
    arr = np.asarray(weights, dtype=np.float32)
    if arr.ndim == 0:
        return np.full(n, float(arr), dtype=np.float32)
    if arr.shape != (n,):
        raise invalid(where, f"{n} weights (one per token) or a scalar", f"<{arr.size} values>")
    return arr


def datum_from_tokens(tokens: _Tokens, weights: Sequence[float] | npt.NDArray[Any] | float = 1.0
                      ) -> Datum:
    """A cross-entropy datum from one full token sequence and per-token weights.

    Input is ``tokens[:-1]``, targets ``tokens[1:]``, weights ``weights[1:]`` (the weight of a
    token is the weight of predicting it).

    Args:
        tokens: The whole sequence, at least 2 tokens.
        weights: Per-token weights aligned with `tokens` (the first is dropped) or a scalar.

    Returns:
        A Datum with ``target_tokens`` and ``weights``.

    Example:
        >>> d = datum_from_tokens([10, 11, 12, 13], [0, 0, 1, 1])
        >>> d.model_input.to_ints(), d.loss_fn_inputs["target_tokens"].tolist()
        ([10, 11, 12], [11, 12, 13])
        >>> d.loss_fn_inputs["weights"].tolist()
        [0.0, 1.0, 1.0]
    """
    arr = _tokens("datum_from_tokens(tokens)", tokens)
    if arr.size < 2:
        raise invalid("datum_from_tokens(tokens)", "at least 2 tokens", arr.tolist(),
                      "a datum needs one input token and one target")
    w = _weights("datum_from_tokens(weights)", weights, arr.size)
    return Datum(
        model_input=ModelInput.from_ints(arr[:-1]),
        loss_fn_inputs={"target_tokens": TensorData.from_numpy(arr[1:]),
                        "weights": TensorData.from_numpy(w[1:])},
    )


def datum_from_prompt_completion(
    prompt_tokens: _Tokens,
    completion_tokens: _Tokens,
    *,
    prompt_weight: float = 0.0,
    completion_weights: Sequence[float] | npt.NDArray[Any] | float = 1.0,
) -> Datum:
    """A supervised datum that trains on the completion (and optionally the prompt).

    Args:
        prompt_tokens: The prompt (at least 1 token).
        completion_tokens: The completion to learn (at least 1 token).
        prompt_weight: Weight of predicting prompt tokens (0 = train on the completion only).
        completion_weights: Scalar or one weight per completion token.

    Example:
        >>> d = datum_from_prompt_completion([1, 2], [3, 4])
        >>> d.model_input.to_ints(), d.loss_fn_inputs["weights"].tolist()
        ([1, 2, 3], [0.0, 1.0, 1.0])
    """
    prompt = _tokens("datum_from_prompt_completion(prompt_tokens)", prompt_tokens)
    completion = _tokens("datum_from_prompt_completion(completion_tokens)", completion_tokens)
    if prompt.size < 1 or completion.size < 1:
        raise invalid("datum_from_prompt_completion", "a non-empty prompt and completion",
                      f"<{prompt.size} prompt and {completion.size} completion tokens>")
    cw = _weights("datum_from_prompt_completion(completion_weights)", completion_weights,
                  completion.size)
    weights = np.concatenate([np.full(prompt.size, prompt_weight, dtype=np.float32), cw])
    return datum_from_tokens(np.concatenate([prompt, completion]), weights)


def rl_datum(
    prompt_tokens: _Tokens,
    completion_tokens: _Tokens,
    completion_logprobs: Sequence[float] | npt.NDArray[Any],
    advantage: float | Sequence[float] | npt.NDArray[Any],
) -> Datum:
    """A policy-gradient datum (importance_sampling / ppo / cispo / dro / gspo).

    Targets are the sequence shifted by one; ``logprobs`` (the sampler's) and ``advantages``
    are 0 on prompt positions and set on completion positions.

    Args:
        prompt_tokens: The prompt that was sampled from.
        completion_tokens: The sampled tokens.
        completion_logprobs: The sampler's logprob of each sampled token.
        advantage: One advantage for the whole completion, or one per completion token.

    Example:
        >>> d = rl_datum([1, 2], [3, 4], [-0.5, -0.25], 2.0)
        >>> d.loss_fn_inputs["logprobs"].tolist(), d.loss_fn_inputs["advantages"].tolist()
        ([0.0, -0.5, -0.25], [0.0, 2.0, 2.0])
    """
    prompt = _tokens("rl_datum(prompt_tokens)", prompt_tokens)
    completion = _tokens("rl_datum(completion_tokens)", completion_tokens)
    if prompt.size < 1 or completion.size < 1:
        raise invalid("rl_datum", "a non-empty prompt and completion",
                      f"<{prompt.size} prompt and {completion.size} completion tokens>")
    lps = _weights("rl_datum(completion_logprobs)", completion_logprobs, completion.size)
    if np.asarray(completion_logprobs).ndim == 0:
        raise invalid("rl_datum(completion_logprobs)", "one logprob per completion token",
                      completion_logprobs)
    adv = _weights("rl_datum(advantage)", advantage, completion.size)
    pad = np.zeros(prompt.size - 1, dtype=np.float32)
    tokens = np.concatenate([prompt, completion])
    return Datum(
        model_input=ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": TensorData.from_numpy(tokens[1:]),
            "logprobs": TensorData.from_numpy(np.concatenate([pad, lps])),
            "advantages": TensorData.from_numpy(np.concatenate([pad, adv])),
        },
    )


def full_sequence(datum: Datum) -> ModelInput:
    """The whole sequence of a shifted datum: its input plus the last target token.

    This is what `SamplingClient.compute_logprobs` wants to score the datum's targets.

    Example:
        >>> full_sequence(datum_from_tokens([5, 6, 7])).to_ints()
        [5, 6, 7]
    """
    target = datum.loss_fn_inputs.get("target_tokens")
    if target is None or target.ndim != 1 or len(target) == 0:
        raise invalid("full_sequence(datum)", "a datum with 1-D target_tokens",
                      "<no usable target_tokens>")
    return datum.model_input.append_int(int(target.values[-1]))
