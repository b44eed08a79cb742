"""Value semantics of every public wire struct, as properties.

For every struct exported by ``tinkex_jax.types``, hypothesis builds instances from its
field types (with hand-written strategies for the few types whose validation a generic
value cannot pass), then:

1. mutates every list, dict and numpy array it handed to the constructor, and checks that
   neither the struct nor the bytes it encodes to (JSON, and protobuf for training requests)
   changed;
2. tries to change the struct through its fields (``append``, item assignment, writing into
   arrays) and checks that every attempt fails, except item assignment into
   ``Datum.loss_fn_inputs``, which converts and checks the value (see ``LossFnInputs``).
"""

from __future__ import annotations

import copy
import datetime as dt
import pickle
from collections.abc import Callable
from typing import Any

import msgspec
import msgspec.inspect as mi
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

import tinkex_jax.types as T
from tinkex_jax.errors import TinkerError
from tinkex_jax.types import (
    Datum,
    EncodedTextChunk,
    ForwardBackwardRequest,
    ModelInput,
    PromptProvenanceSpan,
    SampledProvenanceSpan,
    TensorData,
)
from tinkex_jax.wire import encode_forward_backward_request, encode_json

STRUCTS = sorted(
    (name for name in T.__all__
     if isinstance(getattr(T, name), type) and issubclass(getattr(T, name), msgspec.Struct)
     and name != "WireStruct"),
)

# ----------------------------------------------------------------------------- strategies

small_ints = st.integers(0, 1000)
names = st.text("abcdefgh:/-_", min_size=1, max_size=8)


def token_arrays() -> st.SearchStrategy[Any]:
    return st.lists(st.integers(0, 50_000), max_size=12).flatmap(
        lambda xs: st.sampled_from([xs, np.array(xs, dtype=np.int64),
                                    np.array(xs, dtype=np.int32)]))


@st.composite
def tensors(draw: st.DrawFn) -> dict[str, Any]:
    """Constructor kwargs of a TensorData: a list or a writeable array, dense or CSR."""
    dtype = draw(st.sampled_from(["int64", "float32"]))
    rows, cols = draw(st.integers(0, 4)), draw(st.integers(1, 4))
    np_dtype = np.int64 if dtype == "int64" else np.float32
    dense = np.array(draw(st.lists(st.integers(-3, 3), min_size=rows * cols,
                                   max_size=rows * cols)), dtype=np_dtype).reshape(rows, cols)
    if draw(st.booleans()) and rows:
        keep = dense != 0
        crow = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int64)
        return {"data": dense[keep].tolist(), "dtype": dtype, "shape": [rows, cols],
                "sparse_crow_indices": crow.tolist(),
                "sparse_col_indices": np.nonzero(keep)[1].tolist()}
    data = draw(st.sampled_from([dense, dense.reshape(-1).tolist()]))
    return {"data": data, "dtype": dtype, "shape": [rows, cols]}


@st.composite
def datums(draw: st.DrawFn) -> dict[str, Any]:
    tokens = draw(st.lists(st.integers(0, 1000), min_size=1, max_size=8))
    n = len(tokens)
    inputs: dict[str, Any] = {
        "target_tokens": draw(st.sampled_from([list(tokens), np.array(tokens)])),
        "weights": np.array(draw(st.lists(st.floats(0, 1, width=32), min_size=n, max_size=n)),
                            dtype=np.float32),
    }
    kwargs: dict[str, Any] = {"model_input": ModelInput.from_ints(tokens),
                              "loss_fn_inputs": inputs}
    if draw(st.booleans()):
        split = draw(st.integers(0, n))
        kwargs["model_input_spans"] = [PromptProvenanceSpan(sequence_id="s", length=split),
                                       SampledProvenanceSpan(sequence_id="s", length=n - split)]
        kwargs["loss_fn_input_spans"] = list(kwargs["model_input_spans"])
    return kwargs


