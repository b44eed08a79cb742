"""The official SDK's transport details against the server (fake numpy backend: fast):
zstd-compressed forward_backward bodies, calls split into chunks that arrive out of order,
pyqwest and plain httpx transports."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.support.local_fake_backend import FakeBackend
from tests.support.local_support import FAKE
from tinkex_jax.local import serve

pytestmark = pytest.mark.official

tinker = pytest.importorskip("tinker")
T = tinker.types


def data(n: int) -> list[Any]:
    out = []
    for i in range(n):
        toks = [(i + j) % 14 + 1 for j in range(5)]
        out.append(T.Datum(model_input=T.ModelInput.from_ints(toks[:-1]),
                           loss_fn_inputs={"target_tokens": toks[1:], "weights": [1.0] * 4}))
    return out


@pytest.mark.parametrize("pyqwest", [False, True])
def test_chunked_compressed_calls_accumulate(tmp_path: Any, pyqwest: bool) -> None:
    backend = FakeBackend()
    with serve(tmp_path, base_models=[FAKE], backend=backend, proto_compress_fwdbwd=True,
               fwdbwd_max_chunk_len=1, use_pyqwest_transport=pyqwest) as server:
        sc = tinker.ServiceClient(base_url=server.base_url, api_key=server.api_key)
        chunked = sc.create_lora_training_client(base_model=FAKE, rank=2).result()
        out = chunked.forward_backward(data(3), "cross_entropy").result()
        assert len(out.loss_fn_outputs) == 3
        calls = [c for c in backend.calls if c[0] == "forward_backward"]
        assert len(calls) == 3  # one request per datum
        assert sorted(c[1][0] for c in calls) == [1, 2, 3]
        total = sum(float(o["elementwise_loss"].to_numpy().sum()) for o in out.loss_fn_outputs)
        assert out.metrics["loss:sum"] == pytest.approx(total, rel=1e-5)
        chunked.optim_step(T.AdamParams(learning_rate=0.5)).result()
        # the three chunks' gradients were summed before the step: same as one big request
        backend.calls.clear()
        probe = [data(4)[3]]
        got = chunked.forward(probe, "cross_entropy").result().loss_fn_outputs[0]
        engine = server.engine
        model = engine.training.model(chunked.model_id)
        w = backend.adapter_to_arrays(model.adapter)["w"]
        zero = {"w": np.zeros_like(w)}
        grads = [backend.forward_backward(FAKE, zero, [_item(d)], "cross_entropy", {},
                                          forward_only=False).grads["w"] for d in data(3)]
        np.testing.assert_allclose(w, -0.5 * sum(grads), rtol=1e-5, atol=1e-7)
        assert got["logprobs"].shape in ([4], (4,))
        sc.close("success").result()


def _item(datum: Any) -> Any:
    from tinkex_jax.local._backend import TrainItem

    toks = datum.model_input.to_ints()
    return TrainItem(tokens=np.asarray(toks, np.int32),
                     targets=np.asarray(datum.loss_fn_inputs["target_tokens"].data, np.int64),
                     inputs={"weights": np.ones(len(toks), np.float32)})


def test_dynamic_config_and_telemetry_answers_parse_as_the_official_types(
        fake_server: Any) -> None:
    import httpx

    headers = {"X-API-Key": fake_server.api_key}
    with httpx.Client(base_url=fake_server.base_url, headers=headers) as http:
        dynamic = http.post("/api/v1/client/dynamic_config", json={"sdk_version": "0.38.0"})
        assert dynamic.status_code == 200
        T.ClientDynamicConfigResponse.model_validate(dynamic.json())
        event = {"event": "GENERIC_EVENT", "event_id": "e1", "event_session_index": 0,
                 "severity": "INFO", "timestamp": "2026-11-29T00:00:00Z",
                 "event_name": "probe", "event_data": {}}
        sent = http.post("/api/v1/telemetry", json={
            "events": [event], "platform": "linux", "sdk_version": "0.38.0",
            "session_id": "sess-x"})
        assert sent.status_code == 200
        assert T.TelemetryResponse.model_validate(sent.json()).status == "accepted"
