"""Reading forward / forward_backward / sample results that arrive as JSON.

Since 0.25 these three result kinds travel as protobuf (docs/protocol.md §4.2); servers built for
earlier SDKs answer them with JSON bodies of the same types instead, and the official 0.38 SDK
fails on those. We read them (lenient in what we read): a ForwardBackwardOutput is the same
object either way, and a SampleResponse's JSON has Python lists (``tokens``, ``logprobs``,
``prompt_logprobs`` with null at position 0, top-k as lists of ``[token, logprob]`` pairs).

Example:
    >>> out = decode_legacy_result("Sample", b'{"sequences": [{"stop_reason": "stop", '
    ...     b'"tokens": [4, 5], "logprobs": [-0.5, -0.25]}], "prompt_logprobs": [null, -1.5]}')
    >>> out.sequences[0].tokens, out.sequences[0].logprobs, out.prompt_logprobs
    ([4, 5], [-0.5, -0.25], [None, -1.5])
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import APIResponseValidationError
from ..types import ForwardBackwardOutput, SampledSequence, SampleResponse, TopkLogprobs
from ..wire import decode_json

__all__ = ["decode_legacy_result", "is_legacy_result"]

#: The result kinds that older servers send as JSON where 0.25+ sends protobuf, and the key
#: their JSON bodies always have.
_MARKERS = {"ForwardBackward": "loss_fn_outputs", "Forward": "loss_fn_outputs",
            "Sample": "sequences"}
_UNUSED_LOGPROB = -99999.0


def is_legacy_result(request_type: str, payload: Any) -> bool:
    """Whether `payload` is a JSON result of one of the three protobuf result kinds.

    Example:
        >>> is_legacy_result("Sample", {"sequences": []}), is_legacy_result("Sample", {})
        (True, False)
    """
    marker = _MARKERS.get(request_type)
    return (marker is not None and isinstance(payload, dict)
            and isinstance(payload.get(marker), list))


def decode_legacy_result(request_type: str, content: bytes) -> Any:
    """Decode a JSON result of a protobuf result kind (see the module docstring)."""
    if request_type in ("ForwardBackward", "Forward"):
        return decode_json(content, ForwardBackwardOutput)
    try:
        payload = json.loads(content)
        return _sample_response(payload)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise APIResponseValidationError(
            f"retrieve_future answered a {request_type} request with a JSON body that is not "
            f"a SampleResponse ({type(exc).__name__}: {exc})",
            body=content[:2000].decode("utf-8", "replace")) from None


def _sample_response(payload: dict[str, Any]) -> SampleResponse:
    sequences = []
    for seq in payload.get("sequences") or []:
        logprobs = seq.get("logprobs")
        sequences.append(SampledSequence(
            stop_reason="length" if seq.get("stop_reason") == "length" else "stop",
            tokens_np=np.asarray(seq.get("tokens") or [], dtype=np.int32),
            logprobs_np=None if logprobs is None else np.asarray(logprobs, dtype=np.float32),
            topk_logprobs_np=_topk(seq.get("topk_logprobs")),
            sequence_id=seq.get("sequence_id")))
    prompt = payload.get("prompt_logprobs")
    return SampleResponse(
        sequences=sequences,
        prompt_logprobs_np=None if prompt is None else np.asarray(
            [np.nan if v is None else v for v in prompt], dtype=np.float32),
        topk_prompt_logprobs_np=_topk(payload.get("topk_prompt_logprobs")),
        prompt_cache_hit_tokens=int(payload.get("prompt_cache_hit_tokens") or 0))


def _topk(rows: Sequence[Sequence[Sequence[float]] | None] | None) -> TopkLogprobs | None:
    if rows is None:
        return None
    k = max((len(r) for r in rows if r), default=0)
    ids = np.zeros((len(rows), k), dtype=np.int32)
    logprobs = np.full((len(rows), k), _UNUSED_LOGPROB, dtype=np.float32)
    for i, row in enumerate(rows):
        for j, (token, logprob) in enumerate(row or ()):
            ids[i, j], logprobs[i, j] = int(token), float(logprob)
    return TopkLogprobs(token_ids=ids, logprobs=logprobs)