tinker_paths = st.sampled_from(["tinker://run-1/weights/s1", "tinker://run-2/sampler_weights/x"])
utc_days = st.dates(dt.date(2025, 1, 1), dt.date(2027, 1, 1)).map(
    lambda d: dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC))

#: Field values that generic ones would almost never get right, by "Class.field" or field.
FIELD_HINTS: dict[str, st.SearchStrategy[Any]] = {
    "SaveWeightsRequest.path": names,
    "SaveWeightsExternalRequest.path": names,
    "SaveWeightsForSamplerRequest.path": names,
    "path": tinker_paths,
    "source_path": tinker_paths,
    "tinker_path": tinker_paths,
    "rank": st.integers(1, 2),
    "limit": st.integers(1, 200),
    "age_encryption_recipients": st.none() | st.lists(names, max_size=3),
}


SPECIAL: dict[str, Callable[[], st.SearchStrategy[dict[str, Any]]]] = {
    "TensorData": tensors,
    "Datum": datums,
    "EncodedTextChunk": lambda: st.builds(lambda t: {"tokens": t}, token_arrays()),
    "ModelInput": lambda: st.builds(
        lambda ts: {"chunks": [EncodedTextChunk(tokens=t) for t in ts]},
        st.lists(token_arrays(), max_size=3)),
    "ForwardBackwardRequest": lambda: st.builds(
        lambda ds, seq: {"model_id": "m", "seq_id": seq, "loss_fn": "cross_entropy",
                         "data": [Datum(**d) for d in ds]},
        st.lists(datums(), min_size=1, max_size=3), st.integers(0, 100)),
    "SampledSequence": lambda: st.builds(
        lambda toks, reason: {"stop_reason": reason, "tokens_np": np.array(toks, np.int32),
                              "logprobs_np": -np.ones(len(toks), np.float32),
                              "sequence_id": "s:0"},
        st.lists(st.integers(0, 100), max_size=6), st.sampled_from(["stop", "length"])),
    "DmelChunk": lambda: st.builds(  # a 2-D float16 tensor: dtype byte, ndim, dims, values
        lambda n, d: {"dmel": bytearray([1, 2, n, d]) + bytearray(n * d * 2)},
        st.integers(1, 5), st.integers(1, 4)),
    "GetBillingUsageRequest": lambda: st.builds(
        lambda start, days: {"starting_on": start,
                             "ending_before": start + dt.timedelta(days=days)},
        utc_days, st.integers(1, 14)),
    "LoadWeightsRequest": lambda: st.builds(
        lambda path, opt, legacy, meta: {"path": path, "optimizer": opt, "user_metadata": meta,
                                         **({"model_id": "m", "seq_id": 1} if legacy else
                                            {"session_id": "s", "model_seq_id": 0})},
        tinker_paths, st.booleans(), st.booleans(), st.dictionaries(names, names, max_size=2)),
    "SampleRequest": lambda: st.builds(
        lambda toks, stop, n: {"prompt": ModelInput.from_ints(toks), "num_samples": n,
                               "sampling_params": T.SamplingParams(max_tokens=4, stop=stop),
                               "sampling_session_id": "s:sample:0", "seq_id": 1},
        token_arrays().filter(len), st.lists(names, max_size=2), st.integers(1, 4)),
    "SessionSearchRequest": lambda: st.builds(
        lambda ids, meta: {"project_ids": ids, "user_metadata": meta},
        st.none() | st.lists(names, min_size=1, max_size=3),
        st.dictionaries(names, names, max_size=2)),
    "CustomLossNode": lambda: st.builds(
        lambda args, kwargs: {"op": "call_function", "name": "n", "target": "sum",
                              "args": args, "kwargs": kwargs},
        st.lists(small_ints, max_size=3), st.dictionaries(names, small_ints, max_size=2)),
    "CustomLossGraph": lambda: st.builds(
        lambda args: {"nodes": [
            T.CustomLossNode(op="placeholder", name="logprobs", target="logprobs"),
            T.CustomLossNode(op="call_function", name="s", target="sum", args=args),
            T.CustomLossNode(op="output", name="output", target="output", args=[{"ref": "s"}])]},
        st.lists(small_ints, max_size=3)),
    "TopkLogprobs": lambda: st.builds(
        lambda n, k: {"token_ids": np.zeros((n, k), np.int32),
                      "logprobs": np.full((n, k), -1.0, np.float32)},
        st.integers(0, 3), st.integers(1, 3)),
}


