"""Fuzzing every route of the real server with hypothesis: valid bodies an SDK would send,
mutated (types, sizes, huge and negative ints, NaN / inf, long strings and lists, deep
nesting, raw bytes, truncated and bit-flipped protobuf, bad zstd), and random path and
query parameters. Every answer must be below 500, arrive within the client's timeout
(no hang), and be a JSON error that says something when it is a 4xx; every future an
accepted request made must finish without a server-side failure. Afterwards the server is
healthy and still trains. The number of cases per route is printed.

The quick part runs over the numpy model layer; the slow part over the JAX model layer
(tiny preset), where sampling and training are real."""

from __future__ import annotations

import itertools
import json
import math
import os
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.support.local_fake_backend import FAKE, FakeBackend
from tests.support.local_support import TINY, RawClient, datum
from tinkex_jax.local import LocalServer, serve
from tinkex_jax.types import ForwardBackwardRequest
from tinkex_jax.wire import encode_forward_backward_request, tinker_public_pb2 as pb

TIMEOUT_S = 20.0  # per request: a hang fails the test instead of blocking it
#: Cases per JSON route (TINKEX_FUZZ_EXAMPLES=500 for a deeper run by hand).
EXAMPLES = int(os.environ.get("TINKEX_FUZZ_EXAMPLES", "40"))


# ----------------------------------------------------------------------------- the world


@dataclass
class World:
    """A running server, a client, live ids to build valid bodies from, and the tally."""

    server: LocalServer
    base: str
    raw: RawClient
    http: httpx.Client
    session: str
    model: str
    sampler: str
    state: str
    sampler_path: str
    export: str
    counter: Iterator[int] = field(default_factory=lambda: itertools.count(1000))
    cases: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    futures: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"World({self.server.base_url}, {sum(self.cases.values())} cases)"

    def next(self) -> int:
        return next(self.counter)

    def send(self, route: str, method: str, path: str, *, content: bytes | None = None,
             headers: dict[str, str] | None = None) -> httpx.Response:
        response = self.http.request(method, path, content=content, headers=headers)
        self.cases[route] += 1
        self.statuses[response.status_code] += 1
        assert response.status_code < 500, (route, method, path, content[:300] if content
                                            else None, response.text[:500])
        if response.headers.get("content-type", "").startswith("text/html"):
            assert path.startswith("/console"), path  # console pages are HTML, errors too
        elif response.status_code >= 400:
            body = response.json()  # every other error is JSON with a message
            assert isinstance(body.get("detail"), str) and body["detail"], response.text
        elif "application/json" in response.headers.get("content-type", ""):
            answer = response.json()
            if isinstance(answer, dict) and isinstance(answer.get("request_id"), str):
                self.futures.append(answer["request_id"])
        return response

    def settle(self) -> None:
        """Every future an accepted request made finishes, and none failed on the server's
        side (a server-category failure is a 500 in disguise)."""
        for request_id in self.futures:
            for _ in range(200):
                answer = self.raw.retrieve(request_id)
                assert answer.status_code == 200, answer.text
                if "x-protobuf" in answer.headers["content-type"]:
                    break
                body = answer.json()
                if body.get("type") == "try_again":
                    continue
                assert body.get("category") != "server", (request_id, body)
                break
            else:
                raise AssertionError(f"future {request_id} never finished")
        self.futures.clear()

    def healthy(self) -> None:
        assert self.http.get("/api/v1/healthz").json()["status"] == "ok"
        model = self.raw.create_model(self.raw.session(), base=self.base, rank=2)
        assert self.raw.fb(model, 1, [datum([1, 2, 3])]).metrics["loss:sum"] > 0

    def report(self, label: str) -> str:
        total = sum(self.cases.values())
        per_route = ", ".join(f"{k} {v}" for k, v in sorted(self.cases.items()))
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        return (f"\nfuzz ({label}): {total} cases over {len(self.cases)} routes; answers "
                f"{{{statuses}}}; per route: {per_route}")


