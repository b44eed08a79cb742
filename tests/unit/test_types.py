"""Wire types: construction, conversion, validation and JSON round trips."""

from __future__ import annotations

import datetime as dt

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinkex_jax.errors import ValidationError
from tinkex_jax.types import (
    AdamParams,
    Checkpoint,
    ClientConfigResponse,
    CreateModelRequest,
    CreateSamplingSessionRequest,
    CreateSessionRequest,
    Datum,
    EncodedTextChunk,
    GenericEvent,
    GetInfoResponse,
    ImageAssetPointerChunk,
    ImageChunk,
    LoadWeightsRequest,
    LoraConfig,
    ModelInput,
    OptimStepRequest,
    ParsedCheckpointTinkerPath,
    SampleRequest,
    SamplingParams,
    SaveWeightsForSamplerRequest,
    SaveWeightsRequest,
    TelemetrySendRequest,
    TensorData,
    TrainingRun,
    TrainingRunsResponse,
    UntypedAPIFuture,
)
from tinkex_jax.wire import decode_json, encode_json

# ----------------------------------------------------------------------------- TensorData


def test_tensor_owns_a_copy_of_writeable_arrays():
    arr = np.arange(12, dtype=np.int64).reshape(3, 4)
    t = TensorData.from_numpy(arr)
    assert t.shape == (3, 4) and t.dtype == "int64"
    arr[0, 0] = 99
    assert t.to_numpy()[0, 0] == 0 and not np.shares_memory(t.to_numpy(), arr)
    with pytest.raises(ValueError, match="read-only"):
        t.to_numpy()[0, 0] = 5


def test_tensor_keeps_read_only_arrays_without_copying():
    wire = np.frombuffer(np.arange(5, dtype=np.float32).tobytes(), dtype=np.float32)
    assert np.shares_memory(TensorData.from_numpy(wire).values, wire)
    # a read-only view of a writeable array is not safe to keep
    base = np.ones(5, dtype=np.float32)
    view = base.view()
    view.flags.writeable = False
    t = TensorData.from_numpy(view)
    base[0] = 7
    assert t.tolist() == [1.0] * 5


def test_tensor_data_and_tolist_are_lists_like_the_official_sdk():
    import json

    t = TensorData(data=[0.25, 0.5, 1.0], dtype="float32")
    assert t.data == [0.25, 0.5, 1.0] and isinstance(t.data, list)
    assert json.dumps(sum(t.data)) == "1.75"
    grid = TensorData.from_numpy(np.arange(6, dtype=np.int64).reshape(2, 3))
    assert grid.data == [0, 1, 2, 3, 4, 5] and grid.tolist() == [[0, 1, 2], [3, 4, 5]]
    sparse = TensorData.sparse_from_dense(np.array([[0, 0, 0, 5]] * 3 + [[0] * 4]),
                                          pad_value=0)
    assert sparse.is_sparse and sparse.data == [5, 5, 5]
    assert sparse.tolist(pad_value=-1)[0] == [-1, -1, -1, 5]


def test_tensor_converts_other_dtypes():
    assert TensorData.from_numpy(np.arange(3, dtype=np.int32)).dtype == "int64"
    t = TensorData.from_numpy(np.array([0.5, 1.5], dtype=np.float64))
    assert t.dtype == "float32" and t.values.dtype == np.float32


def test_tensor_from_and_to_jax():
    import jax.numpy as jnp

    t = TensorData.from_jax(jnp.arange(4, dtype=jnp.float32) / 2)
    assert t.tolist() == [0.0, 0.5, 1.0, 1.5]
    assert t.to_jax().shape == (4,)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"data": [1, 2, 3], "dtype": "int64", "shape": [2, 2]}, "product"),
        ({"data": [1.5], "dtype": "int64"}, "whole numbers"),
        ({"data": [1, 2], "dtype": "int8"}, "'int64' or 'float32'"),
        ({"data": [[1, 2], [3]], "dtype": "int64"}, "rectangular"),
        ({"data": [1.0], "dtype": "float32", "shape": [1, 1], "sparse_crow_indices": [0, 1]},
         "both"),
    ],
)
def test_tensor_rejects_bad_input_with_clear_message(kwargs, fragment):
    with pytest.raises(ValidationError) as info:
        TensorData(**kwargs)
    assert fragment in str(info.value)
    assert "TensorData" in str(info.value)


def test_sparse_round_trip_and_fallback():
    dense = np.zeros((4, 6), dtype=np.float32)
    dense[0, 1], dense[3, 5] = 2.0, -1.0
    t = TensorData.sparse_from_dense(dense)
    assert t.is_sparse and t.values.tolist() == [2.0, -1.0]
    np.testing.assert_array_equal(t.to_numpy(), dense)
    full = np.ones((2, 2), dtype=np.float32)
    assert not TensorData.sparse_from_dense(full).is_sparse


