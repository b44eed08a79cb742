"""A hand-written protobuf encoder for ForwardBackwardRequest, the SDK's hot path.

The generic protobuf runtime copies every tensor twice (``tobytes()`` into a Python bytes,
then into its arena) and once more to serialise. Here each message is a list of pieces
whose lengths are known up front, and the numpy buffers themselves are pieces: the one copy
is the final ``b"".join``. The output is ordinary proto3 wire format for the schema in
``tinker_public.proto``; tests parse it with the generated module and the official SDK's.
"""

from __future__ import annotations

import functools
import struct
from typing import Any

import numpy as np

from ..errors import invalid
from ..types import (
    Datum,
    DmelChunk,
    EncodedTextChunk,
    ForwardBackwardRequest,
    ImageChunk,
    PromptProvenanceSpan,
    ProvenanceSpan,
    TensorData,
)

__all__ = ["encode_forward_backward_request"]

_I32 = np.dtype("<i4")
_I64 = np.dtype("<i8")
_DTYPE_ENUM = {"float32": 1, "int64": 2}
_LEN, _VARINT, _I64_WIRE = 2, 0, 1
_pack_double = struct.Struct("<d").pack

Pieces = list[Any]  # bytes or buffer-protocol objects (numpy arrays)


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@functools.lru_cache(maxsize=8192)
def _head(field: int, size: int) -> bytes:
    """Tag and length of a length-delimited field (cached: sizes repeat across datums)."""
    return _varint((field << 3) | _LEN) + _varint(size)


@functools.lru_cache(maxsize=1024)
def _varint_field(field: int, value: int) -> bytes:
    return _varint((field << 3) | _VARINT) + _varint(value)


def _nbytes(piece: Any) -> int:
    return piece.nbytes if isinstance(piece, np.ndarray) else len(piece)


# A message under construction: its pieces (bytes or contiguous arrays) and total length.
Message = tuple[Pieces, int]


def _field(field: int, payload: Any) -> Message:
    """A length-delimited field whose payload is bytes or a contiguous array."""
    n = _nbytes(payload)
    head = _head(field, n)
    return ([head, payload] if n else [head]), len(head) + n


def _wrap(field: int, message: Message) -> Message:
    """A sub-message as a length-delimited field."""
    pieces, size = message
    head = _head(field, size)
    return [head, *pieces], len(head) + size


def _join(*messages: Message) -> Message:
    pieces: Pieces = []
    size = 0
    for p, n in messages:
        pieces.extend(p)
        size += n
    return pieces, size


def _bytes_piece(data: bytes) -> Message:
    return [data], len(data)


def _string(field: int, text: str) -> Message:
    return _field(field, text.encode()) if text else ([], 0)


def _varint_msg(field: int, value: int, *, always: bool = False) -> Message:
    if not value and not always:
        return [], 0
    piece = _varint_field(field, value)
    return [piece], len(piece)


def _double(field: int, value: float) -> Message:
    piece = _varint((field << 3) | _I64_WIRE) + _pack_double(value)
    return [piece], len(piece)


@functools.lru_cache(maxsize=1024)
def _shape_and_dtype(dtype_enum: int, shape: tuple[int, ...]) -> bytes:
    packed = b"".join(_varint(d) for d in shape)
    tail = _varint_field(3, dtype_enum)
    return tail + (_head(4, len(packed)) + packed if packed else b"")


def _contiguous(array: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    if array.dtype != dtype:
        return array.astype(dtype)
    return np.ascontiguousarray(array)


def _tensor(tensor: TensorData) -> Message:
    values = np.ascontiguousarray(tensor.values)
    if tensor.is_sparse:
        body = _wrap(2, _join(
            _field(1, values),
            _field(2, _contiguous(np.asarray(tensor.sparse_crow_indices), _I64)),
            _field(3, _contiguous(np.asarray(tensor.sparse_col_indices), _I64)),
        ))
    else:
        body = _field(1, values)
    return _join(body, _bytes_piece(_shape_and_dtype(_DTYPE_ENUM[tensor.dtype or "float32"],
                                                     tuple(tensor.shape or ()))))


def _span(span: ProvenanceSpan) -> Message:
    inner = _join(_string(1, span.sequence_id), _varint_msg(2, span.offset),
                  _varint_msg(3, span.length))
    return _wrap(1 if isinstance(span, PromptProvenanceSpan) else 2, inner)


def _map_entry(key: str, value: Message) -> Message:
    return _join(_string(1, key), _wrap(2, value))


def _chunk(chunk: Any, where: str) -> Message:
    if isinstance(chunk, EncodedTextChunk):
        return _wrap(1, _field(1, _contiguous(chunk.token_array(), _I32)))
    if isinstance(chunk, ImageChunk):
        image = _join(_field(1, chunk.data), _string(2, chunk.format))
        if chunk.expected_tokens is not None:
            image = _join(image, _varint_msg(3, chunk.expected_tokens, always=True))
        return _wrap(2, image)
    if isinstance(chunk, DmelChunk):  # serialized tensor bytes, passed through untouched
        return _wrap(3, _field(1, chunk.dmel))
    raise invalid(where, "token, image-bytes or dmel chunks (training cannot fetch image "
                  "pointers)",
                  f"<{type(chunk).__name__}>", "load the image and send an ImageChunk")


def _datum(datum: Datum, where: str) -> Message:
    parts = [_wrap(1, _chunk(c, f"{where}.model_input.chunks[{j}]"))
             for j, c in enumerate(datum.model_input.chunks)]
    parts += [_wrap(2, _map_entry(key, _tensor(t))) for key, t in datum.loss_fn_inputs.items()]
    parts += [_wrap(3, _span(s)) for s in datum.model_input_spans or ()]
    parts += [_wrap(4, _span(s)) for s in datum.loss_fn_input_spans or ()]
    return _join(*parts)


def encode_forward_backward_request(request: ForwardBackwardRequest) -> bytes:
    """Serialise a forward_backward / forward request to protobuf bytes with one data copy.

    Numeric config values go to both ``loss_fn_config`` and ``loss_fn_config_v2``; strings
    only to v2, as the official SDK does.
    """
    parts = [_string(1, request.model_id), _varint_msg(2, request.seq_id)]
    parts += [_wrap(3, _datum(d, f"data[{i}]")) for i, d in enumerate(request.data)]
    parts.append(_string(4, request.loss_fn))
    config = request.loss_fn_config or {}
    for key, value in config.items():
        if not isinstance(value, str):
            parts.append(_wrap(5, _join(_string(1, key), _double(2, float(value)))))
    parts.append(_varint_msg(6, int(request.forward_only)))
    for key, value in config.items():
        inner = _field(2, value.encode()) if isinstance(value, str) else _double(1, float(value))
        parts.append(_wrap(7, _map_entry(key, inner)))
    pieces, _ = _join(*parts)
    return b"".join(pieces)