def make_world(server: LocalServer, base: str) -> World:
    raw = RawClient(server)
    http = httpx.Client(base_url=server.base_url, timeout=TIMEOUT_S,
                        headers={"X-API-Key": server.api_key})
    session = raw.session()
    model = raw.create_model(session, base=base, rank=2)
    raw.fb(model, 1, [datum([1, 2, 3])])

    def saved(route: str, body: dict[str, Any]) -> str:
        return str(raw.result(raw.ok(route, body)["request_id"])["path"])

    state = saved("save_weights", {"model_id": model, "path": "fz-state", "seq_id": 2})
    sampler_path = saved("save_weights_for_sampler", {"model_id": model, "path": "fz-samp",
                                                      "seq_id": 3})
    export = saved("save_weights_external", {"model_id": model, "path": "fz-ext",
                                             "seq_id": 4})
    sampler = raw.ok("create_sampling_session", {
        "session_id": session, "sampling_session_seq_id": 0,
        "base_model": base})["sampling_session_id"]
    return World(server, base, raw, http, session, model, str(sampler), state, sampler_path,
                 export)


# ----------------------------------------------------------------------------- values


class Raw:
    """Bytes spliced into a JSON body verbatim (what json.dumps cannot write)."""

    def __init__(self, text: str) -> None:
        self.text = text


def nested(depth: int) -> Raw:
    return Raw("[" * depth + "]" * depth)


NASTY: st.SearchStrategy[Any] = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 2**70, -1, -(2**63) - 1,
                     10**12, 10**30, 0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 5e-324, 3.5e38, -0.0, math.nan, math.inf]),
    st.text(max_size=40),
    st.sampled_from(["", "x" * 70_000, "tinker://", "tinker://a/weights/b", "tinker://../../x",
                     "\x00", "sess-ghost", "../../etc/passwd", "eyJhbGciOiJIUzI1NiJ9.e30.x",
                     "é" * 5000]),
    st.none(),
    st.booleans(),
    st.lists(st.integers(min_value=-(2**65), max_value=2**65), max_size=6),
    st.lists(st.text(max_size=6), max_size=4),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=3),
    st.integers(min_value=1, max_value=50_000).map(nested),
    st.integers(min_value=0, max_value=30_000).map(lambda n: ["t"] * n),
    st.integers(min_value=0, max_value=2_000).map(lambda n: {f"k{i}": "v" for i in range(n)}),
)


def paths_of(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += paths_of(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value[:8]):
            out += paths_of(item, (*prefix, i))
    return out


def set_at(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: set_at(value[head], rest, new)}
    copy = list(value)
    copy[head] = set_at(copy[head], rest, new)
    return copy


def drop_at(value: Any, path: tuple[Any, ...]) -> Any:
    if len(path) == 1:
        if isinstance(value, dict):
            return {k: v for k, v in value.items() if k != path[0]}
        return value[: path[0]] + value[path[0] + 1:]
    head = path[0]
    if isinstance(value, dict):
        return {**value, head: drop_at(value[head], path[1:])}
    copy = list(value)
    copy[head] = drop_at(copy[head], path[1:])
    return copy


def encode(value: Any) -> bytes:
    spliced: dict[str, str] = {}

    def default(obj: Any) -> Any:
        if isinstance(obj, Raw):
            marker = f"__raw_{len(spliced)}__"
            spliced[marker] = obj.text
            return marker
        raise TypeError(type(obj))

    text = json.dumps(value, default=default, allow_nan=True)
    for marker, raw in spliced.items():
        text = text.replace(json.dumps(marker), raw)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def mutated(draw: st.DrawFn, valid: Any) -> bytes:
    """A valid JSON body, a mutation of it, or other bytes."""
    kind = draw(st.sampled_from(["valid", "mutate", "mutate", "mutate", "mutate", "bytes",
                                 "truncate", "top"]))
    if kind == "valid":
        return encode(valid)
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "truncate":
        body = encode(valid)
        return body[: draw(st.integers(0, max(len(body) - 1, 0)))]
    if kind == "top":
        return encode(draw(st.one_of(st.lists(st.integers(), max_size=3), st.integers(),
                                     st.text(max_size=5), st.none())))
    value = valid
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths_of(value)))
        op = draw(st.sampled_from(["replace", "replace", "drop", "add"]))
        if op == "drop" and path:
            value = drop_at(value, path)
        elif op == "add":
            target = value if not path else None
            if isinstance(target, dict):
                value = {**target, draw(st.text(max_size=12)): draw(NASTY)}
            else:
                value = set_at(value, path, draw(NASTY))
        else:
            value = set_at(value, path, draw(NASTY))
    return encode(value)


