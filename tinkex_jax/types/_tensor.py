"""TensorData: the dense or sparse-CSR tensor of the Tinker wire, backed by numpy."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, Union

import msgspec
import numpy as np
import numpy.typing as npt

from ..errors import invalid
from ._base import WireStruct, WireStructMeta, force_set, is_array_like, readonly_array

if TYPE_CHECKING:
    import jax
    import torch

__all__ = ["TensorData", "TensorDtype", "numpy_dtype"]

TensorDtype = Literal["int64", "float32"]

if TYPE_CHECKING:
    # what the fields hold once built
    _DataField: TypeAlias = npt.NDArray[Any]
    _IndexField: TypeAlias = npt.NDArray[Any] | None
    _ShapeField: TypeAlias = tuple[int, ...]
    # what the constructor accepts
    _DataInput: TypeAlias = Union[Sequence[int], Sequence[float], npt.NDArray[Any], "jax.Array",  # noqa: UP007
                                  "torch.Tensor", None]
else:  # what msgspec decodes from JSON
    _DataField = list[int | float] | None
    _IndexField = list[int] | None
    _ShapeField = list[int] | None

_TORCH_EXTRA = ("PyTorch is not installed. Fix: pip install torch (or the extra: "
                "pip install 'tinkex-jax[torch]'); to_numpy() / from_numpy() need no torch.")


def _torch() -> Any:
    """The torch module, imported on first use, with an error that says what to install."""
    try:
        import torch
    except ImportError:
        raise ImportError(_TORCH_EXTRA) from None
    return torch


def _is_torch_tensor(value: object) -> bool:
    """True for a torch.Tensor, without importing torch."""
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _torch_to_numpy(tensor: Any) -> np.ndarray:
    """A host numpy copy of a torch tensor (detached; bfloat16 widened to float32)."""
    torch = _torch()
    t = tensor.detach().cpu()
    if t.dtype == torch.bfloat16 or (t.is_floating_point() and t.dtype != torch.float32):
        t = t.to(torch.float32)
    array = np.array(t.contiguous().numpy(), copy=True)
    array.flags.writeable = False  # a copy only the new tensor holds: kept without copying
    return array

_NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "int64": np.dtype("<i8"),
    "float32": np.dtype("<f4"),
}


def numpy_dtype(dtype: TensorDtype) -> np.dtype[Any]:
    """The little-endian numpy dtype of a wire dtype name."""
    try:
        return _NUMPY_DTYPES[dtype]
    except KeyError:
        raise invalid(
            "TensorData.dtype", "'int64' or 'float32'", dtype, "use one of the two wire dtypes"
        ) from None


def _wire_dtype_of(array: np.ndarray) -> TensorDtype:
    kind = array.dtype.kind
    if kind in "iub":
        return "int64"
    if kind == "f" or array.dtype.name == "bfloat16":
        return "float32"
    raise invalid(
        "TensorData.data",
        "an integer or floating-point array",
        f"<array of dtype {array.dtype}>",
        "convert it to int64 (token ids) or float32 (weights, logprobs, advantages)",
    )


def _as_flat(values: Any, dtype: np.dtype[Any], where: str) -> np.ndarray:
    """A flat, contiguous, read-only array of `dtype` that nobody else can write to: a
    caller's writeable array is copied once, a fresh conversion is not copied again."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError) as exc:
        raise invalid(where, "a rectangular numeric array or list", f"<{type(values).__name__}>",
                      f"pass a list of numbers or an array ({exc})") from None
    if array.dtype == object:
        raise invalid(where, "a rectangular numeric array or list", "<ragged or non-numeric data>",
                      "make every row the same length and use only numbers")
    if array.dtype != dtype:
        lossy = array.dtype.kind == "f" and dtype.kind == "i" and array.size and (
            not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)))
        if lossy:
            raise invalid(where, "whole numbers for an int64 tensor",
                          "<non-integer floats>", "round the values or use dtype='float32'")
        converted = array.astype(dtype)
    else:
        converted = array
    flat = np.ascontiguousarray(converted).reshape(-1)
    fresh = not is_array_like(values) or not np.may_share_memory(flat, array)
    if fresh:  # memory only this tensor can reach
        flat.flags.writeable = False
        return flat
    return readonly_array(flat)


