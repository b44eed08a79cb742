"""retrieve_future long polling: every answer of docs/protocol.md §5.2, with exact sleeps."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from tests.support.fake_tinker import PROTO, TEST_KEY, Scripted, json_response
from tinkex_jax._shell import SDK_METHOD, FakeTime, HttpCore, resolve_settings, retrieve_future
from tinkex_jax._shell._limits import BytesBudget
from tinkex_jax._shell._retry import BillingPause
from tinkex_jax.errors import (
    APIResponseValidationError,
    APIStatusError,
    BadRequestError,
    BillingError,
    NotFoundError,
    RequestFailedError,
)
from tinkex_jax.types import ForwardBackwardOutput, OptimStepResponse, TensorData
from tinkex_jax.wire import decode_forward_backward_output, encode_forward_backward_output

RESULT = {"metrics": {"x:sum": 1.0}}


def try_again(state: str = "active", reason: str | None = None) -> httpx.Response:
    body = {"type": "try_again", "request_id": "r1", "queue_state": state}
    if reason:
        body["queue_state_reason"] = reason
    return json_response(200, body)


def poll(handler: Scripted, fake: FakeTime, *, request_type: str = "OptimStep",
         observer=None, billing: BillingPause | None = None, budget: BytesBudget | None = None,
         sdk_method: str | None = None):
    settings = resolve_settings(api_key=TEST_KEY, base_url="http://t.test", env={})
    http = HttpCore(settings, fake.runtime, transport=httpx.MockTransport(handler))
    proto = request_type in ("ForwardBackward", "Forward", "Sample")

    async def run():
        SDK_METHOD.set(sdk_method)
        return await retrieve_future(
            http, "r1", request_type, runtime=fake.runtime, billing=billing or BillingPause(),
            response_budget=budget or BytesBudget(1000),
            json_type=None if proto else OptimStepResponse,
            decode_proto=decode_forward_backward_output if proto else None,
            observer=observer, roundtrip=0.25)

    return asyncio.run(run())


def test_try_again_repolls_at_once_and_reports_queue_state():
    fake, seen = FakeTime(), []
    handler = Scripted(try_again(), try_again("paused_capacity", "busy"),
                       json_response(200, RESULT))
    result = poll(handler, fake, observer=lambda s, r: seen.append((s, r)))
    assert result.metrics == {"x:sum": 1.0}
    assert fake.delays == []
    assert seen == [("active", None), ("paused_capacity", "busy")]
    iterations = [r.headers["x-tinker-request-iteration"] for r in handler.requests]
    assert iterations == ["0", "1", "2"]
    assert {r.headers["x-tinker-request-type"] for r in handler.requests} == {"OptimStep"}
    assert [("x-tinker-create-promise-roundtrip-time" in r.headers)
            for r in handler.requests] == [True, False, False]
    assert handler.requests[0].headers["x-tinker-create-promise-roundtrip-time"] == "0.25"
    assert all(r.headers["accept"] == "application/json" for r in handler.requests)


def test_polls_send_no_sdk_method_but_errors_name_it():
    handler = Scripted(json_response(404, {"detail": "unknown request"}))
    with pytest.raises(NotFoundError) as info:
        poll(handler, FakeTime(), sdk_method="TrainingClient.optim_step")
    assert "x-sdk-method" not in handler.requests[0].headers
    assert str(info.value).startswith("TrainingClient.optim_step: POST /api/v1/retrieve_future")


def test_408_and_5xx_repoll_immediately():
    fake, seen = FakeTime(), []
    handler = Scripted(json_response(408, {"queue_state": "paused_rate_limit"}),
                       json_response(500, {"detail": "oops"}), json_response(503, {}),
                       json_response(200, RESULT))
    poll(handler, fake, observer=lambda s, r: seen.append(s))
    assert fake.delays == [] and len(handler.requests) == 4
    assert seen == ["paused_rate_limit"]


def test_429_and_connection_errors_back_off_and_reset_on_other_answers():
    fake = FakeTime()
    handler = Scripted(json_response(429, {}), httpx.ConnectError("down"),
                       httpx.ReadTimeout("slow"), try_again(), json_response(429, {}),
                       json_response(200, RESULT))
    poll(handler, fake)
    # n = consecutive 429/connection errors: 1, 2, 4; the try_again resets n
    assert fake.delays == [1, 2, 4, 1]


def test_400_allows_three_extra_polls_then_fails():
    handler = Scripted(*[json_response(400, {"detail": "weird"}) for _ in range(4)])
    with pytest.raises(BadRequestError, match="3 extra polls"):
        poll(handler, FakeTime())
    assert len(handler.requests) == 4


def test_a_408_resets_the_400_budget():
    handler = Scripted(*[json_response(400, {"detail": "x"}) for _ in range(3)],
                       json_response(408, {}),
                       *[json_response(400, {"detail": "x"}) for _ in range(3)],
                       json_response(200, RESULT))
    assert poll(handler, FakeTime()).metrics == {"x:sum": 1.0}
    assert len(handler.requests) == 8


def test_complete_metadata_reserves_budget_and_repolls_without_metadata():
    fake = FakeTime()
    budget = BytesBudget(1000)
    observed = []

    def final(request: httpx.Request) -> httpx.Response:
        observed.append(budget.in_flight)
        return json_response(200, RESULT)

    handler = Scripted(json_response(200, {"status": "complete_metadata",
                                           "response_payload_size": 700}), final)
    poll(handler, fake, budget=budget)
    flags = [b["allow_metadata_only"] for b in handler.bodies()]
    assert flags == [True, False]
    assert observed == [700] and budget.in_flight == 0


def test_complete_metadata_twice_is_a_protocol_error():
    meta = {"status": "complete_metadata", "response_payload_size": 1}
    handler = Scripted(json_response(200, meta), json_response(200, meta))
    with pytest.raises(APIResponseValidationError, match="allow_metadata_only was false"):
        poll(handler, FakeTime())


@pytest.mark.parametrize(("category", "expected"), [
    ("user", "user"), ("server", "server"), ("unknown", "unknown"), ("weird", "unknown")])
def test_failure_with_category_raises_request_failed(category, expected):
    handler = Scripted(json_response(200, {"error": "loss was NaN", "category": category}))
    with pytest.raises(RequestFailedError) as info:
        poll(handler, FakeTime(), sdk_method="TrainingClient.forward_backward")
    assert info.value.category == expected and info.value.request_id == "r1"
    message = str(info.value)
    assert "loss was NaN" in message and "TrainingClient.forward_backward" in message
    assert "What to do" in message


def test_402_pauses_for_billing_then_gives_up():
    fake = FakeTime()
    handler = Scripted(json_response(402, {"detail": "pay"}), json_response(200, RESULT))
    poll(handler, fake)
    assert fake.delays == [5.0]
    fake = FakeTime()
    handler = Scripted(default=lambda r: json_response(402, {"detail": "pay"}))
    with pytest.raises(BillingError):
        poll(handler, fake, billing=BillingPause(max_pause=12.0))
    assert fake.delays == [5.0, 5.0, 5.0]  # 402s at t=0, 5, 10 pause; at t=15 > 12 it fails


def test_410_is_an_expired_promise():
    handler = Scripted(json_response(410, {"detail": "gone"}))
    with pytest.raises(APIStatusError) as info:
        poll(handler, FakeTime())
    assert info.value.status_code == 410 and "is gone" in str(info.value)


@pytest.mark.parametrize("status", [401, 403, 404, 409, 422])
def test_other_4xx_are_fatal(status):
    handler = Scripted(json_response(status, {"detail": "no"}))
    with pytest.raises(APIStatusError) as info:
        poll(handler, FakeTime())
    assert info.value.status_code == status and len(handler.requests) == 1


def test_proto_results_are_decoded_by_content_type():
    output = ForwardBackwardOutput(
        loss_fn_outputs=[{"logprobs": TensorData.from_numpy(np.array([-1.0, -2.0],
                                                                     dtype=np.float32))}],
        metrics={"loss:sum": 3.0})
    handler = Scripted(try_again(), httpx.Response(
        200, content=encode_forward_backward_output(output), headers={"content-type": PROTO}))
    result = poll(handler, FakeTime(), request_type="ForwardBackward")
    assert result.metrics == {"loss:sum": 3.0}
    assert result.loss_fn_outputs[0]["logprobs"].tolist() == [-1.0, -2.0]
    assert handler.requests[0].headers["accept"] == PROTO


def test_json_success_for_a_proto_kind_and_proto_for_a_json_kind_are_errors():
    handler = Scripted(json_response(200, {"metrics": {}}))
    with pytest.raises(APIResponseValidationError, match="only travels as protobuf"):
        poll(handler, FakeTime(), request_type="Sample")
    handler = Scripted(httpx.Response(200, content=b"\x00", headers={"content-type": PROTO}))
    with pytest.raises(APIResponseValidationError, match="JSON-only"):
        poll(handler, FakeTime())


def test_request_body_names_the_request():
    handler = Scripted(json_response(200, RESULT))
    poll(handler, FakeTime())
    assert json.loads(handler.requests[0].content) == {"request_id": "r1",
                                                       "allow_metadata_only": True}
    assert handler.requests[0].headers["x-stainless-read-timeout"] == "45"
    assert handler.requests[0].headers["x-stainless-retry-count"] == "0"


def test_queue_state_logging_is_debounced():
    from tinkex_jax._shell import QueueStateLogger

    now = [0.0]
    training = QueueStateLogger("training", "m", clock=lambda: now[0])
    sampling = QueueStateLogger("sampling", "s", clock=lambda: now[0])
    for t in range(0, 1200, 5):  # paused for 20 minutes, reported every 5 s
        now[0] = float(t)
        training("paused_capacity", None)
        sampling("paused_rate_limit", None)
    # training: silent for the 15-minute grace period, then once a minute (900..1195)
    assert training.warnings == 5
    # sampling: at once, then once a minute
    assert sampling.warnings == 20
    training("active", None)
    now[0] = 5000.0
    training("paused_capacity", None)
    assert training.warnings == 5  # a new pause starts a new grace period
