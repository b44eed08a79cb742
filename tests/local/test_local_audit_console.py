"""The audit log and the console pages against the real server over 127.0.0.1 (numpy model
layer: fast), through tinkex_jax and through the official SDK."""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

import tinkex_jax
from tests.support.local_support import FAKE
from tinkex_jax.clients._rest import AdminClient
from tinkex_jax.local import LocalServer, serve


@dataclass
class World:
    server: LocalServer
    service: Any
    training: Any
    kept: str
    deleted: str
    days: list[dt.date]


def _utc_day() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from tests.support.local_fake_backend import FakeBackend

    # no_auth: an open (loopback) server, whose console shows what it holds
    with serve(tmp_path_factory.mktemp("audit-data"), base_models=[FAKE],
               backend=FakeBackend(), long_poll_timeout_s=0.2, no_auth=True) as server:
        first_day = _utc_day()
        service = tinkex_jax.ServiceClient(base_url=server.base_url, api_key=server.api_key,
                                           telemetry=False)
        training = service.create_lora_training_client(FAKE, rank=2).result(timeout=60)
        rest = service.create_rest_client()
        kept = training.save_state("kept").result(timeout=60).path
        deleted = training.save_weights_for_sampler("gone").result(timeout=60).path
        rest.publish_checkpoint_from_tinker_path(kept).result(timeout=30)
        rest.set_checkpoint_ttl_from_tinker_path(kept, 86400 * 30).result(timeout=30)
        rest.delete_checkpoint_from_tinker_path(deleted).result(timeout=30)
        rest.assign_session_project(service.session_id, "proj-1").result(timeout=30)
        last_day = _utc_day()
        # the events may straddle UTC midnight: read every day they fall on
        days = sorted({first_day, last_day})
        yield World(server, service, training, kept, deleted, days)
        service.close().result(timeout=60)


def _events(entries: list[Any]) -> list[str]:
    return [e.event for e in entries]


def _log(client: Any, world: World, event_type: str = "all") -> list[Any]:
    entries: list[Any] = []
    for day in world.days:
        entries += client.get_audit_log(event_type, day).result(timeout=30).entries
    return entries


def test_the_audit_log_lists_what_the_key_did(world: World) -> None:
    rest = world.service.create_rest_client()
    entries = _log(rest, world)
    events = _events(entries)
    for expected in ("session_create", "training_run_create", "checkpoint_create",
                     "checkpoint_publish", "checkpoint_ttl_set", "checkpoint_delete",
                     "project_session_assign"):
        assert expected in events, (expected, events)
    assert [e.timestamp for e in entries] == sorted(e.timestamp for e in entries)
    by_event = {e.event: e for e in entries}
    assert by_event["session_create"].event_details["session_id"] == world.service.session_id
    assert by_event["training_run_create"].event_details["training_run_id"] == (
        world.training.model_id)
    creates = [e for e in entries if e.event == "checkpoint_create"]
    created = [e.tinker_path for e in creates]
    assert world.kept in created and world.deleted not in created  # the deleted one is gone
    delete = by_event["checkpoint_delete"]
    assert (delete.tinker_path, delete.model_id) == (world.deleted, world.training.model_id)
    assert delete.event_details["tinker_path"] == world.deleted
    assert "created_at" in delete.event_details
    assert by_event["checkpoint_ttl_set"].event_details["ttl_seconds"] == 86400 * 30
    assert by_event["project_session_assign"].event_details == {
        "session_id": world.service.session_id, "project_id": "proj-1"}
    assert all(e.timestamp.tzinfo is not None for e in entries)


def test_event_type_filters(world: World) -> None:
    rest = world.service.create_rest_client()
    checkpoints = _events(_log(rest, world, "checkpoints"))
    assert checkpoints and all(e.startswith("checkpoint_") for e in checkpoints)
    assert _events(_log(rest, world, "projects")) == ["project_session_assign"]
    assert _log(rest, world, "teams") == [] and _log(rest, world, "organizations") == []


def test_other_days_are_empty_and_the_admin_client_agrees(world: World) -> None:
    rest = world.service.create_rest_client()
    assert rest.get_audit_log(day=dt.date(2001, 1, 1)).result(timeout=30).entries == []
    with AdminClient(base_url=world.server.base_url, api_key=world.server.api_key) as admin:
        assert _events(_log(admin, world)) == _events(_log(rest, world))


def test_audit_log_arguments_are_checked_before_sending(world: World) -> None:
    rest = world.service.create_rest_client()
    with pytest.raises(tinkex_jax.ValidationError, match="event_type"):
        rest.get_audit_log("everything")  # type: ignore[arg-type]
    with pytest.raises(tinkex_jax.ValidationError, match=r"datetime\.date"):
        rest.get_audit_log(day=dt.datetime(2026, 1, 1))
    with httpx.Client(base_url=world.server.base_url,
                      headers={"X-API-Key": world.server.api_key}) as http:
        bad = http.get("/api/v1/audit", params={"day": "yesterday"})
        assert bad.status_code == 400 and "YYYY-MM-DD" in bad.json()["detail"]
        bad = http.get("/api/v1/audit", params={"event_type": "users"})
        assert bad.status_code == 400 and "event_type" in bad.json()["detail"]
        assert http.get("/api/v1/audit", headers={"X-API-Key": ""}).status_code == 401


