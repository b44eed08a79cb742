"""Bounds on every request, through raw HTTP against the real server (numpy model layer):
each oversized or malformed request gets a 4xx that names the field, the limit and its flag,
nothing is queued, and the server stays healthy. The SDKs cannot produce these requests
(they validate before sending), so the tests speak the wire protocol directly."""

from __future__ import annotations

import doctest
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import zstandard

from tests.support.local_fake_backend import FAKE, FakeBackend
from tests.support.local_support import RawClient, datum
from tinkex_jax.local import LocalServer, serve
from tinkex_jax.types import Datum, ForwardBackwardRequest, ModelInput, TensorData
from tinkex_jax.wire import encode_forward_backward_request, tinker_public_pb2 as pb

PROTO = {"Content-Type": "application/x-protobuf"}


@pytest.fixture
def small(tmp_path: Any, fake_backend: FakeBackend) -> Iterator[LocalServer]:
    """A server with small limits, so oversized requests are cheap to build."""
    with serve(tmp_path / "data", base_models=[FAKE], backend=fake_backend,
               long_poll_timeout_s=0.2, max_body_bytes=20_000,
               max_decompressed_bytes=50_000, max_num_samples=8, max_request_tokens=400,
               max_lora_rank=16, max_logprobs_topk=8, max_string_length=64,
               max_list_length=4, max_metadata_bytes=200, fwdbwd_max_chunk_len=4) as server:
        yield server


