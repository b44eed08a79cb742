"""Settings resolution (argument > environment > default), URLs, keys, proxies, headers."""

from __future__ import annotations

import pickle

import httpcore
import httpx
import pytest

from tinkex_jax._shell import Settings, build_async_client, join_url, resolve_settings
from tinkex_jax._shell._config import Secret, check_api_key
from tinkex_jax._shell._constants import DEFAULT_BASE_URL
from tinkex_jax._shell._http import default_headers
from tinkex_jax.errors import TinkerError

KEY = "tml-secret-abcdef123456"


def test_defaults_without_environment():
    s = resolve_settings(api_key=KEY, env={})
    assert s.base_url == DEFAULT_BASE_URL
    assert s.project_id is None and s.tags == () and s.telemetry is True
    assert s.max_retries == 10
    assert (s.timeout.read, s.timeout.connect) == (60.0, 5.0)


def test_argument_beats_environment_beats_default():
    env = {"TINKER_API_KEY": "tml-from-env", "TINKER_BASE_URL": "https://env.example/p/",
           "TINKER_PROJECT_ID": "proj-env", "TINKER_TAGS": "b, a,b", "TINKER_TELEMETRY": "off",
           "TINKER_LOG": "debug"}
    from_env = resolve_settings(env=env)
    assert from_env.api_key.reveal() == "tml-from-env"
    assert from_env.base_url == "https://env.example/p"
    assert (from_env.project_id, from_env.tags, from_env.telemetry, from_env.log_level) == (
        "proj-env", ("a", "b"), False, "DEBUG")
    explicit = resolve_settings(api_key=KEY, base_url="http://arg.example", project_id="p-arg",
                                tags=["z"], telemetry=True, env=env)
    assert explicit.api_key.reveal() == KEY
    assert (explicit.base_url, explicit.project_id, explicit.tags, explicit.telemetry) == (
        "http://arg.example", "p-arg", ("z",), True)


def test_empty_environment_values_count_as_unset():
    s = resolve_settings(api_key=KEY, env={"TINKER_BASE_URL": "  ", "TINKER_PROJECT_ID": ""})
    assert s.base_url == DEFAULT_BASE_URL and s.project_id is None


@pytest.mark.parametrize(("base", "expected"), [
    ("https://h/services/tinker-prod", "https://h/services/tinker-prod/api/v1/create_session"),
    ("https://h/services/tinker-prod/", "https://h/services/tinker-prod/api/v1/create_session"),
    ("http://127.0.0.1:9", "http://127.0.0.1:9/api/v1/create_session"),
])
def test_join_url_keeps_path_prefix(base, expected):
    assert join_url(base, "/api/v1/create_session") == expected


def test_missing_key_is_a_clear_error_except_on_loopback():
    with pytest.raises(TinkerError, match="TINKER_API_KEY"):
        resolve_settings(base_url="https://remote.example", env={})
    assert resolve_settings(base_url="http://127.0.0.1:8000", env={}).api_key.reveal() == (
        "tml-local")


def test_malformed_key_error_never_contains_the_key():
    bad = "sk-live-super-secret-value"
    with pytest.raises(TinkerError) as info:
        resolve_settings(api_key=bad, env={})
    assert "tml-" in str(info.value) and bad not in str(info.value)
    assert "super-secret" not in repr(info.value)


def test_jwt_keys_are_accepted_and_expired_ones_rejected():
    import base64
    import json

    def jwt(exp: int) -> str:
        payload = base64.urlsafe_b64encode(json.dumps({"exp": exp}).encode()).decode().rstrip("=")
        return f"eyJhbGciOiJub25lIn0.{payload}.sig"

    check_api_key(jwt(2_000_000_000), now=1_000_000_000)
    with pytest.raises(TinkerError, match="expired") as info:
        check_api_key(jwt(5), now=1_000_000_000)
    assert jwt(5) not in str(info.value)