JSON = {"Content-Type": "application/json"}


def headers_for(draw: st.DrawFn, body: bytes) -> tuple[bytes, dict[str, str]]:
    """Usually plain JSON; sometimes zstd (valid, or not a frame at all)."""
    mode = draw(st.sampled_from(["plain"] * 6 + ["zstd", "badzstd"]))
    if mode == "zstd":
        return zstandard.ZstdCompressor().compress(body), {**JSON, "Content-Encoding": "zstd"}
    if mode == "badzstd":
        return body, {**JSON, "Content-Encoding": "zstd"}
    return body, JSON


# ----------------------------------------------------------------------------- JSON routes


def json_routes(w: World) -> dict[str, tuple[str, Callable[[], Any]]]:
    """Route -> (path, a valid body the SDK would send), for every JSON POST / PUT."""
    sample_prompt = {"chunks": [{"type": "encoded_text", "tokens": [1, 2, 3]}]}
    return {
        "client/config": ("client/config", lambda: {"sdk_version": "0.38.0"}),
        "auth/token": ("auth/token", lambda: {}),
        "client/dynamic_config": ("client/dynamic_config", lambda: {"sdk_version": "0.38.0"}),
        "telemetry": ("telemetry", lambda: {"events": [], "platform": "linux",
                                            "sdk_version": "0.38.0", "session_id": w.session}),
        "cancel_future": ("cancel_future", lambda: {"request_id": "req-1"}),
        "create_session": ("create_session", lambda: {
            "tags": ["a"], "user_metadata": {"k": "v"}, "sdk_version": "0.38.0",
            "project_id": "p", "display_name": "d", "type": "create_session"}),
        "session_heartbeat": ("session_heartbeat", lambda: {
            "session_id": w.session, "type": "session_heartbeat"}),
        "finish": ("sessions/{fresh}/finish", lambda: {"reason": {"type": "success"},
                                                       "detail": "done"}),
        "project": ("sessions/{session}/project", lambda: {"project_id": "proj"}),
        "create_model": ("create_model", lambda: {
            "session_id": w.session, "model_seq_id": w.next(), "base_model": w.base,
            "lora_config": {"rank": 2, "seed": 1, "train_attn": True}, "user_metadata": {},
            "type": "create_model"}),
        "get_info": ("get_info", lambda: {"model_id": w.model, "type": "get_info"}),
        "unload_model": ("unload_model", lambda: {"model_id": "sess-x:train:0",
                                                  "type": "unload_model"}),
        "optim_step": ("optim_step", lambda: {
            "model_id": w.model, "seq_id": w.next(), "type": "optim_step",
            "adam_params": {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.95,
                            "eps": 1e-12, "weight_decay": 0.0, "grad_clip_norm": 0.0}}),
        "save_weights": ("save_weights", lambda: {
            "model_id": w.model, "path": f"fz-{w.next()}", "seq_id": w.next(),
            "ttl_seconds": 3600, "user_metadata": {"a": "b"}, "type": "save_weights"}),
        "save_weights_for_sampler": ("save_weights_for_sampler", lambda: {
            "model_id": w.model, "seq_id": w.next(), "sampling_session_seq_id": w.next(),
            "type": "save_weights_for_sampler"}),
        "save_weights_external": ("save_weights_external", lambda: {
            "model_id": w.model, "path": f"fz-x{w.next()}", "seq_id": w.next(),
            "type": "save_weights_external"}),
        "load_weights": ("load_weights", lambda: {
            "session_id": w.session, "model_seq_id": w.next(), "path": w.state,
            "optimizer": True, "type": "load_weights"}),
        "create_sampling_session": ("create_sampling_session", lambda: {
            "session_id": w.session, "sampling_session_seq_id": w.next(),
            "model_path": w.sampler_path, "type": "create_sampling_session"}),
        "join_sampling_session": ("join_sampling_session", lambda: {
            "sampling_session_id": w.sampler, "type": "join_sampling_session"}),
        "asample": ("asample", lambda: {
            "sampling_session_id": w.sampler, "seq_id": w.next(), "num_samples": 2,
            "prompt": sample_prompt, "prompt_logprobs": True, "topk_prompt_logprobs": 2,
            "topk_sample_logprobs": 2, "prompt_alt_tokens_k": 2,
            "sampling_params": {"max_tokens": 3, "temperature": 0.7, "top_k": 5, "top_p": 0.9,
                                "seed": 3, "stop": [7]},
            "type": "sample"}),
        "retrieve_future": ("retrieve_future", lambda: {"request_id": "req-1",
                                                        "allow_metadata_only": False}),
        "weights_info": ("weights_info", lambda: {"tinker_path": w.state}),
        "copy_weights": ("copy_weights", lambda: {
            "source_path": w.state, "session_id": w.session, "model_seq_id": w.next(),
            "ttl_seconds": 7200}),
        "ttl": ("ttl", lambda: {"ttl_seconds": 7200}),
    }


