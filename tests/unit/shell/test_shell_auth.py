"""Credentials and JWT auth (docs/protocol.md §1.2, §1.3): which credential is sent, the credential
command, the stored credentials file, the token exchange and its refreshes, the 401
invalid_token replay, RestClient.whoami, and that no credential leaks anywhere.

Fault and protocol cases run over ``httpx.MockTransport`` with fake time: nothing sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import inspect
import json
import logging
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import tinkex_jax as tinker
from tests.support.fake_tinker import FakeTinker, json_response
from tinkex_jax._shell import FakeTime, Runtime, Secret, resolve_settings
from tinkex_jax._shell._auth import (
    REFRESH_RETRY_S,
    CredentialAuth,
    CredentialCommand,
    JwtCore,
    StaticCredential,
    identity_jwt_of_key,
    refresh_delay,
    validate_jwt,
    whoami_from_jwt,
)
from tinkex_jax._shell._background import Telemetry
from tinkex_jax._shell._errors import SecretSet, status_error
from tinkex_jax.errors import (
    APIConnectionError,
    APIResponseValidationError,
    AuthenticationError,
    TinkerError,
)
from tinkex_jax.types import WhoamiResponse

KEY = "tml-auth-test-key-0123456789"
BASE = "http://tinker.test"
CLAIMS = {"iss": "tinker-test", "sub": "tml:user:u1", "org_id": "org-9",
          "email": "u1@example.com"}


def seg(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def make_jwt(claims: dict[str, Any], header: dict[str, Any] | None = None,
             signature: str = "c2lnbmF0dXJl") -> str:
    return f"{seg(header or {'alg': 'HS256', 'typ': 'JWT'})}.{seg(claims)}.{signature}"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No credential from the developer's environment or home leaks into a test."""
    for name in ("TINKER_API_KEY", "TINKER_CREDENTIAL_CMD", "TINKER_BASE_URL", "USERPROFILE"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    return home


def write_credentials(home: Path, keys: dict[str, str], default: str | None) -> Path:
    path = home / ".tinker" / "credentials.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"version": 1, "keys": {
        name: {"type": "manual", "key": key, "name": name} for name, key in keys.items()}}
    if default is not None:
        data["default"] = default
    path.write_text(json.dumps(data))
    return path


def counting_command(tmp_path: Path, prefix: str = "tml-cmd-secret") -> str:
    """A shell command printing ``<prefix>-<n>``, n counting its runs."""
    counter = tmp_path / "runs"
    return (f'n=$(( $(cat "{counter}" 2>/dev/null || echo 0) + 1 )); echo $n > "{counter}"; '
            f'echo {prefix}-$n')


class JwtServer:
    """A Tinker server in JWT mode: ``auth/token`` mints JWTs, every other path but
    ``client/config`` takes only a live, unrevoked JWT (else 401 invalid_token)."""

    def __init__(self, time: FakeTime, *, lifetime: int = 3600,
                 config: dict[str, Any] | None = None) -> None:
        self.fake = FakeTinker(client_config={"pjwt_auth_enabled": True, **(config or {})})
        self.time = time
        self.lifetime = lifetime
        self.issued: list[str] = []
        self.revoked: set[str] = set()
        self.reject_all = False
        self.exchange_answers: deque[httpx.Response] = deque()
        self.rejections = 0

    def now(self) -> float:
        return self.time.runtime.wall().timestamp()

    def mint(self) -> str:
        iat = int(self.now())
        token = make_jwt({**CLAIMS, "iat": iat, "exp": iat + self.lifetime,
                          "n": len(self.issued)})
        self.issued.append(token)
        return token

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.split("/api/v1/", 1)[-1]
        if path == "auth/token":
            self.fake._record(request)
            if self.exchange_answers:
                return self.exchange_answers.popleft()
            return json_response(200, {"jwt": self.mint()})
        if path != "client/config":
            key = request.headers.get("x-api-key", "")
            if self.reject_all or key not in self.issued or key in self.revoked:
                self.fake._record(request)
                self.rejections += 1
                return httpx.Response(401, json={"detail": "token rejected"}, headers={
                    "WWW-Authenticate": 'Bearer realm="tinker", error="invalid_token"'})
        return self.fake.handler(request)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)

    def exchanges(self) -> list[Any]:
        return self.fake.calls_to("auth/token")


