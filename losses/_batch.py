"""The padded batch a jit-compiled custom loss sees, and the host-side padding helpers.

Datums are ragged (each has its own number of tokens ``T_i``). A jit-compiled loss compiles
once per distinct input shape, so the client pads every batch to a *bucket*: the number of
tokens is rounded up to a bucket length and the number of datums to a bucket count
(:class:`BucketPolicy`). A loss therefore compiles once per (datum bucket, length bucket),
plus once per distinct set of input keys, trailing shapes (``K``) and dtypes.

The padding helpers are pure NumPy (no device work): they run on the host before the single
transfer into the jitted function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

if TYPE_CHECKING:  # this module is pure NumPy: it never imports JAX at run time
    import jax

__all__ = [
    "DEFAULT_BUCKET_POLICY",
    "BatchArray",
    "BucketPolicy",
    "LossBatch",
    "make_loss_batch",
    "pad_to_bucket",
    "unpad",
]

BatchArray: TypeAlias = "jax.Array | np.ndarray"
"""A field of :class:`LossBatch`: NumPy on the host, a ``jax.Array`` (tracer) inside jit."""


class LossBatch(NamedTuple):
    """The pytree a jit-compiled custom loss receives: ragged datums padded to a bucket.

    A user loss has the shape
    ``loss_fn(logprobs: [B, T], batch: LossBatch) -> (scalar loss, metrics: dict[str, Array])``
    where ``logprobs`` are the per-token target logprobs padded the same way (``[B, T, K]``
    for 2-D targets). Padded tokens and datums must not influence the loss: use ``mask``
    (which is already 0 on padded datums) and ``datum_mask``.

    Attributes:
      inputs: every ``loss_fn_inputs`` key of every datum, padded to ``[B, T]`` (or
        ``[B, T, K]``); per-datum scalars become ``[B]``.
      mask: ``[B, T]`` float32, 1 = real token, 0 = padding.
      datum_mask: ``[B]`` float32, 1 = real datum, 0 = a padded datum.
      extras: side arrays supplied by the user (reference logprobs, pair indices, rewards,
        ...). Per-datum extras are padded like ``inputs``; batch-level extras are passed
        through unchanged.
    """

    inputs: Mapping[str, BatchArray]
    mask: BatchArray
    datum_mask: BatchArray
    extras: Mapping[str, BatchArray]


def _round_up(n: int, *, minimum: int, pow2_limit: int, step: int) -> int:
    n = max(int(n), 1)
    if n <= pow2_limit:
        bucket = 1
        while bucket < n:
            bucket *= 2
        return max(bucket, minimum)
    return -(-n // step) * step


@dataclass(frozen=True)
class BucketPolicy:
    """Which padded shapes a batch may take, so that a loss compiles once per bucket.

    Lengths: the next power of two, at least ``min_length`` (16, 32, ..., 1024 by default);
    beyond ``pow2_length_limit`` the next multiple of ``length_step`` (1152, 1280, ... by
    default), which bounds the padding overhead to ``length_step`` tokens. Datum counts: the
    next power of two, at least ``min_datums`` (1, 2, 4, ..., 1024); beyond
    ``pow2_datum_limit`` the next multiple of ``datum_step``.

    Attributes:
      min_length: smallest length bucket.
      pow2_length_limit: largest power-of-two length bucket.
      length_step: length granularity beyond ``pow2_length_limit``.
      min_datums: smallest datum-count bucket (use 2 for pair losses over interleaved
        datums).
      pow2_datum_limit: largest power-of-two datum bucket.
      datum_step: datum granularity beyond ``pow2_datum_limit``.

    Examples:
      >>> from losses import BucketPolicy
      >>> p = BucketPolicy()
      >>> [p.length_bucket(n) for n in (1, 17, 1000, 1025)]
      [16, 32, 1024, 1152]
      >>> [p.datum_bucket(n) for n in (1, 3, 1500)]
      [1, 4, 1536]
    """

    min_length: int = 16
    pow2_length_limit: int = 1024
    length_step: int = 128
    min_datums: int = 1
    pow2_datum_limit: int = 1024
    datum_step: int = 256

    def __post_init__(self) -> None:
        for name in (
            "min_length",
            "pow2_length_limit",
            "length_step",
            "min_datums",
            "pow2_datum_limit",
            "datum_step",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BucketPolicy.{name} must be an integer >= 1; got {value!r}.")
        if self.min_length > self.pow2_length_limit:
            raise ValueError(
                f"BucketPolicy: min_length ({self.min_length}) must be <= pow2_length_limit "
                f"({self.pow2_length_limit})."
            )
        if self.min_datums > self.pow2_datum_limit:
            raise ValueError(
                f"BucketPolicy: min_datums ({self.min_datums}) must be <= pow2_datum_limit "
                f"({self.pow2_datum_limit})."
            )

    def length_bucket(self, n: int) -> int:
        """The padded length for a longest datum of ``n`` tokens."""
        return _round_up(
            n, minimum=self.min_length, pow2_limit=self.pow2_length_limit, step=self.length_step
        )

    def datum_bucket(self, n: int) -> int:
        """The padded number of datums for a batch of ``n`` datums."""
        return _round_up(
            n, minimum=self.min_datums, pow2_limit=self.pow2_datum_limit, step=self.datum_step
        )


DEFAULT_BUCKET_POLICY = BucketPolicy()
"""Lengths 16, 32, ..., 1024 then multiples of 128; datum counts 1, 2, 4, ..., 1024 then
multiples of 256."""


def _host_dtype(values: Sequence[np.ndarray], float_dtype: DTypeLike, *, where: str) -> np.dtype:
    common = np.result_type(*values)
    if common == np.bool_:
        return np.dtype(np.bool_)
    if np.issubdtype(common, np.integer):
        info = np.iinfo(np.int32)
        for v in values:
            if v.size and (v.min() < info.min or v.max() > info.max):
                raise ValueError(f"{where}: integer values do not fit in int32.")
        return np.dtype(np.int32)
    if np.issubdtype(common, np.floating):
        return np.dtype(float_dtype)
    raise TypeError(
        f"{where}: expected a real numeric or boolean array; got dtype {common}. Fix: convert "
        f"it (e.g. TensorData.to_numpy()) before batching."
    )


def pad_to_bucket(
    arrays: Sequence[ArrayLike],
    *,
    policy: BucketPolicy = DEFAULT_BUCKET_POLICY,
    length: int | None = None,
    num_datums: int | None = None,
    pad_value: float = 0,
    dtype: DTypeLike | None = None,
    name: str = "arrays",
) -> tuple[np.ndarray, np.ndarray]:
    """Stacks ragged per-datum arrays ``[T_i, *rest]`` into one padded ``[B, T, *rest]``.

    Args:
      arrays: one array per datum; axis 0 is the ragged token axis, the other axes must match.
      policy: the bucket policy giving ``B`` and ``T``.
      length: use this ``T`` instead of the policy's bucket (must be >= every ``T_i``).
      num_datums: use this ``B`` instead of the policy's bucket (must be >= the datum count).
      pad_value: value written into padded positions and padded datums.
      dtype: dtype of the result; default: the arrays' common dtype.
      name: what to call the arrays in error messages.

    Returns:
      ``(padded, lengths)``: the ``[B, T, *rest]`` array and the ``[n]`` int64 lengths.

    Raises:
      ValueError: no arrays, a scalar, mismatched trailing shapes, or a too small
        ``length`` / ``num_datums``.

    Examples:
      >>> import numpy as np
      >>> from losses import pad_to_bucket
      >>> padded, lengths = pad_to_bucket([np.ones(3), np.ones(5)], length=6)
      >>> padded.shape, lengths.tolist()
      ((2, 6), [3, 5])
    """
    where = f"pad_to_bucket({name})"
    if len(arrays) == 0:
        raise ValueError(f"{where}: no arrays given; expected one array per datum.")
    arrs = [np.asarray(a) for a in arrays]
    for i, a in enumerate(arrs):
        if a.ndim == 0:
            raise ValueError(
                f"{where}: datum {i} is a scalar; expected an array whose axis 0 is the token "
                f"axis ([T] or [T, K])."
            )
    rest = arrs[0].shape[1:]
    for i, a in enumerate(arrs):
        if a.shape[1:] != rest:
            raise ValueError(
                f"{where}: datum {i} has shape {a.shape} but datum 0 has {arrs[0].shape}; "
                f"every axis after the token axis must match (e.g. the same K)."
            )
    lengths = np.array([a.shape[0] for a in arrs], dtype=np.int64)
    n = len(arrs)
    max_len = int(lengths.max())
    t = policy.length_bucket(max_len) if length is None else int(length)
    b = policy.datum_bucket(n) if num_datums is None else int(num_datums)
    if t < max_len:
        raise ValueError(f"{where}: length={t} is shorter than the longest datum ({max_len}).")
    if b < n:
        raise ValueError(f"{where}: num_datums={b} is smaller than the number of datums ({n}).")
    out_dtype = np.result_type(*arrs) if dtype is None else np.dtype(dtype)
    out = np.full((b, t, *rest), pad_value, dtype=out_dtype)
    for i, a in enumerate(arrs):
        out[i, : a.shape[0]] = a
    return out, lengths


def unpad(padded: ArrayLike, lengths: Sequence[int] | np.ndarray) -> list[np.ndarray]:
    """Recovers per-datum arrays (e.g. gradients) from a padded ``[B, T, ...]`` array.

    Args:
      padded: ``[B, T, *rest]`` array (NumPy or JAX).
      lengths: the original lengths, one per real datum (``len(lengths) <= B``).

    Returns:
      ``[padded[i, :lengths[i]] for each real datum]`` as NumPy copies.

    Examples:
      >>> import numpy as np
      >>> from losses import unpad
      >>> [a.tolist() for a in unpad(np.arange(8).reshape(2, 4), [1, 3])]
      [[0], [4, 5, 6]]
    """
    arr = np.asarray(padded)
    lens = [int(x) for x in np.asarray(lengths).reshape(-1)]
    if arr.ndim < 2:
        raise ValueError(f"unpad: expected a [B, T, ...] array; got shape {arr.shape}.")
    if len(lens) > arr.shape[0]:
        raise ValueError(
            f"unpad: {len(lens)} lengths for an array of only {arr.shape[0]} datums "
            f"(shape {arr.shape})."
        )
    if lens and (max(lens) > arr.shape[1] or min(lens) < 0):
        raise ValueError(
            f"unpad: lengths must be in [0, {arr.shape[1]}] for shape {arr.shape}; got "
            f"{lens}."
        )
    return [arr[i, :n].copy() for i, n in enumerate(lens)]


def _datum_length(
    datum: Mapping[str, np.ndarray], extras: Mapping[str, np.ndarray], i: int
) -> int:
    lengths = {k: int(v.shape[0]) for k, v in {**datum, **extras}.items() if v.ndim >= 1}
    if not lengths:
        raise ValueError(
            f"make_loss_batch: datum {i} has no per-token array (every value is a scalar); "
            f"expected at least one [T] or [T, K] array such as target_tokens."
        )
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"make_loss_batch: datum {i} has arrays of different lengths {lengths}; every "
            f"per-token array of a datum (loss_fn_inputs and datum_extras) must have the same "
            f"length along axis 0."
        )
    return next(iter(lengths.values()))


def _pad_key(
    values: list[np.ndarray],
    *,
    key: str,
    t: int,
    b: int,
    pad_value: float,
    float_dtype: DTypeLike,
    where: str,
) -> np.ndarray:
    first = values[0]
    for i, v in enumerate(values):
        if v.ndim != first.ndim or v.shape[1:] != first.shape[1:]:
            raise ValueError(
                f"{where}: {key!r} has shape {v.shape} in datum {i} but {first.shape} in "
                f"datum 0; every datum must give {key!r} the same rank and trailing shape."
            )
    dtype = _host_dtype(values, float_dtype, where=f"{where}[{key!r}]")
    if first.ndim == 0:
        out = np.full((b,), pad_value, dtype=dtype)
        out[: len(values)] = np.stack(values)
        return out
    out, _ = pad_to_bucket(
        values, length=t, num_datums=b, pad_value=pad_value, dtype=dtype, name=key
    )
    return out


def make_loss_batch(
    datums: Sequence[Mapping[str, ArrayLike]],
    *,
    policy: BucketPolicy = DEFAULT_BUCKET_POLICY,
    extras: Mapping[str, ArrayLike] | None = None,
    datum_extras: Sequence[Mapping[str, ArrayLike]] | None = None,
    pad_values: Mapping[str, float] | None = None,
    float_dtype: DTypeLike = np.float32,
) -> tuple[LossBatch, np.ndarray]:
    """Pads ragged datums into a :class:`LossBatch` whose shape is a bucket of ``policy``.

    Every datum is a mapping from a ``loss_fn_inputs`` key to an array whose axis 0 is the
    token axis (``[T_i]`` or ``[T_i, K]``; all per-token arrays of a datum share ``T_i``), or
    a scalar (a per-datum value, stacked to ``[B]``). Every datum must have the same keys.
    Floating arrays become ``float_dtype`` (float32), integers int32, booleans stay boolean.

    Args:
      datums: per-datum ``loss_fn_inputs`` (e.g. ``{k: v.to_numpy() for k, v in ...}``).
      policy: the bucket policy (``B = policy.datum_bucket(n)``,
        ``T = policy.length_bucket(max T_i)``).
      extras: batch-level side arrays, passed through unchanged into ``LossBatch.extras``
        (e.g. ``[P, 2]`` pair indices). Nothing pads them: if they are indexed by datum,
        size them for ``B`` yourself or use ``datum_extras``.
      datum_extras: optional per-datum side arrays (same length as ``datums``), padded like
        the inputs into ``LossBatch.extras`` (e.g. reference logprobs ``[T_i]``, a reward
        scalar per datum).
      pad_values: per-key padding value (default 0), for inputs and datum extras.
      float_dtype: dtype for floating arrays.

    Returns:
      ``(batch, lengths)``: the padded :class:`LossBatch` (NumPy arrays) and the ``[n]``
      int64 original lengths, for :func:`unpad`.

    Raises:
      ValueError: no datums, mismatched keys, lengths or trailing shapes; extras colliding.

    Examples:
      >>> import numpy as np
      >>> from losses import make_loss_batch
      >>> datums = [{"target_tokens": np.array([5, 6, 7]), "weights": np.ones(3)},
      ...           {"target_tokens": np.array([8]), "weights": np.ones(1)}]
      >>> batch, lengths = make_loss_batch(datums)
      >>> batch.inputs["weights"].shape, batch.mask.sum(axis=1).tolist(), lengths.tolist()
      ((2, 16), [3.0, 1.0], [3, 1])
    """
    where = "make_loss_batch"
    n = len(datums)
    if n == 0:
        raise ValueError(f"{where}: no datums given; expected at least one.")
    if datum_extras is not None and len(datum_extras) != n:
        raise ValueError(
            f"{where}: datum_extras has {len(datum_extras)} entries for {n} datums; give one "
            f"mapping per datum (or None)."
        )
    np_datums = [{k: np.asarray(v) for k, v in d.items()} for d in datums]
    np_extras = [
        {k: np.asarray(v) for k, v in (datum_extras[i] if datum_extras is not None else {}).items()}
        for i in range(n)
    ]
    for label, group in (("loss_fn_inputs", np_datums), ("datum_extras", np_extras)):
        keys0 = set(group[0])
        for i, d in enumerate(group):
            if set(d) != keys0:
                raise ValueError(
                    f"{where}: datum {i} has {label} keys {sorted(d)} but datum 0 has "
                    f"{sorted(keys0)}; every datum must have the same keys."
                )
    batch_extras = {k: np.asarray(v) for k, v in (extras or {}).items()}
    clash = sorted(set(batch_extras) & set(np_extras[0]))
    if clash:
        raise ValueError(
            f"{where}: keys {clash} are in both extras and datum_extras; rename one of them."
        )
    lengths = np.array(
        [_datum_length(np_datums[i], np_extras[i], i) for i in range(n)], dtype=np.int64
    )
    t = policy.length_bucket(int(lengths.max()))
    b = policy.datum_bucket(n)
    pads = dict(pad_values or {})

    def pad_group(group: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {
            key: _pad_key(
                [d[key] for d in group],
                key=key,
                t=t,
                b=b,
                pad_value=pads.get(key, 0),
                float_dtype=float_dtype,
                where=where,
            )
            for key in sorted(group[0])
        }

    inputs = pad_group(np_datums)
    padded_extras = {**batch_extras, **pad_group(np_extras)}
    mask = (np.arange(t)[None, :] < np.pad(lengths, (0, b - n))[:, None]).astype(float_dtype)
    datum_mask = (np.arange(b) < n).astype(float_dtype)
    batch = LossBatch(inputs=inputs, mask=mask, datum_mask=datum_mask, extras=padded_extras)
    return batch, lengths