def ckpt_path(path: str, suffix: str = "") -> str:
    run, _, checkpoint = path[len("tinker://"):].partition("/")
    return f"/api/v1/training_runs/{run}/checkpoints/{checkpoint}{suffix}"


def fuzz_json_route(w: World, route: str, data: st.DataObject) -> None:
    template, valid = json_routes(w)[route]
    if route == "finish":  # finishing ends a session: each case gets its own
        template = template.replace("{fresh}", w.raw.session())
    template = template.replace("{session}", w.session)
    body, headers = headers_for(data.draw, data.draw(mutated(valid())))
    if route == "ttl":
        path, method = ckpt_path(w.state, "/ttl"), "PUT"
    else:
        path, method = f"/api/v1/{template}", "PUT" if route == "project" else "POST"
    w.send(route, method, path, content=body, headers=headers)


# ----------------------------------------------------------------------------- protobuf


@st.composite
def fb_bodies(draw: st.DrawFn, w: World) -> bytes:
    """forward_backward bodies: valid, structurally mutated, or byte-mutated protobuf."""
    tokens = draw(st.lists(st.integers(0, 15), min_size=2, max_size=12))
    data = [datum(tokens) for _ in range(draw(st.integers(1, 3)))]
    valid = encode_forward_backward_request(ForwardBackwardRequest(
        model_id=w.model, seq_id=w.next(), data=data, loss_fn="cross_entropy"))
    kind = draw(st.sampled_from(["valid", "struct", "struct", "struct", "truncate", "flip",
                                 "splice", "bytes"]))
    if kind == "valid":
        return valid
    if kind == "truncate":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    if kind == "flip":
        body = bytearray(valid)
        for _ in range(draw(st.integers(1, 8))):
            body[draw(st.integers(0, len(body) - 1))] ^= draw(st.integers(1, 255))
        return bytes(body)
    if kind == "splice":
        at = draw(st.integers(0, len(valid)))
        return valid[:at] + draw(st.binary(min_size=1, max_size=40)) + valid[at:]
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    msg = pb.ForwardBackwardRequest()
    msg.ParseFromString(valid)
    for _ in range(draw(st.integers(1, 4))):
        item = msg.data[draw(st.integers(0, len(msg.data) - 1))]
        which = draw(st.sampled_from(["tokens", "dtype", "dense", "shape", "sparse", "loss_fn",
                                      "config", "seq_id", "model_id", "drop_input", "span",
                                      "chunk", "more_data", "forward_only"]))
        tensor = item.loss_fn_inputs[draw(st.sampled_from(["target_tokens", "weights"]))]
        if which == "tokens":
            item.model_input[0].encoded_text.tokens = draw(st.binary(max_size=64))
        elif which == "dtype":
            tensor.dtype = draw(st.integers(0, 2**31 - 1))  # type: ignore[assignment]
        elif which == "dense":
            tensor.dense = draw(st.binary(max_size=64))
        elif which == "shape":
            del tensor.shape[:]
            tensor.shape.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4)))
        elif which == "sparse":
            csr = tensor.sparse_csr
            csr.values = draw(st.binary(max_size=32))
            csr.crow_indices = np.array(draw(st.lists(st.integers(-5, 2**40), max_size=5)),
                                        np.int64).tobytes()
            csr.col_indices = np.array(draw(st.lists(st.integers(-5, 2**40), max_size=5)),
                                       np.int64).tobytes()
            del tensor.shape[:]
            tensor.shape.extend(draw(st.lists(st.integers(0, 2**62), min_size=2, max_size=2)))
        elif which == "loss_fn":
            msg.loss_fn = draw(st.sampled_from(["ppo", "importance_sampling", "cispo", "dro",
                                                "stable_reinforce", "custom", "", "x" * 500]))
        elif which == "config":
            msg.loss_fn_config[draw(st.text(max_size=12))] = draw(st.floats())
            msg.loss_fn_config_v2[draw(st.text(max_size=12))].text = draw(st.text(max_size=20))
        elif which == "seq_id":
            msg.seq_id = draw(st.integers(-(2**31), 2**31 - 1))
        elif which == "model_id":
            msg.model_id = draw(st.text(max_size=40))
        elif which == "drop_input":
            name = draw(st.sampled_from(["target_tokens", "weights"]))
            if name in item.loss_fn_inputs:
                del item.loss_fn_inputs[name]
        elif which == "span":
            span = item.model_input_spans.add()
            span.sampled_tokens.sequence_id = draw(st.text(max_size=12))
            span.sampled_tokens.offset = draw(st.integers(-(2**63), 2**63 - 1))
            span.sampled_tokens.length = draw(st.integers(-(2**63), 2**63 - 1))
        elif which == "chunk":
            chunk = item.model_input.add()
            choice = draw(st.sampled_from(["image", "dmel", "empty"]))
            if choice == "image":
                chunk.image.data = draw(st.binary(max_size=20))
                chunk.image.expected_tokens = draw(st.integers(-(2**31), 2**31 - 1))
            elif choice == "dmel":
                chunk.dmel.dmel = draw(st.binary(max_size=20))
        elif which == "more_data":
            for _ in range(draw(st.integers(1, 50))):
                msg.data.add().CopyFrom(item)
        else:
            msg.forward_only = draw(st.booleans())
    return bytes(msg.SerializeToString())