def service_for(transport: httpx.AsyncBaseTransport, time: FakeTime | None = None,
                **kwargs: Any) -> tinker.ServiceClient:
    kwargs.setdefault("api_key", KEY)
    kwargs.setdefault("telemetry", False)
    return tinker.ServiceClient(base_url=BASE, transport=transport,
                                _runtime=(time or FakeTime()).runtime, **kwargs)


# ---------------------------------------------------------------------------- §1.2 resolution


def test_precedence_argument_then_env_then_command_then_file(clean_env: Path) -> None:
    write_credentials(clean_env, {"stored": "tml-stored-key-111"}, "stored")
    env = {"HOME": str(clean_env), "TINKER_API_KEY": "tml-env-key-222",
           "TINKER_CREDENTIAL_CMD": "echo tml-cmd-key-333"}
    s = resolve_settings(api_key="tml-arg-key-000", env=env)
    assert s.api_key is not None and s.api_key.reveal() == "tml-arg-key-000"
    assert s.credential_origin == "api_key argument"
    assert s.credential_cmd is not None  # kept: a server may ask for it in the exchange
    s = resolve_settings(env=env)
    assert s.api_key is not None and s.api_key.reveal() == "tml-env-key-222"
    assert s.credential_origin == "TINKER_API_KEY"
    s = resolve_settings(env={**env, "TINKER_API_KEY": "  "})
    assert s.api_key is None and s.credential_origin == "TINKER_CREDENTIAL_CMD"
    assert s.credential_cmd is not None and s.credential_cmd.reveal() == "echo tml-cmd-key-333"
    s = resolve_settings(env={"HOME": str(clean_env)})
    assert s.api_key is not None and s.api_key.reveal() == "tml-stored-key-111"
    assert s.credential_origin == "credentials file"


def test_nothing_resolves_is_the_clear_error_and_loopback_still_needs_no_key() -> None:
    with pytest.raises(TinkerError) as info:
        resolve_settings(base_url="https://remote.example", env={})
    message = str(info.value)
    assert "TINKER_API_KEY" in message and "TINKER_CREDENTIAL_CMD" in message
    assert "tinkex auth login" in message and "tinker auth login" not in message
    local = resolve_settings(base_url="http://127.0.0.1:8000", env={})
    assert local.api_key is not None and local.api_key.reveal() == "tml-local"
    assert local.credential_origin == "local default"


def test_credentials_file_with_several_keys_uses_the_default_on_the_wire(clean_env: Path
                                                                         ) -> None:
    write_credentials(clean_env, {"a": "tml-first-key-aaaa", "b": "tml-default-key-bbbb",
                                  "c": "tml-third-key-cccc"}, "b")
    fake = FakeTinker()
    service = service_for(fake.transport, api_key=None)
    service.create_rest_client().list_sessions().result(timeout=5)
    assert {c.headers["x-api-key"] for c in fake.calls} == {"tml-default-key-bbbb"}
    service.close().result(timeout=5)


def test_credentials_file_without_default_or_broken_is_a_clear_error(clean_env: Path) -> None:
    path = write_credentials(clean_env, {"a": "tml-lonely-key-aaaa"}, None)
    with pytest.raises(TinkerError, match="The API key is not set"):
        resolve_settings(base_url=BASE, env={"HOME": str(clean_env)})
    path.write_text('{"keys": {"a": {"key": "tml-half-written-secret')
    with pytest.raises(TinkerError) as info:
        resolve_settings(base_url=BASE, env={"HOME": str(clean_env)})
    assert str(path) in str(info.value) and "not valid JSON" in str(info.value)
    assert "tml-half-written-secret" not in str(info.value)
    write_credentials(clean_env, {"a": "sk-not-a-tinker-key-secret"}, "a")
    with pytest.raises(TinkerError) as info:
        resolve_settings(base_url=BASE, env={"HOME": str(clean_env)})
    assert "credentials.json" in str(info.value) and "tml-" in str(info.value)
    assert "not-a-tinker-key-secret" not in str(info.value)


