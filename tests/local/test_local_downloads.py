"""Download URLs of exported weights: signed (HMAC over the file and the expiry under the
server's secret) and expiring, enforced by the real app with a pinned clock; the official
SDK's and tinkex_jax's download code use the URLs as given."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

import tinkex_jax
from tests.support.local_fake_backend import FAKE, FakeBackend
from tests.support.local_support import RawClient
from tinkex_jax.local import ServerConfig, serve
from tinkex_jax.local._app import create_app
from tinkex_jax.local._effects import Effects
from tinkex_jax.local._engine import Engine

KEY = "tml-downloads-key"
NOW = [1_000_000.0]


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    """The real app over a pinned clock; yields a client and an export's URL endpoint."""
    config = ServerConfig(data_dir=tmp_path, base_models=(FAKE,), warm_up=False, api_key=KEY,
                          download_url_lifetime_s=600.0, long_poll_timeout_s=0.2)
    NOW[0] = 1_000_000.0
    engine = Engine(config, FakeBackend(), effects=Effects(clock=lambda: NOW[0]))
    with TestClient(create_app(engine), headers={"X-API-Key": KEY}) as client:
        sid = client.post("/api/v1/create_session", json={}).json()["session_id"]
        model = result(client, client.post("/api/v1/create_model", json={
            "session_id": sid, "model_seq_id": 0, "base_model": FAKE,
            "lora_config": {"rank": 2}}).json())["model_id"]
        result(client, client.post("/api/v1/save_weights_external", json={
            "model_id": model, "path": "hf", "seq_id": 1}).json())
        yield client, f"/api/v1/training_runs/{model}/checkpoints/external_weights/hf"


def result(client: TestClient, future: dict[str, Any]) -> Any:
    while True:
        answer = client.post("/api/v1/retrieve_future",
                             json={"request_id": future["request_id"]}).json()
        if answer.get("type") != "try_again":
            return answer


def path_of(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.path}?{parts.query}"


def query_of(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


def test_signed_urls_work_until_they_expire(app: tuple[TestClient, str]) -> None:
    client, endpoint = app
    answer = client.get(f"{endpoint}/external_weights_urls").json()
    url = answer["urls"]["adapter_config.json"]
    query = query_of(url)
    assert int(query["expires"]) == 1_000_600 and len(query["signature"]) == 64
    assert answer["expires"] == "1970-01-12T13:56:40Z"  # the same instant, as ISO
    anonymous = TestClient(client.app)  # no key: the URL is the credential
    assert anonymous.get(path_of(url)).json() == {"peft_type": "LORA"}
    NOW[0] += 599
    assert anonymous.get(path_of(url)).status_code == 200
    NOW[0] += 1
    expired = anonymous.get(path_of(url))
    assert expired.status_code == 403 and "expired" in expired.json()["detail"]
    assert "get_external_weights_urls" in expired.json()["detail"]
    fresh = client.get(f"{endpoint}/external_weights_urls").json()["urls"]
    assert anonymous.get(path_of(fresh["adapter_config.json"])).status_code == 200


def test_unsigned_forged_or_altered_urls_are_refused(app: tuple[TestClient, str]) -> None:
    client, endpoint = app
    urls = client.get(f"{endpoint}/external_weights_urls").json()["urls"]
    url = urls["adapter_config.json"]
    parts = urllib.parse.urlsplit(url)
    query = query_of(url)
    anonymous = TestClient(client.app)

    def get(path: str, **params: Any) -> Any:
        return anonymous.get(f"{path}?{urllib.parse.urlencode(params)}" if params else path)

    bare = get(parts.path)  # the directory name alone is no longer a credential
    assert bare.status_code == 403 and "no signature" in bare.json()["detail"]
    later = get(parts.path, expires=int(query["expires"]) + 3600, signature=query["signature"])
    assert later.status_code == 403 and "not valid" in later.json()["detail"]
    forged = get(parts.path, expires=query["expires"], signature="0" * 64)
    assert forged.status_code == 403
    other_file = urllib.parse.urlsplit(urls["adapter_model.safetensors"]).path
    assert get(other_file, **query).status_code == 403  # a signature covers one file
    assert get(parts.path, expires="soon", signature=query["signature"]).status_code == 403
    meta = parts.path.rsplit("/", 1)[0] + "/meta.json"  # never listed, so never signed
    assert get(meta, **query).status_code == 403
    assert get(parts.path, **query).status_code == 200


def test_a_restarted_server_does_not_honour_old_urls(tmp_path: Path) -> None:
    with serve(tmp_path, base_models=[FAKE], backend=FakeBackend()) as server:
        raw = RawClient(server)
        model = raw.create_model(raw.session())
        raw.result(raw.ok("save_weights_external", {"model_id": model, "path": "hf",
                                                    "seq_id": 1})["request_id"])
        endpoint = f"/api/v1/training_runs/{model}/checkpoints/external_weights/hf"
        old = raw.http.get(f"{endpoint}/external_weights_urls").json()["urls"]
    with serve(tmp_path, base_models=[FAKE], backend=FakeBackend()) as server:
        raw = RawClient(server)
        stale = raw.http.get(path_of(old["adapter_config.json"]))
        assert stale.status_code == 403
        new = raw.http.get(f"{endpoint}/external_weights_urls").json()["urls"]
        assert raw.http.get(path_of(new["adapter_config.json"])).status_code == 200


@pytest.mark.parametrize("sdk_name", ["tinkex_jax", "official"])
def test_sdk_download_code_uses_the_signed_urls(tmp_path: Path, sdk_name: str) -> None:
    import httpx

    sdk: Any = tinkex_jax if sdk_name == "tinkex_jax" else pytest.importorskip("tinker")
    with serve(tmp_path, base_models=[FAKE], backend=FakeBackend()) as server:
        service = sdk.ServiceClient(base_url=server.base_url, api_key=server.api_key)
        try:
            training = service.create_lora_training_client(base_model=FAKE, rank=2).result()
            path = training.save_weights_external("hf").result().path
            rest = sdk.RestClient(base_url=server.base_url, api_key=server.api_key)
            urls = rest.get_external_weights_urls(path).result().urls
            assert set(urls) == {"adapter_config.json", "adapter_model.safetensors"}
            assert httpx.get(urls["adapter_config.json"]).json() == {"peft_type": "LORA"}
        finally:
            service.close("success").result()
