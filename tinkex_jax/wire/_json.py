"""JSON codecs (msgspec) for every JSON endpoint.

Requests are encoded with every field that has a value and without ``None`` fields, the
shape the official SDK sends (``exclude_none``). Responses decode leniently: unknown fields
are ignored, absent optional fields take their defaults.

Example:
    >>> from tinkex_jax.types import SaveWeightsRequest, SaveWeightsResponse
    >>> encode_json(SaveWeightsRequest(model_id="m", path="s1", seq_id=3))
    b'{"model_id":"m","path":"s1","seq_id":3,"overwrite":false,"type":"save_weights"}'
    >>> decode_json(b'{"path": "tinker://m/weights/s1", "extra": 1}', SaveWeightsResponse).path
    'tinker://m/weights/s1'
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

import msgspec
import numpy as np

from ..errors import APIResponseValidationError

__all__ = ["decode_json", "encode_json", "to_builtins"]

T = TypeVar("T")


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "__array__"):
        return np.asarray(obj).tolist()
    raise TypeError(f"cannot encode a {type(obj).__name__} as JSON: expected builtins, msgspec "
                    "structs, numpy arrays or scalars, or array-likes. Fix: convert it first "
                    "(e.g. to a list, str or float).")


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def to_builtins(obj: Any) -> Any:
    """The JSON-ready builtin form of a struct, without ``None`` fields."""
    return _drop_none(msgspec.to_builtins(obj, enc_hook=_enc_hook))


_ENCODER = msgspec.json.Encoder(enc_hook=_enc_hook)


def encode_json(obj: Any) -> bytes:
    """Encode a struct (or builtin value) as compact JSON, omitting ``None`` fields."""
    return _ENCODER.encode(to_builtins(obj))


@functools.cache
def _decoder(type_: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(type_)


def decode_json(body: bytes | str, type_: type[T]) -> T:
    """Decode JSON into `type_`, raising `APIResponseValidationError` with the JSON path."""
    try:
        return _decoder(type_).decode(body)  # type: ignore[arg-type]
    except msgspec.ValidationError as exc:
        name = getattr(type_, "__name__", str(type_))
        raise APIResponseValidationError(f"Response did not match {name}: {exc}",
                                         body=_preview(body)) from None
    except msgspec.DecodeError as exc:
        raise APIResponseValidationError(f"Response was not valid JSON: {exc}",
                                         body=_preview(body)) from None


def _preview(body: bytes | str) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    return text if len(text) <= 500 else text[:500] + "..."
