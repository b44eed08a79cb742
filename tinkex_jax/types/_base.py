"""Base classes for wire structs, and the value semantics every struct gets from them.

A built struct owns its data. After a struct's own ``__post_init__`` has validated and
normalised its fields, `freeze` replaces every container it holds with an immutable one:

- lists (and tuples) become `FrozenList`, recursively: a tuple that also equals a list with
  the same items and concatenates with lists, so code written for the official SDK's lists
  (``resp.sessions == ["s1"]``, ``chunk.tokens[:-1] + [t]``) keeps working;
- dicts become `FrozenDict` (a read-only ``dict``), recursively;
- numpy arrays become read-only arrays the caller cannot reach: a writeable array (or a view
  of one) is copied once; an array that is read-only all the way down (``np.frombuffer`` over
  ``bytes``, decoded wire data, a jax array) is kept without copying;
- ``bytearray`` becomes ``bytes``.

So mutating a list, dict or array after handing it to a constructor changes neither the
struct nor the bytes it encodes to, and a struct cannot be changed through its fields.
Changes go through `msgspec.structs.replace`, which builds (and checks) a new struct.

The one deliberate exception is `Datum.loss_fn_inputs`: see `LossFnInputs`.

Example:
    >>> import numpy as np
    >>> from tinkex_jax.types import EncodedTextChunk
    >>> tokens = [1, 2, 3]
    >>> chunk = EncodedTextChunk(tokens=tokens)
    >>> tokens.clear()
    >>> chunk.tokens
    (1, 2, 3)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NoReturn

import msgspec
import numpy as np

__all__ = [
    "FrozenDict",
    "FrozenList",
    "PositionalWireStructMeta",
    "WireStruct",
    "force_set",
    "freeze",
    "freeze_value",
    "is_array_like",
    "readonly_array",
]


class FrozenList(tuple[Any, ...]):
    """An immutable list: a ``tuple`` that also compares equal to a ``list`` with the same
    items, and whose ``+`` with a list gives a list (as list + list does).

    Slices are FrozenLists too. It is what list fields of wire structs hold once built.

    Example:
        >>> xs = FrozenList([1, 2, 3])
        >>> xs == [1, 2, 3], [1, 2, 3] == xs, xs[:2] == [1, 2]
        (True, True, True)
        >>> xs + [4], [0] + xs
        ([1, 2, 3, 4], [0, 1, 2, 3])
        >>> xs.append(4)
        Traceback (most recent call last):
        ...
        AttributeError: 'FrozenList' object has no attribute 'append'
    """

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, list):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = tuple.__hash__

    def __getitem__(self, index: Any) -> Any:
        item = tuple.__getitem__(self, index)
        return FrozenList(item) if isinstance(index, slice) else item

    def __add__(self, other: Any) -> Any:
        if isinstance(other, list):
            return [*self, *other]
        return FrozenList(tuple.__add__(self, other))

    def __radd__(self, other: Any) -> Any:
        if isinstance(other, list):
            return [*other, *self]
        if isinstance(other, tuple):
            return FrozenList(tuple.__add__(other, self))
        return NotImplemented

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenList, (tuple(self),))


class FrozenDict(dict[Any, Any]):
    """A ``dict`` that cannot be changed after it is built.

    It is still a ``dict`` (``isinstance``, JSON encoding, ``==`` with plain dicts and
    ``dict(d)`` all work), but every mutating method raises ``TypeError``. Build a changed copy
    with ``{**d, key: value}``.

    Example:
        >>> d = FrozenDict({"loss:sum": 1.5})
        >>> d["loss:sum"], d == {"loss:sum": 1.5}
        (1.5, True)
        >>> d["x"] = 1
        Traceback (most recent call last):
        ...
        TypeError: this mapping belongs to a frozen tinkex_jax struct and cannot be changed; build a new one instead, e.g. {**d, key: value}
    """

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("this mapping belongs to a frozen tinkex_jax struct and cannot be "
                        "changed; build a new one instead, e.g. {**d, key: value}")

    __setitem__ = __delitem__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse
    __ior__ = _refuse

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))

    def __copy__(self) -> FrozenDict:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenDict:
        return self

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __repr__(self) -> str:
        return dict.__repr__(self)


def _owned_all_the_way_down(array: np.ndarray) -> bool:
    """True when nobody can write to `array`'s memory: it and every array it views are
    read-only, and the memory at the bottom is not a mutable buffer."""
    base: Any = array
    while isinstance(base, np.ndarray):
        if base.flags.writeable:
            return False
        base = base.base
    if base is None or isinstance(base, bytes):
        return True
    if isinstance(base, memoryview):
        return base.readonly and not isinstance(base.obj, bytearray)
    return not isinstance(base, bytearray)


def readonly_array(array: np.ndarray) -> np.ndarray:
    """`array` as a read-only array that no caller can change.

    No copy when `array` is read-only all the way down (``np.frombuffer`` over ``bytes``,
    decoded wire data, jax arrays); otherwise one copy, marked read-only.

    Example:
        >>> import numpy as np
        >>> a = np.arange(3)
        >>> r = readonly_array(a)
        >>> a[0] = 9
        >>> r.tolist(), r.flags.writeable
        ([0, 1, 2], False)
    """
    if _owned_all_the_way_down(array):
        return array
    owned = np.array(array, copy=True)
    owned.flags.writeable = False
    return owned


_SCALARS = frozenset({int, float, str, bool, bytes, type(None)})


def freeze_value(value: Any) -> Any:
    """The immutable form of a field value (see the module docstring); structs pass through."""
    if isinstance(value, msgspec.Struct) or value is None:
        return value
    if isinstance(value, FrozenDict):
        return value
    if isinstance(value, FrozenList):
        return value
    if isinstance(value, list | tuple):
        if all(type(v) in _SCALARS for v in value):
            return FrozenList(value)
        return FrozenList(freeze_value(v) for v in value)
    if isinstance(value, dict):
        return FrozenDict({k: freeze_value(v) for k, v in value.items()})
    if isinstance(value, np.ndarray):
        return readonly_array(value)
    if isinstance(value, bytearray):
        return bytes(value)
    return value


def freeze(obj: msgspec.Struct) -> None:
    """Replace every container field of `obj` by its immutable form (in place, once)."""
    for name in obj.__struct_fields__:
        value = getattr(obj, name)
        frozen = freeze_value(value)
        if frozen is not value:
            msgspec.structs.force_setattr(obj, name, frozen)


def _frozen_after(post_init: Callable[[Any], None] | None) -> Callable[[Any], None]:
    def __post_init__(self: Any) -> None:
        if post_init is not None:
            post_init(self)
        freeze(self)

    if post_init is not None:
        __post_init__.__doc__ = post_init.__doc__
        __post_init__.__wrapped__ = post_init  # type: ignore[attr-defined]
    return __post_init__


def _tag_property(tag: str) -> property:
    """A read-only ``type`` attribute giving the struct's wire tag (as the official types
    have a ``type`` field)."""

    def get(self: Any) -> str:
        return tag

    return property(get, doc=f"The tag of this type on the wire: ``{tag!r}``.")


class WireStructMeta(msgspec.StructMeta):
    """Gives every wire struct value semantics: the class's own ``__post_init__`` (if any)
    runs first, then `freeze`. A class whose ``__post_init__`` already
    leaves every field immutable (the hot types: tensors, chunks, datums) says so with
    ``__freezes_itself__ = True`` and skips the generic pass (the value-semantics property
    tests check every public struct either way)."""

    def __new__(mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any],
                **kwargs: Any) -> WireStructMeta:
        own = namespace.get("__post_init__")
        if namespace.get("__freezes_itself__", False):
            if own is None:
                raise TypeError(f"{name}: __freezes_itself__ needs a __post_init__ that does it")
        elif own is not None or not any(isinstance(b, WireStructMeta) for b in bases):
            namespace["__post_init__"] = _frozen_after(own)
        cls = super().__new__(mcls, name, bases, namespace, **kwargs)
        config = cls.__struct_config__
        if config.tag_field == "type" and isinstance(config.tag, str) and "type" not in namespace \
                and "type" not in cls.__struct_fields__:
            setattr(cls, "type", _tag_property(config.tag))  # noqa: B010 (one per class)
        return cls


class PositionalWireStructMeta(WireStructMeta):
    """For the few structs the official SDK lets you build positionally (dataclasses there,
    e.g. ``Datum(model_input, loss_fn_inputs)``): positional arguments fill the fields in
    their declared order; keywords work as everywhere else."""

    @property
    def __signature__(cls) -> inspect.Signature:
        """msgspec's signature with every parameter positional-or-keyword, as accepted."""
        keyword_only = msgspec.StructMeta.__signature__.__get__(cls)
        return keyword_only.replace(parameters=[
            p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD)
            for p in keyword_only.parameters.values()])

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if args:
            names = cls.__struct_fields__
            if len(args) > len(names):
                raise TypeError(f"{cls.__name__}() takes at most {len(names)} positional "
                                f"arguments ({', '.join(names)}); {len(args)} were given")
            for name, value in zip(names, args):
                if name in kwargs:
                    raise TypeError(f"{cls.__name__}() got multiple values for {name!r}")
                kwargs[name] = value
        return super().__call__(**kwargs)


class WireStruct(msgspec.Struct, frozen=True, kw_only=True, metaclass=WireStructMeta):
    """Base of every wire type: a frozen, keyword-only msgspec Struct with value semantics.

    Unknown fields in decoded JSON are ignored (msgspec's default), so older and newer
    servers keep working. Containers given to a constructor are copied into immutable ones
    (see the module docstring). Changes go through `msgspec.structs.replace`.
    """


def force_set(obj: msgspec.Struct, name: str, value: Any) -> None:
    """Set a field of a frozen struct; only for normalising inputs in ``__post_init__``."""
    msgspec.structs.force_setattr(obj, name, value)


def is_array_like(value: object) -> bool:
    """True for numpy arrays and anything exposing ``__array__`` (jax, torch) but lists."""
    if isinstance(value, np.ndarray):
        return True
    return hasattr(value, "__array__") and not isinstance(value, list | tuple | str | bytes)

