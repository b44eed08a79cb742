"""Datum: one training example (model input plus per-token loss inputs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from ..errors import invalid
from ._base import WireStruct, force_set, is_array_like
from ._model_input import ModelInput
from ._tensor import TensorData, TensorDtype

__all__ = [
    "KEY_DTYPES",
    "Datum",
    "PromptProvenanceSpan",
    "ProvenanceSpan",
    "SampledProvenanceSpan",
    "as_tensor_data",
]

#: Wire dtype of the well-known `loss_fn_inputs` keys (PROTOCOL.md §4.1).
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
    where = f"loss_fn_inputs[{key!r}]"
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
    numeric = array.dtype.kind in "iubf" or array.dtype.name == "bfloat16"
    if not numeric:
        raise invalid(where, "a rectangular array of numbers", "<ragged or non-numeric values>",
                      "pad every row to the same length")
    dtype: TensorDtype | None = KEY_DTYPES.get(key)
    if dtype is None:
        dtype = "int64" if array.dtype.kind in "iub" else "float32"
    return TensorData(data=array, dtype=dtype, shape=array.shape)


class PromptProvenanceSpan(WireStruct, frozen=True, kw_only=True, tag="prompt_tokens",
                           tag_field="type"):
    """Positions that came from the prompt of a sampled sequence."""

    sequence_id: str
    offset: int
    length: int


class SampledProvenanceSpan(WireStruct, frozen=True, kw_only=True, tag="sampled_tokens",
                            tag_field="type"):
    """Positions that were sampled as part of a sequence."""

    sequence_id: str
    offset: int
    length: int


ProvenanceSpan = PromptProvenanceSpan | SampledProvenanceSpan

if TYPE_CHECKING:
    _LossInputs = Mapping[str, Any]
else:
    _LossInputs = dict[str, TensorData]


class Datum(WireStruct, frozen=True, kw_only=True):
    """One training example: the model input and per-token loss inputs.

    ``loss_fn_inputs`` accepts TensorData, plain lists and numpy / jax arrays; they are
    converted with the dtype of their key (`KEY_DTYPES`). Positions are aligned with
    ``model_input``: position ``i`` of the input predicts ``target_tokens[i]``. Use
    `tinkex_jax.builders.datum_from_prompt_completion` to get the shift-by-one right.

    Example:
        >>> d = Datum(model_input=ModelInput.from_ints([1, 2, 3]),
        ...           loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [0, 1, 1]})
        >>> d.loss_fn_inputs["weights"].dtype
        'float32'
    """

    model_input: ModelInput
    loss_fn_inputs: _LossInputs = msgspec.field(default_factory=dict)
    model_input_spans: list[ProvenanceSpan] | None = None
    loss_fn_input_spans: list[ProvenanceSpan] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model_input, ModelInput):
            raise invalid("Datum.model_input", "a ModelInput", f"<{type(self.model_input).__name__}>",
                          "wrap token ids with ModelInput.from_ints(tokens)")
        if not isinstance(self.loss_fn_inputs, Mapping):
            raise invalid("Datum.loss_fn_inputs", "a mapping of name -> tensor",
                          f"<{type(self.loss_fn_inputs).__name__}>")
        converted = {}
        for key, value in self.loss_fn_inputs.items():
            if not isinstance(key, str) or not key:
                raise invalid("Datum.loss_fn_inputs", "non-empty string keys", key)
            converted[key] = as_tensor_data(key, value)
        force_set(self, "loss_fn_inputs", converted)
        if (self.model_input_spans is None) != (self.loss_fn_input_spans is None):
            raise invalid("Datum.model_input_spans", "both span lists or neither",
                          "<only one of them>", "use Datum.with_provenance(...)")

    def with_provenance(self, model_input: Sequence[ProvenanceSpan],
                        loss_fn_inputs: Sequence[ProvenanceSpan]) -> Datum:
        """A copy carrying provenance spans; each list must tile its field exactly."""
        if sum(s.length for s in model_input) != self.model_input.length:
            raise invalid("Datum.with_provenance(model_input=...)",
                          f"spans covering {self.model_input.length} positions",
                          f"<spans covering {sum(s.length for s in model_input)}>")
        target = self.loss_fn_inputs.get("target_tokens")
        if target is not None and sum(s.length for s in loss_fn_inputs) != len(target):
            raise invalid("Datum.with_provenance(loss_fn_inputs=...)",
                          f"spans covering {len(target)} target positions",
                          f"<spans covering {sum(s.length for s in loss_fn_inputs)}>")
        return msgspec.structs.replace(self, model_input_spans=list(model_input),
                                       loss_fn_input_spans=list(loss_fn_inputs))
