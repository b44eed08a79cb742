"""Pure request builders: validate user data, then build the request values to send."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import invalid
from ..types import (
    Datum,
    ForwardBackwardRequest,
    ImageAssetPointerChunk,
    ImageChunk,
    check_provenance,
)
from ._ids import seq_id_of
from ._losses import check_datum_loss_inputs, validate_loss_config, wire_loss_spec

__all__ = ["build_forward_backward_requests", "check_provenance_tiling", "validate_training_data"]


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


def check_provenance_tiling(datum: Datum, loss_fn: str, where: str = "data[0]") -> None:
    """Check that a datum carries provenance spans that tile its fields.

    Losses that need provenance (``stable_reinforce``) require both span lists: the
    ``model_input`` spans must cover every input position and the ``loss_fn_inputs`` spans
    every row of ``target_tokens`` (`tinkex_jax.types.check_provenance`, checked again here
    because ``loss_fn_inputs`` may have been reassigned since the datum was built; each span
    was checked when it was built). Whether the named sequences exist and hold those tokens
    is the server's check.

    Raises:
        ValidationError: missing spans, a bad span, or spans that do not tile their field.

    Example:
        >>> from tinkex_jax.builders import datum_from_tokens
        >>> check_provenance_tiling(datum_from_tokens([1, 2, 3]), "stable_reinforce")
        Traceback (most recent call last):
        ...
        tinkex_jax.ValidationError: data[0]: expected provenance spans (loss_fn 'stable_reinforce' trains on recorded samples), got <a Datum without provenance>. Fix: sample with record_stability_info=True and attach datum.with_provenance(model_input=[...], loss_fn_inputs=[...]) naming each position's sampled sequence
    """
    if datum.model_input_spans is None or datum.loss_fn_input_spans is None:
        raise invalid(where, f"provenance spans (loss_fn {loss_fn!r} trains on recorded samples)",
                      "<a Datum without provenance>",
                      "sample with record_stability_info=True and attach "
                      "datum.with_provenance(model_input=[...], loss_fn_inputs=[...]) naming "
                      "each position's sampled sequence")
    check_provenance(datum, where)


def validate_training_data(data: Sequence[Datum], loss_fn: str | None,
                           loss_fn_config: Mapping[str, float | str] | None = None) -> None:
    """Check data for forward / forward_backward before anything is sent.

    Every datum must be a `Datum` with a non-empty input; every loss input must have one row
    per input position (``shape[0] == model_input.length``); ``weights`` must match
    ``target_tokens``; a built-in loss must get its required inputs, known config keys with
    valid values and, when it needs them, provenance spans that tile the datum (the checks
    of the loss table, `losses.LOSS_SPECS`, which the local server runs too). Pass
    ``loss_fn=None`` (or a name no built-in loss implements, ``custom``) to check only
    shapes.

    Raises:
        ValidationError: naming the datum, the key, what was expected and what was given.

    Example:
        >>> from tinkex_jax.builders import datum_from_tokens
        >>> validate_training_data([datum_from_tokens([1, 2, 3])], "cross_entropy")
        >>> validate_training_data([datum_from_tokens([1, 2, 3])], "ppo")
        Traceback (most recent call last):
        ...
        tinkex_jax.ValidationError: data[0].loss_fn_inputs: loss_fn 'ppo' requires loss_fn_inputs ['advantages', 'logprobs', 'target_tokens']; missing ['advantages', 'logprobs'] (given: ['target_tokens', 'weights']). Fix: add ['advantages', 'logprobs'] to every Datum.loss_fn_inputs.
    """
    if isinstance(data, Datum) or not isinstance(data, Sequence):
        raise invalid("data", "a list of Datum", f"<{type(data).__name__}>")
    if len(data) == 0:
        raise invalid("data", "at least one Datum", [], "pass a non-empty list")
    built_in = None
    if loss_fn is not None:
        spec = wire_loss_spec(loss_fn)
        if spec.served:
            validate_loss_config(loss_fn, loss_fn_config)
            built_in = spec
    for i, datum in enumerate(data):
        where = f"data[{i}]"
        if not isinstance(datum, Datum):
            raise invalid(where, "a Datum", f"<{type(datum).__name__}>",
                          "build it with Datum(...) or tinkex_jax.builders.datum_from_tokens")
        length = _datum_length(datum, where)
        if length == 0:
            raise invalid(f"{where}.model_input", "at least one input token", "<empty input>")
        if built_in is not None:
            check_datum_loss_inputs(built_in.name, datum.loss_fn_inputs,
                                    f"{where}.loss_fn_inputs")
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
        if built_in is not None and built_in.needs_provenance:
            check_provenance_tiling(datum, built_in.name, where)


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