def refused(response: httpx.Response, status: int, *needles: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    detail = response.json()["detail"]
    for needle in needles:
        assert needle in detail, (needle, detail)
    return str(detail)


def healthy(raw: RawClient) -> None:
    """The server answers and still does real work."""
    assert raw.http.get("/api/v1/healthz").json() == {"status": "ok"}
    model = raw.create_model(raw.session(), rank=2)
    assert raw.fb(model, 1, [datum([1, 2, 3])]).metrics["loss:sum"] > 0


def test_limits_doctests() -> None:
    import tinkex_jax.local._limits as limits

    result = doctest.testmod(limits)
    assert result.attempted > 0 and result.failed == 0


# ----------------------------------------------------------------------------- bodies


def test_a_body_over_the_cap_is_413_whether_declared_or_streamed(small: LocalServer) -> None:
    raw = RawClient(small)
    big = b'{"tags": [], "pad": "' + b"x" * 30_000 + b'"}'
    declared = raw.http.post("/api/v1/create_session", content=big,
                             headers={"Content-Type": "application/json"})
    refused(declared, 413, "20000", "--max-body-bytes")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts as it reads
        for _ in range(40):
            yield b" " * 1000

    streamed = raw.http.post("/api/v1/create_session", content=chunks(),
                             headers={"Content-Type": "application/json"})
    refused(streamed, 413, "more than 20000")
    healthy(raw)


def test_a_zstd_body_is_capped_once_decompressed(small: LocalServer) -> None:
    raw = RawClient(small)
    body = b'{"tags": [], "pad": "' + b"x" * 100_000 + b'"}'
    zstd = {"Content-Type": "application/json", "Content-Encoding": "zstd"}
    sized = zstandard.ZstdCompressor().compress(body)  # the frame announces 100 KB
    assert len(sized) < 1000
    refused(raw.http.post("/api/v1/create_session", content=sized, headers=zstd), 413,
            "decompresses", "--max-decompressed-bytes")
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(body)
    refused(raw.http.post("/api/v1/create_session", content=unsized, headers=zstd), 413,
            "more than 50000")
    refused(raw.http.post("/api/v1/create_session", content=b"not zstd", headers=zstd), 400,
            "not a valid zstd frame")
    fine = zstandard.ZstdCompressor().compress(b'{"tags": ["a"]}')
    ok = raw.http.post("/api/v1/create_session", content=fine, headers=zstd)
    assert ok.status_code == 200 and ok.json()["session_id"].startswith("sess-")


def test_a_large_valid_body_is_handled_off_the_event_loop(raw: RawClient) -> None:
    model = raw.create_model(raw.session(), rank=2)
    data = [datum([1 + i % 10, 2, 3, 4] * 16) for i in range(300)]
    body = encode_forward_backward_request(ForwardBackwardRequest(
        model_id=model, seq_id=1, data=data, loss_fn="cross_entropy"))
    assert len(body) > 256 * 1024  # decoded and checked in the thread pool
    out = raw.fb(model, 1, data)
    assert out.metrics["num_tokens:sum"] == 300 * 63


def test_deeply_nested_json_is_400(raw: RawClient) -> None:
    deep = b'{"tags": [], "user_metadata": {"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}"
    refused(raw.http.post("/api/v1/create_session", content=deep,
                          headers={"Content-Type": "application/json"}), 400, "nests too deeply")
    refused(raw.http.post("/api/v1/optim_step", content=b"[" * 50_000,
                          headers={"Content-Type": "application/json"}), 400, "too deeply")


# ----------------------------------------------------------------------------- sampling


def asample(raw: RawClient, sampler: str, seq: int, **fields: Any) -> httpx.Response:
    params = fields.pop("sampling_params", {"max_tokens": 2})
    return raw.post("asample", {"sampling_session_id": sampler, "seq_id": seq,
                                "num_samples": 1, "prompt": {"chunks": [
                                    {"type": "encoded_text", "tokens": [1, 2, 3]}]},
                                "sampling_params": params, **fields})


def sampler_of(raw: RawClient) -> str:
    return str(raw.ok("create_sampling_session", {
        "session_id": raw.session(), "sampling_session_seq_id": 0,
        "base_model": FAKE})["sampling_session_id"])


def test_sample_sizes_are_bounded_before_anything_runs(small: LocalServer,
                                                       fake_backend: FakeBackend) -> None:
    raw = RawClient(small)
    sampler = sampler_of(raw)
    refused(asample(raw, sampler, 1, num_samples=10**12), 400, "num_samples",
            str(10**12), "--max-num-samples")
    refused(asample(raw, sampler, 2, prompt_logprobs=True, topk_prompt_logprobs=10**9), 400,
            "topk_prompt_logprobs", "--max-logprobs-topk")
    for name in ("topk_sample_logprobs", "prompt_alt_tokens_k"):
        refused(asample(raw, sampler, 3, **{name: 10**9}), 400, name)
    refused(asample(raw, sampler, 4, sampling_params={"max_tokens": 10**9}), 400,
            "max_tokens")
    refused(asample(raw, sampler, 5, num_samples=8, sampling_params={"max_tokens": 60}), 400,
            "num_samples * (prompt + max_tokens)", "--max-request-tokens")
    refused(asample(raw, sampler, 6, sampling_params={"temperature": 1e308}), 400,
            "temperature", "float32")
    refused(asample(raw, sampler, 2**70), 400, "seq_id", "int64")
    refused(asample(raw, sampler, 7, sampling_params={"stop": ["a"] * 5}), 400,
            "sampling_params.stop", "max_list_length")
    refused(asample(raw, sampler, 8, sampling_params={"stop": "s" * 65}), 400,
            "sampling_params.stop", "characters")
    assert not [c for c in fake_backend.calls if c[0] == "sample"]  # nothing ran
    # a sampling top_k beyond the vocabulary means "no limit"
    ok = asample(raw, sampler, 9, sampling_params={"max_tokens": 2, "top_k": 2**40,
                                                   "temperature": 1.0})
    assert ok.status_code == 200 and isinstance(raw.result(ok.json()["request_id"]), bytes)


def test_top_k_widths_are_bounded_by_the_vocabulary(raw: RawClient) -> None:
    sampler = sampler_of(raw)  # the fake model's vocabulary has 16 tokens
    refused(asample(raw, sampler, 1, prompt_logprobs=True, topk_prompt_logprobs=17), 400,
            "topk_prompt_logprobs", "vocabulary", "16")
    refused(asample(raw, sampler, 2, topk_sample_logprobs=17), 400, "vocabulary")
    refused(asample(raw, sampler, 3, prompt_alt_tokens_k=17), 400, "vocabulary")
    target = {"data": list(range(2 * 17)), "dtype": "int64", "shape": [2, 17]}
    refused(asample(raw, sampler, 4, target_prompt_logprobs=target), 400,
            "target_prompt_logprobs width", "vocabulary")
    ok = asample(raw, sampler, 5, prompt_logprobs=True, topk_prompt_logprobs=16)
    assert ok.status_code == 200


# ----------------------------------------------------------------------------- training


def fb_body(model: str, data: list[Datum], seq: int = 1) -> bytes:
    return encode_forward_backward_request(ForwardBackwardRequest(
        model_id=model, seq_id=seq, data=data, loss_fn="cross_entropy"))


def test_training_sizes_and_ranges_are_bounded(small: LocalServer,
                                               fake_backend: FakeBackend) -> None:
    raw = RawClient(small)
    sid = raw.session()
    refused(raw.post("create_model", {"session_id": sid, "model_seq_id": 0,
                                      "base_model": FAKE, "lora_config": {"rank": 10**6}}),
            400, "lora_config.rank", "--max-lora-rank")
    refused(raw.post("create_model", {"session_id": sid, "model_seq_id": 0,
                                      "base_model": FAKE, "lora_config": {"rank": 2**40}}),
            400, "lora_config.rank")
    refused(raw.post("create_model", {"session_id": sid, "model_seq_id": 2**70,
                                      "base_model": FAKE}), 400, "model_seq_id", "int64")
    model = raw.create_model(sid, rank=2)
    refused(raw.post("optim_step", {"model_id": model, "seq_id": 2**70,
                                    "adam_params": {"learning_rate": 0.1}}), 400, "seq_id")
    refused(raw.post("optim_step", {"model_id": model, "seq_id": 1,
                                    "adam_params": {"learning_rate": 1e300}}), 400,
            "adam_params.learning_rate", "float32")
    too_many = [datum(list(range(1, 15)) * 8) for _ in range(4)]  # 4 * 111 tokens > 400
    refused(raw.http.post("/api/v1/forward_backward", content=fb_body(model, too_many),
                          headers=PROTO), 400, "input tokens", "--max-request-tokens")
    five = [datum([1, 2, 3]) for _ in range(5)]  # clients split calls by the server's config
    refused(raw.http.post("/api/v1/forward_backward", content=fb_body(model, five),
                          headers=PROTO), 400, "5 datums", "fwdbwd_max_chunk_len")
    for width, needles in ((10**12, ("width", "vocabulary")),  # sparse: 16 bytes on the wire
                           (10, ("columns", "max_logprobs_topk"))):
        wide = Datum(model_input=ModelInput.from_ints([1, 2]), loss_fn_inputs={
            "target_tokens": TensorData(data=[1, 2], dtype="int64", shape=[2, width],
                                        sparse_crow_indices=[0, 1, 2],
                                        sparse_col_indices=[0, 0]),
            "weights": TensorData(data=[1.0, 1.0], dtype="float32", shape=[2, width],
                                  sparse_crow_indices=[0, 1, 2], sparse_col_indices=[0, 0])})
        refused(raw.http.post("/api/v1/forward_backward", content=fb_body(model, [wide]),
                              headers=PROTO), 400, "loss_fn_inputs", *needles)
    assert fake_backend.calls == []  # nothing ran
    healthy(raw)


def test_sparse_loss_inputs_wider_than_the_vocabulary_are_400(raw: RawClient) -> None:
    model = raw.create_model(raw.session(), rank=2)
    wide = Datum(model_input=ModelInput.from_ints([1, 2]), loss_fn_inputs={
        "target_tokens": TensorData(data=[1, 2], dtype="int64", shape=[2, 100],
                                    sparse_crow_indices=[0, 1, 2], sparse_col_indices=[0, 0]),
        "weights": TensorData(data=[1.0, 1.0], dtype="float32", shape=[2, 100],
                              sparse_crow_indices=[0, 1, 2], sparse_col_indices=[0, 0])})
    refused(raw.http.post("/api/v1/forward_backward", content=fb_body(model, [wide]),
                          headers=PROTO), 400, "width", "vocabulary")


def test_malformed_protobuf_is_400_not_500(raw: RawClient) -> None:
    model = raw.create_model(raw.session(), rank=2)
    msg = pb.ForwardBackwardRequest(model_id=model, seq_id=1, loss_fn="cross_entropy")
    item = msg.data.add()
    item.model_input.add().encoded_text.tokens = b"\x01\x00\x00\x00\x02"  # 5 bytes
    refused(raw.http.post("/api/v1/forward_backward", content=msg.SerializeToString(),
                          headers=PROTO), 400, "not a whole number of 4-byte values")
    item.model_input[0].encoded_text.tokens = np.array([1, 2], np.int32).tobytes()
    target = item.loss_fn_inputs["target_tokens"]
    target.dtype, target.dense = 99, np.array([2, 3], np.int64).tobytes()
    refused(raw.http.post("/api/v1/forward_backward", content=msg.SerializeToString(),
                          headers=PROTO), 400, "unknown tensor dtype 99")
    target.dtype, target.dense = pb.DTYPE_INT64, b"\x00" * 12  # 1.5 int64s
    refused(raw.http.post("/api/v1/forward_backward", content=msg.SerializeToString(),
                          headers=PROTO), 400, "8-byte values")
    whole = fb_body(model, [datum([1, 2, 3])])
    refused(raw.http.post("/api/v1/forward_backward", content=whole[:-3], headers=PROTO), 400)
    assert raw.fb(model, 1, [datum([1, 2, 3])]).metrics["loss:sum"] > 0


# ----------------------------------------------------------------------------- strings, lists


def test_strings_lists_and_metadata_are_bounded(small: LocalServer) -> None:
    raw = RawClient(small)
    refused(raw.post("create_session", {"project_id": "p" * 1000}), 400, "project_id",
            "characters")
    refused(raw.post("create_session", {"tags": ["t"] * 100}), 400, "tags",
            "max_list_length")
    refused(raw.post("create_session", {"tags": ["t" * 65]}), 400, "tags[0]")
    refused(raw.post("create_session", {"user_metadata": {"k": "v" * 300}}), 400,
            "user_metadata", "max_metadata_bytes")
    refused(raw.post("create_session", {"user_metadata": {str(i): i for i in range(5)}}), 400,
            "user_metadata", "entries")
    sid = raw.session()
    refused(raw.http.put(f"/api/v1/sessions/{sid}/project", json={"project_id": "p" * 65}),
            400, "project_id")
    refused(raw.post(f"sessions/{sid}/finish", {"detail": "d" * 65}), 400, "detail")
    model = raw.create_model(sid, rank=2)
    refused(raw.post("save_weights", {"model_id": model, "path": "a", "seq_id": 1,
                                      "user_metadata": {"k": "v" * 300}}), 400,
            "user_metadata")


def test_the_reported_oversized_strings_and_lists_are_400_by_default(raw: RawClient) -> None:
    refused(raw.post("create_session", {"project_id": "p" * 2**20}), 400, "project_id",
            "4096")
    refused(raw.post("create_session", {"tags": ["t"] * 100_000}), 400, "tags", "1024")


# ----------------------------------------------------------------------------- sessions


def test_unknown_sessions_are_404_and_never_created(raw: RawClient) -> None:
    before = raw.http.get("/api/v1/sessions").json()["sessions"]
    ghost = "sess-ghost"
    refused(raw.post("session_heartbeat", {"session_id": ghost}), 404, "Unknown session")
    refused(raw.post(f"sessions/{ghost}/finish", {}), 404, "create_session")
    refused(raw.post("create_model", {"session_id": ghost, "model_seq_id": 0,
                                      "base_model": FAKE}), 404, "Unknown session")
    refused(raw.post("create_sampling_session", {"session_id": ghost,
                                                 "sampling_session_seq_id": 0,
                                                 "base_model": FAKE}), 404)
    refused(raw.http.get(f"/api/v1/sessions/{ghost}"), 404)
    assert raw.http.get("/api/v1/sessions").json()["sessions"] == before
    assert raw.http.get("/api/v1/training_runs").json()["training_runs"] == []


def test_a_finished_session_takes_no_new_models(raw: RawClient) -> None:
    sid = raw.session()
    assert raw.ok(f"sessions/{sid}/finish", {})["status"] == "finished"
    refused(raw.post("create_model", {"session_id": sid, "model_seq_id": 0,
                                      "base_model": FAKE}), 410, "finished")
    refused(raw.post("session_heartbeat", {"session_id": sid}), 410)
