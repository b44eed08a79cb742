"""The wire types added for the official SDK's surface: billing, sessions, custom-loss graphs,
future results and DmelChunk. Bad requests fail on construction; responses decode from the
JSON the hosted service sends; structs own their data."""

from __future__ import annotations

import base64
import datetime as dt

import msgspec
import pytest

from tinkex_jax.errors import ValidationError
from tinkex_jax.types import (
    AuthTokenResponse,
    BillingUsageResponse,
    ClientFinishedSessionStatusQuery,
    CreateCustomLossRequest,
    CustomLossGraph,
    CustomLossInput,
    CustomLossNode,
    DmelChunk,
    ForwardBackwardInput,
    FutureFailed,
    FutureFinished,
    GetBillingUsageRequest,
    ModelInput,
    RequestErrorCategory,
    SamplingSessionFuturesTarget,
    SessionSearchCursor,
    SessionSearchRequest,
    SessionStatus,
    SessionSummary,
    UserSearchOwner,
)
from tinkex_jax.types._dmel import tensor_container_shape

UTC = dt.UTC
HOUR = dt.datetime(2026, 1, 1, tzinfo=UTC)


def dmel_bytes(frames: int, bins: int = 80) -> bytes:
    """A float16 tensor header ([frames, bins], frames as a varint) and zero payload."""
    varint = bytearray()
    n = frames
    while True:
        byte, n = n & 0x7F, n >> 7
        varint.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes([1, 2]) + bytes(varint) + bytes([bins]) + bytes(frames * bins * 2)


# --------------------------------------------------------------------------- DmelChunk


def test_dmel_chunk_length_is_the_first_dimension():
    for frames in (1, 50, 300):
        chunk = DmelChunk(dmel=dmel_bytes(frames))
        assert chunk.length == frames and chunk.type == "dmel"
    assert tensor_container_shape(bytes([254, 3, 1, 7])) == (7,)  # constant-tensor marker


def test_dmel_chunk_round_trips_as_base64_json():
    chunk = DmelChunk(dmel=dmel_bytes(3))
    wire = msgspec.json.encode(chunk)
    assert msgspec.json.decode(wire)["dmel"] == base64.b64encode(chunk.dmel).decode()
    assert msgspec.json.decode(wire, type=DmelChunk) == chunk
    assert DmelChunk(dmel=base64.b64encode(chunk.dmel).decode()) == chunk


def test_dmel_chunk_owns_its_bytes_and_joins_a_model_input():
    raw = bytearray(dmel_bytes(4))
    chunk = DmelChunk(dmel=raw)
    raw[2] = 99
    assert chunk.length == 4 and isinstance(chunk.dmel, bytes)
    assert ModelInput(chunks=[chunk]).length == 4


@pytest.mark.parametrize("bad, fragment", [
    (b"", "valid header"), (bytes([9, 1, 4]), "unknown dtype byte 9"),
    (bytes([1, 2, 0x80]), "ends in the middle"), (bytes([1, 0]), "at least one dimension"),
    ("not base64!", "base64"), (123, "serialized tensor bytes")])
def test_dmel_chunk_rejects_what_the_server_could_not_size(bad, fragment):
    with pytest.raises(ValidationError, match=r"DmelChunk\.dmel") as caught:
        DmelChunk(dmel=bad)
    assert fragment in str(caught.value)


# --------------------------------------------------------------------------- billing


def test_billing_window_is_whole_hours_and_at_most_two_weeks():
    ok = GetBillingUsageRequest(starting_on=HOUR, ending_before=HOUR + dt.timedelta(days=14))
    assert ok.ending_before - ok.starting_on == dt.timedelta(days=14)
    for start, end, where in [
        (HOUR.replace(minute=30), HOUR + dt.timedelta(hours=2), "starting_on"),
        (HOUR.replace(tzinfo=None), HOUR, "starting_on"),
        (HOUR, HOUR, "ending_before"),
        (HOUR, HOUR + dt.timedelta(days=15), "ending_before")]:
        with pytest.raises(ValidationError, match=rf"GetBillingUsageRequest\.{where}"):
            GetBillingUsageRequest(starting_on=start, ending_before=end)


def test_billing_usage_decodes_every_event_kind():
    events = [{"type": "training", "token_count": 10},
              {"type": "sampling_prefill", "cached": True, "token_count": 5},
              {"type": "sampling_sample", "token_count": 7},
              {"type": "checkpoint", "count": 2},
              {"type": "storage", "gigabyte_hours": 1.5}]
    body = {"data": [{"bucket_start": "2026-01-01T00:00:00Z",
                      "bucket_end": "2026-01-01T01:00:00Z", "session_id": "s1",
                      "event_info": e, "new_field": 1} for e in events],
            "sessions": {"s1": {"user_metadata": {"exp": "a"}}}}
    page = msgspec.json.decode(msgspec.json.encode(body), type=BillingUsageResponse)
    assert [e.event_info.type for e in page.data] == [e["type"] for e in events]
    assert page.data[4].event_info.free is False
    assert page.sessions["s1"].user_metadata == {"exp": "a"}
    with pytest.raises(TypeError):
        page.sessions["s2"] = page.sessions["s1"]  # a built struct's mapping is read-only


