"""Protobuf codecs for forward_backward requests and forward / forward_backward / sample results.

Tensors travel as raw little-endian buffers: decoding is one ``np.frombuffer`` per field,
never a Python object per element, and decoded arrays are read-only views of the received
bytes. Requests are encoded by the hand-written encoder in ``_fast_request`` (one copy of
the data); results by the generated protobuf module.

Example:
    >>> from tinkex_jax.types import Datum, ForwardBackwardRequest, ModelInput
    >>> req = ForwardBackwardRequest(model_id="m", seq_id=1, loss_fn="cross_entropy", data=[
    ...     Datum(model_input=ModelInput.from_ints([1, 2]),
    ...           loss_fn_inputs={"target_tokens": [2, 3], "weights": [1.0, 1.0]})])
    >>> decode_forward_backward_request(encode_forward_backward_request(req)) == req
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import APIResponseValidationError, invalid
from ..types import (
    Datum,
    DmelChunk,
    EncodedTextChunk,
    ForwardBackwardOutput,
    ForwardBackwardRequest,
    ImageChunk,
    ModelInput,
    ModelInputChunk,
    PromptAltTokens,
    PromptProvenanceSpan,
    ProvenanceSpan,
    SampledProvenanceSpan,
    SampledSequence,
    SampleResponse,
    TensorData,
    TopkLogprobs,
)
from . import tinker_public_pb2 as pb
from ._fast_request import encode_forward_backward_request

__all__ = [
    "decode_forward_backward_output",
    "decode_forward_backward_request",
    "decode_sample_response",
    "encode_forward_backward_output",
    "encode_forward_backward_request",
    "encode_sample_response",
    "tensor_from_proto",
    "tensor_to_proto",
]

_I32 = np.dtype("<i4")
_I64 = np.dtype("<i8")
_F32 = np.dtype("<f4")
_WIRE_TO_PB = {"int64": pb.DTYPE_INT64, "float32": pb.DTYPE_FLOAT32}
_TOPK_SENTINEL = -99999.0


def _le_bytes(array: np.ndarray, dtype: np.dtype[Any]) -> bytes:
    if array.dtype != dtype:
        array = array.astype(dtype)
    return array.tobytes()


_ITEM_SIZES: dict[int, int] = {pb.DTYPE_FLOAT32: 4, pb.DTYPE_INT64: 8, pb.DTYPE_INT32: 4,
                               pb.DTYPE_BFLOAT16: 2}


def _whole(data: bytes, itemsize: int, where: str) -> None:
    if len(data) % itemsize:
        raise APIResponseValidationError(
            f"{where}: a buffer of {len(data)} bytes is not a whole number of {itemsize}-byte "
            "values")


def _array_from_pb(data: bytes, pb_dtype: int, where: str) -> np.ndarray:
    """Decode a raw buffer of a proto DType into an int64 / float32 numpy array."""
    if pb_dtype in _ITEM_SIZES:
        _whole(data, _ITEM_SIZES[pb_dtype], where)
    if pb_dtype == pb.DTYPE_FLOAT32:
        return np.frombuffer(data, dtype=_F32)
    if pb_dtype == pb.DTYPE_INT64:
        return np.frombuffer(data, dtype=_I64)
    if pb_dtype == pb.DTYPE_INT32:
        return np.frombuffer(data, dtype=_I32).astype(_I64)
    if pb_dtype == pb.DTYPE_BFLOAT16:
        halves = np.frombuffer(data, dtype=np.dtype("<u2")).astype(np.uint32) << 16
        return halves.view(_F32)
    raise APIResponseValidationError(f"{where}: unknown tensor dtype {pb_dtype} in protobuf")


# ----------------------------------------------------------------------------- tensors


def tensor_to_proto(tensor: TensorData, out: Any) -> None:
    """Fill a ``pb.Tensor`` message from TensorData (dense or sparse CSR)."""
    out.dtype = _WIRE_TO_PB[tensor.dtype]  # type: ignore[index]
    out.shape.extend(tensor.shape)
    values = tensor.values
    if tensor.is_sparse:
        csr = out.sparse_csr
        csr.values = values.tobytes()
        csr.crow_indices = _le_bytes(np.asarray(tensor.sparse_crow_indices), _I64)
        csr.col_indices = _le_bytes(np.asarray(tensor.sparse_col_indices), _I64)
    else:
        out.dense = values.tobytes()


def tensor_from_proto(msg: Any, where: str = "tensor") -> TensorData:
    """Decode a ``pb.Tensor`` into TensorData (zero-copy views of the message bytes)."""
    shape = list(msg.shape)
    if msg.WhichOneof("encoding") == "sparse_csr":
        csr = msg.sparse_csr
        values = _array_from_pb(csr.values, msg.dtype, where)
        _whole(csr.crow_indices, 8, f"{where}.sparse_csr.crow_indices")
        _whole(csr.col_indices, 8, f"{where}.sparse_csr.col_indices")
        return TensorData(
            data=values, dtype="int64" if values.dtype == _I64 else "float32", shape=shape,
            sparse_crow_indices=np.frombuffer(csr.crow_indices, dtype=_I64),
            sparse_col_indices=np.frombuffer(csr.col_indices, dtype=_I64),
        )
    values = _array_from_pb(msg.dense, msg.dtype, where)
    return TensorData(data=values, dtype="int64" if values.dtype == _I64 else "float32",
                      shape=shape or [values.size])


# ----------------------------------------------------------------------------- requests


def _span_from_proto(msg: Any, where: str) -> ProvenanceSpan:
    kind = msg.WhichOneof("span")
    if kind is None:
        raise invalid(where, "a prompt_tokens or sampled_tokens span", "<an empty span>",
                      "build spans with PromptProvenanceSpan / SampledProvenanceSpan")
    inner = getattr(msg, kind)
    cls = PromptProvenanceSpan if kind == "prompt_tokens" else SampledProvenanceSpan
    return cls(sequence_id=inner.sequence_id, offset=inner.offset, length=inner.length)


def decode_forward_backward_request(
        body: bytes, *, check_size: Callable[[int, int], None] | None = None
) -> ForwardBackwardRequest:
    """Parse protobuf bytes into a validated ForwardBackwardRequest (server side).

    `check_size` is called with the number of datums and of text tokens once the bytes are
    parsed, before any datum is built, so a server can refuse an oversized request without
    paying for it (it raises to refuse).
    """
    msg = pb.ForwardBackwardRequest()
    try:
        msg.ParseFromString(body)
    except Exception as exc:  # protobuf raises DecodeError; keep the message
        raise invalid("forward_backward body", "a serialised ForwardBackwardRequest protobuf",
                      f"<{len(body)} undecodable bytes>", f"check Content-Type/-Encoding ({exc})"
                      ) from None
    if check_size is not None:
        check_size(len(msg.data), sum(len(c.encoded_text.tokens) // 4 for d in msg.data
                                      for c in d.model_input))
    config: dict[str, float | str] = dict(msg.loss_fn_config)
    for key, value in msg.loss_fn_config_v2.items():
        kind = value.WhichOneof("value")
        if kind == "text":
            config[key] = value.text
        elif kind == "number":
            config[key] = value.number
    try:
        data = _data_from_proto(msg)
    except APIResponseValidationError as exc:  # a malformed buffer: the client's fault here
        raise invalid("forward_backward body", "int32 token buffers and tensors of a known "
                      "dtype whose buffers hold whole values", str(exc),
                      "encode requests with a Tinker SDK") from None
    return ForwardBackwardRequest(
        model_id=msg.model_id, seq_id=msg.seq_id, data=data, loss_fn=msg.loss_fn,
        loss_fn_config=config or None, forward_only=msg.forward_only,
    )


def _data_from_proto(msg: Any) -> list[Datum]:
    data = []
    for i, d in enumerate(msg.data):
        chunks: list[ModelInputChunk] = []
        for c in d.model_input:
            kind = c.WhichOneof("chunk")
            if kind == "encoded_text":
                _whole(c.encoded_text.tokens, 4, f"data[{i}].model_input tokens")
                chunks.append(EncodedTextChunk(tokens=np.frombuffer(c.encoded_text.tokens, _I32)))
            elif kind == "image":
                chunks.append(ImageChunk(
                    data=c.image.data, format=c.image.format,
                    expected_tokens=c.image.expected_tokens
                    if c.image.HasField("expected_tokens") else None))
            elif kind == "dmel":
                chunks.append(DmelChunk(dmel=c.dmel.dmel))
            else:
                raise invalid(f"data[{i}].model_input", "text, image or dmel chunks",
                              kind or "<empty>")
        inputs = {key: tensor_from_proto(t, f"data[{i}].loss_fn_inputs[{key!r}]")
                  for key, t in d.loss_fn_inputs.items()}
        spans_in = [_span_from_proto(s, f"data[{i}].model_input_spans[{j}]")
                    for j, s in enumerate(d.model_input_spans)] or None
        spans_loss = [_span_from_proto(s, f"data[{i}].loss_fn_input_spans[{j}]")
                      for j, s in enumerate(d.loss_fn_input_spans)] or None
        data.append(Datum(model_input=ModelInput(chunks=chunks), loss_fn_inputs=inputs,
                          model_input_spans=spans_in, loss_fn_input_spans=spans_loss))
    return data


# ----------------------------------------------------------------------------- fwd/bwd output


def encode_forward_backward_output(output: ForwardBackwardOutput) -> bytes:
    """Serialise a result as one ArrayRecord (server side).

    Every per-datum field is concatenated into one buffer with ``num_datums + 1`` byte
    offsets; datums must agree on each field's dtype and trailing shape.
    """
    msg = pb.ForwardBackwardOutput(loss_fn_output_type=output.loss_fn_output_type)
    for key, value in output.metrics.items():
        msg.metrics[key] = float(value)
    record = msg.loss_fn_outputs.add(type_tag=output.loss_fn_output_type,
                                     num_datums=len(output.loss_fn_outputs))
    keys: list[str] = list(output.loss_fn_outputs[0]) if output.loss_fn_outputs else []
    for key in keys:
        arrays = [out[key].to_numpy() for out in output.loss_fn_outputs]
        trailing = arrays[0].shape[1:]
        dtype = output.loss_fn_outputs[0][key].dtype or "float32"
        offsets = np.zeros(len(arrays) + 1, dtype=_I64)
        np.cumsum([a.nbytes for a in arrays], out=offsets[1:])
        field = record.fields[key]
        field.data = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
        field.offsets = offsets.tobytes()
        field.dtype = _WIRE_TO_PB[dtype]
        field.trailing_shape.extend(trailing)
    return msg.SerializeToString()


def decode_forward_backward_output(body: bytes) -> ForwardBackwardOutput:
    """Parse a protobuf ForwardBackwardOutput into per-datum TensorData views."""
    msg = pb.ForwardBackwardOutput()
    try:
        msg.ParseFromString(body)
    except Exception as exc:
        raise APIResponseValidationError(f"Could not decode ForwardBackwardOutput protobuf: {exc}"
                                         ) from None
    use_first_field = all(r.num_datums == 0 for r in msg.loss_fn_outputs)
    outputs: list[dict[str, TensorData]] = []
    for r_index, record in enumerate(msg.loss_fn_outputs):
        per_field: dict[str, list[TensorData]] = {}
        for key, field in record.fields.items():
            where = f"loss_fn_outputs[{r_index}].{key}"
            values = _array_from_pb(field.data, field.dtype, where)
            wire_itemsize = len(field.data) // values.size if values.size else 1
            offsets = np.frombuffer(field.offsets, dtype=_I64) // wire_itemsize
            trailing = tuple(field.trailing_shape)
            per_row = int(np.prod(trailing, dtype=np.int64)) if trailing else 1
            tensors = []
            for start, stop in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
                chunk = values[start:stop]
                shape = (chunk.size // per_row if per_row else 0, *trailing)
                tensors.append(TensorData(data=chunk, dtype="int64" if values.dtype == _I64
                                          else "float32", shape=shape))
            per_field[key] = tensors
        count = record.num_datums
        if use_first_field or count == 0:
            count = len(next(iter(per_field.values()), []))
        for i in range(count):
            outputs.append({key: tensors[i] for key, tensors in per_field.items()
                            if i < len(tensors)})
    output_type = msg.loss_fn_output_type.rsplit(":", 1)[-1] or "ArrayRecord"
    return ForwardBackwardOutput(loss_fn_output_type=output_type, loss_fn_outputs=outputs,
                                 metrics=dict(msg.metrics))


# ----------------------------------------------------------------------------- sampling


def _topk_to_proto(topk: TopkLogprobs, out: Any) -> None:
    ids = np.asarray(topk.token_ids)
    out.token_ids = _le_bytes(ids, _I32)
    out.logprobs = _le_bytes(np.asarray(topk.logprobs), _F32)
    out.length, out.k = (int(ids.shape[0]), int(ids.shape[1])) if ids.ndim == 2 else (0, 0)


def _topk_from_proto(msg: Any) -> TopkLogprobs | None:
    if msg.length == 0 or msg.k == 0:
        return None
    shape = (msg.length, msg.k)
    return TopkLogprobs(token_ids=np.frombuffer(msg.token_ids, _I32).reshape(shape),
                        logprobs=np.frombuffer(msg.logprobs, _F32).reshape(shape))


def encode_sample_response(response: SampleResponse) -> bytes:
    """Serialise a SampleResponse (server side). Sequence ids do not travel in the proto."""
    msg = pb.SampleResponse(prompt_cache_hit_tokens=response.prompt_cache_hit_tokens)
    for seq in response.sequences:
        s = msg.sequences.add(
            stop_reason=pb.STOP_REASON_LENGTH if seq.stop_reason == "length"
            else pb.STOP_REASON_STOP,
            tokens=_le_bytes(np.asarray(seq.tokens_np), _I32))
        if seq.logprobs_np is not None:
            s.logprobs = _le_bytes(np.asarray(seq.logprobs_np), _F32)
        if seq.topk_logprobs_np is not None:
            _topk_to_proto(seq.topk_logprobs_np, s.topk_sampled_logprobs)
    if response.prompt_logprobs_np is not None:
        msg.prompt_logprobs = _le_bytes(np.asarray(response.prompt_logprobs_np), _F32)
    if response.topk_prompt_logprobs_np is not None:
        _topk_to_proto(response.topk_prompt_logprobs_np, msg.topk_prompt_logprobs)
    if response.target_prompt_logprobs is not None:
        tensor_to_proto(response.target_prompt_logprobs, msg.target_prompt_logprobs)
    if response.prompt_alt_tokens is not None:
        tensor_to_proto(response.prompt_alt_tokens.tokens, msg.prompt_alt_tokens.tokens)
        tensor_to_proto(response.prompt_alt_tokens.logprobs, msg.prompt_alt_tokens.logprobs)
    return msg.SerializeToString()


def decode_sample_response(body: bytes, sequence_ids: Sequence[str] = ()) -> SampleResponse:
    """Parse a protobuf SampleResponse, stamping `sequence_ids` onto the sequences in order."""
    msg = pb.SampleResponse()
    try:
        msg.ParseFromString(body)
    except Exception as exc:
        raise APIResponseValidationError(f"Could not decode SampleResponse protobuf: {exc}"
                                         ) from None
    sequences = []
    for i, s in enumerate(msg.sequences):
        sequences.append(SampledSequence(
            stop_reason="length" if s.stop_reason == pb.STOP_REASON_LENGTH else "stop",
            tokens_np=np.frombuffer(s.tokens, _I32),
            logprobs_np=np.frombuffer(s.logprobs, _F32) if s.HasField("logprobs") else None,
            topk_logprobs_np=_topk_from_proto(s.topk_sampled_logprobs)
            if s.HasField("topk_sampled_logprobs") else None,
            sequence_id=sequence_ids[i] if i < len(sequence_ids) else "",
        ))
    prompt_logprobs = None
    if msg.HasField("prompt_logprobs") and msg.prompt_logprobs:
        prompt_logprobs = np.frombuffer(msg.prompt_logprobs, _F32)
    alt = None
    if msg.HasField("prompt_alt_tokens"):
        alt = PromptAltTokens(tokens=tensor_from_proto(msg.prompt_alt_tokens.tokens),
                              logprobs=tensor_from_proto(msg.prompt_alt_tokens.logprobs))
    return SampleResponse(
        sequences=sequences,
        prompt_logprobs_np=prompt_logprobs,
        topk_prompt_logprobs_np=_topk_from_proto(msg.topk_prompt_logprobs)
        if msg.HasField("topk_prompt_logprobs") else None,
        target_prompt_logprobs=tensor_from_proto(msg.target_prompt_logprobs)
        if msg.HasField("target_prompt_logprobs") else None,
        prompt_alt_tokens=alt,
        prompt_cache_hit_tokens=msg.prompt_cache_hit_tokens,
    )
