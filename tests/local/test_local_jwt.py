"""JWT auth end to end (docs/protocol.md §1.3): the local server with ``pjwt_auth_enabled`` over
real HTTP on 127.0.0.1, driven by our SDK (and the official one), fake numpy backend."""

from __future__ import annotations

import doctest
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import tinkex_jax as tinker
import tinkex_jax.local._jwt
from tests.support.local_fake_backend import FakeBackend
from tests.support.local_support import FAKE
from tinkex_jax.errors import TinkerError
from tinkex_jax.local import LocalServer, serve
from tinkex_jax.local._jwt import JwtSigner
from tinkex_jax.types import WhoamiResponse

KEY = "tml-jwt-e2e-key"


@pytest.fixture
def jwt_server(tmp_path: Path) -> Iterator[LocalServer]:
    with serve(tmp_path / "data", base_models=[FAKE], backend=FakeBackend(), api_key=KEY,
               long_poll_timeout_s=0.2, pjwt_auth_enabled=True) as server:
        yield server


def test_jwt_module_doctests() -> None:
    result = doctest.testmod(tinkex_jax.local._jwt, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def signer_of(server: LocalServer) -> JwtSigner:
    signer = server.app.state.jwt_signer
    assert isinstance(signer, JwtSigner)
    return signer


def test_the_server_side_of_the_exchange(jwt_server: LocalServer) -> None:
    with httpx.Client(base_url=f"{jwt_server.base_url}/api/v1", timeout=30) as http:
        config = http.post("client/config", json={"sdk_version": "0.38.0"},
                           headers={"X-API-Key": KEY})
        assert config.status_code == 200 and config.json()["pjwt_auth_enabled"] is True
        # a raw key is refused outside client/config and auth/token
        refused = http.get("training_runs", headers={"X-API-Key": KEY})
        assert refused.status_code == 401 and "auth/token" in refused.json()["detail"]
        minted = http.post("auth/token", json={}, headers={"X-API-Key": KEY})
        assert minted.status_code == 200
        token = minted.json()["jwt"]
        assert http.get("training_runs", headers={"X-API-Key": token}).status_code == 200
        assert http.post("auth/token", json={}, headers={"X-API-Key": "bad"}).status_code == 401
        signer_of(jwt_server).rotate()
        stale = http.get("training_runs", headers={"X-API-Key": token})
        assert stale.status_code == 401
        assert 'error="invalid_token"' in stale.headers["www-authenticate"]


def test_our_sdk_exchanges_uses_and_replaces_the_jwt(jwt_server: LocalServer) -> None:
    signer = signer_of(jwt_server)
    with tinker.ServiceClient(base_url=jwt_server.base_url, api_key=KEY,
                              telemetry=True) as service:
        rest = service.create_rest_client()
        me = rest.whoami().result(timeout=30)
        assert me.user_urn.startswith("tml:user:local-")
        assert me.org_urn == "tml:organization:local" and me.email is None
        training = service.create_lora_training_client(FAKE, rank=2).result(timeout=60)
        assert signer.minted == 1  # every request since the config ran on one JWT
        signer.rotate()  # the server forgets every token: next request gets invalid_token
        runs = rest.list_training_runs().result(timeout=30)
        assert [r.training_run_id for r in runs.training_runs] == [training.model_id]
        auth = service._shell.http.auth
        assert auth.replays == 1 and signer.minted == 2
        assert rest.whoami().result(timeout=30) == me  # same identity from the new token


def test_jwt_auth_off_is_the_default(tmp_path: Path) -> None:
    with serve(tmp_path / "data", base_models=[FAKE], backend=FakeBackend(), api_key=KEY,
               long_poll_timeout_s=0.2) as server:
        assert server.app.state.jwt_signer is None
        with httpx.Client(base_url=f"{server.base_url}/api/v1", timeout=30) as http:
            answer = http.post("auth/token", json={}, headers={"X-API-Key": KEY})
            assert answer.status_code == 404 and "pjwt_auth_enabled" in answer.json()["detail"]
        with tinker.ServiceClient(base_url=server.base_url, api_key=KEY,
                                  telemetry=False) as service:
            rest = service.create_rest_client()
            assert rest.list_training_runs().result(timeout=30).training_runs == []
            with pytest.raises(TinkerError, match="pjwt_auth_enabled"):
                rest.whoami().result(timeout=30)


@pytest.mark.official
def test_the_official_sdk_in_jwt_mode(jwt_server: LocalServer) -> None:
    official: Any = pytest.importorskip("tinker")
    service = official.ServiceClient(base_url=jwt_server.base_url, api_key=KEY)
    rest = official.RestClient(base_url=jwt_server.base_url, api_key=KEY)
    me = rest.whoami().result(timeout=30)
    ours = tinker.ServiceClient(base_url=jwt_server.base_url, api_key=KEY, telemetry=False)
    assert WhoamiResponse(user_urn=me.user_urn, org_urn=me.org_urn, email=me.email) == (
        ours.create_rest_client().whoami().result(timeout=30))
    ours.close().result(timeout=30)
    training = service.create_lora_training_client(base_model=FAKE, rank=2).result(timeout=60)
    signer_of(jwt_server).rotate()
    runs = rest.list_training_runs().result(timeout=30)
    assert training.model_id in [r.training_run_id for r in runs.training_runs]
    service.close("success").result(timeout=30)  # finish also carries a valid JWT
