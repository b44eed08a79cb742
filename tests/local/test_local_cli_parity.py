"""The official CLI's commands in ``tinkex``: ``auth``, ``model``, ``session`` and ``billing``
against the real local backend over 127.0.0.1, and against a hosted-style stand-in
(`fake_tinker.FakeTinker` on a socket) for the answers a local backend cannot give (billing
data, a ready trace export, the hosted key endpoint). Every ``--json`` output is parsed and
checked; every error is one line of what happened and what to do, in command-line terms."""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import tinkex_jax
from tests.support.fake_tinker import FakeTinker, json_response, serve_http
from tinkex_jax._shell._config import read_stored_key
from tinkex_jax.cli import main
from tinkex_jax.local import LocalServer, serve

KEY = "tml-parity-only-key-0123456789"
PYTHON_ADVICE = ("api_key=", "ServiceClient(", ".result()", "tinker auth login", "What to do:",
                 "RestClient.", "AdminClient.", "..")


def assert_cli_error(err: str) -> None:
    """One line: what happened, then ``Fix:`` and what to do on the command line."""
    assert err.count("\n") == 1 and "Traceback" not in err and "Fix:" in err, err
    assert not [p for p in PYTHON_ADVICE if p in err], err


def cli(capsys: pytest.CaptureFixture[str], *argv: str, stdin: str | None = None
        ) -> tuple[int, str, str]:
    old = sys.stdin
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    try:
        code = main(list(argv))
    finally:
        sys.stdin = old
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str, code: int = 0) -> Any:
    got, out, err = cli(capsys, *argv, "--json")
    assert got == code, err
    return json.loads(out)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A fresh HOME (so the credentials file is the test's own) and no Tinker variables."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("TINKER_API_KEY", "TINKER_BASE_URL", "TINKER_CREDENTIAL_CMD", "USERPROFILE"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A local backend that accepts exactly one key, with one training run in a session."""
    with serve(tmp_path_factory.mktemp("parity-data"), base_models=["tinkex-jax/tiny"],
               api_key=KEY) as server:
        yield server


@pytest.fixture(scope="module")
def session(keyed: LocalServer) -> Iterator[tuple[str, str]]:
    """(session id, training run id) of a session with one LoRA run."""
    service = tinkex_jax.ServiceClient(base_url=keyed.base_url, api_key=KEY, telemetry=False)
    training = service.create_lora_training_client("tinkex-jax/tiny", rank=4).result()
    assert service.session_id is not None
    yield service.session_id, training.model_id
    service.close().result(timeout=60)


def creds(home: Path) -> Path:
    return home / ".tinker" / "credentials.json"


# ----------------------------------------------------------------------------- auth


def test_login_stores_the_key_the_sdk_reads_then_logout_removes_it(
        keyed: LocalServer, clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = keyed.base_url
    code, out, err = cli(capsys, "auth", "login", "--base-url", url, stdin="tml-wrong-key\n")
    assert code == 1 and out == "" and "refused the key (HTTP 401" in err
    assert_cli_error(err)
    code, _, err = cli(capsys, "auth", "login", "--base-url", url, stdin="sk-not-tinker\n")
    assert code == 2 and "starts with 'tml-'" in err and "sk-not" not in err
    assert_cli_error(err)
    assert not creds(clean_env).exists()

    code, out, err = cli(capsys, "auth", "login", "--base-url", url, "--json", stdin=KEY + "\n")
    assert code == 0, err
    report = json.loads(out)
    assert report["verified"] is True and report["base_url"] == url
    assert report["credentials_file"] == str(creds(clean_env)) and KEY not in out + err
    path = creds(clean_env)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert read_stored_key(path) == KEY  # the SDK's own reader finds it
    official = pytest.importorskip("tinker.lib.credentials")  # and so does the official one
    assert official.JsonCredentialStore(path).get_default_key().key == KEY

    # the SDK now works without any key configured
    with tinkex_jax.ServiceClient(base_url=url, telemetry=False) as service:
        models = service.create_rest_client().get_server_capabilities().result()
    assert [m.model_name for m in models.supported_models] == ["tinkex-jax/tiny"]

    status = cli_json(capsys, "auth", "status", "--base-url", url)
    assert status["credential_source"] == "credentials file" and status["accessible"] is True
    assert status["stored_key_name"] == report["key_name"] and status["error"] is None
    code, out, err = cli(capsys, "auth", "status", "--base-url", url)
    assert code == 0 and "Accessible        yes (1 model offered)" in out and KEY not in out

    code, out, err = cli(capsys, "auth", "login", "--base-url", url, stdin=KEY + "\n")
    assert code == 1 and "already stored" in err and "`tinkex auth logout`" in err
    assert_cli_error(err)

    removed = cli_json(capsys, "auth", "logout")
    assert removed == {"removed": True, "key_name": report["key_name"],
                       "credentials_file": str(path)}
    assert read_stored_key(path) is None and json.loads(path.read_text())["default"] is None
    code, out, err = cli(capsys, "auth", "logout")
    assert code == 1 and out == "" and "nothing to remove" in err
    assert_cli_error(err)


def test_status_reports_a_refused_or_missing_key_without_showing_it(
        keyed: LocalServer, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TINKER_API_KEY", "tml-refused-secret-key")
    status = cli_json(capsys, "auth", "status", "--base-url", keyed.base_url, code=1)
    assert status["credential_source"] == "TINKER_API_KEY" and status["accessible"] is False
    assert "refused the API key" in status["error"] and "`tinkex auth login`" in status["error"]
    code, out, err = cli(capsys, "auth", "status", "--base-url", keyed.base_url)
    assert code == 1 and "Accessible        no" in out
    assert "tml-refused-secret-key" not in out + err + json.dumps(status)
    assert_cli_error(err)

    monkeypatch.delenv("TINKER_API_KEY")
    status = cli_json(capsys, "auth", "status", "--base-url", "https://tinker.invalid", code=1)
    assert status["credentials_available"] is False and status["credential_source"] == "none"
    code, _, err = cli(capsys, "run", "list", "--base-url", "https://tinker.invalid")
    assert code == 2 and "`tinkex auth login`" in err and "TINKER_API_KEY" in err
    assert_cli_error(err)


def test_login_without_checking_and_with_no_key(clean_env: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "auth", "login", "--no-verify", stdin="\n")
    assert code == 2 and "no key was given" in err
    assert_cli_error(err)
    code, out, err = cli(capsys, "auth", "login", "--no-verify", "--name", "laptop",
                         stdin="tml-offline\n")
    assert code == 0 and "not checked" in out and "'laptop'" in out
    assert read_stored_key(creds(clean_env)) == "tml-offline"


def test_whoami_needs_a_jwt_server(keyed: LocalServer, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "auth", "whoami", "--base-url", keyed.base_url,
                         "--api-key", KEY)
    assert code == 1 and out == "" and "JWT auth is off" in err and "--pjwt-auth" in err
    assert_cli_error(err)
    # no_auth: the SDK's default key for a loopback URL (tml-local) is accepted
    with serve(tmp_path / "jwt", base_models=["tinkex-jax/tiny"], warm_up=False,
               pjwt_auth_enabled=True, no_auth=True) as server:
        me = cli_json(capsys, "auth", "whoami", "--base-url", server.base_url)
        code, out, _ = cli(capsys, "auth", "whoami", "--base-url", server.base_url)
    assert me["user_urn"] and me["org_urn"].startswith("tml:organization:")
    assert code == 0 and me["user_urn"] in out and "Organization" in out


def test_login_reads_the_hosted_key_endpoint(clean_env: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeTinker()
    details = {"org_details": {"name": "Acme"}, "user_details": {"email": "ada@acme.test"}}
    fake.inject("auth/apikey/me",
                json_response(401, {"detail": "Invalid API key"}),
                json_response(200, {"key_id": 42, "name": "laptop", "note": "",
                                    "details": details}))
    with serve_http(fake) as url:
        code, _, err = cli(capsys, "auth", "login", "--base-url", url, stdin="tml-bad\n")
        assert code == 1 and "HTTP 401: Invalid API key" in err
        assert_cli_error(err)
        code, out, err = cli(capsys, "auth", "login", "--base-url", url, stdin="tml-good\n")
    assert code == 0 and "as ada@acme.test (Acme)" in out
    stored = json.loads(creds(clean_env).read_text())
    assert stored["default"] == "42" and stored["keys"]["42"]["name"] == "laptop"
    assert stored["keys"]["42"]["details"] == details
    official = pytest.importorskip("tinker.lib.credentials")  # the official SDK reads it too
    record = official.JsonCredentialStore(creds(clean_env)).get_default_key()
    assert record.key == "tml-good" and record.details.user_details.email == "ada@acme.test"
    assert [c.headers["x-api-key"] for c in fake.calls_to("auth/apikey/me")] == [
        "tml-bad", "tml-good"]


# ----------------------------------------------------------------------------- models


def test_model_list(keyed: LocalServer, capsys: pytest.CaptureFixture[str]) -> None:
    base = ("--base-url", keyed.base_url, "--api-key", KEY)
    data = cli_json(capsys, "model", "list", *base)
    assert data == {"models": [{"model_name": "tinkex-jax/tiny", "max_context_length": 2048,
                                "trainable": True, "sampleable": True}]}
    assert cli_json(capsys, "model", "list", "TINY", *base) == data
    code, out, err = cli(capsys, "model", "list", *base)
    assert code == 0 and out.splitlines()[1].split() == ["Model", "Max", "context", "Trainable",
                                                         "Sampleable"]
    code, out, err = cli(capsys, "model", "list", "llama", *base)
    assert code == 1 and out == "" and "contains 'llama'" in err
    assert_cli_error(err)
    assert cli_json(capsys, "-f", "json", "model", "list", *base) == data


# ----------------------------------------------------------------------------- sessions


def test_session_list_and_info(keyed: LocalServer, session: tuple[str, str],
                               capsys: pytest.CaptureFixture[str]) -> None:
    session_id, run_id = session
    base = ("--base-url", keyed.base_url, "--api-key", KEY)
    listed = cli_json(capsys, "session", "list", *base)
    assert session_id in listed["sessions"] and listed["total_count"] is None
    assert len(cli_json(capsys, "session", "list", "--limit", "1", *base)["sessions"]) == 1
    info = cli_json(capsys, "session", "info", session_id, *base)
    assert info["session_id"] == session_id and info["training_run_ids"] == [run_id]
    code, out, _ = cli(capsys, "session", "info", session_id, *base)
    assert code == 0 and run_id in out
    code, out, err = cli(capsys, "session", "info", "sess-missing", *base)
    assert code == 1 and out == "" and "session 'sess-missing' was not found" in err
    assert "`tinkex session list`" in err
    assert_cli_error(err)


def test_export_trace_on_the_local_backend_says_there_is_none(
        keyed: LocalServer, session: tuple[str, str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    session_id, _ = session
    code, out, err = cli(capsys, "session", "export-trace", session_id, "-o",
                         str(tmp_path / "t.pftrace"), "--base-url", keyed.base_url,
                         "--api-key", KEY, "--json")
    assert code == 1 and out == "" and not (tmp_path / "t.pftrace").exists()
    assert "does not record traces" in err
    assert_cli_error(err)


def test_export_trace_downloads_a_ready_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeTinker()
    trace = b"\x0a\x02perfetto-bytes" * 100
    with serve_http(fake) as url:
        for _ in range(3):
            fake.inject("sessions/sess-7/trace_export", json_response(
                200, {"status": "ready", "url": f"{url}/api/v1/files/sess-7.pftrace"}))
        for _ in range(2):
            fake.inject("files/sess-7.pftrace", httpx.Response(200, content=trace))
        base = ("--base-url", url, "--api-key", "tml-hosted")
        got = cli_json(capsys, "session", "export-trace", "sess-7", "--url-only", *base)
        assert got == {"session_id": "sess-7", "url": f"{url}/api/v1/files/sess-7.pftrace"}
        target = tmp_path / "out" / "trace.pftrace"
        got = cli_json(capsys, "session", "export-trace", "sess-7", "-o", str(target), *base)
        assert got == {"session_id": "sess-7", "destination": str(target),
                       "file_size_bytes": len(trace)}
        assert target.read_bytes() == trace and sorted(os.listdir(target.parent)) == [
            "trace.pftrace"]
        monkeypatch.chdir(tmp_path)
        code, out, err = cli(capsys, "session", "export-trace", "sess-7", *base)
    assert code == 0 and (tmp_path / "sess-7.pftrace").read_bytes() == trace
    assert "ui.perfetto.dev" in out and "Exporting the trace" in err


# ----------------------------------------------------------------------------- billing


def test_billing_on_the_local_backend_says_it_has_none(keyed: LocalServer,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    base = ("--base-url", keyed.base_url, "--api-key", KEY)
    for argv in (("billing", "usage", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"),
                 ("billing", "checkpoint-storage")):
        code, out, err = cli(capsys, *argv, *base)
        assert code == 3 and out == "" and "does not offer billing data" in err
        assert "the local backend bills nothing" in err
        assert_cli_error(err)
        code, out, err = cli(capsys, *argv, *base, "--json")
        data = json.loads(out)
        assert code == 3 and data["available"] is False and data["base_url"] == keyed.base_url
        assert data["error"] in err


def test_billing_window_is_checked_before_anything_is_sent(
        capsys: pytest.CaptureFixture[str]) -> None:
    base = ("--base-url", "https://tinker.invalid", "--api-key", "tml-x")
    code, _, err = cli(capsys, "billing", "usage", "2026-01-01T00:00:00Z",
                       "2026-01-20T00:00:00Z", *base)
    assert code == 2 and "14 days" in err
    assert_cli_error(err)
    with pytest.raises(SystemExit) as info:
        main(["billing", "usage", "2026-01-01T00:30:00Z", "2026-01-02T00:00:00Z", *base])
    assert info.value.code == 2 and "whole hour" in capsys.readouterr().err


USAGE = {
    "data": [
        {"bucket_start": "2026-07-13T00:00:00Z", "bucket_end": "2026-07-13T01:00:00Z",
         "event_info": {"type": "training", "token_count": 1200}, "base_model": "Qwen/Qwen3-8B",
         "session_id": "sess-1", "estimated_cost_usd": 0.5,
         "effective_rate_usd_per_million_tokens": 0.4},
        {"bucket_start": "2026-07-13T00:00:00Z", "bucket_end": "2026-07-13T01:00:00Z",
         "event_info": {"type": "storage", "gigabyte_hours": 2.5, "free": False},
         "estimated_cost_usd": None},
    ],
    "sessions": {"sess-1": {"user_metadata": {"team": "rl"}}},
    "cost_data_through": "2026-07-13T00:00:00Z",
}
STORAGE = {"data": [{"checkpoint_count": 3, "size_bytes": 3 * 2**30, "size_gigabytes": 3.0,
                     "project_id": "p1", "user_email": "ada@acme.test",
                     "estimated_monthly_cost_usd": 0.3}],
           "effective_rate_usd_per_gigabyte_month": 0.1}


def test_billing_against_a_hosted_style_server(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeTinker()
    with serve_http(fake) as url:
        for _ in range(4):
            fake.inject("billing/usage/events", json_response(200, USAGE))
        for _ in range(2):
            fake.inject("billing/usage/checkpoints/current", json_response(200, STORAGE))
        fake.inject("billing/usage/checkpoints/current",
                    json_response(403, {"detail": "Billing view access required"}))
        base = ("--base-url", url, "--api-key", "tml-hosted")
        window = ("2026-07-13T00:00:00Z", "2026-07-14T00:00:00Z")

        data = cli_json(capsys, "billing", "usage", *window, *base)
        assert data["data"][0]["event_info"] == {"type": "training", "token_count": 1200}
        assert data["sessions"] == USAGE["sessions"]
        assert data["cost_data_through"].startswith("2026-07-13T00:00:00")
        assert fake.calls_to("billing/usage/events")[0].query == {
            "starting_on": window[0], "ending_before": window[1]}

        code, out, err = cli(capsys, "billing", "usage", *window, *base)
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].startswith("2 hourly usage row(s)") and "token_count" in lines[1]
        assert "gigabyte_hours" in lines[1] and "1200" in lines[2] and "2.5" in lines[3]

        csv_path = tmp_path / "usage.csv"
        code, out, err = cli(capsys, "billing", "usage", *window, *base, "--csv",
                             str(csv_path), "--sessions-csv", "-")
        assert code == 0 and out == 'session_id,user_metadata\nsess-1,"{""team"": ""rl""}"\n'
        rows = csv_path.read_text().splitlines()
        assert rows[0].startswith("bucket_start,bucket_end,type,token_count")
        assert len(rows) == 3 and ",storage," in rows[2]

        code, out, _ = cli(capsys, "billing", "checkpoint-storage", *base, "--csv", "-")
        assert code == 0 and out.splitlines()[1].startswith("3,3221225472,3.0,p1")
        storage = cli_json(capsys, "billing", "checkpoint-storage", "--project-id", "p1", *base)
        (row,) = storage["data"]
        assert {k: v for k, v in row.items() if v is not None} == STORAGE["data"][0]
        assert storage["effective_rate_usd_per_gigabyte_month"] == 0.1
        assert fake.calls_to("billing/usage/checkpoints/current")[1].query == {
            "project_id": "p1"}
        code, out, err = cli(capsys, "billing", "checkpoint-storage", *base)
    assert code == 1 and out == "" and "HTTP 403: Billing view access required" in err
    assert "billing-admin role" in err
    assert_cli_error(err)
