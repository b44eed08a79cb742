"""Protobuf and zstd codecs: round trips, compatibility with the official SDK's schema."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinkex_jax.errors import APIResponseValidationError, ValidationError
from tinkex_jax.types import (
    Datum,
    ForwardBackwardOutput,
    ForwardBackwardRequest,
    ImageAssetPointerChunk,
    ImageChunk,
    ModelInput,
    PromptAltTokens,
    PromptProvenanceSpan,
    SampledProvenanceSpan,
    SampledSequence,
    SampleResponse,
    TensorData,
    TopkLogprobs,
)
from tinkex_jax.wire import (
    decode_forward_backward_output,
    decode_forward_backward_request,
    decode_sample_response,
    encode_forward_backward_output,
    encode_forward_backward_request,
    encode_sample_response,
    zstd_compress,
    zstd_decompress,
)

token_lists = st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=40)


@st.composite
def datums(draw):
    tokens = draw(token_lists)
    n = len(tokens)
    inputs = {
        "target_tokens": np.array(draw(st.lists(st.integers(0, 2**62), min_size=n, max_size=n)),
                                  dtype=np.int64),
        "weights": np.array(draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=n,
                                          max_size=n)), dtype=np.float32),
    }
    if draw(st.booleans()):
        k = draw(st.integers(1, 4))
        grid = draw(st.lists(st.integers(-1, 5), min_size=n * k, max_size=n * k))
        inputs["topk"] = TensorData.sparse_from_dense(np.array(grid, np.int64).reshape(n, k),
                                                      pad_value=-1)
    chunks = [ModelInput.from_ints(tokens).chunks[0]]
    image_tokens = 0
    if draw(st.booleans()):
        image_tokens = draw(st.integers(0, 9))
        chunks.append(ImageChunk(data=draw(st.binary(min_size=1, max_size=20)), format="png",
                                 expected_tokens=image_tokens))
    datum = Datum(model_input=ModelInput(chunks=chunks), loss_fn_inputs=inputs)
    if draw(st.booleans()):  # spans tile each field: input positions, then target rows
        split = draw(st.integers(0, n))
        datum = datum.with_provenance(
            model_input=[PromptProvenanceSpan(sequence_id="a", length=split),
                         SampledProvenanceSpan(sequence_id="b", offset=3,
                                               length=n - split + image_tokens)],
            loss_fn_inputs=[PromptProvenanceSpan(sequence_id="a", offset=1, length=split),
                            SampledProvenanceSpan(sequence_id="b", length=n - split)])
    return datum


@settings(max_examples=40, deadline=None)
@given(
    st.lists(datums(), min_size=1, max_size=4),
    st.sampled_from(["cross_entropy", "ppo", "custom"]),
    st.dictionaries(st.text(min_size=1, max_size=8),
                    st.floats(-10, 10) | st.text(max_size=8), max_size=3),
    st.booleans(),
    st.integers(0, 2**31 - 1),
)
def test_forward_backward_request_round_trip(data, loss_fn, config, forward_only, seq_id):
    req = ForwardBackwardRequest(model_id="s:train:0", seq_id=seq_id, data=data, loss_fn=loss_fn,
                                 loss_fn_config=config or None, forward_only=forward_only)
    assert decode_forward_backward_request(encode_forward_backward_request(req)) == req


def test_official_sdk_reads_our_request_and_we_read_its_request():
    """Both sides of the wire agree with the official schema (package names differ)."""
    tpb = pytest.importorskip("tinker.proto.tinker_public_pb2")
    req = ForwardBackwardRequest(model_id="m", seq_id=3, loss_fn="ppo", forward_only=True,
                                 loss_fn_config={"clip_low_threshold": 0.7, "mode": "x"},
                                 data=[Datum(model_input=ModelInput.from_ints([5, 6, 7]),
                                             loss_fn_inputs={"target_tokens": [6, 7, 8],
                                                             "advantages": [0.0, 1.0, -1.0]})])
    official = tpb.ForwardBackwardRequest()
    official.ParseFromString(encode_forward_backward_request(req))
    assert official.seq_id == 3 and official.forward_only and official.loss_fn == "ppo"
    assert dict(official.loss_fn_config) == {"clip_low_threshold": 0.7}
    assert official.loss_fn_config_v2["mode"].text == "x"
    assert np.frombuffer(official.data[0].model_input[0].encoded_text.tokens, "<i4").tolist() == [
        5, 6, 7]
    assert decode_forward_backward_request(official.SerializeToString()) == req


def test_image_pointer_cannot_be_sent_for_training():
    req = ForwardBackwardRequest(model_id="m", seq_id=1, loss_fn="cross_entropy", data=[
        Datum(model_input=ModelInput(chunks=[ImageAssetPointerChunk(format="png",
                                                                    location="x.png")]))])
    with pytest.raises(ValidationError, match="image pointers"):
        encode_forward_backward_request(req)


def test_undecodable_request_body_is_a_validation_error():
    with pytest.raises(ValidationError, match="ForwardBackwardRequest"):
        decode_forward_backward_request(b"\xff\xff\xff")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=0, max_size=6), st.integers(0, 3),
       st.dictionaries(st.sampled_from(["loss:sum", "x:mean", "y:max"]), st.floats(-5, 5)))
def test_forward_backward_output_round_trip(lengths, k, metrics):
    rng = np.random.default_rng(len(lengths))
    outputs = []
    for n in lengths:
        shape = (n, k) if k else (n,)
        outputs.append({"logprobs": TensorData.from_numpy(rng.random(shape, dtype=np.float32)),
                        "ids": TensorData.from_numpy(rng.integers(0, 9, shape))})
    out = ForwardBackwardOutput(loss_fn_output_type="ArrayRecord", loss_fn_outputs=outputs,
                                metrics=metrics)
    back = decode_forward_backward_output(encode_forward_backward_output(out))
    assert back == out


def test_forward_backward_output_official_multi_record_and_bf16():
    """Several ArrayRecords (server chunks), INT32 and BFLOAT16 fields, type tag suffix."""
    from tinkex_jax.wire import tinker_public_pb2 as pb

    msg = pb.ForwardBackwardOutput(loss_fn_output_type="tinker:TorchLossReturn")
    msg.metrics["loss:sum"] = 2.5
    for start in (0, 2):
        rec = msg.loss_fn_outputs.add(num_datums=2)
        lp = np.array([[1.0, 2.0], [3.0, 4.0]][0:2], dtype=np.float32) + start
        bf16 = (lp.view(np.uint32) >> 16).astype("<u2")
        f = rec.fields["logprobs"]
        f.data, f.dtype = bf16.tobytes(), pb.DTYPE_BFLOAT16
        f.offsets = np.array([0, 4, 8], "<i8").tobytes()
        ids = rec.fields["ids"]
        ids.data, ids.dtype = np.array([1, 2, 3], "<i4").tobytes(), pb.DTYPE_INT32
        ids.offsets = np.array([0, 4, 12], "<i8").tobytes()
    out = decode_forward_backward_output(msg.SerializeToString())
    assert out.loss_fn_output_type == "TorchLossReturn" and len(out.loss_fn_outputs) == 4
    assert out.loss_fn_outputs[2]["logprobs"].tolist() == [3.0, 4.0]
    assert out.loss_fn_outputs[1]["ids"].tolist() == [2, 3]
    assert out.loss_fn_outputs[1]["ids"].dtype == "int64"


def test_sample_response_round_trip_and_lists():
    ids = np.array([[3, 0], [5, 6]], dtype=np.int32)
    lps = np.array([[-0.1, -99999.0], [-0.2, -0.3]], dtype=np.float32)
    resp = SampleResponse(
        sequences=[
            SampledSequence(stop_reason="stop", tokens_np=np.array([1, 2], np.int32),
                            logprobs_np=np.array([-0.5, -0.25], np.float32),
                            topk_logprobs_np=TopkLogprobs(token_ids=ids, logprobs=lps)),
            SampledSequence(stop_reason="length", tokens_np=np.array([7], np.int32)),
        ],
        prompt_logprobs_np=np.array([np.nan, -1.0, -2.0], np.float32),
        prompt_alt_tokens=PromptAltTokens(tokens=TensorData.from_numpy(ids.astype(np.int64)),
                                          logprobs=TensorData.from_numpy(lps)),
        prompt_cache_hit_tokens=2,
    )
    back = decode_sample_response(encode_sample_response(resp), ["seq-a", "seq-b"])
    assert [s.tokens for s in back.sequences] == [[1, 2], [7]]
    assert [s.stop_reason for s in back.sequences] == ["stop", "length"]
    assert [s.sequence_id for s in back.sequences] == ["seq-a", "seq-b"]
    assert back.sequences[0].logprobs == [-0.5, -0.25] and back.sequences[1].logprobs is None
    assert back.sequences[0].topk_logprobs == [[(3, pytest.approx(-0.1))],
                                               [(5, pytest.approx(-0.2)),
                                                (6, pytest.approx(-0.3))]]
    assert back.prompt_logprobs == [None, -1.0, -2.0]
    assert back.prompt_cache_hit_tokens == 2
    assert back.prompt_alt_tokens is not None
    assert back.prompt_alt_tokens.tokens.tolist() == ids.tolist()


def test_official_sdk_decodes_our_sample_response():
    conv = pytest.importorskip("tinker.proto.response_conv")
    resp = SampleResponse(sequences=[SampledSequence(stop_reason="length",
                                                     tokens_np=np.array([4, 5], np.int32),
                                                     logprobs_np=np.array([-1, -2], np.float32))],
                          prompt_logprobs_np=np.array([np.nan, -3.0], np.float32))
    official = conv.deserialize_sample_response(encode_sample_response(resp))
    assert official.sequences[0].tokens == [4, 5]
    assert official.sequences[0].stop_reason == "length"
    assert official.prompt_logprobs == [None, -3.0]


def test_garbage_results_raise_validation_errors():
    with pytest.raises(APIResponseValidationError):
        decode_sample_response(b"\xff\x01")
    with pytest.raises(APIResponseValidationError):
        decode_forward_backward_output(b"\xff\x01")


def test_zstd_round_trip_and_bomb_guard():
    body = bytes(range(256)) * 100
    assert zstd_decompress(zstd_compress(body)) == body
    with pytest.raises(ValueError, match="more than"):
        zstd_decompress(zstd_compress(b"\0" * 10_000), max_size=1000)


def test_json_encoding_converts_arrays_and_names_what_it_cannot_encode():
    from tinkex_jax.wire import encode_json

    assert encode_json({"a": np.arange(3), "b": np.float32(0.5)}) == b'{"a":[0,1,2],"b":0.5}'
    with pytest.raises(TypeError, match=r"cannot encode a object as JSON.*Fix: convert it"):
        encode_json({"x": object()})
