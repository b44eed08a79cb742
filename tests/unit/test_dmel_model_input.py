"""Audio (dmel) chunks inside a ModelInput, as the official SDK allows.

Third-party renderers for audio models build ``ModelInput(chunks=[text, DmelChunk, text])``
through ``tinker.types``; with tinkex_jax standing in for ``tinker`` that constructor used to
reject the chunk. These tests pin that such an input is built, sized, encoded for training
(protobuf, checked against the official schema and encoder) and for sampling (JSON), and
decoded again by the server side.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tinkex_jax.builders import estimate_datum_bytes
from tinkex_jax.errors import ValidationError
from tinkex_jax.types import (
    Datum,
    DmelChunk,
    EncodedTextChunk,
    ForwardBackwardRequest,
    ModelInput,
    SampleRequest,
    SamplingParams,
)
from tinkex_jax.wire import (
    decode_forward_backward_request,
    encode_forward_backward_request,
    encode_json,
)

FRAMES, BINS = 6, 4
# a float16 tensor of shape [FRAMES, BINS]: dtype byte, ndim, dims, then the values
DMEL = bytes([1, 2, FRAMES, BINS]) + np.arange(FRAMES * BINS, dtype="<f2").tobytes()


def _audio_prompt() -> ModelInput:
    return ModelInput(chunks=[EncodedTextChunk(tokens=[11, 12]), DmelChunk(dmel=DMEL),
                              EncodedTextChunk(tokens=[13])])


def _training_request() -> ForwardBackwardRequest:
    n = _audio_prompt().length
    datum = Datum(model_input=_audio_prompt(),
                  loss_fn_inputs={"target_tokens": list(range(n)), "weights": [1.0] * n})
    return ForwardBackwardRequest(model_id="m", seq_id=1, data=[datum], loss_fn="cross_entropy")


def test_a_model_input_holds_a_dmel_chunk_and_counts_its_frames():
    prompt = _audio_prompt()
    assert [type(c) for c in prompt.chunks] == [EncodedTextChunk, DmelChunk, EncodedTextChunk]
    assert prompt.chunks[1].dmel == DMEL
    assert prompt.length == 2 + FRAMES + 1
    assert prompt.append_int(14).length == prompt.length + 1
    with pytest.raises(ValidationError, match="only text chunks"):
        prompt.to_ints()


def test_other_objects_are_still_rejected_and_the_message_names_dmel():
    with pytest.raises(ValidationError, match="DmelChunk"):
        ModelInput(chunks=[b"raw bytes"])  # type: ignore[list-item]


def test_request_size_estimate_counts_the_dmel_bytes():
    datum = _training_request().data[0]
    tensors = sum(t.nbytes for t in datum.loss_fn_inputs.values())
    assert estimate_datum_bytes(datum) == 4 * 3 + len(DMEL) + tensors


def test_training_request_carries_the_dmel_bytes_and_round_trips():
    tpb = pytest.importorskip("tinker.proto.tinker_public_pb2")
    request = _training_request()
    body = encode_forward_backward_request(request)
    parsed = tpb.ForwardBackwardRequest()
    parsed.ParseFromString(body)
    kinds = [c.WhichOneof("chunk") for c in parsed.data[0].model_input]
    assert kinds == ["encoded_text", "dmel", "encoded_text"]
    assert parsed.data[0].model_input[1].dmel.dmel == DMEL
    assert decode_forward_backward_request(body) == request


def test_training_request_matches_the_official_encoder():
    official = pytest.importorskip("tinker")
    conv = pytest.importorskip("tinker.proto.request_conv")
    tpb = pytest.importorskip("tinker.proto.tinker_public_pb2")
    n = _audio_prompt().length
    theirs = official.types.ForwardBackwardRequest(
        model_id="m", seq_id=1, forward_backward_input=official.types.ForwardBackwardInput(
            loss_fn="cross_entropy",
            data=[official.types.Datum(
                model_input=official.types.ModelInput(chunks=[
                    official.types.EncodedTextChunk(tokens=[11, 12]),
                    official.types.DmelChunk(dmel=DMEL),
                    official.types.EncodedTextChunk(tokens=[13])]),
                loss_fn_inputs={"target_tokens": list(range(n)), "weights": [1.0] * n})]))
    ours = tpb.ForwardBackwardRequest()
    ours.ParseFromString(encode_forward_backward_request(_training_request()))
    assert ours == conv.forward_backward_request_to_proto(theirs)


def test_sampling_prompt_sends_the_dmel_chunk_as_base64_like_the_official_sdk():
    official = pytest.importorskip("tinker")
    ours = json.loads(encode_json(SampleRequest(
        prompt=_audio_prompt(), sampling_params=SamplingParams(max_tokens=3),
        num_samples=1, sampling_session_id="s", seq_id=0)))
    theirs = official.types.ModelInput(chunks=[
        official.types.EncodedTextChunk(tokens=[11, 12]), official.types.DmelChunk(dmel=DMEL),
        official.types.EncodedTextChunk(tokens=[13])]).model_dump(mode="json")
    assert ours["prompt"] == theirs


def test_the_local_backend_reads_the_chunk_and_says_it_serves_text_only():
    from tinkex_jax.local._backend import BaseModelInfo
    from tinkex_jax.local._convert import training_items
    from tinkex_jax.local._errors import UserError

    info = BaseModelInfo(name="m", vocab_size=64, max_context_length=64, tokenizer_id="m",
                         eos_token_ids=(1,))
    received = decode_forward_backward_request(encode_forward_backward_request(
        _training_request()))
    with pytest.raises(UserError, match=r"chunks\[1\]: expected a text chunk.*DmelChunk"):
        training_items(received, info)