def test_the_official_sdk_reads_the_same_audit_log(world: World) -> None:
    tinker = pytest.importorskip("tinker")
    rest = world.service.create_rest_client()
    ours = _events(_log(rest, world))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated there in favour of Admin
        official_rest = tinker.ServiceClient(
            base_url=world.server.base_url, api_key=world.server.api_key).create_rest_client()
        theirs = [e.event for day in world.days
                  for e in official_rest.get_audit_log("all", day).result().entries]
    admin = tinker.AdminClient(base_url=world.server.base_url, api_key=world.server.api_key)
    checkpoints = [e for day in world.days
                   for e in admin.get_audit_log("checkpoints", day).result().entries]
    assert theirs == ours
    assert {e.event for e in checkpoints} >= {"checkpoint_create", "checkpoint_delete"}
    assert isinstance(checkpoints[0], tinker.types.AuditLogEntry)


# ----------------------------------------------------------------------------- console


def test_console_urls_point_at_pages_of_this_server(world: World) -> None:
    base = world.server.base_url
    fresh = tinkex_jax.ServiceClient(base_url=base, api_key=world.server.api_key)
    assert fresh.get_console_url() == f"{base}/console/sessions"
    session_url = world.service.get_console_url()
    assert session_url.startswith(f"{base}/console/sessions/")
    run_url = world.training.get_console_url()
    assert run_url.startswith(f"{base}/console/training_runs/")
    from tinkex_jax.console_urls import checkpoint_console_url, checkpoint_playground_url

    run_id, _, rest = world.kept[len("tinker://"):].partition("/")
    ckpt_url = checkpoint_console_url(run_id, rest, base_url=base)
    with httpx.Client() as http:
        page = http.get(session_url)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert world.training.model_id in page.text  # the session's training run
        page = http.get(run_url)
        assert page.status_code == 200 and FAKE in page.text
        page = http.get(ckpt_url)
        assert page.status_code == 200 and world.kept in page.text and "public" in page.text
        page = http.get(checkpoint_playground_url(world.kept, base_url=base))
        assert page.status_code == 200 and "tinkex sample --model-path" in page.text
        page = http.get(fresh.get_console_url())
        assert page.status_code == 200 and world.service.session_id in page.text
        missing = http.get(f"{base}/console/training_runs/no-such-run")
        assert missing.status_code == 404 and "no-such-run" in missing.text
    fresh.close()


def test_save_results_link_to_their_checkpoint_pages(world: World,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    base = world.server.base_url
    saved = world.training.save_state("linked").result(timeout=60)
    sampler_saved = world.training.save_weights_for_sampler("linked-s").result(timeout=60)
    monkeypatch.setenv("TINKER_BASE_URL", base)  # what the no-argument form reads
    with httpx.Client() as http:
        for url in (saved.get_console_url(), sampler_saved.get_console_url(base_url=base)):
            page = http.get(url)
            assert page.status_code == 200, url
        assert saved.path in http.get(saved.get_console_url()).text
        page = http.get(sampler_saved.get_playground_url())
        assert page.status_code == 200 and sampler_saved.path in page.text
    monkeypatch.delenv("TINKER_BASE_URL")
    assert saved.get_console_url().startswith("https://tinker.thinkingmachines.ai/checkpoints/")
    with pytest.raises(tinkex_jax.ValidationError, match="tinker path"):
        tinkex_jax.types.SaveWeightsForSamplerResponse(sampling_session_id="s").get_console_url()


def test_console_pages_of_a_keyed_server_show_only_how_to_look(tmp_path: Any) -> None:
    from tests.support.local_fake_backend import FakeBackend

    key = "tml-console-secret-key"
    with serve(tmp_path, base_models=[FAKE], backend=FakeBackend(), api_key=key,
               long_poll_timeout_s=0.2) as server:
        service = tinkex_jax.ServiceClient(base_url=server.base_url, api_key=key,
                                           telemetry=False)
        training = service.create_lora_training_client(FAKE, rank=2).result(timeout=60)
        page = httpx.get(training.get_console_url())
        assert page.status_code == 200
        assert f"tinkex run info {training.model_id}" in page.text
        assert FAKE not in page.text and key not in page.text  # nothing without the key
        service.close().result(timeout=60)


def test_hosted_base_urls_keep_the_hosted_console() -> None:
    from tinkex_jax.console_urls import session_console_url, training_run_console_url

    hosted = "https://tinker.thinkingmachines.dev/services/tinker-prod"
    assert session_console_url("s1", base_url=hosted) == (
        "https://tinker.thinkingmachines.ai/sessions/s1")
    assert training_run_console_url("r", base_url=hosted) == (
        "https://tinker.thinkingmachines.ai/training_runs/r")


@pytest.mark.parametrize("name", ["tinkex_jax.console_urls", "tinkex_jax.local._audit",
                                  "tinkex_jax.local._console", "tinkex_jax.types._audit"])
def test_doctests(name: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name),
                             optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
