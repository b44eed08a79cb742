"""Bad input against the real backend: a clear error, and nothing changed on the server."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.support.local_support import TINY, RawClient, datum
from tinkex_jax.types import Datum, ModelInput

pytestmark = [pytest.mark.official, pytest.mark.slow]

tinker = pytest.importorskip("tinker")
T = tinker.types


def sdk_datum(tokens: list[int], **extra: Any) -> Any:
    inputs = {"target_tokens": tokens[1:], "weights": [1.0] * (len(tokens) - 1), **extra}
    return T.Datum(model_input=T.ModelInput.from_ints(tokens[:-1]), loss_fn_inputs=inputs)


@pytest.fixture(scope="module")
def sdk(tiny_server: Any) -> Any:
    return tinker.ServiceClient(base_url=tiny_server.base_url, api_key=tiny_server.api_key)


def test_unknown_base_model(sdk: Any) -> None:
    with pytest.raises(tinker.BadRequestError) as info:
        sdk.create_lora_training_client(base_model="meta-llama/Llama-3.1-8B", rank=4).result()
    message = str(info.value)
    assert "Unknown base model 'meta-llama/Llama-3.1-8B'" in message and TINY in message


def test_bad_training_input_is_rejected_and_changes_nothing(sdk: Any) -> None:
    tc = sdk.create_lora_training_client(base_model=TINY, rank=4, seed=3).result()
    probe = [sdk_datum(list(b"abc=abc\n"))]
    before = tc.forward(probe, "cross_entropy").result().loss_fn_outputs[0]["logprobs"].tolist()
    cases = [
        ([sdk_datum([104, 105, 300, 33])], "cross_entropy", "token id 300"),
        ([sdk_datum([1, 2, 3])], "ppo", "advantages"),
        ([T.Datum(model_input=T.ModelInput.from_ints([1, 2, 3]),
                  loss_fn_inputs={"target_tokens": [2, 3], "weights": [1.0, 1.0]})],
         "cross_entropy", "one per input position"),
        ([sdk_datum([1, 2, 3])], "nll_loss", "cross_entropy"),
    ]
    for data, loss_fn, expected in cases:
        with pytest.raises((tinker.BadRequestError, ValueError)) as info:
            tc.forward_backward(data, loss_fn).result()
        assert expected in str(info.value), str(info.value)
    # nothing was accumulated: a fresh adapter's Adam step on a zero gradient moves nothing
    tc.optim_step(T.AdamParams(learning_rate=0.1)).result()
    after = tc.forward(probe, "cross_entropy").result().loss_fn_outputs[0]["logprobs"].tolist()
    assert before == after
    # and the model still trains normally afterwards
    tc.forward_backward(probe, "cross_entropy").result()
    tc.optim_step(T.AdamParams(learning_rate=0.1)).result()
    moved = tc.forward(probe, "cross_entropy").result().loss_fn_outputs[0]["logprobs"].tolist()
    assert moved != before


def test_bad_sampling_and_checkpoint_input(sdk: Any, tiny_server: Any) -> None:
    sampler = sdk.create_sampling_client(base_model=TINY).result()
    with pytest.raises(tinker.BadRequestError, match="outside the vocabulary"):
        sampler.sample(T.ModelInput.from_ints([1, 2, 999]), num_samples=1,
                       sampling_params=T.SamplingParams(max_tokens=2)).result()
    with pytest.raises(tinker.BadRequestError, match="context"):
        sampler.sample(T.ModelInput.from_ints([1] * 2040), num_samples=1,
                       sampling_params=T.SamplingParams(max_tokens=64)).result()
    with pytest.raises(tinker.NotFoundError, match="No checkpoint"):
        sdk.create_training_client_from_state("tinker://nope:train:0/weights/x").result()


def test_unknown_model_and_request_ids(tiny_server: Any) -> None:
    raw = RawClient(tiny_server)
    missing = raw.fb_request("sess-none:train:0", 1, [datum([1, 2, 3])])
    assert missing.status_code == 404 and "Unknown model_id" in missing.json()["detail"]
    assert raw.post("get_info", {"model_id": "sess-none:train:0"}).status_code == 404
    assert raw.retrieve("req-does-not-exist").status_code == 404
    short = Datum(model_input=ModelInput.from_ints([1, 2]),
                  loss_fn_inputs={"target_tokens": np.array([2, 3]),
                                  "weights": np.ones(2, np.float32)})
    model = raw.create_model(raw.session(), base=TINY, rank=2)
    long = raw.fb_request(model, 1, [datum(list(range(1, 200)) * 11)])
    assert long.status_code == 400 and "longer than the context" in long.json()["detail"]
    assert raw.fb(model, 1, [short]).metrics["loss:sum"] > 0  # the rejected seq_id is free
