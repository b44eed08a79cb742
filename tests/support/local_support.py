"""Shared helpers of the local-backend tests."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np

from tinkex_jax.local import LocalServer
from tinkex_jax.types import Datum, ForwardBackwardOutput, ForwardBackwardRequest, ModelInput
from tinkex_jax.wire import (
    decode_forward_backward_output,
    decode_sample_response,
    encode_forward_backward_request,
)

TINY = "tinkex-jax/tiny"
FAKE = "fake/bigram"


def make_backend() -> Any:
    """A JAX backend over the shipped presets (one per test session: it caches compiled
    models)."""
    from tinkex_jax.local._jax_backend import JaxBackend

    return JaxBackend()


class RawClient:
    """A bare HTTP client speaking the Tinker wire protocol (our own codecs)."""

    def __init__(self, server: LocalServer, api_key: str | None = None) -> None:
        self.http = httpx.Client(base_url=server.base_url, timeout=60.0,
                                 headers={"X-API-Key": api_key or server.api_key})

    def post(self, path: str, body: Any) -> httpx.Response:
        return self.http.post(f"/api/v1/{path}", json=body)

    def ok(self, path: str, body: Any) -> Any:
        response = self.post(path, body)
        assert response.status_code == 200, response.text
        return response.json()

    def session(self) -> str:
        return self.ok("create_session", {"tags": [], "user_metadata": {}, "sdk_version": "t",
                                          "type": "create_session"})["session_id"]

    def create_model(self, session_id: str, seq: int = 0, base: str = FAKE,
                     rank: int = 4) -> str:
        fut = self.ok("create_model", {"session_id": session_id, "model_seq_id": seq,
                                       "base_model": base, "type": "create_model",
                                       "lora_config": {"rank": rank, "seed": 0}})
        return self.result(fut["request_id"])["model_id"]

    def fb_request(self, model_id: str, seq_id: int, data: list[Datum],
                   loss_fn: str = "cross_entropy", forward_only: bool = False,
                   config: dict[str, float] | None = None) -> httpx.Response:
        req = ForwardBackwardRequest(model_id=model_id, seq_id=seq_id, data=data,
                                     loss_fn=loss_fn, forward_only=forward_only,
                                     loss_fn_config=config)
        return self.http.post("/api/v1/forward_backward",
                              content=encode_forward_backward_request(req),
                              headers={"Content-Type": "application/x-protobuf"})

    def retrieve(self, request_id: str) -> httpx.Response:
        return self.post("retrieve_future", {"request_id": request_id,
                                             "allow_metadata_only": False})

    def result(self, request_id: str) -> Any:
        """Poll until done; JSON dict, decoded protobuf bytes, or the failure dict."""
        while True:
            response = self.retrieve(request_id)
            assert response.status_code == 200, response.text
            if "x-protobuf" in response.headers["content-type"]:
                return response.content
            body = response.json()
            if body.get("type") != "try_again":
                return body

    def fb(self, model_id: str, seq_id: int, data: list[Datum], **kw: Any
           ) -> ForwardBackwardOutput:
        response = self.fb_request(model_id, seq_id, data, **kw)
        assert response.status_code == 200, response.text
        out = self.result(response.json()["request_id"])
        assert isinstance(out, bytes), out
        return decode_forward_backward_output(out)

    def optim(self, model_id: str, seq_id: int, lr: float = 0.1) -> Any:
        fut = self.ok("optim_step", {"model_id": model_id, "seq_id": seq_id,
                                     "type": "optim_step",
                                     "adam_params": {"learning_rate": lr}})
        return self.result(fut["request_id"])

    def sample(self, sampler_id: str, seq_id: int, prompt: list[int], **kw: Any) -> Any:
        body = {"sampling_session_id": sampler_id, "seq_id": seq_id, "num_samples": 1,
                "prompt": {"chunks": [{"type": "encoded_text", "tokens": prompt}]},
                "sampling_params": {"max_tokens": 4, "temperature": 0.0}, **kw}
        fut = self.ok("asample", body)
        out = self.result(fut["request_id"])
        assert isinstance(out, bytes), out
        return decode_sample_response(out, fut["sample_sequence_ids"])


def datum(tokens: list[int]) -> Datum:
    """A shifted cross-entropy datum over `tokens`."""
    return Datum(model_input=ModelInput.from_ints(tokens[:-1]),
                 loss_fn_inputs={"target_tokens": np.asarray(tokens[1:], np.int64),
                                 "weights": np.ones(len(tokens) - 1, np.float32)})