def fuzz_forward_backward(w: World, data: st.DataObject) -> None:
    body = data.draw(fb_bodies(w))
    mode = data.draw(st.sampled_from(["proto"] * 6 + ["zstd", "json"]))
    headers = {"Content-Type": "application/x-protobuf"}
    if mode == "zstd":
        body, headers = zstandard.ZstdCompressor().compress(body), {
            **headers, "Content-Encoding": "zstd"}
    elif mode == "json":
        headers = JSON
    w.send("forward_backward", "POST", "/api/v1/forward_backward", content=body,
           headers=headers)


# ----------------------------------------------------------------------------- GET, DELETE

SEGMENT = st.one_of(st.text(max_size=30), st.sampled_from(
    ["..", ".", "%2e%2e", "sess-ghost", "x" * 3000, "\x00", "a/b", "tinker:"]))
QUERY = st.dictionaries(st.sampled_from(["limit", "offset", "event_type", "day", "expires",
                                         "signature"]),
                        st.one_of(st.text(max_size=20), st.integers(-(2**70), 2**70).map(str),
                                  st.sampled_from(["", "1e9", "nan", "2026-13-45", "all"])),
                        max_size=3)


def fuzz_get_route(w: World, data: st.DataObject) -> None:
    segment = data.draw(SEGMENT.map(lambda s: urllib.parse.quote(s, safe="")))
    real = data.draw(st.sampled_from([w.session, w.model, w.sampler, segment]))
    run, _, checkpoint = w.export[len("tinker://"):].partition("/")
    page = data.draw(st.sampled_from(["sessions", "training_runs", "checkpoints", segment]))
    choices = {
        "healthz": ("GET", "/api/v1/healthz"),
        "capabilities": ("GET", "/api/v1/get_server_capabilities"),
        "sessions": ("GET", "/api/v1/sessions"),
        "session": ("GET", f"/api/v1/sessions/{real}"),
        "trace_export": ("GET", f"/api/v1/sessions/{real}/trace_export"),
        "sampler": ("GET", f"/api/v1/samplers/{real}"),
        "training_runs": ("GET", "/api/v1/training_runs"),
        "training_run": ("GET", f"/api/v1/training_runs/{real}"),
        "checkpoints_of_run": ("GET", f"/api/v1/training_runs/{real}/checkpoints"),
        "user_checkpoints": ("GET", "/api/v1/checkpoints"),
        "external_urls": ("GET", f"/api/v1/training_runs/{real}/checkpoints/"
                                 f"{data.draw(st.sampled_from([checkpoint, segment]))}/x/"
                                 "external_weights_urls"),
        "delete_checkpoint": ("DELETE", f"/api/v1/training_runs/{segment}/checkpoints/"
                                        f"weights/{segment}"),
        "publish": (data.draw(st.sampled_from(["POST", "DELETE"])),
                    f"/api/v1/training_runs/{real}/checkpoints/weights/{segment}/publish"),
        "audit": ("GET", "/api/v1/audit"),
        "console": ("GET", f"/console/{page}/{segment}"),
        "files": ("GET", f"/api/v1/files/{data.draw(st.sampled_from([segment, run]))}/"
                         f"{segment}"),
        "unknown": (data.draw(st.sampled_from(["GET", "POST", "PATCH", "DELETE"])),
                    f"/api/v1/{segment}"),
    }
    route = data.draw(st.sampled_from(sorted(choices)))
    method, path = choices[route]
    query = data.draw(QUERY)
    if query:
        path = f"{path}?{urllib.parse.urlencode(query)}"
    w.send(route, method, path)


