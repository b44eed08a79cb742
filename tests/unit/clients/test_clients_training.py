"""TrainingClient: validation first, submission order (§7.2), chunking (§7.3), merging."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

import tinkex_jax as tinker
from tests.support.fake_tinker import FakeTinker, json_response, make_service
from tinkex_jax.builders import datum_from_tokens
from tinkex_jax.errors import ClientPoisonedError, InternalServerError, RequestFailedError


def data(n: int = 2, length: int = 4) -> list[tinker.Datum]:
    return [datum_from_tokens(list(range(1, length + 2))) for _ in range(n)]


@pytest.fixture
def fake():
    return FakeTinker()


@pytest.fixture
def service(fake):
    service = make_service(fake)
    yield service
    service.close()


@pytest.fixture
def tc(service):
    return service.create_lora_training_client("base/model", rank=8).result(timeout=5)


def posts(fake: FakeTinker) -> list[tuple[str, int]]:
    out = []
    for c in fake.calls:
        if c.path == "forward_backward":
            out.append(("fb", c.fb.seq_id))
        elif c.path in ("optim_step", "save_weights", "save_weights_for_sampler", "load_weights",
                        "save_weights_external") and c.json and "seq_id" in c.json:
            out.append((c.path, c.json["seq_id"]))
    return out


def test_create_model_body_and_info(fake, tc):
    body = fake.calls_to("create_model")[0].json
    assert body == {"session_id": "sess-1", "model_seq_id": 0, "base_model": "base/model",
                    "lora_config": {"rank": 8, "train_unembed": True, "train_mlp": True,
                                    "train_attn": True},
                    "optimizer_config": {"type": "adamw"}, "type": "create_model"}
    assert tc.model_id == "sess-1:train:0"
    assert tc.get_info().model_data.model_name == "base/model"
    assert fake.paths().count("get_info") == 1
    tc.get_info()
    assert fake.paths().count("get_info") == 1  # cached


def test_forward_backward_and_optim_step_round_trip(fake, tc):
    fb = tc.forward_backward(data(3), "cross_entropy")
    opt = tc.optim_step(tinker.AdamParams(learning_rate=1e-3))
    out = fb.result(timeout=5)
    assert out.metrics["loss:sum"] == 3.0 and len(out.loss_fn_outputs) == 3
    assert out.loss_fn_outputs[0]["logprobs"].tolist() == [-1.0] * 4
    assert opt.result(timeout=5).metrics == {"seq:max": 2.0}
    call = fake.calls_to("forward_backward")[0]
    assert call.headers["content-type"] == "application/x-protobuf"
    assert call.fb.loss_fn == "cross_entropy" and not call.fb.forward_only
    assert call.fb.model_id == tc.model_id
    body = fake.calls_to("optim_step")[0].json
    assert body["adam_params"]["learning_rate"] == 1e-3 and body["seq_id"] == 2


def test_forward_sets_forward_only(fake, tc):
    tc.forward(data(1), "cross_entropy").result(timeout=5)
    assert fake.calls_to("forward_backward")[0].fb.forward_only is True
    assert fake.calls_to("retrieve_future")[-1].headers["x-tinker-request-type"] == "Forward"


def test_bad_data_fails_before_anything_is_sent_or_reserved(fake, tc):
    before = len(fake.calls)
    with pytest.raises(tinker.ValidationError, match="ppo"):
        tc.forward_backward(data(1), "ppo")
    with pytest.raises(tinker.ValidationError, match="at least one"):
        tc.forward_backward([], "cross_entropy")
    with pytest.raises(tinker.ValidationError, match="loss_fn"):
        tc.forward_backward(data(1), "made_up_loss")
    with pytest.raises(tinker.ValidationError, match="exactly one"):
        tc.optim_step()
    with pytest.raises(tinker.ValidationError, match="checkpoint name"):
        tc.save_state("bad name!")
    assert len(fake.calls) == before
    tc.optim_step(tinker.AdamParams()).result(timeout=5)
    assert fake.calls_to("optim_step")[0].json["seq_id"] == 1  # no id was burnt


def test_program_order_is_kept_under_slow_posts_and_many_threads(fake, service):
    # every POST is slow and answered out of order by a concurrent server; the client must
    # still put them on the wire strictly one after the other, in reservation order
    active, overlaps = [0], [0]
    lock = threading.Lock()

    async def slow(request: httpx.Request) -> httpx.Response:
        submit = request.url.path.endswith(("/forward_backward", "/optim_step"))
        with lock:
            active[0] += submit
            overlaps[0] = max(overlaps[0], active[0])
        await asyncio.sleep(0.003)
        with lock:
            active[0] -= submit
        return fake.handler(request)

    transport = httpx.MockTransport(slow)
    service._shell.http._transport = transport
    tc = service.create_lora_training_client("base/model").result(timeout=5)
    futures = []

    def user_thread():  # submissions from several threads are serialised by reservation
        for _ in range(3):
            futures.append(tc.forward_backward(data(1), "cross_entropy"))
            futures.append(tc.optim_step(tinker.AdamParams()))

    threads = [threading.Thread(target=user_thread) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for f in futures:
        f.result(timeout=10)
    seqs = [s for _, s in posts(fake)]
    assert seqs == list(range(1, 13))
    assert overlaps[0] == 1  # never two training POSTs in flight at once


def test_turn_waits_for_the_previous_post_to_return(fake, service):
    order = []
    gate = threading.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path.rsplit("/api/v1/", 1)[-1]
        if path == "forward_backward":
            order.append("fb-start")
            while not gate.is_set():
                await asyncio.sleep(0.001)
            order.append("fb-end")
        elif path == "optim_step":
            order.append("optim")
        return fake.handler(request)

    service._shell.http._transport = httpx.MockTransport(handler)
    tc = service.create_lora_training_client("base/model").result(timeout=5)
    fb = tc.forward_backward(data(1), "cross_entropy")
    opt = tc.optim_step(tinker.AdamParams())
    time.sleep(0.05)
    assert order == ["fb-start"]  # optim_step's POST waits for forward_backward's
    gate.set()
    fb.result(timeout=5)
    opt.result(timeout=5)
    assert order == ["fb-start", "fb-end", "optim"]


def test_multi_chunk_call_posts_chunks_2_to_n_first_then_chunk_1():
    fake = FakeTinker(client_config={"fwdbwd_max_chunk_len": 2})
    service = make_service(fake)
    tc = service.create_lora_training_client("base/model").result(timeout=5)
    fb = tc.forward_backward(data(7), "cross_entropy")
    opt = tc.optim_step(tinker.AdamParams())
    out = fb.result(timeout=5)
    opt.result(timeout=5)
    seqs = [s for _, s in posts(fake)]
    assert sorted(seqs[:3]) == [2, 3, 4] and seqs[3:] == [1, 5]
    assert [len(c.fb.data) for c in sorted(fake.calls_to("forward_backward"),
                                           key=lambda c: c.fb.seq_id)] == [2, 2, 2, 1]
    assert len(out.loss_fn_outputs) == 7
    assert out.metrics["loss:sum"] == 7.0  # merged with combine_forward_backward_outputs
    assert out.metrics["seq:max"] == 4.0
    # outputs are concatenated in chunk order, whatever the arrival order
    firsts = [o["logprobs"].tolist()[0] for o in out.loss_fn_outputs]
    assert firsts == [-1, -1, -2, -2, -3, -3, -4]
    service.close()


def test_multi_chunk_call_posts_in_order_without_parallel_chunks():
    fake = FakeTinker(client_config={"fwdbwd_max_chunk_len": 1, "parallel_fwdbwd_chunks": False})
    service = make_service(fake)
    tc = service.create_lora_training_client("base/model").result(timeout=5)
    tc.forward_backward(data(4), "cross_entropy").result(timeout=5)
    assert [s for _, s in posts(fake)] == [1, 2, 3, 4]
    service.close()


def test_chunk_bytes_limit_and_zstd_bodies():
    fake = FakeTinker(client_config={"fwdbwd_max_chunk_bytes_count": 100,
                                     "proto_compress_fwdbwd": True})
    service = make_service(fake)
    tc = service.create_lora_training_client("base/model").result(timeout=5)
    tc.forward_backward(data(3, length=4), "cross_entropy").result(timeout=5)
    calls = fake.calls_to("forward_backward")
    assert len(calls) == 3  # each datum is 60 estimated bytes
    assert all(c.headers["content-encoding"] == "zstd" for c in calls)
    assert all(c.body[:4] == b"\x28\xb5\x2f\xfd" for c in calls)  # zstd magic
    service.close()


def test_failed_submit_releases_the_turn_and_does_not_poison(fake, tc):
    fake.inject("forward_backward", *[json_response(400, {"detail": "bad"})])
    fb = tc.forward_backward(data(1), "cross_entropy")
    opt = tc.optim_step(tinker.AdamParams())
    with pytest.raises(tinker.BadRequestError):
        fb.result(timeout=5)
    assert opt.result(timeout=5).metrics == {"seq:max": 2.0}  # the fake echoes the seq_id
    assert fake.calls_to("optim_step")[0].json["seq_id"] == 2


def test_server_side_failure_is_a_request_failed_error_and_later_calls_work(fake, tc):
    def failed(request: httpx.Request) -> httpx.Response:
        return json_response(200, {"error": "NaN loss", "category": "user"})

    fake.inject("retrieve_future", failed)
    with pytest.raises(RequestFailedError) as info:
        tc.forward_backward(data(1), "cross_entropy").result(timeout=5)
    assert info.value.category == "user"
    assert tc.optim_step(tinker.AdamParams()).result(timeout=5).metrics


def test_410_is_fatal_for_training_calls(fake, tc):
    fake.inject("retrieve_future", json_response(410, {"detail": "gone"}))
    with pytest.raises(tinker.APIStatusError) as info:
        tc.optim_step(tinker.AdamParams()).result(timeout=5)
    assert info.value.status_code == 410
    assert len(fake.calls_to("optim_step")) == 1


def test_submit_retries_keep_the_same_seq_id(fake, tc):
    fake.inject("forward_backward", json_response(503, {}), httpx.ConnectError("reset"))
    tc.forward_backward(data(1), "cross_entropy").result(timeout=5)
    assert [c.fb.seq_id for c in fake.calls_to("forward_backward")] == [1, 1, 1]
    keys = {c.headers["x-idempotency-key"] for c in fake.calls_to("forward_backward")}
    assert len(keys) == 1


def test_checkpoint_methods(fake, tc):
    assert tc.save_state("s1", ttl_seconds=7200).result(timeout=5).path == (
        "tinker://sess-1:train:0/weights/s1")
    assert tc.save_weights_for_sampler("w1").result(timeout=5).path == (
        "tinker://sess-1:train:0/sampler_weights/w1")
    assert tc.save_weights_external("e1").result(timeout=5).path.endswith("/external_weights/e1")
    tc.load_state_with_optimizer("tinker://sess-1:train:0/weights/s1").result(timeout=5)
    bodies = {c.path: c.json for c in fake.calls if c.json and "seq_id" in c.json}
    assert bodies["save_weights"] == {"model_id": tc.model_id, "path": "s1", "seq_id": 1,
                                      "ttl_seconds": 7200, "overwrite": False,
                                      "type": "save_weights"}
    assert bodies["save_weights_for_sampler"]["kind"] == "snapshot"
    assert bodies["load_weights"]["optimizer"] is True and bodies["load_weights"]["seq_id"] == 4


def test_save_weights_and_get_sampling_client(fake, service, tc):
    sampler = tc.save_weights_and_get_sampling_client().result(timeout=5)
    body = fake.calls_to("save_weights_for_sampler")[0].json
    assert body["sampling_session_seq_id"] == 0 and "path" not in body
    assert sampler.sampling_session_id == "sess-1:sample:0"
    assert sampler.get_base_model() == "base/model"
    assert "samplers/sess-1:sample:0" not in fake.paths()  # base model known from get_info


def test_create_training_client_from_state_uses_create_via_load(fake, service):
    service.create_lora_training_client("base/model").result(timeout=5)
    tc = service.create_training_client_from_state_with_optimizer(
        "tinker://sess-1:train:0/weights/s1").result(timeout=5)
    body = fake.calls_to("load_weights")[0].json
    assert body == {"path": "tinker://sess-1:train:0/weights/s1", "optimizer": True,
                    "session_id": "sess-1", "model_seq_id": 1, "type": "load_weights"}
    assert tc.model_id == "sess-1:train:1"
    assert fake.calls_to("get_info")[-1].json["model_id"] == "sess-1:train:1"


def test_dimuon_params_travel_as_optimizer_params(fake, tc):
    tc.optim_step(tinker.DimuonParams(learning_rate=0.01)).result(timeout=5)
    body = fake.calls_to("optim_step")[0].json
    assert "adam_params" not in body
    assert body["optimizer_params"] == {"type": "dimuon", "learning_rate": 0.01,
                                        "grad_clip_norm": 0.0, "beta1": 0.9}


# ---------------------------------------------------------------------- custom-loss hooks


def test_custom_loss_hooks_reserve_send_and_poison(fake, tc):
    chunks = tc._chunk(data(2))
    ids = tc._reserve_request_ids(2 * len(chunks))
    later = tc.optim_step(tinker.AdamParams())  # queued behind both phases

    async def chain():
        n = len(chunks)
        forward = await tc._send_forward_backward(ids[:n], chunks, "cross_entropy", None,
                                                  forward_only=True)
        assert len(forward.loss_fn_outputs) == 2
        raise RuntimeError("user loss exploded")

    f = tc._submit(chain, request_ids=ids, sdk_method="TrainingClient.forward_backward_custom",
                   poison_on_failure=True)
    with pytest.raises(RuntimeError, match="exploded"):
        f.result(timeout=5)
    with pytest.raises(ClientPoisonedError, match="exploded"):
        later.result(timeout=5)
    with pytest.raises(ClientPoisonedError):
        tc.forward_backward(data(1), "cross_entropy").result(timeout=5)
    assert [s for _, s in posts(fake)] == [1]  # only the forward phase went out


def test_custom_loss_hooks_happy_path_orders_both_phases(fake, tc):
    chunks = tc._chunk(data(2))
    n = len(chunks)
    ids = tc._reserve_request_ids(2 * n)
    later = tc.optim_step(tinker.AdamParams())

    async def chain():
        await tc._send_forward_backward(ids[:n], chunks, "cross_entropy", None,
                                        forward_only=True)
        return await tc._send_forward_backward(ids[n:], chunks, "cross_entropy", None,
                                               forward_only=False)

    out = tc._submit(chain, request_ids=ids, sdk_method="TrainingClient.forward_backward_custom",
                     poison_on_failure=True).result(timeout=5)
    later.result(timeout=5)
    assert len(out.loss_fn_outputs) == 2
    assert posts(fake) == [("fb", 1), ("fb", 2), ("optim_step", 3)]
    assert [c.fb.forward_only for c in fake.calls_to("forward_backward")] == [True, False]


def test_cancelled_call_releases_its_turn(fake, service):
    gate = threading.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/forward_backward"):
            while not gate.is_set():
                await asyncio.sleep(0.001)
        return fake.handler(request)

    service._shell.http._transport = httpx.MockTransport(handler)
    tc = service.create_lora_training_client("base/model").result(timeout=5)
    first = tc.forward_backward(data(1), "cross_entropy")
    second = tc.forward_backward(data(1), "cross_entropy")  # waits behind the first
    third = tc.optim_step(tinker.AdamParams())
    time.sleep(0.02)
    assert second.cancel()
    gate.set()
    first.result(timeout=5)
    assert third.result(timeout=5).metrics
    assert [s for _, s in posts(fake)] == [1, 3]


def test_5xx_on_submit_is_retried_by_base_and_holder_loops(fake, tc):
    fake.inject("optim_step", *[json_response(503, {}) for _ in range(11)])
    tc.optim_step(tinker.AdamParams()).result(timeout=5)
    # 11 answers of 503: base retries (10) exhausted once, then one holder retry
    assert len(fake.calls_to("optim_step")) == 12
    keys = [c.headers["x-idempotency-key"] for c in fake.calls_to("optim_step")]
    assert len(set(keys)) == 2  # a new idempotency key per holder attempt


def test_persistent_submit_failure_surfaces(fake, tc):
    fake.inject("save_weights", *[json_response(500, {"detail": "disk full"})
                                  for _ in range(200)])
    with pytest.raises(InternalServerError, match="disk full"):
        tc.save_state("s2").result(timeout=10)


def test_polling_starts_without_waiting_for_the_result(fake, tc):
    fake.pending_polls = 2
    fb = tc.forward_backward(data(1), "cross_entropy")
    deadline = time.monotonic() + 5
    while not fb.done() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert fb.done()  # polled to completion although nobody called .result()
    polls = [c for c in fake.calls_to("retrieve_future") if c.json["request_id"] == "req-1"]
    assert [c.headers["x-tinker-request-iteration"] for c in polls] == ["0", "1", "2"]


def test_parallel_chunks_respect_the_dispatch_bytes_budget():
    fake = FakeTinker(client_config={"fwdbwd_max_chunk_len": 1,
                                     "fwdbwd_dispatch_bytes_semaphore_size": 100})
    active, peak = [0], [0]

    async def slow(request: httpx.Request) -> httpx.Response:
        fb = request.url.path.endswith("/forward_backward")
        active[0] += fb
        peak[0] = max(peak[0], active[0])
        await asyncio.sleep(0.002)
        active[0] -= fb
        return fake.handler(request)

    service = make_service(fake)
    service._shell.http._transport = httpx.MockTransport(slow)
    tc = service.create_lora_training_client("base/model").result(timeout=5)
    tc.forward_backward(data(4), "cross_entropy").result(timeout=5)  # 60 bytes per chunk
    assert peak[0] == 1
    assert len(fake.calls_to("forward_backward")) == 4
    service.close()
    fake2 = FakeTinker(client_config={"fwdbwd_max_chunk_len": 1})
    active[0], peak[0] = 0, 0

    async def slow2(request: httpx.Request) -> httpx.Response:
        fb = request.url.path.endswith("/forward_backward")
        active[0] += fb
        peak[0] = max(peak[0], active[0])
        await asyncio.sleep(0.002)
        active[0] -= fb
        return fake2.handler(request)

    service = make_service(fake2)
    service._shell.http._transport = httpx.MockTransport(slow2)
    tc = service.create_lora_training_client("base/model").result(timeout=5)
    tc.forward_backward(data(4), "cross_entropy").result(timeout=5)
    assert peak[0] == 3  # chunks 2..4 together, then chunk 1
    service.close()


def test_get_tokenizer_uses_the_info_tokenizer_id(tc, monkeypatch):
    import tinkex_jax.tokenizer

    seen = []
    monkeypatch.setattr(tinkex_jax.tokenizer, "get_tokenizer",
                        lambda tid, model_name=None: seen.append((tid, model_name)) or "tok")
    assert tc.get_tokenizer() == "tok" and tc.get_tokenizer() == "tok"
    assert seen == [("base/tok:1", "base/model")]  # loaded once


def test_clients_own_the_state_of_their_custom_loss_terms(service):
    """Two clients training with the same loss and adaptive term: each advances its own."""
    import jax.numpy as jnp
    import numpy as np

    from regularizers import adaptive_kl

    term = adaptive_kl(reference="ref", target_kl=0.01, horizon=10.0, init_coef=0.2)

    def nll(logprobs, batch):
        return -jnp.sum(logprobs * batch.mask), {}

    data = [datum_from_tokens([1, 2, 3, 4])]
    refs = [{"ref": np.zeros(3, np.float32) + 5.0}]  # far from any logprob: KL above target

    def coef(client):
        out = client.forward_backward_custom(data, nll, regularizers=[("kl", term, 1.0)],
                                             datum_extras=refs).result(timeout=10)
        return out.metrics["reg/kl/coef:mean"]

    first = service.create_lora_training_client("base/model", rank=4).result(timeout=5)
    second = service.create_lora_training_client("base/model", rank=4).result(timeout=5)
    grown = [coef(first) for _ in range(3)]
    assert grown[0] == pytest.approx(0.2) and grown[0] < grown[1] < grown[2]
    assert coef(second) == pytest.approx(0.2)  # not the first client's state
    assert len(first.loss_states) == len(second.loss_states) == 1
    assert coef(first) > grown[2]  # and the first one's keeps advancing


def test_reading_a_result_attribute_on_the_future_names_the_missing_result(tc):
    fb = tc.forward_backward(data(1), "cross_entropy")
    with pytest.raises(AttributeError, match=r"'Future' object has no attribute 'metrics'") as info:
        fb.metrics  # noqa: B018 - the mistake under test
    assert "fb.result().metrics" not in str(info.value)  # the message names no local variable
    assert "future.result().metrics" in str(info.value)
    out = fb.result(timeout=5)
    with pytest.raises(AttributeError) as info:
        fb.metrics  # noqa: B018
    assert str(info.value) == (
        "'Future' object has no attribute 'metrics': `metrics` belongs to its result, a "
        "ForwardBackwardOutput. Call .result() first: `future.result().metrics` (or "
        "`(await future).metrics`).")
    assert info.value.name == "metrics" and info.value.obj is fb
    assert out.metrics["loss:sum"] == 1.0