def test_tensor_json_round_trip_dense_and_sparse():
    dense = TensorData.from_numpy(np.arange(6, dtype=np.int64).reshape(2, 3))
    assert decode_json(encode_json(dense), TensorData) == dense
    grid = np.full((3, 5), -1, dtype=np.int64)
    grid[1, 1] = 9
    sparse = TensorData.sparse_from_dense(grid, pad_value=-1)
    back = decode_json(encode_json(sparse), TensorData)
    assert back == sparse
    np.testing.assert_array_equal(back.to_numpy(pad_value=-1), grid)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-(2**53), 2**53), min_size=0, max_size=30),
    st.sampled_from(["int64", "float32"]),
)
def test_tensor_json_round_trip_property(values, dtype):
    if dtype == "float32":
        values = [float(np.float32(v)) for v in values]
    t = TensorData(data=values, dtype=dtype)
    assert decode_json(encode_json(t), TensorData) == t


# ----------------------------------------------------------------------------- ModelInput / Datum


def test_model_input_owns_its_tokens_and_rejects_bad_ones():
    arr = np.arange(5, dtype=np.int32)
    mi = ModelInput.from_ints(arr)
    arr[0] = 40
    assert mi.to_ints() == [0, 1, 2, 3, 4] and mi.length == 5
    tokens = [7, 8]
    chunk = EncodedTextChunk(tokens=tokens)
    tokens.clear()
    assert chunk.tokens == (7, 8)
    empty = ModelInput.from_ints([])
    assert empty.length == 0 and empty.chunks == (EncodedTextChunk(tokens=()),)
    with pytest.raises(ValidationError, match=r"tokens\[1\]"):
        EncodedTextChunk(tokens=[1, -2])


def test_model_input_json_tagged_union_round_trip():
    mi = ModelInput(chunks=[
        EncodedTextChunk(tokens=[1, 2]),
        ImageChunk(data=b"\x89PNG...", format="png", expected_tokens=4),
        ImageAssetPointerChunk(format="jpeg", location="s3://bucket/x.jpg", expected_tokens=3),
    ])
    raw = encode_json(mi)
    assert b'"type":"encoded_text"' in raw and b'"type":"image_asset_pointer"' in raw
    back = decode_json(raw, ModelInput)
    assert back == mi and back.length == 9
    with pytest.raises(ValidationError, match="only text chunks"):
        back.to_ints()


def test_datum_converts_lists_and_arrays_by_key():
    import jax.numpy as jnp

    d = Datum(model_input=ModelInput.from_ints([1, 2, 3]), loss_fn_inputs={
        "target_tokens": [2.0, 3.0, 4.0],
        "weights": np.array([0, 1, 1]),
        "advantages": jnp.ones(3),
        "my_side_array": [[1, 2], [3, 4], [5, 6]],
    })
    inputs = d.loss_fn_inputs
    assert inputs["target_tokens"].dtype == "int64" and inputs["target_tokens"].tolist() == [2, 3, 4]
    assert inputs["weights"].dtype == "float32"
    assert inputs["advantages"].dtype == "float32"
    assert inputs["my_side_array"].shape == (3, 2) and inputs["my_side_array"].dtype == "int64"


def test_datum_rejects_non_numeric_inputs():
    with pytest.raises(ValidationError, match=r"loss_fn_inputs\['weights'\]"):
        Datum(model_input=ModelInput.from_ints([1]), loss_fn_inputs={"weights": ["a"]})
    with pytest.raises(ValidationError, match="ModelInput"):
        Datum(model_input=[1, 2, 3], loss_fn_inputs={})  # type: ignore[arg-type]


def test_structs_are_frozen_and_replaceable():
    params = AdamParams(learning_rate=1e-3)
    with pytest.raises(AttributeError):
        params.learning_rate = 2.0  # type: ignore[misc]
    assert msgspec.structs.replace(params, beta1=0.5).beta1 == 0.5


# ----------------------------------------------------------------------------- params validation


@pytest.mark.parametrize(
    ("factory", "where"),
    [
        (lambda: SamplingParams(temperature=-1), "temperature"),
        (lambda: SamplingParams(top_p=0), "top_p"),
        (lambda: SamplingParams(top_k=0), "top_k"),
        (lambda: SamplingParams(max_tokens=0), "max_tokens"),
        (lambda: SamplingParams(seed=-1), "seed"),
        (lambda: SamplingParams(stop=["a", 1]), "stop"),  # type: ignore[list-item]
        (lambda: AdamParams(beta2=1.0), "beta2"),
        (lambda: AdamParams(learning_rate=float("nan")), "learning_rate"),
        (lambda: AdamParams(eps=0), "eps"),
        (lambda: LoraConfig(rank=0), "rank"),
        (lambda: LoraConfig(rank=4, train_attn=False, train_mlp=False, train_unembed=False),
         "at least one"),
    ],
)
def test_params_validate_ranges(factory, where):
    with pytest.raises(ValidationError, match=where):
        factory()