def fuzz_auth(w: World, data: st.DataObject) -> None:
    """Random credentials on a real route: 401 unless the key is the server's."""
    key = data.draw(st.one_of(st.text(max_size=60), st.sampled_from(
        ["tml-", "tml-local", w.server.api_key + "x", w.server.api_key[:-1], "eyJ.x.y",
         "tml-" + "a" * 5000])))
    sendable = key.isascii() and key.isprintable() and key.strip() == key and key != ""
    headers = {**JSON, "X-API-Key": key} if sendable else JSON
    response = httpx.post(f"{w.server.base_url}/api/v1/create_session", content=b"{}",
                          headers=headers, timeout=TIMEOUT_S)
    w.cases["auth"] += 1
    w.statuses[response.status_code] += 1
    assert response.status_code == 401, (key[:80], response.text)


# ----------------------------------------------------------------------------- the tests

def run_fuzz(w: World, examples: int, routes: list[str]) -> None:
    """`examples` cases per JSON route, twice that for forward_backward and credentials,
    four times for the GET / DELETE routes; then every future settles and the server is
    healthy. A failure prints hypothesis's reproduction."""

    def fuzz(fn: Callable[[st.DataObject], None], count: int) -> None:
        settings(max_examples=count, deadline=None, database=None,
                 suppress_health_check=list(HealthCheck))(given(data=st.data())(fn))()

    def route_case(route: str) -> Callable[[st.DataObject], None]:
        return lambda data: fuzz_json_route(w, route, data)

    for route in routes:
        fuzz(route_case(route), examples)
    fuzz(lambda data: fuzz_forward_backward(w, data), 2 * examples)
    fuzz(lambda data: fuzz_get_route(w, data), 4 * examples)
    fuzz(lambda data: fuzz_auth(w, data), 2 * examples)
    w.settle()
    w.healthy()


@pytest.fixture
def fuzz_world(tmp_path: Any) -> Iterator[World]:
    with serve(tmp_path / "data", base_models=[FAKE], backend=FakeBackend(),
               long_poll_timeout_s=0.2, max_request_tokens=20_000, max_num_samples=64) as s:
        world = make_world(s, FAKE)
        yield world
        world.http.close()


def test_fuzz_every_route(fuzz_world: World, capsys: pytest.CaptureFixture[str]) -> None:
    routes = sorted(json_routes(fuzz_world))
    run_fuzz(fuzz_world, examples=EXAMPLES, routes=routes)
    with capsys.disabled():
        print(fuzz_world.report("numpy model layer"))
    assert sum(fuzz_world.cases.values()) >= EXAMPLES * len(routes)
    assert fuzz_world.statuses[200] > 0 and fuzz_world.statuses[400] > 0


@pytest.mark.slow
def test_fuzz_the_jax_model_layer(tmp_path: Any, jax_backend: Any,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    with serve(tmp_path / "data", base_models=[TINY], backend=jax_backend,
               long_poll_timeout_s=1.0, max_request_tokens=20_000, max_num_samples=16) as s:
        world = make_world(s, TINY)
        heavy = ["asample", "create_model", "load_weights", "optim_step", "save_weights",
                 "save_weights_for_sampler", "create_sampling_session", "copy_weights"]
        run_fuzz(world, examples=max(EXAMPLES // 3, 5), routes=heavy)
        with capsys.disabled():
            print(world.report("JAX model layer, tiny preset"))
        world.http.close()