_TENSOR_SIGNATURE = inspect.Signature([
    inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
    for name in ("data", "dtype", "shape", "sparse_crow_indices", "sparse_col_indices")
] + [inspect.Parameter("values", inspect.Parameter.KEYWORD_ONLY, default=None)])


class _TensorDataMeta(WireStructMeta):
    """Lets ``TensorData(data=..., ...)`` fill the ``values`` field (``data`` is a property
    that returns a list, as in the official SDK)."""

    @property
    def __signature__(cls) -> inspect.Signature:  # what __call__ accepts, for inspect
        return _TENSOR_SIGNATURE

    def __call__(cls, data: Any = None, dtype: TensorDtype | None = None,
                 shape: Any = None, sparse_crow_indices: Any = None,
                 sparse_col_indices: Any = None, *, values: Any = None) -> Any:
        if values is not None:  # the field's own name: pickle, copy and replace use it
            if data is not None:
                raise invalid("TensorData", "data= or values=, not both", "<both>")
            data = values
        return super().__call__(values=data, dtype=dtype, shape=shape,
                                sparse_crow_indices=sparse_crow_indices,
                                sparse_col_indices=sparse_col_indices)


class TensorData(WireStruct, frozen=True, kw_only=True, eq=False, metaclass=_TensorDataMeta):
    """A tensor on the Tinker wire: ``int64`` or ``float32``, dense or sparse CSR.

    The values live in ``values``: a flat, contiguous, read-only numpy array (the stored
    values of a sparse tensor); ``shape`` is the dense shape. The tensor owns its values: a
    writeable array (or list) given to the constructor is copied once, so changing it later
    changes nothing here; an array that is already read-only all the way down (wire data,
    ``np.frombuffer`` over ``bytes``, a CPU `jax.Array`) is kept without copying. Sparse CSR
    tensors are 2-D: ``sparse_crow_indices`` has ``rows + 1`` entries, ``sparse_col_indices``
    one per stored value, and every other cell takes the pad value given to `to_numpy`.

    As in the official SDK, ``data`` is a property returning the flat values as a Python
    list and `tolist` the dense nested list; `to_numpy` is the fast path (a read-only view, no
    copy) and `to_torch` / `from_torch` bridge to PyTorch when it is installed.

    Args:
        data: The values: a list, a numpy / jax / torch array, or None for an empty tensor.
        dtype: ``"int64"`` or ``"float32"``; inferred from an array when omitted.
        shape: The dense shape; inferred from an array, else 1-D.
        sparse_crow_indices: CSR row pointers (sparse tensors only).
        sparse_col_indices: CSR column indices (sparse tensors only).

    Raises:
        ValidationError: the shape and the data disagree, the dtype is unknown, or the CSR
            indices are inconsistent.

    Example:
        >>> import numpy as np
        >>> t = TensorData.from_numpy(np.arange(6, dtype=np.int64).reshape(2, 3))
        >>> t.dtype, t.shape, t.to_numpy()[1].tolist()
        ('int64', (2, 3), [3, 4, 5])
        >>> w = TensorData(data=[0.5, 1.0], dtype="float32")
        >>> w.data, sum(w.data), w.tolist()
        ([0.5, 1.0], 1.5, [0.5, 1.0])
    """

    __freezes_itself__ = True  # values and indices: read-only arrays; shape: a tuple of ints

    values: _DataField = msgspec.field(default=None, name="data")  # type: ignore[arg-type]
    dtype: TensorDtype | None = None
    shape: _ShapeField = None  # type: ignore[assignment]
    sparse_crow_indices: _IndexField = None
    sparse_col_indices: _IndexField = None

    if TYPE_CHECKING:
        def __init__(self, data: _DataInput = None, dtype: TensorDtype | None = None,
                     shape: Sequence[int] | None = None,
                     sparse_crow_indices: Sequence[int] | npt.NDArray[Any] | None = None,
                     sparse_col_indices: Sequence[int] | npt.NDArray[Any] | None = None
                     ) -> None: ...

    def __post_init__(self) -> None:
        raw = self.values
        if (type(raw) is np.ndarray and self.dtype in _NUMPY_DTYPES and raw.dtype.kind in "iuf"
                and self.sparse_crow_indices is None and self.sparse_col_indices is None):
            self._adopt_dense(raw)  # the hot path: a dense numeric array with its dtype
            return
        if _is_torch_tensor(raw):
            raw = _torch_to_numpy(raw)
        shape_given = self.shape
        if self.dtype is None:
            if raw is None or not is_array_like(raw):
                probe = np.asarray(raw if raw is not None else [], dtype=None)
                if probe.size == 0:
                    raise invalid("TensorData.dtype", "'int64' or 'float32'", None,
                                  "pass dtype= for lists and empty tensors")
                dtype: TensorDtype = _wire_dtype_of(probe)
            else:
                dtype = _wire_dtype_of(np.asarray(raw))
            force_set(self, "dtype", dtype)
        np_dtype = numpy_dtype(self.dtype)  # type: ignore[arg-type]
        if raw is None:
            raw = []
        if shape_given is None and is_array_like(raw):
            shape_given = np.shape(raw)
        flat = _as_flat(raw, np_dtype, "TensorData.data")
        force_set(self, "values", flat)
        sparse = self.sparse_crow_indices is not None or self.sparse_col_indices is not None
        if shape_given is None:
            if sparse:
                raise invalid("TensorData.shape", "the dense shape of a sparse CSR tensor", None,
                              "pass shape=[rows, cols]")
            shape: tuple[int, ...] = (flat.size,)
        else:
            shape = tuple(int(d) for d in shape_given)
            if any(d < 0 for d in shape):
                raise invalid("TensorData.shape", "non-negative dimensions", list(shape))
        force_set(self, "shape", shape)
        if sparse:
            self._normalise_sparse(shape, flat.size)
        elif math.prod(shape) != flat.size:
            raise invalid(
                "TensorData.shape",
                f"a shape whose product is the number of values ({flat.size})",
                list(shape),
                "fix the shape or pass the full flattened data",
            )

    def _adopt_dense(self, raw: np.ndarray) -> None:
        """Take a dense numeric array: one copy (none when it is read-only all the way down
        and already flat, contiguous and of the wire dtype), checked against the shape."""
        np_dtype = _NUMPY_DTYPES[self.dtype]  # type: ignore[index]
        if raw.dtype != np_dtype:
            flat = _as_flat(raw, np_dtype, "TensorData.data")
        elif raw.flags.writeable:  # the caller's array: one C-order copy, kept read-only
            owned = np.array(raw, order="C")
            owned.flags.writeable = False
            flat = owned.reshape(-1)
        else:
            flat = readonly_array(np.ascontiguousarray(raw).reshape(-1))
        shape = raw.shape if self.shape is None else tuple(int(d) for d in self.shape)
        if math.prod(shape) != flat.size or any(d < 0 for d in shape):
            raise invalid("TensorData.shape",
                          f"non-negative dimensions whose product is the number of values "
                          f"({flat.size})", list(shape),
                          "fix the shape or pass the full flattened data")
        force_set(self, "values", flat)
        force_set(self, "shape", shape)

    def _normalise_sparse(self, shape: tuple[int, ...], nnz: int) -> None:
        if self.sparse_crow_indices is None or self.sparse_col_indices is None:
            raise invalid("TensorData.sparse_crow_indices",
                          "both sparse_crow_indices and sparse_col_indices", "only one of them",
                          "pass both CSR index arrays or neither")
        if len(shape) != 2:
            raise invalid("TensorData.shape", "a 2-D shape for a sparse CSR tensor", list(shape))
        crow = _as_flat(self.sparse_crow_indices, np.dtype("<i8"), "TensorData.sparse_crow_indices")
        col = _as_flat(self.sparse_col_indices, np.dtype("<i8"), "TensorData.sparse_col_indices")
        rows, cols = shape
        if crow.size != rows + 1 or (crow.size and (crow[0] != 0 or crow[-1] != nnz)):
            raise invalid("TensorData.sparse_crow_indices",
                          f"{rows + 1} row pointers from 0 to {nnz}",
                          f"<{crow.size} pointers>", "rebuild the CSR indices")
        if crow.size > 1 and np.any(np.diff(crow) < 0):
            raise invalid("TensorData.sparse_crow_indices", "non-decreasing row pointers",
                          "<decreasing pointers>")
        if col.size != nnz or (nnz and (col.min() < 0 or col.max() >= cols)):
            raise invalid("TensorData.sparse_col_indices",
                          f"{nnz} column indices in [0, {cols})", f"<{col.size} indices>")
        force_set(self, "sparse_crow_indices", crow)
        force_set(self, "sparse_col_indices", col)

    @property
    def data(self) -> list[Any]:
        """The stored values, flat, as a new Python list (the official SDK's ``data``).

        Use `to_numpy` (no copy) on hot paths.
        """
        return self.values.tolist()

    # ------------------------------------------------------------------ conversions

    @classmethod
    def from_numpy(cls, array: npt.ArrayLike) -> TensorData:
        """A tensor holding a copy of `array` (no copy when it is a contiguous int64 or
        float32 array that is read-only all the way down, such as decoded wire data).

        Other integer dtypes become int64, other float dtypes (incl. bfloat16) float32.
        """
        arr = np.asarray(array)
        return cls(data=arr, dtype=_wire_dtype_of(arr), shape=arr.shape)

    @classmethod
    def from_jax(cls, array: jax.Array) -> TensorData:
        """A tensor from a `jax.Array` (copied to host; zero-copy for CPU arrays of a wire
        dtype, which are immutable)."""
        return cls.from_numpy(np.asarray(array))

    @classmethod
    def from_list(cls, values: Sequence[Any], dtype: TensorDtype) -> TensorData:
        """Build from a (possibly nested, rectangular) Python list with an explicit dtype."""
        arr = np.asarray(values, dtype=numpy_dtype(dtype))
        return cls(data=arr, dtype=dtype, shape=arr.shape)

    @classmethod
    def sparse_from_dense(cls, array: npt.ArrayLike, *, pad_value: float = 0) -> TensorData:
        """Encode a 2-D array as CSR, leaving out cells equal to `pad_value`.

        Falls back to a dense tensor when CSR would not be smaller (or the array is not 2-D).

        Example:
            >>> import numpy as np
            >>> dense = np.full((3, 4), -1, dtype=np.int64); dense[1, 2] = 7
            >>> t = TensorData.sparse_from_dense(dense, pad_value=-1)
            >>> t.is_sparse, t.to_numpy(pad_value=-1)[1].tolist()
            (True, [-1, -1, 7, -1])
        """
        arr = np.asarray(array)
        if arr.ndim != 2:
            return cls.from_numpy(arr)
        keep = arr != pad_value
        nnz = int(keep.sum())
        if (arr.shape[0] + 1) + 2 * nnz >= arr.size:
            return cls.from_numpy(arr)
        counts = keep.sum(axis=1)
        crow = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        _, col = np.nonzero(keep)
        return cls(data=arr[keep], dtype=_wire_dtype_of(arr), shape=arr.shape,
                   sparse_crow_indices=crow, sparse_col_indices=col.astype(np.int64))

    @property
    def is_sparse(self) -> bool:
        """True for a sparse CSR tensor."""
        return self.sparse_crow_indices is not None

    @property
    def ndim(self) -> int:
        """Number of dimensions of the dense tensor."""
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes this tensor takes on the wire (values plus 8 per sparse index)."""
        extra = 0
        if self.is_sparse:
            extra = 8 * (len(self.sparse_crow_indices) + len(self.sparse_col_indices))  # type: ignore[arg-type]
        return int(self.values.nbytes) + extra

    def to_numpy(self, pad_value: float = 0) -> np.ndarray:
        """The dense array; sparse cells take `pad_value`.

        For a dense tensor this is a read-only view of the values (no copy); call ``.copy()``
        on it to get an array you may change.
        """
        shape = self.shape
        if not self.is_sparse:
            return self.values.reshape(shape)
        rows = shape[0]
        dense = np.full(shape, pad_value, dtype=self.values.dtype)
        crow = np.asarray(self.sparse_crow_indices)
        row_of_value = np.repeat(np.arange(rows), np.diff(crow))
        dense[row_of_value, np.asarray(self.sparse_col_indices)] = self.values
        return dense

    def to_jax(self, pad_value: float = 0) -> jax.Array:
        """The dense array as a `jax.Array` (imports jax)."""
        import jax.numpy as jnp

        return jnp.asarray(self.to_numpy(pad_value))

    def tolist(self, pad_value: float = 0) -> list[Any]:
        """The dense values as nested Python lists (sparse cells take `pad_value`)."""
        return self.to_numpy(pad_value).tolist()

    @classmethod
    def from_torch(cls, tensor: torch.Tensor) -> TensorData:
        """A tensor from a torch tensor (detached and copied to host; bfloat16 and other
        float types become float32, integer and bool types int64). Needs PyTorch.

        Example:
            >>> import torch  # doctest: +SKIP
            >>> TensorData.from_torch(torch.tensor([1, 2])).tolist()  # doctest: +SKIP
            [1, 2]
        """
        return cls.from_numpy(_torch_to_numpy(tensor))

    @classmethod
    def from_torch_sparse(cls, tensor: torch.Tensor, pad_value: float = 0) -> TensorData:
        """A sparse CSR tensor from a dense 2-D torch tensor, leaving out cells equal to
        `pad_value` (dense when CSR would not be smaller). Needs PyTorch."""
        return cls.sparse_from_dense(_torch_to_numpy(tensor), pad_value=pad_value)

    def to_torch(self, pad_value: float = 0) -> torch.Tensor:
        """The dense values as a new torch tensor (``torch.int64`` or ``torch.float32``) that
        you may change freely; sparse cells take `pad_value`. Needs PyTorch, imported here.

        Example:
            >>> TensorData(data=[0.5, 1.0], dtype="float32").to_torch()  # doctest: +SKIP
            tensor([0.5000, 1.0000])
        """
        torch = _torch()
        return torch.from_numpy(np.array(self.to_numpy(pad_value), copy=True))

    def __len__(self) -> int:
        return int(self.shape[0]) if self.shape else 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TensorData):
            return NotImplemented
        return (
            self.dtype == other.dtype
            and self.shape == other.shape
            and self.is_sparse == other.is_sparse
            and np.array_equal(self.values, other.values, equal_nan=self.dtype == "float32")
            and (not self.is_sparse or (
                np.array_equal(self.sparse_crow_indices, other.sparse_crow_indices)  # type: ignore[arg-type]
                and np.array_equal(self.sparse_col_indices, other.sparse_col_indices)  # type: ignore[arg-type]
            ))
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        kind = "sparse " if self.is_sparse else ""
        preview = np.array2string(self.values[:8], separator=", ")
        more = ", ..." if self.values.size > 8 else ""
        return f"TensorData({kind}{self.dtype}, shape={list(self.shape)}, data={preview}{more})"