def test_sampling_params_stop_forms():
    assert SamplingParams(stop="\n").stop_strings == ["\n"]
    assert SamplingParams(stop=[5, 6]).stop_tokens == [5, 6]
    assert SamplingParams(stop=[]).stop_tokens == [] and SamplingParams(stop=[]).stop == ()
    assert SamplingParams().stop is None


# ----------------------------------------------------------------------------- requests on the wire


def test_requests_send_defaults_and_omit_none():
    body = msgspec.json.decode(encode_json(
        SaveWeightsRequest(model_id="m", path="step-1", seq_id=4)))
    assert body == {"model_id": "m", "path": "step-1", "seq_id": 4, "overwrite": False,
                    "type": "save_weights"}
    session = msgspec.json.decode(encode_json(CreateSessionRequest(sdk_version="1")))
    assert session["tags"] == [] and session["user_metadata"] == {}
    assert "project_id" not in session and session["type"] == "create_session"
    opt = msgspec.json.decode(encode_json(OptimStepRequest(model_id="m", seq_id=2,
                                                           adam_params=AdamParams())))
    assert set(opt["adam_params"]) == {"learning_rate", "beta1", "beta2", "eps", "weight_decay",
                                       "grad_clip_norm"}
    model = msgspec.json.decode(encode_json(CreateModelRequest(
        session_id="s", model_seq_id=0, base_model="b", lora_config=LoraConfig(rank=8))))
    assert model["lora_config"] == {"rank": 8, "train_unembed": True, "train_mlp": True,
                                    "train_attn": True}


@pytest.mark.parametrize(
    ("factory", "fragment"),
    [
        (lambda: SaveWeightsRequest(model_id="m", path="bad/name", seq_id=1), "checkpoint name"),
        (lambda: SaveWeightsRequest(model_id="m", path="ok", seq_id=1, ttl_seconds=5), "3600"),
        (lambda: SaveWeightsForSamplerRequest(model_id="m", seq_id=1), "exactly one"),
        (lambda: LoadWeightsRequest(path="/tmp/x", model_id="m"), "tinker://"),
        (lambda: CreateSamplingSessionRequest(session_id="s", sampling_session_seq_id=0),
         "exactly one"),
        (lambda: SampleRequest(prompt=ModelInput.from_ints([1, 2]),
                               sampling_params=SamplingParams(), num_samples=0), "num_samples"),
        (lambda: SampleRequest(prompt=ModelInput.from_ints([1, 2]),
                               sampling_params=SamplingParams(), prompt_logprobs_last_n=1),
         "include_prompt_logprobs"),
        (lambda: SampleRequest(prompt=ModelInput.empty(), sampling_params=SamplingParams()),
         "at least one token"),
    ],
)
def test_requests_validate_before_sending(factory, fragment):
    with pytest.raises(ValidationError, match=fragment):
        factory()


def test_secrets_are_redacted_from_reprs():
    req = LoadWeightsRequest(path="tinker://r/weights/a", model_id="m",
                             weights_access_token="secret-token-123")
    assert "secret-token-123" not in repr(req)


# ----------------------------------------------------------------------------- responses


def test_responses_ignore_unknown_and_missing_optional_fields():
    fut = decode_json(b'{"request_id": "7", "future_id": 3, "status": "pending"}',
                      UntypedAPIFuture)
    assert fut.request_id == "7" and fut.sample_sequence_ids is None
    assert decode_json(b"{}", ClientConfigResponse).fwdbwd_max_chunk_len == 1024
    info = decode_json(b'{"model_id": "m", "model_data": {"model_name": "x", "new": 1}}',
                       GetInfoResponse)
    assert info.model_data.model_name == "x" and info.optimizer_config.__class__.__name__ == (
        "AdamOptimizerConfig")


def test_rest_types_round_trip():
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    ckpt = Checkpoint(checkpoint_id="weights/a", checkpoint_type="training", time=now,
                      tinker_path="tinker://r/weights/a", size_bytes=10)
    run = TrainingRun(training_run_id="r", base_model="b", model_owner="o", is_lora=True,
                      last_request_time=now, lora_rank=8, last_checkpoint=ckpt)
    page = TrainingRunsResponse(training_runs=[run])
    assert decode_json(encode_json(page), TrainingRunsResponse) == page


def test_telemetry_events_are_tagged():
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    batch = TelemetrySendRequest(events=[GenericEvent(event_id="e", event_session_index=0,
                                                      timestamp=now, event_name="x",
                                                      event_data={"a": 1})],
                                 platform="Linux", sdk_version="1", session_id="s",
                                 process_uuid="p")
    body = msgspec.json.decode(encode_json(batch))
    assert body["events"][0]["event"] == "GENERIC_EVENT"
    assert decode_json(encode_json(batch), TelemetrySendRequest) == batch


@pytest.mark.parametrize(
    "path",
    ["tinker://run/weights", "http://run/weights/a", "tinker://run/other/a", "tinker:///weights/a"],
)
def test_tinker_path_parsing_rejects_malformed(path):
    with pytest.raises(ValidationError, match="tinker"):
        ParsedCheckpointTinkerPath.from_tinker_path(path)
