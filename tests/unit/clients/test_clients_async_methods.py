"""Every ported ``*_async`` method is instrumented the same way: it is a coroutine function
that runs as the SDK method ``<Class>.<name>_async``, so the requests it makes say so in
``x-sdk-method`` (as the official SDK attributes them), and the outermost public method
wins."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import pytest

import tinkex_jax as tinker
from tests.support.fake_tinker import FakeTinker, make_service
from tinkex_jax.builders import datum_from_tokens
from tinkex_jax.clients import _rest

CLASSES = [tinker.ServiceClient, tinker.TrainingClient, tinker.SamplingClient,
           tinker.RestClient, _rest.AdminClient]
ASYNC_METHODS = sorted((cls.__name__, name) for cls in CLASSES for name in dir(cls)
                       if name.endswith("_async") and not name.startswith("_"))

PATH = "tinker://run-1/weights/s1"
PROMPT = tinker.ModelInput.from_ints([1, 2, 3])
PARAMS = tinker.SamplingParams(max_tokens=2)
DATA = [datum_from_tokens([1, 2, 3])]


def test_there_are_async_methods_on_every_client():
    for cls in CLASSES:
        assert any(c == cls.__name__ for c, _ in ASYNC_METHODS), cls


@pytest.mark.parametrize(("cls_name", "name"), ASYNC_METHODS)
def test_every_async_method_is_an_instrumented_coroutine(cls_name, name):
    cls = next(c for c in CLASSES if c.__name__ == cls_name)
    method = getattr(cls, name)
    assert inspect.iscoroutinefunction(method)
    assert getattr(method, "__tinkex_sdk_method__", None) == f"{cls_name}.{name}"
    assert inspect.signature(method) == inspect.signature(inspect.unwrap(method))
    assert method.__doc__


def _nll(logprobs: Any, batch: Any) -> Any:
    return -(logprobs[0]).sum(), {}


# (class, method) -> (which client, arguments, the request path that must carry the name)
Call = tuple[str, Callable[[dict[str, Any]], Any], Callable[[str], bool]]
CALLS: dict[tuple[str, str], Call] = {
    ("ServiceClient", "create_lora_training_client_async"): (
        "service", lambda c: c["service"].create_lora_training_client_async("base/model"),
        lambda p: p == "create_model"),
    ("ServiceClient", "create_training_client_from_state_async"): (
        "service", lambda c: c["service"].create_training_client_from_state_async(PATH),
        lambda p: p == "load_weights"),
    ("ServiceClient", "create_training_client_from_state_with_optimizer_async"): (
        "service",
        lambda c: c["service"].create_training_client_from_state_with_optimizer_async(PATH),
        lambda p: p == "load_weights"),
    ("ServiceClient", "create_sampling_client_async"): (
        "service", lambda c: c["service"].create_sampling_client_async(base_model="base/model"),
        lambda p: p == "create_sampling_session"),
    ("ServiceClient", "get_server_capabilities_async"): (
        "service", lambda c: c["service"].get_server_capabilities_async(),
        lambda p: p == "get_server_capabilities"),
    ("TrainingClient", "forward_async"): (
        "tc", lambda c: _await_twice(c["tc"].forward_async(DATA, "cross_entropy")),
        lambda p: p == "forward_backward"),
    ("TrainingClient", "forward_backward_async"): (
        "tc", lambda c: _await_twice(c["tc"].forward_backward_async(DATA, "cross_entropy")),
        lambda p: p == "forward_backward"),
    ("TrainingClient", "forward_backward_custom_async"): (
        "tc", lambda c: _await_twice(c["tc"].forward_backward_custom_async(DATA, _nll)),
        lambda p: p == "forward_backward"),
    ("TrainingClient", "optim_step_async"): (
        "tc", lambda c: _await_twice(c["tc"].optim_step_async(tinker.AdamParams())),
        lambda p: p == "optim_step"),
    ("TrainingClient", "save_state_async"): (
        "tc", lambda c: _await_twice(c["tc"].save_state_async("s1")),
        lambda p: p == "save_weights"),
    ("TrainingClient", "load_state_async"): (
        "tc", lambda c: _await_twice(c["tc"].load_state_async(PATH)),
        lambda p: p == "load_weights"),
    ("TrainingClient", "load_state_with_optimizer_async"): (
        "tc", lambda c: _await_twice(c["tc"].load_state_with_optimizer_async(PATH)),
        lambda p: p == "load_weights"),
    ("TrainingClient", "save_weights_for_sampler_async"): (
        "tc", lambda c: _await_twice(c["tc"].save_weights_for_sampler_async("s1")),
        lambda p: p == "save_weights_for_sampler"),
    ("TrainingClient", "save_weights_external_async"): (
        "tc", lambda c: _await_twice(c["tc"].save_weights_external_async("e1")),
        lambda p: p == "save_weights_external"),
    ("TrainingClient", "save_weights_and_get_sampling_client_async"): (
        "tc", lambda c: c["tc"].save_weights_and_get_sampling_client_async(),
        lambda p: p == "save_weights_for_sampler"),
    ("TrainingClient", "create_sampling_client_async"): (
        "tc", lambda c: c["tc"].create_sampling_client_async(
            "tinker://run-1/sampler_weights/s1"),
        lambda p: p == "create_sampling_session"),
    ("SamplingClient", "sample_async"): (
        "sampler", lambda c: c["sampler"].sample_async(PROMPT, 1, PARAMS),
        lambda p: p == "asample"),
    ("SamplingClient", "compute_logprobs_async"): (
        "sampler", lambda c: c["sampler"].compute_logprobs_async(PROMPT),
        lambda p: p == "asample"),
    ("RestClient", "list_sessions_async"): (
        "rest", lambda c: c["rest"].list_sessions_async(), lambda p: p == "sessions"),
    ("RestClient", "get_session_async"): (
        "rest", lambda c: c["rest"].get_session_async("sess-1"),
        lambda p: p == "sessions/sess-1"),
    ("RestClient", "assign_session_project_async"): (
        "rest", lambda c: c["rest"].assign_session_project_async("sess-1", "p"),
        lambda p: p.endswith("/project")),
    ("RestClient", "export_session_trace_async"): (
        "rest", lambda c: c["rest"].export_session_trace_async("sess-1"),
        lambda p: p.endswith("/trace_export")),
    ("RestClient", "list_training_runs_async"): (
        "rest", lambda c: c["rest"].list_training_runs_async(), lambda p: p == "training_runs"),
    ("RestClient", "get_training_run_async"): (
        "rest", lambda c: c["rest"].get_training_run_async("run-1"),
        lambda p: p == "training_runs/run-1"),
    ("RestClient", "get_training_run_by_tinker_path_async"): (
        "rest", lambda c: c["rest"].get_training_run_by_tinker_path_async(PATH),
        lambda p: p == "training_runs/run-1"),
    ("RestClient", "list_checkpoints_async"): (
        "rest", lambda c: c["rest"].list_checkpoints_async("run-1"),
        lambda p: p.endswith("/checkpoints")),
    ("RestClient", "list_user_checkpoints_async"): (
        "rest", lambda c: c["rest"].list_user_checkpoints_async(), lambda p: p == "checkpoints"),
    ("RestClient", "delete_checkpoint_async"): (
        "rest", lambda c: c["rest"].delete_checkpoint_async("run-1", "weights/s1"),
        lambda p: p == "training_runs/run-1/checkpoints/weights/s1"),
    ("RestClient", "delete_checkpoint_from_tinker_path_async"): (
        "rest", lambda c: c["rest"].delete_checkpoint_from_tinker_path_async(PATH),
        lambda p: p == "training_runs/run-1/checkpoints/weights/s1"),
    ("RestClient", "publish_checkpoint_from_tinker_path_async"): (
        "rest", lambda c: c["rest"].publish_checkpoint_from_tinker_path_async(PATH),
        lambda p: p.endswith("/publish")),
    ("RestClient", "unpublish_checkpoint_from_tinker_path_async"): (
        "rest", lambda c: c["rest"].unpublish_checkpoint_from_tinker_path_async(PATH),
        lambda p: p.endswith("/publish")),
    ("RestClient", "set_checkpoint_ttl_from_tinker_path_async"): (
        "rest", lambda c: c["rest"].set_checkpoint_ttl_from_tinker_path_async(PATH, 7200),
        lambda p: p.endswith("/ttl")),
    ("RestClient", "get_external_weights_urls_async"): (
        "rest", lambda c: c["rest"].get_external_weights_urls_async(
            "tinker://run-1/external_weights/e"),
        lambda p: p.endswith("/external_weights_urls")),
    ("RestClient", "get_weights_info_by_tinker_path_async"): (
        "rest", lambda c: c["rest"].get_weights_info_by_tinker_path_async(PATH),
        lambda p: p == "weights_info"),
    ("RestClient", "copy_weights_async"): (
        "rest", lambda c: c["rest"].copy_weights_async(PATH), lambda p: p == "copy_weights"),
    ("RestClient", "get_sampler_async"): (
        "rest", lambda c: c["rest"].get_sampler_async("sess-1:sample:0"),
        lambda p: p == "samplers/sess-1:sample:0"),
    ("RestClient", "get_audit_log_async"): (
        "rest", lambda c: c["rest"].get_audit_log_async(), lambda p: p == "audit"),
    ("AdminClient", "get_audit_log_async"): (
        "admin", lambda c: c["admin"].get_audit_log_async(), lambda p: p == "audit"),
    **{(client, "get_billing_usage_async"): (
        key, lambda c, key=key: c[key].get_billing_usage_async("2026-01-01T00:00:00Z",
                                                               "2026-01-02T00:00:00Z"),
        lambda p: p == "billing/usage/events")
       for client, key in (("RestClient", "rest"), ("AdminClient", "admin"))},
    **{(client, "get_current_checkpoint_storage_usage_async"): (
        key, lambda c, key=key: c[key].get_current_checkpoint_storage_usage_async("p1"),
        lambda p: p == "billing/usage/checkpoints/current")
       for client, key in (("RestClient", "rest"), ("AdminClient", "admin"))},
}
# No request at all: answered from what the client already knows.
NO_REQUEST = {("TrainingClient", "get_info_async"), ("SamplingClient", "get_base_model_async")}


async def _await_twice(coro: Any) -> Any:
    future = await coro
    return await future


def test_the_table_covers_every_async_method():
    assert set(CALLS) | NO_REQUEST == set(ASYNC_METHODS)


@pytest.fixture(scope="module")
def clients():
    fake = FakeTinker()
    service = make_service(fake)
    tc = service.create_lora_training_client("base/model").result(timeout=5)
    sampler = tc.save_weights_and_get_sampling_client().result(timeout=5)
    admin = _rest.AdminClient(service._shell)
    yield {"fake": fake, "service": service, "tc": tc, "sampler": sampler,
           "rest": service.create_rest_client(), "admin": admin}
    service.close()


@pytest.mark.parametrize("key", sorted(CALLS), ids=lambda k: f"{k[0]}.{k[1]}")
def test_requests_carry_the_async_method_name(clients, key):
    fake: FakeTinker = clients["fake"]
    _, call, matches = CALLS[key]
    before = len(fake.calls)
    asyncio.run(call(clients))
    new = [c for c in fake.calls[before:] if matches(c.path)]
    assert new, f"{key}: no request matched"
    assert {c.headers.get("x-sdk-method") for c in new} == {f"{key[0]}.{key[1]}"}


def test_the_outermost_public_method_names_the_request(clients):
    fake: FakeTinker = clients["fake"]
    before = len(fake.calls)
    clients["service"].get_server_capabilities()
    new = [c for c in fake.calls[before:] if c.path == "get_server_capabilities"]
    assert [c.headers["x-sdk-method"] for c in new] == ["ServiceClient.get_server_capabilities"]
    before = len(fake.calls)
    clients["rest"].list_sessions().result(timeout=5)
    assert [c.headers["x-sdk-method"] for c in fake.calls[before:]
            if c.path == "sessions"] == ["RestClient.list_sessions"]
