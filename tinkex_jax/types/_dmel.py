"""`DmelChunk`: a model-input chunk of audio features, as serialized tensor bytes.

The bytes are a tensor container as the server defines it, passed through untouched; the
SDK only reads its header, to know the chunk's length (its first dimension). The header is:
an optional constant-tensor marker byte (254), one dtype byte (0-7), the number of
dimensions as an unsigned LEB128 varint, then each dimension as a varint.
"""

from __future__ import annotations

import base64
import binascii

from ..errors import invalid
from ._base import WireStruct, force_set

__all__ = ["DmelChunk", "tensor_container_shape"]

_CONSTANT_MARKER = 254
_MAX_DTYPE = 7


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("the header ends in the middle of a number")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("a header number is longer than 64 bits")


def tensor_container_shape(data: bytes) -> tuple[int, ...]:
    """The shape in a serialized tensor's header (the payload is not read).

    Raises:
        ValueError: the bytes do not start with a valid header.

    Example:
        >>> tensor_container_shape(bytes([1, 2, 80, 3]) + b"payload")
        (80, 3)
        >>> tensor_container_shape(bytes([254, 0, 1, 0x80, 0x01]))
        (128,)
    """
    if not data:
        raise ValueError("the bytes are empty")
    pos = 1 if data[0] == _CONSTANT_MARKER else 0
    if pos >= len(data):
        raise ValueError("the header ends after the constant marker")
    if data[pos] > _MAX_DTYPE:
        raise ValueError(f"unknown dtype byte {data[pos]}")
    ndim, pos = _varint(data, pos + 1)
    shape = []
    for _ in range(ndim):
        dim, pos = _varint(data, pos)
        shape.append(dim)
    return tuple(shape)


class DmelChunk(WireStruct, frozen=True, kw_only=True, tag="dmel", tag_field="type"):
    """Audio features for a model that takes them, as serialized tensor bytes (base64 in
    JSON, raw bytes in protobuf), sent to the server unchanged.

    ``dmel`` may also be given as a base64 string. The header is checked when the chunk is
    built, so a chunk that the server could not size fails here, before anything is sent.

    Example:
        >>> chunk = DmelChunk(dmel=bytes([1, 2, 50, 80]) + bytes(50 * 80 * 2))
        >>> chunk.length, chunk.type
        (50, 'dmel')
    """

    dmel: bytes

    def __post_init__(self) -> None:
        value: object = self.dmel
        if isinstance(value, str):
            try:
                value = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise invalid("DmelChunk.dmel", "bytes, or a base64 string of them",
                              "<a string that is not base64>") from None
        elif isinstance(value, bytearray | memoryview):
            value = bytes(value)
        if not isinstance(value, bytes):
            raise invalid("DmelChunk.dmel", "serialized tensor bytes", type(value).__name__)
        try:
            shape = tensor_container_shape(value)
        except ValueError as e:
            raise invalid("DmelChunk.dmel", "serialized tensor bytes with a valid header",
                          f"<{len(value)} bytes: {e}>") from None
        if not shape:
            raise invalid("DmelChunk.dmel", "a tensor with at least one dimension",
                          "<a 0-dimensional tensor>")
        force_set(self, "dmel", value)

    @property
    def type(self) -> str:
        """The chunk kind on the wire: ``"dmel"``."""
        return "dmel"

    @property
    def length(self) -> int:
        """The number of model-input positions: the tensor's first dimension."""
        return tensor_container_shape(self.dmel)[0]
