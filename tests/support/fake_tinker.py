"""An in-memory Tinker server for shell and client tests.

`FakeTinker` is a plain ``httpx.Request -> httpx.Response`` handler (use it with
``httpx.MockTransport``) that records every request and answers the protocol's happy path.
Faults are injected per path with `FakeTinker.inject`: each matching request consumes the
next action (a response, an exception to raise, or a callable). `serve_http` exposes the
same handler on a real 127.0.0.1 socket for tests that need a second process.

``FakeTinker(older=True)`` answers like a Tinker-compatible server built for older SDKs
(docs/protocol.md §12): asample futures without ``sample_sequence_ids``, forward_backward metrics
without ``loss:sum``, no ``sessions/{id}/finish`` endpoint (``finish_status``: 404 or 405),
``load_weights`` only in the legacy form (a 422 naming ``model_id`` otherwise), and prompt
logprobs for the whole prompt whatever ``prompt_logprobs_last_n`` says. ``json_results=True``
answers forward / forward_backward / sample results as JSON, as servers built for SDKs before
0.25 do.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np

from tinkex_jax.types import ForwardBackwardOutput, SampledSequence, SampleResponse, TensorData
from tinkex_jax.wire import (
    decode_forward_backward_request,
    encode_forward_backward_output,
    encode_sample_response,
    to_builtins,
    zstd_decompress,
)

PROTO = "application/x-protobuf"
Action = httpx.Response | BaseException | Callable[[httpx.Request], "httpx.Response | None"]


@dataclass
class Call:
    """One recorded request."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any = None
    fb: Any = None  # decoded ForwardBackwardRequest
    query: dict[str, str] = field(default_factory=dict)


def json_response(status: int, body: Any, headers: dict[str, str] | None = None
                  ) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


