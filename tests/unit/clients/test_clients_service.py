"""ServiceClient / RestClient surface, ported *_async shapes, and the public package API."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys

import pytest

import tinkex_jax as tinker
from tests.support.fake_tinker import FakeTinker, json_response, make_service
from tinkex_jax.builders import datum_from_tokens

official = pytest.importorskip("tinker")

def test_service_client_constructor_accepts_the_official_arguments():
    expected = list(inspect.signature(official.ServiceClient.__init__).parameters)
    got = list(inspect.signature(tinker.ServiceClient.__init__).parameters)
    assert got[:len(expected) - 1] == expected[:-1]  # all but **kwargs, in the same order
    for extra in ("default_headers_overrides", "default_headers", "timeout", "max_retries",
                  "proxy"):
        assert extra in got


def test_async_aliases_have_the_official_return_shapes():
    fake = FakeTinker()
    service = make_service(fake)

    async def main():
        tc = await service.create_lora_training_client_async("base/model")
        fb_future = await tc.forward_backward_async([datum_from_tokens([1, 2, 3])],
                                                    "cross_entropy")
        assert isinstance(fb_future, tinker.Future)
        out = await fb_future
        sampler = await tc.save_weights_and_get_sampling_client_async()
        response = await sampler.sample_async(tinker.ModelInput.from_ints([1, 2]), 1,
                                              tinker.SamplingParams(max_tokens=2))
        logprobs = await sampler.compute_logprobs_async(tinker.ModelInput.from_ints([1, 2]))
        caps = await service.get_server_capabilities_async()
        rest = service.create_rest_client()
        runs = await rest.list_training_runs_async()
        return tc, out, sampler, response, logprobs, caps, runs

    tc, out, sampler, response, logprobs, caps, runs = asyncio.run(main())
    assert isinstance(tc, tinker.TrainingClient)
    assert isinstance(out, tinker.ForwardBackwardOutput)
    assert isinstance(sampler, tinker.SamplingClient)
    assert isinstance(response, tinker.SampleResponse) and logprobs[0] is None
    assert caps.supported_models[0].model_name == "base/model"
    assert runs.training_runs[0].training_run_id == "run-1"
    service.close()


def test_client_futures_are_awaitable_and_usable_as_clients():
    fake = FakeTinker()
    service = make_service(fake)
    future = service.create_lora_training_client("base/model")
    assert isinstance(future, tinker.Future)
    with pytest.warns(FutureWarning, match=r"\.result\(\)"):
        fb = future.forward_backward([datum_from_tokens([1, 2, 3])], "cross_entropy")
    assert fb.result(timeout=5).metrics["loss:sum"] == 1.0
    with pytest.warns(FutureWarning):
        assert future.model_id == "sess-1:train:0"
    service.close()


def test_rest_client_calls(tmp_path):
    fake = FakeTinker()
    service = make_service(fake)
    rest = service.create_rest_client()
    path = "tinker://run-1/weights/s1"
    assert rest.list_sessions(limit=5).result(timeout=5).sessions == ["sess-1"]
    assert rest.get_session("sess-1").result(timeout=5).training_run_ids == ["run-1"]
    rest.assign_session_project("sess-1", "p2").result(timeout=5)
    assert rest.list_training_runs(project_id="p").result(timeout=5).cursor.total_count == 1
    assert rest.get_training_run_by_tinker_path(path).result(timeout=5).base_model == (
        "base/model")
    assert rest.list_checkpoints("run-1").result(timeout=5).checkpoints[0].tinker_path == path
    assert rest.list_user_checkpoints(limit=3).result(timeout=5).checkpoints
    rest.delete_checkpoint_from_tinker_path(path).result(timeout=5)
    rest.delete_checkpoint("run-1", "weights/s1").result(timeout=5)
    rest.publish_checkpoint_from_tinker_path(path).result(timeout=5)
    rest.unpublish_checkpoint_from_tinker_path(path).result(timeout=5)
    rest.set_checkpoint_ttl_from_tinker_path(path, 7200).result(timeout=5)
    assert rest.get_weights_info_by_tinker_path(path).result(timeout=5).lora_rank == 8
    assert rest.get_external_weights_urls("tinker://run-1/external_weights/e").result(
        timeout=5).urls
    assert rest.get_sampler("sess-1:sample:0").result(timeout=5).base_model == "base/model"
    assert rest.export_session_trace("sess-1").result(timeout=5) == "https://trace"
    assert rest.copy_weights(path, "proj-2", weights_access_token="tok").result(
        timeout=5) == "tinker://run-2/weights/copy"
    assert rest.healthz().result(timeout=5).status == "ok"
    calls = [(c.method, c.path, c.query) for c in fake.calls]
    assert ("GET", "sessions", {"limit": "5", "offset": "0", "access_scope": "owned"}) in calls
    assert ("GET", "training_runs", {"limit": "20", "offset": "0", "access_scope": "owned",
                                     "project_id": "p"}) in calls
    assert ("DELETE", "training_runs/run-1/checkpoints/weights/s1", {}) in calls
    assert ("POST", "training_runs/run-1/checkpoints/weights/s1/publish", {}) in calls
    assert ("DELETE", "training_runs/run-1/checkpoints/weights/s1/publish", {}) in calls
    ttl = next(c for c in fake.calls if c.path.endswith("/ttl"))
    assert ttl.method == "PUT" and ttl.json == {"ttl_seconds": 7200}
    copy = fake.calls_to("copy_weights")[0]
    assert copy.json == {"source_path": path, "destination_project_id": "proj-2"}
    assert copy.headers["x-tinker-weights-access-token"] == "tok"
    assert "create_session" not in fake.paths()  # REST needs no session
    with pytest.raises(tinker.ValidationError, match="tinker path"):
        rest.delete_checkpoint_from_tinker_path("tinker://run-1/s1")
    with pytest.raises(tinker.ValidationError, match="access_scope"):
        rest.list_sessions(access_scope="everyone")  # type: ignore[arg-type]
    service.close()


def test_copy_weights_keeps_one_idempotency_key_across_retries():
    fake = FakeTinker()
    fake.inject("copy_weights", json_response(503, {}), json_response(500, {}))
    service = make_service(fake)
    service.create_rest_client().copy_weights("tinker://run-1/weights/s1").result(timeout=5)
    keys = {c.headers["x-idempotency-key"] for c in fake.calls_to("copy_weights")}
    assert len(fake.calls_to("copy_weights")) == 3 and len(keys) == 1
    service.close()


def test_standalone_rest_client_needs_no_session():
    fake = FakeTinker()
    rest = tinker.RestClient(base_url="http://r.test", api_key="tml-rest",
                             transport=fake.transport)
    assert rest.get_server_capabilities().result(timeout=5).supported_models
    rest.close()
    assert fake.paths() == ["client/config", "client/dynamic_config", "get_server_capabilities"]


def test_unknown_constructor_arguments_warn():
    with pytest.warns(UserWarning, match="http_client"):
        tinker.ServiceClient(api_key="tml-x", http_client=object()).close()


def test_clients_refuse_to_pickle_with_a_clear_message():
    import pickle

    fake = FakeTinker()
    service = make_service(fake)
    tc = service.create_lora_training_client("base/model").result(timeout=5)
    with pytest.raises(TypeError, match="SamplingClient"):
        pickle.dumps(service)
    with pytest.raises(TypeError, match="create_training_client_from_state"):
        pickle.dumps(tc)
    service.close()


# ---------------------------------------------------------------------- package API


def test_all_is_sorted_complete_and_renamed():
    import types as pytypes

    assert tinker.ServiceClient  # the clients load on first use
    public = {n for n, v in vars(tinker).items() if not n.startswith("_") and (
        n in ("types", "auth", "lib") or not isinstance(v, pytypes.ModuleType))} | {
        "__version__", "__title__"}
    assert tinker.__all__ == sorted(tinker.__all__)
    assert set(tinker.__all__) == public
    assert repr(tinker.TrainingClient) == "<class 'tinkex_jax.TrainingClient'>"
    assert tinker.Future.__module__ == "tinkex_jax"
    assert tinker.NotFoundError.__module__ == "tinkex_jax"
    assert tinker.Datum.__module__ == "tinkex_jax.types._datum"  # structs keep their module
    assert tinker.APIFuture is tinker.Future


def test_official_names_port():
    ported = {"ServiceClient", "TrainingClient", "SamplingClient", "RestClient", "APIFuture",
              "AdamParams", "Datum", "ModelInput", "SamplingParams", "TensorData",
              "EncodedTextChunk", "ForwardBackwardOutput", "SampleResponse", "LoraConfig",
              "Checkpoint", "TrainingRun", "TinkerError", "APIError", "APIStatusError",
              "RequestFailedError", "NotFoundError", "RateLimitError", "BillingError", "types"}
    assert ported <= set(tinker.__all__)
    assert ported <= set(official.__all__)


def test_import_does_not_import_jax():
    code = "import sys, tinkex_jax; print('jax' in sys.modules, 'jaxlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_audit_log_query_and_answer():
    import datetime as dt

    fake = FakeTinker()
    service = make_service(fake)
    rest = service.create_rest_client()
    log = rest.get_audit_log("checkpoints", dt.date(2026, 1, 15)).result(timeout=5)
    assert [(e.event, e.tinker_path) for e in log.entries] == [
        ("checkpoint_delete", "tinker://run-1/weights/s1")]
    assert log.entries[0].timestamp == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rest.get_audit_log().result(timeout=5)
    calls = fake.calls_to("audit")
    assert [(c.method, c.query) for c in calls] == [
        ("GET", {"event_type": "checkpoints", "day": "2026-01-15"}),
        ("GET", {"event_type": "all"})]
    assert calls[0].headers["x-sdk-method"] == "RestClient.get_audit_log"
    assert "create_session" not in fake.paths()
    service.close()


def test_billing_calls_check_the_window_before_sending_and_read_the_answer():
    fake = FakeTinker()
    service = make_service(fake)
    admin = tinker.AdminClient(service._shell)
    usage = admin.get_billing_usage("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z").result(
        timeout=5)
    assert usage.data == [] and fake.calls_to("billing/usage/events")[0].query == {
        "starting_on": "2026-01-01T00:00:00Z", "ending_before": "2026-01-02T00:00:00Z"}
    for start, end in (("2026-01-01T00:30:00Z", "2026-01-02T00:00:00Z"),  # not on an hour
                       ("2026-01-01T00:00:00Z", "2026-01-20T00:00:00Z"),  # over 14 days
                       ("yesterday", "2026-01-02T00:00:00Z")):
        with pytest.raises(tinker.ValidationError):
            admin.get_billing_usage(start, end)
    assert len(fake.calls_to("billing/usage/events")) == 1  # the refused ones sent nothing
    rest = service.create_rest_client()
    assert rest.get_current_checkpoint_storage_usage("p1").result(timeout=5).data == []
    assert fake.calls_to("billing/usage/checkpoints/current")[0].query == {"project_id": "p1"}
    service.close()