def test_expired_jwt_key_is_rejected_at_resolution_and_at_use() -> None:
    expired = make_jwt({**CLAIMS, "iat": 1, "exp": 5})
    with pytest.raises(TinkerError, match="expired") as info:
        resolve_settings(api_key=expired, env={})
    assert expired not in str(info.value)
    live_then_dead = make_jwt({**CLAIMS, "iat": 1, "exp": 10_000})
    source = StaticCredential(Secret(live_then_dead), now=lambda: 9_000.0)
    assert asyncio.run(source.get()) == live_then_dead
    source = StaticCredential(Secret(live_then_dead), now=lambda: 10_001.0)
    with pytest.raises(TinkerError, match="expired") as info:
        asyncio.run(source.get())
    assert live_then_dead not in str(info.value)


# ---------------------------------------------------------------------------- credential cmd


def test_credential_command_runs_for_every_request(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path, clean_env: Path) -> None:
    write_credentials(clean_env, {"s": "tml-stored-must-lose"}, "s")  # the command wins
    monkeypatch.setenv("TINKER_CREDENTIAL_CMD", counting_command(tmp_path))
    fake = FakeTinker()
    service = service_for(fake.transport, api_key=None)
    service.create_sampling_client(base_model="base/model").result(timeout=10)
    keys = [c.headers["x-api-key"] for c in fake.calls]
    assert len(keys) >= 4  # config, dynamic config, session, sampling session
    assert sorted(keys, key=lambda k: int(k.rsplit("-", 1)[1])) == [
        f"tml-cmd-secret-{i}" for i in range(1, len(keys) + 1)]
    assert (tmp_path / "runs").read_text().strip() == str(len(keys))
    service.close().result(timeout=5)


def test_credential_command_runs_off_the_event_loop() -> None:
    threads: list[threading.Thread] = []

    def run(command: str, timeout: float) -> tuple[int, bytes]:
        threads.append(threading.current_thread())
        return 0, b"tml-threaded-credential\n"

    async def main() -> tuple[str, threading.Thread]:
        value = await CredentialCommand(Secret("ignored"), run=run).get()
        return value, threading.current_thread()

    value, loop_thread = asyncio.run(main())
    assert value == "tml-threaded-credential"
    assert threads and threads[0] is not loop_thread


@pytest.mark.parametrize(("command", "reason"), [
    ("echo tml-leaked-before-failing-1; exit 3", "exit status 3"),
    ("printf ''", "printed nothing"),
    ("printf 'tml-two-lines-secret-1\\ntml-two-lines-secret-2\\n'", "more than one line"),
    ("echo " + make_jwt({**CLAIMS, "iat": 1, "exp": 5}), "expired JWT"),
])
def test_credential_command_failures_name_the_variable_never_the_output(command: str,
                                                                        reason: str) -> None:
    with pytest.raises(TinkerError) as info:
        asyncio.run(CredentialCommand(Secret(command)).get())
    message = str(info.value)
    assert message.startswith("TINKER_CREDENTIAL_CMD ") and reason in message
    for secret in ("tml-leaked-before-failing-1", "tml-two-lines-secret", "eyJ"):
        assert secret not in message


def test_credential_command_timeout_and_start_failure_are_clear() -> None:
    def timing_out(command: str, timeout: float) -> tuple[int, bytes]:
        raise subprocess.TimeoutExpired(command, timeout, output=b"tml-partial-secret")

    def unstartable(command: str, timeout: float) -> tuple[int, bytes]:
        raise PermissionError("no exec")

    with pytest.raises(TinkerError, match="TINKER_CREDENTIAL_CMD did not finish within 7 s"):
        asyncio.run(CredentialCommand(Secret("x"), run=timing_out, timeout=7).get())
    with pytest.raises(TinkerError, match=r"could not be started \(PermissionError\)"):
        asyncio.run(CredentialCommand(Secret("x"), run=unstartable).get())