# --------------------------------------------------------------------------- sessions


def test_session_search_request_validates_and_encodes_its_unions():
    request = SessionSearchRequest(
        owner=UserSearchOwner(owner_urns=["tml:user:1"]),
        statuses=[ClientFinishedSessionStatusQuery(reasons=["errored"])], limit=200)
    body = msgspec.json.decode(msgspec.json.encode(request))
    assert body["owner"] == {"type": "user", "owner_urns": ["tml:user:1"]}
    assert body["statuses"] == [{"type": "client_finished", "reasons": ["errored"]}]
    for kwargs, where in [({"limit": 0}, "limit"), ({"limit": 201}, "limit"),
                          ({"display_name": ""}, "display_name"), ({"statuses": []}, "statuses")]:
        with pytest.raises(ValidationError, match=rf"SessionSearchRequest\.{where}"):
            SessionSearchRequest(**kwargs)
    with pytest.raises(ValidationError, match="1 to 10 user URNs"):
        UserSearchOwner(owner_urns=[f"u{i}" for i in range(11)])
    with pytest.raises(ValidationError, match="'success', 'errored' or 'interrupted'"):
        ClientFinishedSessionStatusQuery(reasons=["crashed"])
    with pytest.raises(ValidationError, match="timezone-aware"):
        SessionSearchCursor(last_created_at=HOUR.replace(tzinfo=None), last_session_id="s")


def test_session_statuses_decode_by_type():
    raw = [{"type": "active"}, {"type": "cancelled", "detail": "quota"},
           {"type": "client_finished", "reason": {"type": "interrupted"}},
           {"type": "failed", "category": "internal", "message": "oom",
            "reason": {"type": "training_run", "training_run_id": "r1"}}]
    statuses = msgspec.json.decode(msgspec.json.encode(raw), type=list[SessionStatus])
    assert [s.type for s in statuses] == ["active", "cancelled", "client_finished", "failed"]
    assert statuses[2].reason.type == "interrupted"
    assert statuses[3].reason.training_run_id == "r1"
    summary = msgspec.json.decode(msgspec.json.encode(
        {"session_id": "s", "created_at": "2026-01-01T00:00:00Z", "owner": "u", "project_id": "p",
         "checkpoints_count": 0}), type=SessionSummary)
    assert summary.status is None and summary.created_at.tzinfo is not None


# --------------------------------------------------------------------------- custom loss


def test_custom_loss_types_validate():
    output = CustomLossNode(op="output", name="output", target="output", args=[{"ref": "x"}])
    graph = CustomLossGraph(nodes=[output])
    request = CreateCustomLossRequest(session_id="s", custom_loss_seq_id=0, name="nll",
                                      inputs=[CustomLossInput(name="logprobs", rank=1)],
                                      graph=graph)
    assert msgspec.to_builtins(request)["type"] == "create_custom_loss"
    with pytest.raises(ValidationError, match=r"CustomLossNode\.op"):
        CustomLossNode(op="exec", name="x", target="eval")
    with pytest.raises(ValidationError, match="ending with an 'output' node"):
        CustomLossGraph(nodes=[])
    with pytest.raises(ValidationError, match="0, 1 or 2"):
        CustomLossInput(name="w", rank=3)
    with pytest.raises(ValidationError, match="custom_loss_seq_id"):
        CreateCustomLossRequest(session_id="s", custom_loss_seq_id=-1, name="n", inputs=[],
                                graph=graph)


# --------------------------------------------------------------------------- futures


def test_future_completions_decode_as_a_union_on_state():
    events = msgspec.json.decode(
        b'[{"state": "finished", "request_id": "a", "response_payload_uncompressed_size": 9},'
        b' {"state": "failed", "request_id": "b"}]', type=list[FutureFinished | FutureFailed])
    assert [(type(e).__name__, e.state, e.request_id) for e in events] == [
        ("FutureFinished", "finished", "a"), ("FutureFailed", "failed", "b")]
    assert events[0].response_payload_uncompressed_size == 9


def test_small_official_names():
    assert RequestErrorCategory("user") is RequestErrorCategory.User
    assert SamplingSessionFuturesTarget(sampling_session_id="s").type == "sampling_session"
    token = AuthTokenResponse(jwt="eyJ.secret.sig")
    assert "secret" not in repr(token) and token.jwt == "eyJ.secret.sig"
    with pytest.raises(ValidationError, match=r"ForwardBackwardInput\.loss_fn"):
        ForwardBackwardInput(data=[], loss_fn="")