class FakeTinker:
    """A Tinker server in memory; see the module docstring."""

    def __init__(self, *, client_config: dict[str, Any] | None = None,
                 dynamic_config: dict[str, Any] | None = None, session_id: str = "sess-1",
                 pending_polls: int = 0, older: bool = False, finish_status: int = 404,
                 json_results: bool = False) -> None:
        self.older = older
        self.json_results = json_results
        self.finish_status = finish_status
        self.client_config = client_config if client_config is not None else {}
        self.dynamic_config = dynamic_config  # None: answer 404
        self.session_id = session_id
        self.pending_polls = pending_polls
        self.lock = threading.Lock()
        self.calls: list[Call] = []
        self.faults: dict[str, deque[Action]] = defaultdict(deque)
        self.results: dict[str, tuple[str, Any]] = {}
        self.polls_left: dict[str, int] = {}
        self.next_request = 0
        self.sample_ids = 0
        self.models: dict[str, str] = {}

    # ------------------------------------------------------------------ plumbing

    def inject(self, path: str, *actions: Action) -> None:
        """Queue fault actions for requests to ``/api/v1/<path>``."""
        with self.lock:
            self.faults[path].extend(actions)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)

    def paths(self) -> list[str]:
        with self.lock:
            return [c.path for c in self.calls]

    def calls_to(self, path: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.path == path]

    def _record(self, request: httpx.Request) -> Call:
        path = request.url.path.split("/api/v1/", 1)[-1]
        body = request.content
        call = Call(method=request.method, path=path,
                    headers={k.lower(): v for k, v in request.headers.items()}, body=body,
                    query=dict(request.url.params))
        if body and "json" in request.headers.get("content-type", ""):
            call.json = json.loads(body)
        if path == "forward_backward":
            raw = zstd_decompress(body) if request.headers.get("content-encoding") == "zstd" \
                else body
            call.fb = decode_forward_backward_request(raw)
        with self.lock:
            self.calls.append(call)
        return call

    def handler(self, request: httpx.Request) -> httpx.Response:
        call = self._record(request)
        with self.lock:
            queue = self.faults.get(call.path)
            action = queue.popleft() if queue else None
        if action is not None:
            if isinstance(action, BaseException):
                raise action
            if isinstance(action, httpx.Response):
                return action
            response = action(request)
            if response is not None:
                return response
        return self.answer(call)

    def _future(self, kind: str, payload: Any, **extra: Any) -> httpx.Response:
        with self.lock:
            request_id = f"req-{self.next_request}"
            self.next_request += 1
            self.results[request_id] = (kind, payload)
            self.polls_left[request_id] = self.pending_polls
        return json_response(200, {"request_id": request_id, **extra})

    # ------------------------------------------------------------------ happy path

    def answer(self, call: Call) -> httpx.Response:
        path, body = call.path, call.json or {}
        sid = self.session_id
        if path == "client/config":
            return json_response(200, self.client_config)
        if path == "client/dynamic_config":
            if self.dynamic_config is None:
                return json_response(404, {"detail": "Not Found"})
            return json_response(200, self.dynamic_config)
        if path == "create_session":
            return json_response(200, {"session_id": sid})
        if path == "session_heartbeat":
            return json_response(200, {"type": "session_heartbeat"})
        if path == "telemetry":
            return json_response(200, {"status": "accepted"})
        if path.startswith("sessions/") and path.endswith("/finish"):
            if self.older:
                return json_response(self.finish_status, {"detail": "Not Found"
                                                          if self.finish_status == 404
                                                          else "Method Not Allowed"})
            return json_response(200, {})
        if path == "create_model":
            model_id = f"{body['session_id']}:train:{body['model_seq_id']}"
            self.models[model_id] = body["base_model"]
            return self._future("json", {"model_id": model_id, "type": "create_model"})
        if path == "get_info":
            return json_response(200, {"model_id": body["model_id"], "model_data": {
                "model_name": self.models.get(body["model_id"], "base/model"),
                "tokenizer_id": "base/tok:1"}})
        if path == "load_weights":
            if self.older and "model_id" not in body:
                return json_response(422, {"detail": [{
                    "loc": ["body", "model_id"], "msg": "field required",
                    "type": "value_error.missing"}]})
            if "model_seq_id" in body:
                model_id = f"{body['session_id']}:train:{body['model_seq_id']}"
                self.models[model_id] = body.get("base_model") or "base/model"
            return self._future("json", {"path": body["path"], "type": "load_weights"})
        if path == "forward_backward":
            fb = call.fb
            outputs = []
            for datum in fb.data:
                target = datum.loss_fn_inputs["target_tokens"]
                outputs.append({"logprobs": TensorData.from_numpy(
                    np.full(target.shape, -float(fb.seq_id), dtype=np.float32))})
            metrics = {"seq:max": float(fb.seq_id)}
            if not self.older:
                metrics["loss:sum"] = float(len(fb.data))
            output = ForwardBackwardOutput(loss_fn_outputs=outputs, metrics=metrics)
            if self.json_results:
                return self._future("json", to_builtins(output))
            return self._future("proto", encode_forward_backward_output(output))
        if path == "optim_step":
            return self._future("json", {"metrics": {"seq:max": float(body["seq_id"])}})
        if path == "save_weights":
            return self._future("json", {
                "path": f"tinker://{body['model_id']}/weights/{body['path']}"})
        if path == "save_weights_for_sampler":
            if self.older and not body.get("path"):  # no ephemeral saves: named weights
                return self._future("json", {"path": f"tinker://{body['model_id']}/"
                                             f"sampler_weights/ephemeral-{body['seq_id']}"})
            if body.get("path"):
                return self._future("json", {
                    "path": f"tinker://{body['model_id']}/sampler_weights/{body['path']}"})
            return self._future("json", {
                "sampling_session_id": f"{sid}:sample:{body['sampling_session_seq_id']}"})
        if path == "save_weights_external":
            return self._future("json", {
                "path": f"tinker://{body['model_id']}/external_weights/{body['path']}"})
        if path == "create_sampling_session":
            return json_response(200, {
                "sampling_session_id": f"{sid}:sample:{body['sampling_session_seq_id']}"})
        if path.startswith("samplers/"):
            return json_response(200, {"sampler_id": path.split("/", 1)[1],
                                       "base_model": "base/model"})
        if path == "asample":
            n = body["num_samples"]
            with self.lock:
                ids = [f"seq-{self.sample_ids + i}" for i in range(n)]
                self.sample_ids += n
            prompt_len = sum(len(c.get("tokens", [])) for c in body["prompt"]["chunks"])
            response = SampleResponse(
                sequences=[SampledSequence(stop_reason="length",
                                           tokens_np=np.array([1, 2, 3], dtype=np.int32),
                                           logprobs_np=np.array([-0.5] * 3, dtype=np.float32))
                           for _ in range(n)],
                prompt_logprobs_np=self._prompt_logprobs(prompt_len, body)
                if body.get("prompt_logprobs") else None)
            extra = {} if self.older else {"sample_sequence_ids": ids}
            if self.json_results:
                return self._future("json", {
                    "sequences": [{"stop_reason": s.stop_reason, "tokens": s.tokens,
                                   "logprobs": s.logprobs} for s in response.sequences],
                    "prompt_logprobs": response.prompt_logprobs, "type": "sample"}, **extra)
            if self.older:
                return self._future("proto", encode_sample_response(response))
            return self._future("proto", encode_sample_response(response),
                                sample_sequence_ids=ids)
        if path == "retrieve_future":
            request_id = body["request_id"]
            with self.lock:
                if request_id not in self.results:
                    return json_response(404, {"detail": f"unknown request {request_id}"})
                if self.polls_left[request_id] > 0:
                    self.polls_left[request_id] -= 1
                    return json_response(200, {"type": "try_again", "request_id": request_id,
                                               "queue_state": "active"})
                kind, payload = self.results[request_id]
            if kind == "proto":
                return httpx.Response(200, content=payload, headers={"content-type": PROTO})
            return json_response(200, payload)
        if path == "get_server_capabilities":
            return json_response(200, {"supported_models": [{"model_name": "base/model"}]})
        if path == "healthz":
            return json_response(200, {"status": "ok"})
        return self.answer_rest(call)

    def _prompt_logprobs(self, prompt_len: int, body: dict[str, Any]) -> np.ndarray:
        values = np.array([np.nan] + [-1.0] * (prompt_len - 1), dtype=np.float32)
        last_n = body.get("prompt_logprobs_last_n")
        if last_n and not self.older:  # older servers ignore the field
            values[: max(prompt_len - last_n, 0)] = np.nan
        return values

    def answer_rest(self, call: Call) -> httpx.Response:
        path = call.path
        run = {"training_run_id": "run-1", "base_model": "base/model", "model_owner": "me",
               "is_lora": True, "last_request_time": "2026-01-01T00:00:00Z"}
        checkpoint = {"checkpoint_id": "weights/s1", "checkpoint_type": "training",
                      "time": "2026-01-01T00:00:00Z", "tinker_path": "tinker://run-1/weights/s1"}
        if path == "sessions":
            return json_response(200, {"sessions": [self.session_id]})
        if path.startswith("sessions/") and path.endswith("/trace_export"):
            return json_response(200, {"status": "ready", "url": "https://trace"})
        if path.startswith("sessions/") and path.endswith("/project"):
            return json_response(200, {})
        if path.startswith("sessions/"):
            return json_response(200, {"training_run_ids": ["run-1"], "sampler_ids": []})
        if path == "training_runs":
            return json_response(200, {"training_runs": [run],
                                       "cursor": {"offset": 0, "limit": 20, "total_count": 1}})
        if path == "checkpoints" or path.endswith("/checkpoints"):
            return json_response(200, {"checkpoints": [checkpoint]})
        if path.endswith("/external_weights_urls"):
            return json_response(200, {"urls": {"model.safetensors": "https://x"},
                                       "expires": "2026-01-02T00:00:00Z"})
        if path.startswith("training_runs/") and "/checkpoints/" in path:
            return httpx.Response(204)
        if path.startswith("training_runs/"):
            return json_response(200, run)
        if path == "weights_info":
            return json_response(200, {"base_model": "base/model", "is_lora": True,
                                       "lora_rank": 8})
        if path == "copy_weights":
            return json_response(200, {"tinker_path": "tinker://run-2/weights/copy"})
        if path == "billing/usage/events":  # a hosted-style organization with no usage
            return json_response(200, {"data": [], "sessions": {}})
        if path == "billing/usage/checkpoints/current":
            return json_response(200, {"data": []})
        if path == "audit":
            return json_response(200, {"entries": [{
                "timestamp": "2026-01-01T00:00:00Z", "event": "checkpoint_delete",
                "event_details": {"tinker_path": checkpoint["tinker_path"]},
                "model_id": "run-1", "tinker_path": checkpoint["tinker_path"]}]})
        return json_response(404, {"detail": f"no route {path}"})