def _value(info: mi.Type, depth: int) -> st.SearchStrategy[Any]:
    """A generic strategy for a msgspec type: fresh lists and dicts each draw."""
    if isinstance(info, mi.IntType):
        return small_ints
    if isinstance(info, mi.FloatType):
        return st.floats(0.01, 0.9)
    if isinstance(info, mi.BoolType):
        return st.booleans()
    if isinstance(info, mi.StrType):
        return names
    if isinstance(info, mi.BytesType):
        return st.binary(min_size=1, max_size=8)
    if isinstance(info, mi.NoneType):
        return st.none()
    if isinstance(info, mi.LiteralType):
        return st.sampled_from(list(info.values))
    if isinstance(info, mi.DateTimeType):
        return st.datetimes(timezones=st.just(dt.UTC))
    if isinstance(info, mi.AnyType):
        return st.lists(small_ints, max_size=4)
    if isinstance(info, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
        return st.lists(_value(info.item_type, depth + 1), max_size=0 if depth > 2 else 3)
    if isinstance(info, mi.TupleType):
        return st.tuples(*(_value(t, depth + 1) for t in info.item_types)).map(list)
    if isinstance(info, mi.DictType):
        return st.dictionaries(names, _value(info.value_type, depth + 1),
                               max_size=0 if depth > 2 else 3)
    if isinstance(info, mi.StructType):
        return _struct_kwargs(info.cls, depth + 1).map(lambda kw, cls=info.cls: cls(**kw))
    if isinstance(info, mi.UnionType):
        return st.one_of(*(_value(t, depth) for t in info.types))
    if isinstance(info, mi.Metadata):
        return _value(info.type, depth)
    return st.none()


def _struct_kwargs(cls: type, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    if cls.__name__ in SPECIAL:
        return SPECIAL[cls.__name__]()
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for field in info.fields:
        if field.name.startswith("_"):
            continue
        hint = FIELD_HINTS.get(f"{cls.__name__}.{field.name}", FIELD_HINTS.get(field.name))
        value = hint if hint is not None else _value(field.type, depth)
        if not field.required:
            value = st.one_of(st.just(msgspec.UNSET), value)
        parts[field.name] = value
    return st.fixed_dictionaries(parts).map(
        lambda kw: {k: v for k, v in kw.items() if v is not msgspec.UNSET})


# ----------------------------------------------------------------------------- helpers


def _encodings(obj: msgspec.Struct) -> list[bytes]:
    out = [encode_json(obj), pickle.dumps(obj)]
    if isinstance(obj, ForwardBackwardRequest):
        out.append(encode_forward_backward_request(obj))
    return out


def _mutate(value: Any, seen: set[int] | None = None) -> None:
    """Change every list, dict and writeable array reachable from `value` (not in structs)."""
    seen = set() if seen is None else seen
    if id(value) in seen or isinstance(value, msgspec.Struct):
        return
    seen.add(id(value))
    if isinstance(value, list):
        for item in value:
            _mutate(item, seen)
        value.reverse()
        value.append(7)
    elif isinstance(value, dict):
        for item in list(value.values()):
            _mutate(item, seen)
        value["zz-added"] = [1]
    elif isinstance(value, np.ndarray) and value.flags.writeable and value.size:
        value[...] = value + 1


def _try_to_change(obj: msgspec.Struct) -> list[str]:
    """Every way of changing `obj` through its fields that succeeded (should be none)."""
    succeeded = []
    for name in obj.__struct_fields__:
        value = getattr(obj, name)
        if isinstance(obj, Datum) and name == "loss_fn_inputs":
            continue  # documented: item assignment converts and checks (tested below)
        attempts: list[tuple[str, Callable[[], Any]]] = []
        if isinstance(value, tuple | list):
            attempts.append(("append", lambda v=value: v.append(1)))
        if isinstance(value, dict):
            attempts.append(("setitem", lambda v=value: v.__setitem__("k", 1)))
            attempts.append(("update", lambda v=value: v.update(k=1)))
        if isinstance(value, np.ndarray) and value.size:
            attempts.append(("write", lambda v=value: v.__setitem__((0,) * v.ndim, 1)))
        for what, attempt in attempts:
            try:
                attempt()
            except (TypeError, AttributeError, ValueError):
                continue
            succeeded.append(f"{type(obj).__name__}.{name}.{what}")
    for name in obj.__struct_fields__[:1]:
        try:
            setattr(obj, name, None)
            succeeded.append(f"{type(obj).__name__}.{name} assignment")
        except (AttributeError, TypeError):
            pass
    return succeeded


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("name", STRUCTS)
def test_a_struct_owns_its_data(name: str) -> None:
    cls = getattr(T, name)
    built: list[int] = []

    @settings(max_examples=12, deadline=None,
              suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
    @given(_struct_kwargs(cls))
    def check(kwargs: dict[str, Any]) -> None:
        try:
            obj = cls(**kwargs)
        except (TinkerError, ValueError, TypeError):
            assume(False)  # a value the type's validation rejects: not this property's subject
        before = _encodings(obj)
        frozen_copy = copy.deepcopy(obj)
        _mutate(kwargs)
        assert _encodings(obj) == before, f"{name} changed when its inputs were mutated"
        assert _encodings(frozen_copy) == before
        assert _try_to_change(obj) == []
        built.append(1)

    check()
    assert built, f"no {name} could be built: add a strategy for it to SPECIAL"


def test_datum_loss_fn_inputs_assignment_converts_and_never_aliases() -> None:
    weights = [1.0, 0.0]
    inputs: dict[str, Any] = {"target_tokens": [5, 6], "weights": weights}
    datum = Datum(model_input=ModelInput.from_ints([4, 5]), loss_fn_inputs=inputs)
    inputs["weights"] = [9.0, 9.0]
    weights[0] = 3.0
    assert datum.loss_fn_inputs["weights"].data == [1.0, 0.0]
    advantages = np.array([0.5, -0.5], dtype=np.float32)
    datum.loss_fn_inputs["advantages"] = advantages  # how official-SDK code adjusts a datum
    advantages[:] = 0
    assert isinstance(datum.loss_fn_inputs["advantages"], TensorData)
    assert datum.loss_fn_inputs["advantages"].data == [0.5, -0.5]
    with pytest.raises(TinkerError, match="loss_fn_inputs"):
        datum.loss_fn_inputs["weights"] = object()
    # a request's snapshot is not reached by later assignments
    snapshot = datum.snapshot()
    datum.loss_fn_inputs["advantages"] = [1.0, 1.0]
    assert snapshot.loss_fn_inputs["advantages"].data == [0.5, -0.5]


def test_frozen_lists_still_compare_and_concatenate_like_lists() -> None:
    chunk = EncodedTextChunk(tokens=[1, 2, 3])
    assert chunk.tokens == [1, 2, 3] and chunk.tokens[:-1] == [1, 2]
    assert chunk.tokens + [4] == [1, 2, 3, 4] and [0] + chunk.tokens == [0, 1, 2, 3]  # noqa: RUF005
    assert ModelInput.from_ints([1]).append_int(2).chunks[0] == chunk.__class__(tokens=[1])
    assert T.SamplingParams(stop=["\n", "</s>"]).stop == ["\n", "</s>"]
