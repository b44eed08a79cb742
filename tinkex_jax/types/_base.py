"""Base classes for wire structs and the array type used inside them."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

__all__ = ["WireStruct", "force_set", "is_array_like"]


class WireStruct(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every wire type: a frozen, keyword-only msgspec Struct.

    Unknown fields in decoded JSON are ignored (msgspec's default), so older and newer
    servers keep working. Changes go through `msgspec.structs.replace`, never mutation.
    """


def force_set(obj: msgspec.Struct, name: str, value: Any) -> None:
    """Set a field of a frozen struct; only for normalising inputs in ``__post_init__``."""
    msgspec.structs.force_setattr(obj, name, value)


def is_array_like(value: object) -> bool:
    """True for numpy arrays and anything exposing ``__array__`` (jax, torch) but lists."""
    if isinstance(value, np.ndarray):
        return True
    return hasattr(value, "__array__") and not isinstance(value, list | tuple | str | bytes)

