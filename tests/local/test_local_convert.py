"""Pure conversions: request validation against a base model, sample response assembly."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.local_support import RawClient
from tinkex_jax.builders import datum_from_tokens
from tinkex_jax.local._backend import BaseModelInfo, SampledRow, SampleOutcome
from tinkex_jax.local._convert import sample_job, sample_response, training_items
from tinkex_jax.local._errors import UserError
from tinkex_jax.types import (
    Datum,
    ForwardBackwardRequest,
    ImageChunk,
    ModelInput,
    SampleRequest,
    SamplingParams,
    TensorData,
)

INFO = BaseModelInfo(name="m", vocab_size=10, max_context_length=16, tokenizer_id="m",
                     eos_token_ids=(9,))


def fb(data: list[Datum], loss_fn: str = "cross_entropy",
       config: dict[str, float | str] | None = None) -> ForwardBackwardRequest:
    return ForwardBackwardRequest(model_id="m", seq_id=1, data=data, loss_fn=loss_fn,
                                  loss_fn_config=config)


def test_training_items_fill_defaults_and_keep_2d_targets() -> None:
    rl = Datum(model_input=ModelInput.from_ints([1, 2]), loss_fn_inputs={
        "target_tokens": [2, 3], "logprobs": [-1.0, -2.0], "advantages": [1.0, 1.0]})
    items, config = training_items(fb([rl], "ppo", {"clip_high_threshold": 1.5}), INFO)
    assert config == {"clip_low_threshold": 0.8, "clip_high_threshold": 1.5}
    assert sorted(items[0].inputs) == ["advantages", "logprobs"]
    two_d = Datum(model_input=ModelInput.from_ints([1, 2]), loss_fn_inputs={
        "target_tokens": np.array([[2, 3], [3, 4]]), "weights": np.ones((2, 2), np.float32)})
    items, _ = training_items(fb([two_d]), INFO)
    assert items[0].targets.shape == (2, 2)


@pytest.mark.parametrize(("request_", "message"), [
    (fb([datum_from_tokens([1, 2, 10])]), "token id 10"),
    (fb([datum_from_tokens([1, 2, 3])], "mse"), "one of"),
    (fb([datum_from_tokens([1, 2, 3])], "ppo", {"beta": 1.0}), "config key"),
    (fb([datum_from_tokens([1, 2, 3])], "dro"), "advantages"),
    (fb([datum_from_tokens(list(range(1, 9)) * 3)]), "longer than the context"),
    (fb([Datum(model_input=ModelInput(chunks=[ImageChunk(data=b"x", format="png",
                                                         expected_tokens=1)]),
               loss_fn_inputs={"target_tokens": [1], "weights": [1.0]})]), "text chunk"),
    (fb([Datum(model_input=ModelInput.from_ints([1, 2]),
               loss_fn_inputs={"target_tokens": [2, 3], "weights": [1.0, float("nan")]})]),
     "finite"),
    (fb([Datum(model_input=ModelInput.from_ints([1, 2]), loss_fn_inputs={
        "target_tokens": [2, 3], "logprobs": [0.0, 0.0], "advantages": [1.0, 1.0]})],
        "ppo", {"clip_low_threshold": 1.3}), "clip_low_threshold <= clip_high_threshold"),
])
def test_training_items_reject_bad_requests(request_: ForwardBackwardRequest,
                                            message: str) -> None:
    with pytest.raises(UserError, match=message):
        training_items(request_, INFO)


def request(prompt: list[int], **kw: object) -> SampleRequest:
    params = kw.pop("sampling_params", SamplingParams())
    return SampleRequest(prompt=ModelInput.from_ints(prompt), sampling_params=params, **kw)


def test_sample_job_resolves_defaults_and_stops() -> None:
    job = sample_job(request([1, 2]), INFO, default_max_tokens=64, seed=5)
    assert (job.max_tokens, job.stop_tokens, job.seed) == (14, (9,), 5)
    job = sample_job(request([1], sampling_params=SamplingParams(stop=[])), INFO,
                     default_max_tokens=4)
    assert job.stop_tokens == () and job.stop_strings == () and job.max_tokens == 4
    job = sample_job(request([1], sampling_params=SamplingParams(stop="\n")), INFO,
                     default_max_tokens=4)
    assert job.stop_strings == ("\n",)
    with pytest.raises(UserError, match="max_tokens <= 14"):
        sample_job(request([1, 2], sampling_params=SamplingParams(max_tokens=15)), INFO,
                   default_max_tokens=4)
    with pytest.raises(UserError, match="no room"):
        sample_job(request([1] * 16), INFO, default_max_tokens=4)


def test_sample_response_prompt_parts() -> None:
    P, V = 4, 10
    table = np.log(np.full((P, V), 1.0 / V, np.float32))
    table[:, 3] = np.log(0.5)
    rows = [SampledRow(tokens=np.array([3, 9]), logprobs=np.array([-0.7, -2.0]),
                       stop_reason="stop")]
    outcome = SampleOutcome(rows=rows, prompt_logprobs=np.array([np.nan, -1, -2, -3]))
    target = TensorData.sparse_from_dense(
        np.array([[3, -1, -1, -1], [-1, -1, -1, -1], [5, 3, -1, -1]]), pad_value=-1)
    req = request([1, 2, 3, 4], prompt_logprobs=True, prompt_logprobs_last_n=2,
                  target_prompt_logprobs=target, prompt_alt_tokens_k=2, topk_sample_logprobs=2)
    res = sample_response(req, np.array([1, 2, 3, 4]), outcome, table,
                          sample_tables=[table[:2]])
    assert res.prompt_logprobs == [None, None, -2.0, -3.0]
    assert res.sequences[0].stop_reason == "stop"
    assert res.sequences[0].topk_logprobs[0][0] == (3, pytest.approx(np.log(0.5)))
    assert res.target_prompt_logprobs.is_sparse
    dense = res.target_prompt_logprobs.to_numpy()
    assert dense[0, 0] == pytest.approx(np.log(0.5)) and dense[1].tolist() == [0, 0, 0, 0]
    assert dense[2, 0] == pytest.approx(np.log(0.1))
    assert res.prompt_alt_tokens.tokens.to_numpy()[:, 0].tolist() == [3, 3, 3]


def test_extras_over_http(raw: RawClient) -> None:
    sid = raw.session()
    sampler = raw.ok("create_sampling_session", {
        "session_id": sid, "sampling_session_seq_id": 0, "base_model": "fake/bigram",
        "type": "create_sampling_session"})["sampling_session_id"]
    target = {"data": [2, -1, 3, 4], "dtype": "int64", "shape": [2, 2]}
    res = raw.sample(sampler, 0, [1, 2, 3], topk_sample_logprobs=3,
                     target_prompt_logprobs=target, prompt_alt_tokens_k=2)
    assert len(res.sequences[0].topk_logprobs) == len(res.sequences[0].tokens)
    got = res.target_prompt_logprobs.to_numpy()
    assert got.shape == (2, 2) and got[0, 1] == 0.0 and got[0, 0] < 0
    assert res.prompt_alt_tokens.logprobs.shape == (2, 2)
