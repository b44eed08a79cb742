"""Datum: one training example (model input plus per-token loss inputs)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from ..errors import invalid
from ._base import FrozenList, PositionalWireStructMeta, WireStruct, force_set, is_array_like
from ._model_input import ModelInput
from ._tensor import TensorData, TensorDtype, _is_torch_tensor

__all__ = [
    "KEY_DTYPES",
    "Datum",
    "LossFnInputs",
    "check_provenance",
    "PromptProvenanceSpan",
    "ProvenanceSpan",
    "SampledProvenanceSpan",
    "as_tensor_data",
]

#: Keys whose 2-D torch tensors travel as sparse CSR when that is smaller (as in the official SDK).
_SPARSE_ELIGIBLE_KEYS = frozenset({"target_tokens", "weights"})

#: Wire dtype of the well-known `loss_fn_inputs` keys (docs/protocol.md §4.1).
KEY_DTYPES: Mapping[str, TensorDtype] = {
    "target_tokens": "int64",
    "weights": "float32",
    "advantages": "float32",
    "logprobs": "float32",
    "clip_low_threshold": "float32",
    "clip_high_threshold": "float32",
    "sequence_ratio_mask": "float32",
}


def as_tensor_data(key: str, value: Any) -> TensorData:
    """Convert a list, numpy / jax array or TensorData to TensorData with the key's dtype.

    Known keys get their wire dtype (``target_tokens`` int64, the rest float32); unknown keys
    keep an integer or float dtype inferred from the values.

    Example:
        >>> as_tensor_data("weights", [0, 1, 1]).dtype
        'float32'
        >>> as_tensor_data("target_tokens", [3.0, 4.0]).tolist()
        [3, 4]
    """
    if type(value) is TensorData:  # the hot paths first: an already built tensor, an array
        wanted = KEY_DTYPES.get(key)
        if wanted is None or value.dtype == wanted:
            return value
    elif type(value) is np.ndarray and value.dtype.kind in "iuf":
        wanted = KEY_DTYPES.get(key) or ("float32" if value.dtype.kind == "f" else "int64")
        return TensorData(data=value, dtype=wanted, shape=value.shape)
    where = f"loss_fn_inputs[{key!r}]"
    if _is_torch_tensor(value):
        # as the official SDK does: 2-D targets / weights travel as CSR when that is smaller
        if key in _SPARSE_ELIGIBLE_KEYS and value.ndim == 2:
            value = TensorData.from_torch_sparse(value)
        else:
            value = TensorData.from_torch(value)
    if isinstance(value, TensorData):
        wanted = KEY_DTYPES.get(key)
        if wanted is not None and value.dtype != wanted:
            raise invalid(where, f"a {wanted} tensor", f"<{value.dtype} tensor>",
                          f"convert it, e.g. TensorData.from_numpy(arr.astype('{wanted}'))")
        return value
    if not (is_array_like(value) or isinstance(value, list | tuple)):
        raise invalid(where, "a list, numpy array, jax array or TensorData",
                      f"<{type(value).__name__}>")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        array = np.asarray(value, dtype=object)
    if isinstance(value, list | tuple):
        array.flags.writeable = False  # a fresh array: TensorData keeps it without a copy
    numeric = array.dtype.kind in "iubf" or array.dtype.name == "bfloat16"
    if not numeric:
        raise invalid(where, "a rectangular array of numbers", "<ragged or non-numeric values>",
                      "pad every row to the same length")
    dtype: TensorDtype | None = KEY_DTYPES.get(key)
    if dtype is None:
        dtype = "int64" if array.dtype.kind in "iub" else "float32"
    return TensorData(data=array, dtype=dtype, shape=array.shape)


class LossFnInputs(dict[str, TensorData]):
    """A datum's ``loss_fn_inputs``: a ``dict`` of name -> `TensorData`, owned by the datum.

    It is built from a copy of the mapping given to `Datum`, with every value converted by
    `as_tensor_data` (lists, numpy / jax / torch arrays all become TensorData), so changing
    the caller's dict or arrays later changes nothing here.

    Unlike every other container in a wire struct it accepts item assignment, because code
    written for the official SDK adjusts a datum in place, e.g.
    ``datum.loss_fn_inputs["advantages"] = TensorData.from_torch(adv + kl)`` (the cookbook's
    KL penalty). An assigned value is converted and checked at once, exactly like a value
    given to the constructor; a request takes a snapshot when it is submitted, so later
    assignments never change what was sent. Prefer building a new datum
    (`Datum.with_loss_fn_inputs`) in new code.

    Example:
        >>> d = Datum(model_input=ModelInput.from_ints([1, 2]),
        ...           loss_fn_inputs={"target_tokens": [2, 3], "weights": [1, 1]})
        >>> d.loss_fn_inputs["weights"] = [0.5, 0.5]
        >>> d.loss_fn_inputs["weights"].dtype, d.loss_fn_inputs["weights"].data
        ('float32', [0.5, 0.5])
    """

    __slots__ = ()

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if values is None:
            return
        if not isinstance(values, dict | Mapping):
            raise invalid("Datum.loss_fn_inputs", "a mapping of name -> tensor",
                          f"<{type(values).__name__}>")
        for key, value in values.items():
            self[key] = value

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str) or not key:
            raise invalid("Datum.loss_fn_inputs", "non-empty string keys", key)
        super().__setitem__(key, as_tensor_data(key, value))

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key: str, default: Any = None) -> TensorData:
        if key not in self:
            self[key] = default
        return self[key]

    def __ior__(self, other: Any) -> LossFnInputs:  # type: ignore[override,misc]
        self.update(other)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (LossFnInputs, (dict(self),))


def _check_span(kind: str, span: PromptProvenanceSpan | SampledProvenanceSpan) -> None:
    if not isinstance(span.sequence_id, str) or not span.sequence_id:
        raise invalid(f"{kind}.sequence_id", "a non-empty SampledSequence.sequence_id",
                      span.sequence_id, "sample with record_stability_info=True and use "
                      "sequence.sequence_id")
    for name in ("offset", "length"):
        value = getattr(span, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise invalid(f"{kind}.{name}", "a non-negative int", value)


class PromptProvenanceSpan(WireStruct, frozen=True, kw_only=True, tag="prompt_tokens",
                           tag_field="type"):
    """A run of datum positions copied from the prompt of a sampled sequence: positions
    ``[offset, offset + length)`` of the prompt of the request that produced ``sequence_id``.

    Example:
        >>> PromptProvenanceSpan(sequence_id="s:0", length=4)
        PromptProvenanceSpan(sequence_id='s:0', offset=0, length=4)
    """

    sequence_id: str
    offset: int = 0
    length: int

    def __post_init__(self) -> None:
        _check_span("PromptProvenanceSpan", self)


class SampledProvenanceSpan(WireStruct, frozen=True, kw_only=True, tag="sampled_tokens",
                            tag_field="type"):
    """A run of datum positions copied from the sampled tokens of ``sequence_id``: its
    sampled positions ``[offset, offset + length)``.

    Example:
        >>> SampledProvenanceSpan(sequence_id="s:0", offset=2, length=3).length
        3
    """

    sequence_id: str
    offset: int = 0
    length: int

    def __post_init__(self) -> None:
        _check_span("SampledProvenanceSpan", self)


ProvenanceSpan = PromptProvenanceSpan | SampledProvenanceSpan

if TYPE_CHECKING:
    _LossInputs = LossFnInputs
    _Spans = tuple[ProvenanceSpan, ...]
else:  # what msgspec decodes
    _LossInputs = dict[str, TensorData]
    _Spans = tuple[ProvenanceSpan, ...]


def _spans_tuple(spans: Any, where: str) -> FrozenList | None:
    if spans is None:
        return None
    if isinstance(spans, str | bytes | Mapping) or not isinstance(spans, Iterable):
        raise invalid(where, "a list of PromptProvenanceSpan / SampledProvenanceSpan",
                      f"<{type(spans).__name__}>")
    out = FrozenList(spans)
    for i, span in enumerate(out):
        if not isinstance(span, PromptProvenanceSpan | SampledProvenanceSpan):
            raise invalid(f"{where}[{i}]", "a PromptProvenanceSpan or SampledProvenanceSpan",
                          f"<{type(span).__name__}>", "build spans with the provenance types")
    return out


def check_provenance(datum: Datum, where: str = "Datum") -> None:
    """Check that a datum's provenance spans tile their fields exactly.

    ``model_input_spans`` must cover every input position and ``loss_fn_input_spans`` every
    row of a 1-D ``target_tokens``, each position in exactly one span (position comes from
    order). A datum without spans passes.

    Raises:
        ValidationError: naming the field, the positions covered and the positions there are.

    Example:
        >>> d = Datum(model_input=ModelInput.from_ints([1, 2]),
        ...           loss_fn_inputs={"target_tokens": [2, 3]})
        >>> check_provenance(d)
    """
    if datum.model_input_spans is None or datum.loss_fn_input_spans is None:
        return
    covered = sum(s.length for s in datum.model_input_spans)
    if covered != datum.model_input.length:
        raise invalid(f"{where}.model_input_spans",
                      f"spans covering the {datum.model_input.length} input positions exactly",
                      f"<spans covering {covered}>",
                      "make the span lengths add up to model_input.length")
    target = datum.loss_fn_inputs.get("target_tokens")
    if target is not None and target.ndim == 1:
        covered = sum(s.length for s in datum.loss_fn_input_spans)
        if covered != target.shape[0]:
            raise invalid(f"{where}.loss_fn_input_spans",
                          f"spans covering the {target.shape[0]} target positions exactly",
                          f"<spans covering {covered}>",
                          "make the span lengths add up to len(target_tokens)")


class Datum(WireStruct, frozen=True, kw_only=True, metaclass=PositionalWireStructMeta):
    """One training example: the model input and per-token loss inputs.

    ``loss_fn_inputs`` accepts TensorData, plain lists and numpy / jax / torch arrays; they
    are converted with the dtype of their key (`KEY_DTYPES`) into a `LossFnInputs` the datum
    owns. Positions are aligned with ``model_input``: position ``i`` of the input predicts
    ``target_tokens[i]``. Use `tinkex_jax.builders.datum_from_prompt_completion` to get the
    shift-by-one right. Provenance spans (for ``stable_reinforce``) come as a pair, attached
    with `with_provenance`.

    Example:
        >>> d = Datum(model_input=ModelInput.from_ints([1, 2, 3]),
        ...           loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [0, 1, 1]})
        >>> d.loss_fn_inputs["weights"].dtype
        'float32'
    """

    __freezes_itself__ = True  # spans: FrozenLists; loss_fn_inputs: a LossFnInputs (see there)

    model_input: ModelInput
    loss_fn_inputs: _LossInputs = msgspec.field(default_factory=dict)  # type: ignore[assignment]
    model_input_spans: _Spans | None = None
    loss_fn_input_spans: _Spans | None = None

    if TYPE_CHECKING:
        def __init__(self, model_input: ModelInput,
                     loss_fn_inputs: Mapping[str, Any] | None = None,
                     model_input_spans: Iterable[ProvenanceSpan] | None = None,
                     loss_fn_input_spans: Iterable[ProvenanceSpan] | None = None) -> None: ...

    def __post_init__(self) -> None:
        if not isinstance(self.model_input, ModelInput):
            raise invalid("Datum.model_input", "a ModelInput", f"<{type(self.model_input).__name__}>",
                          "wrap token ids with ModelInput.from_ints(tokens)")
        force_set(self, "loss_fn_inputs", LossFnInputs(self.loss_fn_inputs))
        if self.model_input_spans is None and self.loss_fn_input_spans is None:
            return
        force_set(self, "model_input_spans",
                  _spans_tuple(self.model_input_spans, "Datum.model_input_spans"))
        force_set(self, "loss_fn_input_spans",
                  _spans_tuple(self.loss_fn_input_spans, "Datum.loss_fn_input_spans"))
        if (self.model_input_spans is None) != (self.loss_fn_input_spans is None):
            raise invalid("Datum.model_input_spans", "both span lists or neither",
                          "<only one of them>", "use Datum.with_provenance(...)")
        check_provenance(self)

    def with_provenance(self, model_input: Iterable[ProvenanceSpan],
                        loss_fn_inputs: Iterable[ProvenanceSpan]) -> Datum:
        """A copy carrying provenance spans, checked before anything is sent.

        Args:
            model_input: Spans tiling the input positions, in order.
            loss_fn_inputs: Spans tiling the rows of ``target_tokens``, in order.

        Raises:
            ValidationError: the spans do not cover their field exactly.

        Example:
            >>> d = Datum(model_input=ModelInput.from_ints([7, 8, 9]),
            ...           loss_fn_inputs={"target_tokens": [8, 9, 10]})
            >>> d = d.with_provenance(
            ...     model_input=[PromptProvenanceSpan(sequence_id="s", length=2),
            ...                  SampledProvenanceSpan(sequence_id="s", length=1)],
            ...     loss_fn_inputs=[PromptProvenanceSpan(sequence_id="s", offset=1, length=1),
            ...                     SampledProvenanceSpan(sequence_id="s", length=2)])
            >>> len(d.model_input_spans)
            2
        """
        return msgspec.structs.replace(self, model_input_spans=tuple(model_input),
                                       loss_fn_input_spans=tuple(loss_fn_inputs))

    def with_loss_fn_inputs(self, **inputs: Any) -> Datum:
        """A copy whose ``loss_fn_inputs`` has the given keys added or replaced.

        Example:
            >>> d = Datum(model_input=ModelInput.from_ints([1]),
            ...           loss_fn_inputs={"target_tokens": [2], "advantages": [0.0]})
            >>> d.with_loss_fn_inputs(advantages=[1.5]).loss_fn_inputs["advantages"].data
            [1.5]
        """
        return msgspec.structs.replace(self, loss_fn_inputs={**self.loss_fn_inputs, **inputs})

    def snapshot(self) -> Datum:
        """A copy whose ``loss_fn_inputs`` later assignments to this datum cannot reach
        (tensors are immutable and shared; only the mapping is new). Requests take one."""
        inputs = LossFnInputs()
        dict.update(inputs, self.loss_fn_inputs)  # values are checked TensorData already
        copied = copy.copy(self)
        force_set(copied, "loss_fn_inputs", inputs)
        return copied

