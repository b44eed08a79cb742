"""Pure request builders: validate user data, then build the request values to send."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import invalid
from ..types import (
    Datum,
    ForwardBackwardRequest,
    ImageAssetPointerChunk,
    ImageChunk,
)
from ._ids import seq_id_of
from ._losses import LOSS_SPECS, validate_loss_config

__all__ = ["build_forward_backward_requests", "validate_training_data"]


def _datum_length(datum: Datum, where: str) -> int | None:
    """The input length, or None when an image chunk has no token count."""
    for j, chunk in enumerate(datum.model_input.chunks):
        if isinstance(chunk, ImageAssetPointerChunk):
            raise invalid(f"{where}.model_input.chunks[{j}]",
                          "token or image-bytes chunks (training cannot fetch image pointers)",
                          "<ImageAssetPointerChunk>", "load the image and send an ImageChunk")
        if isinstance(chunk, ImageChunk) and chunk.expected_tokens is None:
            return None
    return datum.model_input.length


def validate_training_data(data: Sequence[Datum], loss_fn: str | None,
                           loss_fn_config: Mapping[str, float | str] | None = None) -> None:
    """Check data for forward / forward_backward before anything is sent.

    Every datum must be a `Datum` with a non-empty input; every loss input must have one row
    per input position (``shape[0] == model_input.length``); ``weights`` must match
    ``target_tokens``; a built-in loss must get its required inputs and known config keys.
    Pass ``loss_fn=None`` to check only shapes (custom losses).

    Raises:
        ValidationError: naming the datum, the key, what was expected and what was given.

    Example:
        >>> from tinkex_jax.builders import datum_from_tokens
        >>> validate_training_data([datum_from_tokens([1, 2, 3])], "cross_entropy")
        >>> validate_training_data([datum_from_tokens([1, 2, 3])], "ppo")
        Traceback (most recent call last):
        ...
        tinkex_jax.ValidationError: data[0].loss_fn_inputs: expected the inputs of ppo: ['advantages', 'logprobs', 'target_tokens'], got ['target_tokens', 'weights']. Fix: add the missing keys ['advantages', 'logprobs']
    """
    if isinstance(data, Datum) or not isinstance(data, Sequence):
        raise invalid("data", "a list of Datum", f"<{type(data).__name__}>")
    if len(data) == 0:
        raise invalid("data", "at least one Datum", [], "pass a non-empty list")
    required: tuple[str, ...] = ()
    if loss_fn is not None:
        validate_loss_config(loss_fn, loss_fn_config)
        required = LOSS_SPECS[loss_fn].required_inputs
    for i, datum in enumerate(data):
        where = f"data[{i}]"
        if not isinstance(datum, Datum):
            raise invalid(where, "a Datum", f"<{type(datum).__name__}>",
                          "build it with Datum(...) or tinkex_jax.builders.datum_from_tokens")
        length = _datum_length(datum, where)
        if length == 0:
            raise invalid(f"{where}.model_input", "at least one input token", "<empty input>")
        missing = [k for k in required if k not in datum.loss_fn_inputs]
        if missing:
            raise invalid(f"{where}.loss_fn_inputs", f"the inputs of {loss_fn}: {sorted(required)}",
                          sorted(datum.loss_fn_inputs), f"add the missing keys {sorted(missing)}")
        for key, tensor in datum.loss_fn_inputs.items():
            shape = tuple(tensor.shape or ())
            if length is not None and (not shape or shape[0] != length):
                raise invalid(f"{where}.loss_fn_inputs[{key!r}]",
                              f"{length} rows, one per input position (model_input.length)",
                              f"<shape {list(shape)}>",
                              "targets are the input shifted by one; see datum_from_tokens")
        target = datum.loss_fn_inputs.get("target_tokens")
        if target is not None:
            if target.ndim not in (1, 2):
                raise invalid(f"{where}.loss_fn_inputs['target_tokens']", "a 1-D or 2-D tensor",
                              f"<shape {list(target.shape or ())}>")
            if target.values.size and int(target.values.min()) < 0:
                raise invalid(f"{where}.loss_fn_inputs['target_tokens']", "token ids >= 0",
                              int(target.values.min()))
            weights = datum.loss_fn_inputs.get("weights")
            if weights is not None and tuple(weights.shape or ()) != tuple(target.shape or ()):
                raise invalid(f"{where}.loss_fn_inputs['weights']",
                              f"the shape of target_tokens {list(target.shape or ())}",
                              f"<shape {list(weights.shape or ())}>")


def build_forward_backward_requests(
    model_id: str,
    request_ids: range,
    chunks: Sequence[Sequence[Datum]],
    loss_fn: str,
    loss_fn_config: Mapping[str, float | str] | None,
    *,
    forward_only: bool,
) -> list[ForwardBackwardRequest]:
    """One request per chunk, with consecutive seq ids from the reserved request ids.

    Example:
        >>> from tinkex_jax.builders import datum_from_tokens
        >>> reqs = build_forward_backward_requests("m", range(4, 6),
        ...     [[datum_from_tokens([1, 2])], [datum_from_tokens([3, 4])]], "cross_entropy",
        ...     None, forward_only=False)
        >>> [r.seq_id for r in reqs]
        [5, 6]
    """
    if len(request_ids) != len(chunks):
        raise invalid("build_forward_backward_requests", f"{len(chunks)} request ids",
                      len(request_ids))
    config = dict(loss_fn_config) if loss_fn_config else None
    return [
        ForwardBackwardRequest(model_id=model_id, seq_id=seq_id_of(rid), data=list(chunk),
                               loss_fn=loss_fn, loss_fn_config=config, forward_only=forward_only)
        for rid, chunk in zip(request_ids, chunks)
    ]