# ---------------------------------------------------------------------- real socket


@contextlib.contextmanager
def serve_http(fake: FakeTinker) -> Iterator[str]:
    """Serve `fake` on a free 127.0.0.1 port; yields the base URL."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            request = httpx.Request(self.command, f"http://127.0.0.1{self.path}",
                                    headers=dict(self.headers.items()), content=body)
            response = fake.handler(request)
            payload = response.read()
            self.send_response(response.status_code)
            for key, value in response.headers.items():
                if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(key, value)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------- helpers

TEST_KEY = "tml-test-key-0123456789"


def make_service(fake: FakeTinker, fake_time: Any = None, **kwargs: Any) -> Any:
    """A ServiceClient talking to `fake` through a MockTransport, with fake time."""
    import tinkex_jax as tinker
    from tinkex_jax._shell import FakeTime

    runtime = (fake_time or FakeTime()).runtime
    kwargs.setdefault("telemetry", False)
    return tinker.ServiceClient(base_url="http://tinker.test/prefix", api_key=TEST_KEY,
                                transport=fake.transport, _runtime=runtime, **kwargs)


class Scripted:
    """A handler answering from a script of actions (then `default`), recording requests."""

    def __init__(self, *actions: Action, default: Action | None = None) -> None:
        self.actions: deque[Action] = deque(actions)
        self.default = default
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        action = self.actions.popleft() if self.actions else self.default
        if action is None:
            raise AssertionError(f"unexpected request {request.method} {request.url}")
        if isinstance(action, BaseException):
            raise action
        if isinstance(action, httpx.Response):
            return action
        response = action(request)
        assert response is not None
        return response

    def bodies(self) -> list[Any]:
        return [json.loads(r.content) if r.content else None for r in self.requests]