def test_settings_and_secrets_never_show_the_key():
    s = resolve_settings(api_key=KEY, default_headers={"X-Custom": "custom-header-value"},
                         proxy="http://user:proxy-pass@proxy.example:3128",
                         env={"CLOUDFLARE_ACCESS_CLIENT_SECRET": "cf-secret-value-999"})
    text = repr(s) + str(s) + f"{s.api_key}" + repr(s.api_key)
    for secret in (KEY, "proxy-pass", "cf-secret-value-999", "custom-header-value"):
        assert secret not in text
    assert set(s.secrets()) >= {KEY, "proxy-pass", "cf-secret-value-999"}
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(Secret(KEY))


def test_bad_base_url_timeout_and_retries_are_rejected():
    with pytest.raises(TinkerError, match="base_url"):
        resolve_settings(api_key=KEY, base_url="ftp://x", env={})
    with pytest.raises(TinkerError, match="timeout"):
        resolve_settings(api_key=KEY, timeout=-1, env={})
    with pytest.raises(TinkerError, match="max_retries"):
        resolve_settings(api_key=KEY, max_retries=-2, env={})


def test_explicit_proxy_reaches_the_connection_pool():
    client = build_async_client(resolve_settings(api_key=KEY, proxy="http://127.0.0.1:3128",
                                                 env={}))
    transport = client._transport_for_url(httpx.URL("https://api.example/x"))
    pool = transport._pool  # type: ignore[attr-defined]
    assert isinstance(pool, httpcore.AsyncHTTPProxy)
    assert pool._proxy_url.host == b"127.0.0.1" and pool._proxy_url.port == 3128


def test_environment_proxies_are_mounted_through_trust_env(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3129")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    client = build_async_client(resolve_settings(api_key=KEY, env={}))
    proxied = client._transport_for_url(httpx.URL("https://api.example/x"))
    assert isinstance(proxied._pool, httpcore.AsyncHTTPProxy)  # type: ignore[attr-defined]
    direct = client._transport_for_url(httpx.URL("https://internal.example/x"))
    assert not isinstance(direct._pool, httpcore.AsyncHTTPProxy)  # type: ignore[attr-defined]
    untrusting = build_async_client(resolve_settings(api_key=KEY, trust_env=False, env={}))
    assert not isinstance(untrusting._transport_for_url(  # type: ignore[attr-defined]
        httpx.URL("https://api.example/x"))._pool, httpcore.AsyncHTTPProxy)


def test_default_headers_and_overrides():
    s = resolve_settings(api_key=KEY, default_headers={"User-Agent": "mine", "X-Team": "a"},
                         env={"CLOUDFLARE_ACCESS_CLIENT_ID": "cf-id",
                              "CLOUDFLARE_ACCESS_CLIENT_SECRET": "cf-secret"})
    headers = default_headers(s)
    assert headers["User-Agent"] == "mine" and headers["X-Team"] == "a"
    assert headers["CF-Access-Client-Id"] == "cf-id"
    assert headers["CF-Access-Client-Secret"] == "cf-secret"
    assert headers["X-Stainless-Async"] == "async:asyncio"
    assert "X-API-Key" not in headers  # set by the auth flow, not a default header


def test_settings_is_frozen():
    s = resolve_settings(api_key=KEY, env={})
    assert isinstance(s, Settings)
    with pytest.raises(AttributeError):
        s.base_url = "x"  # type: ignore[misc]


def test_tinker_log_sets_the_sdk_logger_level():
    import logging

    from tinkex_jax._shell._http import configure_logging

    logger = logging.getLogger("tinkex_jax")
    before = logger.level
    try:
        configure_logging(resolve_settings(api_key=KEY, env={"TINKER_LOG": "debug"}))
        assert logger.level == logging.DEBUG
        configure_logging(resolve_settings(api_key=KEY, env={"TINKER_LOG": "warning"}))
        assert logger.level == logging.WARNING
    finally:
        logger.setLevel(before)