def test_a_failing_command_fails_the_call_without_sending_it(monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture
                                                              ) -> None:
    monkeypatch.setenv("TINKER_CREDENTIAL_CMD", "echo tml-cmd-output-secret-9; exit 1")
    fake = FakeTinker()
    with caplog.at_level(logging.DEBUG):
        service = service_for(fake.transport, api_key=None)
        with pytest.raises(TinkerError, match="TINKER_CREDENTIAL_CMD failed") as info:
            service.create_rest_client().list_sessions().result(timeout=5)
        service.close().result(timeout=5)
    assert fake.calls == []
    assert "tml-cmd-output-secret-9" not in str(info.value) + caplog.text


def test_command_outputs_are_redacted_from_errors(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("TINKER_CREDENTIAL_CMD", counting_command(tmp_path, "tml-echoed-secret"))
    fake = FakeTinker()
    fake.inject("sessions", lambda request: json_response(
        400, {"detail": f"key {request.headers['x-api-key']} is not allowed here"}))
    service = service_for(fake.transport, api_key=None)
    with pytest.raises(tinker.BadRequestError) as info:
        service.create_rest_client().list_sessions().result(timeout=5)
    sent = fake.calls_to("sessions")[0].headers["x-api-key"]
    assert sent.startswith("tml-echoed-secret-")
    assert sent not in str(info.value) and sent not in repr(info.value.body)
    assert "<redacted>" in str(info.value)
    service.close().result(timeout=5)


# ---------------------------------------------------------------------------- §1.3 exchange


def test_exchange_request_and_the_jwt_on_every_later_request() -> None:
    time = FakeTime()
    server = JwtServer(time)
    service = service_for(server.transport, time)
    service.create_sampling_client(base_model="base/model").result(timeout=5)
    service.create_rest_client().list_training_runs().result(timeout=5)
    exchanges = server.exchanges()
    assert len(exchanges) == 1 and len(server.issued) == 1
    exchange = exchanges[0]
    assert exchange.method == "POST" and exchange.json == {}
    assert exchange.headers["x-api-key"] == KEY
    assert exchange.headers["content-type"] == "application/json"
    jwt = server.issued[0]
    by_path = [(c.path, c.headers["x-api-key"]) for c in server.fake.calls]
    assert by_path[0] == ("client/config", KEY)
    assert by_path[1] == ("auth/token", KEY)
    later = [key for path, key in by_path[2:]]
    assert len(later) >= 4 and set(later) == {jwt}
    assert server.rejections == 0
    service.close().result(timeout=5)
    assert server.fake.calls_to("sessions/sess-1/finish")[0].headers["x-api-key"] == jwt


def test_credential_cmd_is_the_exchange_credential_when_the_server_says_so(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TINKER_CREDENTIAL_CMD", counting_command(tmp_path, "tml-exchange-cred"))
    time = FakeTime()
    server = JwtServer(time, config={"credential_default_source": "credential_cmd"})
    service = service_for(server.transport, time)  # api_key=KEY wins for the config request
    service.create_rest_client().list_sessions().result(timeout=5)
    assert server.fake.calls_to("client/config")[0].headers["x-api-key"] == KEY
    assert server.exchanges()[0].headers["x-api-key"] == "tml-exchange-cred-1"
    assert server.fake.calls_to("sessions")[0].headers["x-api-key"] == server.issued[0]
    service.close().result(timeout=5)


def test_credential_cmd_required_by_the_server_but_unset_is_a_clear_error() -> None:
    time = FakeTime()
    server = JwtServer(time, config={"credential_default_source": "credential_cmd"})
    service = service_for(server.transport, time)
    with pytest.raises(TinkerError, match="TINKER_CREDENTIAL_CMD is not set"):
        service.create_rest_client().list_sessions().result(timeout=5)
    assert server.exchanges() == []
    service.close().result(timeout=5)


@pytest.mark.parametrize(("answer", "reason"), [
    ({"jwt": "tml-not-a-jwt-secret"}, "three dot-separated segments"),
    ({"jwt": make_jwt({**CLAIMS, "exp": 2_000_000_000})}, "numeric 'iat'"),
    ({"jwt": make_jwt({**CLAIMS, "iat": "yesterday", "exp": 2_000_000_000})}, "numeric 'iat'"),
    ({"jwt": make_jwt({**CLAIMS, "iat": 10, "exp": 2_000_000_000}, signature="bad sig!")},
     "signature segment"),
    ({"token": "elsewhere"}, "no 'jwt' string"),
])
def test_a_malformed_exchange_answer_is_a_clear_error_without_the_token(
        answer: dict[str, Any], reason: str) -> None:
    time = FakeTime()
    server = JwtServer(time)
    server.exchange_answers.append(json_response(200, answer))
    service = service_for(server.transport, time)
    with pytest.raises(APIResponseValidationError) as info:
        service.create_rest_client().list_sessions().result(timeout=5)
    message = str(info.value)
    assert "auth/token" in message and reason in message
    token = answer.get("jwt", "elsewhere")
    assert token not in message
    service.close().result(timeout=5)


def test_a_refused_exchange_raises_the_authentication_error() -> None:
    time = FakeTime()
    server = JwtServer(time)
    server.exchange_answers.append(json_response(401, {"detail": f"bad key {KEY}"}))
    service = service_for(server.transport, time)
    with pytest.raises(AuthenticationError) as info:
        service.create_rest_client().list_sessions().result(timeout=5)
    assert "auth/token" in str(info.value) and KEY not in str(info.value)
    assert server.fake.calls_to("sessions") == []
    service.close().result(timeout=5)


def test_validate_jwt_accepts_an_unsigned_but_well_formed_token() -> None:
    claims = validate_jwt(make_jwt({"iat": 1, "exp": 2}, {"alg": "none"}, signature=""))
    assert claims == {"iat": 1, "exp": 2}
    with pytest.raises(ValueError, match="not after"):
        validate_jwt(make_jwt({"iat": 5, "exp": 5}))
    with pytest.raises(ValueError, match="numeric 'exp'"):
        validate_jwt(make_jwt({"iat": 5, "exp": True}))


# ---------------------------------------------------------------------------- refreshes


class ClockedExchange:
    """A scripted exchange over a controllable wall clock: each entry is a lifetime (a JWT
    issued now) or an exception to raise."""

    def __init__(self, script: list[int | BaseException], start: float = 1_800_000_000.0,
                 tick_limit: int = 10**9) -> None:
        self.now = start
        self.script = deque(script)
        self.tokens: list[str] = []
        self.ticks: list[float] = []
        self.tick_limit = tick_limit
        self.runtime = Runtime(sleep=self._tick, tick=self._tick, clock=lambda: self.now,
                               random=lambda: 0.25,
                               wall=lambda: dt.datetime.fromtimestamp(self.now, dt.UTC))

    async def _tick(self, seconds: float) -> None:
        self.ticks.append(seconds)
        if len(self.ticks) >= self.tick_limit:
            await asyncio.Event().wait()
        self.now += seconds
        await asyncio.sleep(0)

    async def __call__(self) -> str:
        step = self.script.popleft()
        if isinstance(step, BaseException):
            raise step
        token = make_jwt({**CLAIMS, "iat": int(self.now), "exp": int(self.now) + step,
                          "n": len(self.tokens)})
        self.tokens.append(token)
        return token


def test_refresh_delay_is_45_to_55_percent_of_the_lifetime() -> None:
    claims = {"iat": 1000, "exp": 4600}  # one hour
    assert refresh_delay(claims, 0.0) == pytest.approx(0.45 * 3600)
    assert refresh_delay(claims, 0.5) == pytest.approx(0.50 * 3600)
    assert refresh_delay(claims, 0.999999) == pytest.approx(0.55 * 3600, rel=1e-5)
    assert refresh_delay({"iat": 10, "exp": 10}, 0.5) == REFRESH_RETRY_S
    assert refresh_delay({"exp": 10}, 0.5) == REFRESH_RETRY_S


def test_background_refresh_schedule_and_failed_refresh_retried_every_60_s(
        caplog: pytest.LogCaptureFixture) -> None:
    boom = APIConnectionError("connection reset while sending the old token")
    exchange = ClockedExchange([1000, boom, boom, 2000, 400], tick_limit=5)
    secrets = SecretSet()

    async def main() -> JwtCore:
        tasks: list[asyncio.Task[None]] = []

        def spawn(coro: Any) -> asyncio.Task[None]:
            tasks.append(asyncio.get_running_loop().create_task(coro))
            return tasks[-1]

        core = JwtCore(exchange, runtime=exchange.runtime, secrets=secrets, spawn=spawn)
        assert await core.get() == exchange.tokens[0]
        for _ in range(200):
            if len(exchange.ticks) >= 5:
                break
            await asyncio.sleep(0)
        assert len(tasks) == 1  # one refresh loop, however many refreshes
        tasks[0].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return core

    with caplog.at_level(logging.DEBUG, logger="tinkex_jax"):
        core = asyncio.run(main())
    # 0.45 + 0.10 * 0.25 = 47.5 % of each token's lifetime; 60 s after each failure
    assert exchange.ticks == pytest.approx([475.0, 60.0, 60.0, 950.0, 190.0])
    assert core.exchanges == 5 and len(exchange.tokens) == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "retrying every 60 s" in warnings[0].getMessage()
    assert len([r for r in caplog.records if "Refreshing the Tinker JWT failed" in
                r.getMessage()]) == 2  # the repeat is logged at DEBUG
    assert all(token not in caplog.text for token in exchange.tokens)


def test_on_demand_refresh_when_at_most_60_s_remain() -> None:
    exchange = ClockedExchange([1000, 1000, 1000])

    async def main() -> None:
        core = JwtCore(exchange, runtime=exchange.runtime)
        first = await core.get()
        exchange.now += 1000 - 61  # 61 s left: keep it
        assert await core.get() == first and core.exchanges == 1
        exchange.now += 2  # 59 s left: refresh first
        second = await core.get()
        assert second != first and second == exchange.tokens[1] and core.exchanges == 2

    asyncio.run(main())


def test_failed_on_demand_refresh_uses_the_live_token_but_not_a_dead_one(
        caplog: pytest.LogCaptureFixture) -> None:
    refused = status_error(401, {}, b'{"detail": "revoked"}', method="POST",
                           url=f"{BASE}/api/v1/auth/token", sdk_method=None, secrets=())
    boom = APIConnectionError("no route to host")
    exchange = ClockedExchange([1000, boom, refused, boom])

    async def main() -> None:
        core = JwtCore(exchange, runtime=exchange.runtime)
        first = await core.get()
        exchange.now += 1000 - 30
        with caplog.at_level(logging.WARNING, logger="tinkex_jax"):
            assert await core.get() == first  # 30 s left and the refresh failed: use it
        assert "using the current token" in caplog.text and first not in caplog.text
        with pytest.raises(AuthenticationError):  # the credential itself was refused
            await core.get()
        exchange.now += 31  # expired: nothing to fall back to
        with pytest.raises(APIConnectionError):
            await core.get()

    asyncio.run(main())


def test_service_refreshes_on_demand_and_sends_the_new_jwt() -> None:
    time = FakeTime()
    server = JwtServer(time, lifetime=600)
    service = service_for(server.transport, time)
    rest = service.create_rest_client()
    rest.list_sessions().result(timeout=5)
    assert len(server.issued) == 1
    time.now += 600 - 50  # 50 s left
    rest.list_sessions().result(timeout=5)
    assert len(server.issued) == 2
    sent = [c.headers["x-api-key"] for c in server.fake.calls_to("sessions")]
    assert sent == server.issued
    service.close().result(timeout=5)


# ---------------------------------------------------------------------------- 401 replay


def test_invalid_token_401_refreshes_once_and_replays_once() -> None:
    time = FakeTime()
    server = JwtServer(time)
    service = service_for(server.transport, time)
    rest = service.create_rest_client()
    rest.list_sessions().result(timeout=5)
    server.revoked.add(server.issued[0])  # e.g. revoked server-side before it expires
    assert rest.list_sessions().result(timeout=5).sessions == ["sess-1"]
    calls = server.fake.calls_to("sessions")
    assert [c.headers["x-api-key"] for c in calls] == [
        server.issued[0], server.issued[0], server.issued[1]]
    assert len(server.exchanges()) == 2 and service._shell.http.auth.replays == 1
    # the new token stays in use
    rest.list_sessions().result(timeout=5)
    assert server.fake.calls_to("sessions")[-1].headers["x-api-key"] == server.issued[1]
    service.close().result(timeout=5)


def test_a_second_invalid_token_401_is_returned_not_looped() -> None:
    time = FakeTime()
    server = JwtServer(time)
    service = service_for(server.transport, time)
    rest = service.create_rest_client()
    rest.list_sessions().result(timeout=5)
    server.reject_all = True
    with pytest.raises(AuthenticationError) as info:
        rest.list_sessions().result(timeout=5)
    assert len(server.fake.calls_to("sessions")) == 3  # the first call, then try + one replay
    assert len(server.exchanges()) == 2
    assert all(token not in str(info.value) for token in server.issued)
    service.close()


def test_a_plain_401_is_not_replayed() -> None:
    time = FakeTime()
    server = JwtServer(time)
    server.fake.inject("sessions", json_response(401, {"detail": "no"}))
    service = service_for(server.transport, time)
    with pytest.raises(AuthenticationError):
        service.create_rest_client().list_sessions().result(timeout=5)
    assert len(server.fake.calls_to("sessions")) == 1 and len(server.exchanges()) == 1
    service.close()


def test_concurrent_rejections_of_one_token_cost_one_exchange() -> None:
    exchange = ClockedExchange([1000, 1000, 1000])

    async def main() -> None:
        core = JwtCore(exchange, runtime=exchange.runtime)
        first = await core.get()
        a, b = await asyncio.gather(core.replace(first), core.replace(first))
        assert a == b == exchange.tokens[1] and core.exchanges == 2
        assert await core.replace(first) == a and core.exchanges == 2  # already replaced

    asyncio.run(main())


# ---------------------------------------------------------------------------- no leaks


def test_no_credential_in_reprs_errors_logs_or_telemetry(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    time = FakeTime()
    server = JwtServer(time)
    server.fake.inject("create_sampling_session", lambda request: json_response(
        422, {"detail": f"token {request.headers['x-api-key']} / key {KEY} rejected",
              "echo": {"x-api-key": request.headers["x-api-key"]}}))
    with caplog.at_level(logging.DEBUG):
        service = service_for(server.transport, time, telemetry=True)
        with pytest.raises(tinker.UnprocessableEntityError) as info:
            service.create_sampling_client(base_model="m").result(timeout=5)
        shell = service._shell
        texts = [str(info.value), repr(info.value), repr(info.value.body),
                 repr(info.value.__dict__), repr(service), repr(shell), repr(shell.settings),
                 repr(shell.http.auth), repr(shell.http.auth.jwt), repr(shell.secrets),
                 repr(shell.http.auth.primary)]
        service.close().result(timeout=5)
    jwt = server.issued[0]
    assert "<redacted>" in str(info.value)
    batches = [c.body.decode() for c in server.fake.calls_to("telemetry")]
    assert any("UNHANDLED_EXCEPTION" in b for b in batches)
    for secret in (jwt, KEY, jwt.split(".")[1]):
        assert all(secret not in t for t in texts)
        assert secret not in caplog.text
        assert all(secret not in b for b in batches)


def test_telemetry_redacts_secrets_learned_after_it_was_built() -> None:
    secrets = SecretSet([KEY])

    async def send(request: Any) -> None:
        return None

    telemetry = Telemetry(enabled=True, send=send, runtime=FakeTime().runtime,
                          session_id=lambda: None, secrets=secrets)
    secrets.add("eyJ-learned-later-token")
    telemetry.exception(ValueError("saw eyJ-learned-later-token"), where="here")
    event = telemetry._events[0]
    assert "eyJ-learned-later-token" not in event.error_message  # type: ignore[union-attr]


def test_auth_objects_pickle_nothing_and_show_nothing() -> None:
    auth = CredentialAuth(StaticCredential(Secret(KEY)))
    assert KEY not in repr(auth) and KEY not in repr(auth.primary)
    command = CredentialCommand(Secret("echo tml-in-the-command"))
    assert "tml-in-the-command" not in repr(command)
    s = resolve_settings(env={"TINKER_CREDENTIAL_CMD": "echo tml-in-the-command-xyz"})
    assert "tml-in-the-command-xyz" not in repr(s)
    assert "echo tml-in-the-command-xyz" in s.secrets()


# ---------------------------------------------------------------------------- whoami


def test_whoami_reads_the_jwt_claims_without_a_request() -> None:
    time = FakeTime()
    server = JwtServer(time)
    service = service_for(server.transport, time)
    me = service.create_rest_client().whoami().result(timeout=5)
    assert me == WhoamiResponse(user_urn="tml:user:u1", org_urn="tml:organization:org-9",
                                email="u1@example.com")
    assert set(server.fake.paths()) <= {"client/config", "client/dynamic_config", "auth/token"}
    service.close().result(timeout=5)


def test_whoami_without_jwt_mode_and_a_plain_key_raises_clearly() -> None:
    fake = FakeTinker()
    service = service_for(fake.transport)
    with pytest.raises(TinkerError) as info:
        service.create_rest_client().whoami().result(timeout=5)
    message = str(info.value)
    assert message.startswith("RestClient.whoami:") and "pjwt_auth_enabled" in message
    assert KEY not in message
    service.close().result(timeout=5)


def test_whoami_with_a_jwt_key_needs_a_passport_issuer() -> None:
    passport = make_jwt({"iss": "passport-prod", "sub": "tml:user:p", "org_id": 7, "email": "",
                         "iat": 1, "exp": 4_000_000_000})
    other = make_jwt({**CLAIMS, "iss": "someone-else", "iat": 1, "exp": 4_000_000_000})
    assert identity_jwt_of_key(passport) == passport and identity_jwt_of_key(other) is None
    fake = FakeTinker()
    rest = tinker.RestClient(base_url=BASE, api_key=passport, transport=fake.transport,
                             _runtime=FakeTime().runtime)
    assert rest.whoami().result(timeout=5) == WhoamiResponse(
        user_urn="tml:user:p", org_urn="tml:organization:7", email=None)
    assert {c.headers["x-api-key"] for c in fake.calls} == {passport}
    rest.close()
    rest = tinker.RestClient(base_url=BASE, api_key=other, transport=FakeTinker().transport,
                             _runtime=FakeTime().runtime)
    with pytest.raises(TinkerError, match="pjwt_auth_enabled"):
        rest.whoami().result(timeout=5)
    rest.close()


def test_whoami_claims_missing_are_named_not_shown() -> None:
    with pytest.raises(TinkerError, match="'org_id'") as info:
        whoami_from_jwt(make_jwt({"sub": "tml:user:x", "iat": 1, "exp": 2}))
    assert "eyJ" not in str(info.value)


def test_whoami_has_the_official_signature() -> None:
    official = pytest.importorskip("tinker")
    ours: Callable[..., Any] = tinker.RestClient.whoami
    assert list(inspect.signature(ours).parameters) == list(
        inspect.signature(official.RestClient.whoami).parameters)
