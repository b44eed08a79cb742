"""Chunking of forward_backward data (docs/protocol.md §7.3) and merging of chunk results (§7.4)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import invalid
from ..types import (
    Datum,
    DmelChunk,
    EncodedTextChunk,
    ForwardBackwardOutput,
    ImageAssetPointerChunk,
    ImageChunk,
    SampleRequest,
)

__all__ = [
    "METRIC_REDUCTIONS",
    "chunk_data",
    "combine_forward_backward_outputs",
    "estimate_datum_bytes",
    "estimate_sample_bytes",
    "merge_metrics",
    "split_metric_key",
]

logger = logging.getLogger("tinkex_jax.builders")

#: The reductions a metric key may carry (``name:reduction``); others are dropped on merge.
METRIC_REDUCTIONS = ("sum", "mean", "min", "max", "slack", "hash2", "unique")
_MASK64 = (1 << 64) - 1


def _chunk_bytes(chunk: EncodedTextChunk | ImageChunk | ImageAssetPointerChunk | DmelChunk
                 ) -> int:
    if isinstance(chunk, EncodedTextChunk):
        return 4 * chunk.length
    if isinstance(chunk, ImageChunk):
        return len(chunk.data)
    if isinstance(chunk, DmelChunk):
        return len(chunk.dmel)
    return len(chunk.location)


def estimate_datum_bytes(datum: Datum) -> int:
    """Estimated request bytes of a datum: 4 per token, image and dmel bytes, tensor bytes.

    Example:
        >>> from tinkex_jax.builders import datum_from_tokens
        >>> estimate_datum_bytes(datum_from_tokens([1, 2, 3]))  # 2*4 + 2*8 + 2*4
        32
    """
    return sum(_chunk_bytes(c) for c in datum.model_input.chunks) + sum(
        t.nbytes for t in datum.loss_fn_inputs.values())


def estimate_sample_bytes(request: SampleRequest) -> int:
    """Estimated bytes of a sampling prompt (10 per token, image and dmel bytes, pointer length)."""
    total = 0
    for chunk in request.prompt.chunks:
        total += 10 * chunk.length if isinstance(chunk, EncodedTextChunk) else _chunk_bytes(chunk)
    return total


def chunk_data(data: Sequence[Datum], *, max_chunk_len: int = 1024,
               max_chunk_bytes: int = 5_000_000) -> list[list[Datum]]:
    """Split data greedily, in order, into request-sized chunks.

    A new chunk starts when the current one holds `max_chunk_len` datums or when the next
    datum would push its estimated bytes over `max_chunk_bytes`; an oversize datum gets a
    chunk of its own.

    Raises:
        ValidationError: `data` is empty or a limit is not positive.

    Example:
        >>> from tinkex_jax.builders import datum_from_tokens
        >>> data = [datum_from_tokens([1, 2, 3])] * 5
        >>> [len(c) for c in chunk_data(data, max_chunk_len=2)]
        [2, 2, 1]
    """
    if not data:
        raise invalid("data", "at least one Datum", [], "pass a non-empty list of datums")
    if max_chunk_len < 1 or max_chunk_bytes < 1:
        raise invalid("chunk limits", "positive max_chunk_len and max_chunk_bytes",
                      (max_chunk_len, max_chunk_bytes))
    chunks: list[list[Datum]] = []
    current: list[Datum] = []
    current_bytes = 0
    for datum in data:
        size = estimate_datum_bytes(datum)
        if current and (len(current) >= max_chunk_len or current_bytes + size > max_chunk_bytes):
            chunks.append(current)
            current, current_bytes = [], 0
        current.append(datum)
        current_bytes += size
    chunks.append(current)
    return chunks


def split_metric_key(key: str) -> tuple[str, str] | None:
    """Split ``"name:reduction"``; None when the key does not have exactly one colon.

    Example:
        >>> split_metric_key("loss:sum"), split_metric_key("loss")
        (('loss', 'sum'), None)
    """
    parts = key.split(":")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        return None
    return parts[0], parts[1]


def merge_metrics(metrics: Sequence[Mapping[str, float]], weights: Sequence[int]
                  ) -> dict[str, float]:
    """Combine per-chunk metrics by the reduction in each key (``name:reduction``).

    Only keys present in every chunk survive. ``sum``/``min``/``max`` are plain; ``mean``
    and ``slack`` (max minus weighted mean) are weighted by `weights` (datums per chunk);
    ``hash2`` sums int64 values modulo 2**64; ``unique`` keeps the first value under the key
    and the others as ``key_1``, ``key_2``, .... A key the server sent without a known
    reduction (no colon, several, or a reduction added after this SDK) keeps the first
    chunk's value: a result the server answered is never refused over a metric name.

    Raises:
        ZeroDivisionError: a ``mean`` / ``slack`` metric when every weight is zero.

    Example:
        >>> merge_metrics([{"loss:sum": 1.0, "acc:mean": 0.5},
        ...                {"loss:sum": 2.0, "acc:mean": 1.0}], weights=[1, 3])
        {'loss:sum': 3.0, 'acc:mean': 0.875}
    """
    if not metrics:
        return {}
    if len(weights) != len(metrics):
        raise invalid("merge_metrics(weights)", f"{len(metrics)} weights", len(weights))
    common = [k for k in metrics[0] if all(k in m for m in metrics[1:])]
    out: dict[str, float] = {}
    total_weight = float(sum(weights))
    for key in common:
        split = split_metric_key(key)
        reduction = split[1] if split is not None else ""
        values = [float(m[key]) for m in metrics]
        if reduction not in METRIC_REDUCTIONS:
            logger.debug("metric %r has no known reduction: keeping the first chunk's value", key)
            out[key] = values[0]
        elif reduction == "sum":
            out[key] = float(sum(values))
        elif reduction == "min":
            out[key] = min(values)
        elif reduction == "max":
            out[key] = max(values)
        elif reduction in ("mean", "slack"):
            if total_weight == 0:
                raise ZeroDivisionError(f"cannot average metric {key!r}: every chunk is empty")
            mean = sum(v * w for v, w in zip(values, weights)) / total_weight
            out[key] = mean if reduction == "mean" else max(values) - mean
        elif reduction == "hash2":
            acc = 0
            for v in values:
                acc = (acc + (int(v) & _MASK64)) & _MASK64
            out[key] = float(np.array(acc, dtype=np.uint64).view(np.int64))
        elif reduction == "unique":
            out[key] = values[0]
            for i, v in enumerate(values[1:], start=1):
                out[f"{key}_{i}"] = v
    return out


def combine_forward_backward_outputs(outputs: Sequence[ForwardBackwardOutput]
                                     ) -> ForwardBackwardOutput:
    """Merge chunk results: outputs concatenated in order, metrics by `merge_metrics`.

    Example:
        >>> a = ForwardBackwardOutput(loss_fn_outputs=[{}], metrics={"loss:sum": 1.0})
        >>> b = ForwardBackwardOutput(loss_fn_outputs=[{}, {}], metrics={"loss:sum": 2.0})
        >>> out = combine_forward_backward_outputs([a, b])
        >>> len(out.loss_fn_outputs), out.metrics
        (3, {'loss:sum': 3.0})
    """
    if not outputs:
        raise invalid("combine_forward_backward_outputs", "at least one output", [])
    return ForwardBackwardOutput(
        loss_fn_output_type=outputs[0].loss_fn_output_type,
        loss_fn_outputs=[o for out in outputs for o in out.loss_fn_outputs],
        metrics=merge_metrics([o.metrics for o in outputs],
                              [len(o.loss_fn_outputs) for o in outputs]),
    )
