"""No acknowledged save is silently lost: a server killed with SIGKILL in the middle of a save
(at controlled points, through the ``TINKEX_LOCAL_PAUSE_AT`` hook), then restarted on the same
data directory, either has the checkpoint (listed and loadable) or says the save failed when
its future is retrieved; either way no temporary is left. Also: files are fsynced before
the rename, and finished sessions' rows are pruned.

The servers run in child processes over the numpy fake backend (`tests/support/subprocess_server.py`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import tinkex_jax
from tests.support.local_support import FAKE, datum
from tests.support.subprocess_server import ChildServer
from tinkex_jax.errors import RequestFailedError
from tinkex_jax.local._storage import CheckpointRow, RunRow, SamplerRow, SessionRow, Storage
from tinkex_jax.wire import encode_forward_backward_request

TYPES = {"weights": "save_weights", "sampler_weights": "save_weights_for_sampler"}


class Raw:
    """The wire protocol over httpx, against a `ChildServer`."""

    def __init__(self, server: ChildServer) -> None:
        self.http = httpx.Client(base_url=f"{server.base_url}/api/v1", timeout=30,
                                 headers={"X-API-Key": server.api_key})

    def ok(self, path: str, body: Any) -> Any:
        response = self.http.post(path, json=body)
        assert response.status_code == 200, response.text
        return response.json()

    def result(self, request_id: str) -> Any:
        while True:
            response = self.http.post("retrieve_future", json={"request_id": request_id,
                                                               "allow_metadata_only": False})
            assert response.status_code == 200, response.text
            if "json" not in response.headers["content-type"]:
                return response.content
            body = response.json()
            if body.get("type") != "try_again":
                return body

    def session(self) -> str:
        return str(self.ok("create_session", {"tags": [], "user_metadata": {},
                                               "sdk_version": "t"})["session_id"])

    def model(self, session_id: str) -> str:
        future = self.ok("create_model", {"session_id": session_id, "model_seq_id": 0,
                                          "base_model": FAKE, "lora_config": {"rank": 4,
                                                                              "seed": 0}})
        return str(self.result(future["request_id"])["model_id"])

    def train_step(self, model_id: str, seq_id: int) -> None:
        from tinkex_jax.types import ForwardBackwardRequest

        body = encode_forward_backward_request(ForwardBackwardRequest(
            model_id=model_id, seq_id=seq_id, data=[datum([1, 2, 3, 4, 5])],
            loss_fn="cross_entropy"))
        response = self.http.post("forward_backward", content=body,
                                  headers={"Content-Type": "application/x-protobuf"})
        assert response.status_code == 200, response.text
        self.result(response.json()["request_id"])
        step = self.ok("optim_step", {"model_id": model_id, "seq_id": seq_id + 1,
                                      "adam_params": {"learning_rate": 0.5}})
        self.result(step["request_id"])


@pytest.fixture
def child(tmp_path: Path) -> Iterator[ChildServer]:
    server = ChildServer(tmp_path / "data")
    yield server
    server.kill()


def _leftovers(data_dir: Path) -> list[str]:
    """Checkpoint directories no row points to, and temporaries."""
    st = Storage(data_dir)
    try:
        known = {r["dir"] for r in st._query("SELECT dir FROM checkpoints")}
        return sorted(p.name for p in st.checkpoint_root.iterdir() if p.name not in known)
    finally:
        st.close()


@pytest.mark.parametrize("point, kind, completes", [
    pytest.param("save:start", "weights", False, marks=pytest.mark.slow),
    pytest.param("save:staged", "weights", False, marks=pytest.mark.slow),
    ("save:renamed", "weights", True),
    pytest.param("save:staged", "sampler_weights", False, marks=pytest.mark.slow),
    pytest.param("save:renamed", "sampler_weights", True, marks=pytest.mark.slow),
])
def test_a_save_killed_mid_way_completes_or_is_reported_failed(
        child: ChildServer, point: str, kind: str, completes: bool) -> None:
    child.start(env={"TINKEX_LOCAL_PAUSE_AT": point})
    raw = Raw(child)
    model_id = raw.model(raw.session())
    raw.train_step(model_id, 1)
    ack = raw.ok(TYPES[kind], {"model_id": model_id, "path": "ckpt", "seq_id": 3,
                               "type": TYPES[kind]})
    request_id = ack["request_id"]  # acknowledged: the client holds the id
    child.wait_for_file(f"paused-at-{point.replace(':', '-')}")
    if point == "save:staged":  # the files were written and synced, not yet renamed
        staged = [p for p in (child.data_dir / "checkpoints").iterdir()
                  if p.name.startswith(".tmp-")]
        assert len(staged) == 1 and (staged[0] / "meta.json").exists()
    child.kill()

    child.start()
    raw = Raw(child)
    outcome = raw.result(request_id)
    path = f"tinker://{model_id}/{kind}/ckpt"
    listed = raw.http.get(f"training_runs/{model_id}/checkpoints").json()["checkpoints"]
    if completes:
        assert outcome == {"path": path, "type": TYPES[kind]}
        assert [c["tinker_path"] for c in listed] == [path]
        info = raw.ok("weights_info", {"tinker_path": path})
        assert info["base_model"] == FAKE and info["lora_rank"] == 4
        # loadable: a new training client from it, and a sampler over it
        session = raw.session()
        loaded = raw.ok("load_weights", {"path": path, "session_id": session,
                                         "model_seq_id": 0, "optimizer": False})
        assert raw.result(loaded["request_id"])["model_id"] == f"{session}:train:0"
        raw.ok("create_sampling_session", {"session_id": session,
                                           "sampling_session_seq_id": 0, "model_path": path})
    else:
        assert outcome["category"] == "server"
        assert "stopped" in outcome["error"] and "nothing was saved" in outcome["error"]
        assert listed == []
        assert raw.http.post("weights_info", json={"tinker_path": path}).status_code == 404
    # request ids of the new process never repeat the old ones
    assert raw.ok("create_session", {})["session_id"]
    fresh = raw.ok("create_model", {"session_id": raw.session(), "model_seq_id": 0,
                                    "base_model": FAKE})["request_id"]
    assert fresh.split("-")[1] != request_id.split("-")[1]
    child.stop()
    assert _leftovers(child.data_dir) == []


@pytest.mark.slow
@pytest.mark.parametrize("completes", [True, False], ids=["completed", "failed"])
def test_our_sdk_future_sees_the_outcome_after_a_restart(child: ChildServer,
                                                         completes: bool) -> None:
    point = "save:renamed" if completes else "save:start"
    child.start(env={"TINKEX_LOCAL_PAUSE_AT": point})
    with tinkex_jax.ServiceClient(base_url=child.base_url, api_key=child.api_key) as service:
        training = service.create_lora_training_client(FAKE, rank=4, seed=1).result()
        training.forward_backward([datum([3, 1, 4, 1, 5])], "cross_entropy").result()
        training.optim_step(tinkex_jax.types.AdamParams(learning_rate=0.5)).result()
        future = training.save_state("resume-here")
        child.wait_for_file(f"paused-at-{point.replace(':', '-')}")
        child.kill()
        child.start()
        if completes:
            path = future.result().path
            assert path == f"tinker://{training.model_id}/weights/resume-here"
            resumed = service.create_training_client_from_state_with_optimizer(path).result()
            assert resumed.model_id != training.model_id  # that one died with the process
            out = resumed.forward([datum([3, 1, 4, 1, 5])], "cross_entropy").result()
            assert np.isfinite(out.loss_fn_outputs[0]["logprobs"].to_numpy()).all()
        else:
            with pytest.raises(RequestFailedError, match="stopped"):
                future.result()


def test_a_checkpoint_is_fsynced_before_it_is_renamed_into_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tinkex_jax.local import _storage

    st = Storage(tmp_path)
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, Path.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(self: Path, target: Any) -> Any:
        events.append(("rename", str(self)))
        return real_rename(self, target)

    monkeypatch.setattr(_storage.os, "fsync", fsync)
    monkeypatch.setattr(Path, "rename", rename)
    staged = st.new_checkpoint_dir()
    (staged / "sub").mkdir()
    (staged / "adapter.safetensors").write_bytes(b"a" * 10)
    (staged / "sub" / "meta.json").write_text("{}")
    row = st.add_checkpoint(CheckpointRow(
        run_id="r", checkpoint_id="weights/w", kind="weights", name="w",
        tinker_path="tinker://r/weights/w", dir="", created_at=0.0), staged)
    rename_at = events.index(("rename", str(staged)))
    synced_before = {path for what, path in events[:rename_at] if what == "fsync"}
    assert {str(staged / "adapter.safetensors"), str(staged / "sub" / "meta.json"),
            str(staged / "sub"), str(staged)} <= synced_before
    assert ("fsync", str(st.checkpoint_root)) in events[rename_at:]  # the rename itself
    assert (st.checkpoint_root / row.dir / "sub" / "meta.json").read_text() == "{}"
    st.close()


def test_finished_sessions_are_pruned(tmp_path: Path) -> None:
    clock = [1000.0]
    st = Storage(tmp_path, clock=lambda: clock[0])
    for sid in ("done", "live"):
        st.create_session(SessionRow(session_id=sid, created_at=0.0))
        for seq in range(3):
            st.create_sampler(SamplerRow(sampler_id=f"{sid}:sample:{seq}", session_id=sid,
                                         seq_id=seq, base_model=FAKE, created_at=0.0))
    for seq in range(2):
        st.create_run(RunRow(run_id=f"done:train:{seq}", session_id="done", model_seq_id=seq,
                             base_model=FAKE, lora_rank=4, lora_seed=0, lora_alpha=32.0,
                             train_attn=True, train_mlp=True, train_unembed=True,
                             created_at=0.0, last_request_time=0.0))
    staged = st.new_checkpoint_dir()  # done:train:0 holds a checkpoint: it stays
    (staged / "meta.json").write_text("{}")
    st.add_checkpoint(CheckpointRow(run_id="done:train:0", checkpoint_id="weights/w",
                                    kind="weights", name="w", dir="", created_at=0.0,
                                    tinker_path="tinker://done:train:0/weights/w"), staged)
    st.finish_session("done", "user_requested", None)  # at t=1000
    assert st.prune_finished(samplers_before=999.0, sessions_before=None) == 0
    clock[0] = 5000.0
    assert st.prune_finished(samplers_before=4000.0, sessions_before=None) == 3
    assert st.samplers_of_session("done") == [] and len(st.samplers_of_session("live")) == 3
    assert st.get_session("done") is not None
    assert st.prune_finished(samplers_before=4000.0, sessions_before=4000.0) == 1
    assert st.get_run("done:train:1") is None and st.get_run("done:train:0") is not None
    assert st.get_session("done") is not None  # a run of it holds a checkpoint
    st.delete_checkpoint("done:train:0", "weights/w")
    assert st.prune_finished(samplers_before=4000.0, sessions_before=4000.0) == 2
    assert st.get_session("done") is None and st.get_session("live") is not None
    st.close()


def test_finished_sessions_leave_memory_at_the_next_reap(raw: Any, fake_server: Any) -> None:
    engine = fake_server.engine
    sessions = [raw.session() for _ in range(2)]
    for sid in sessions:
        raw.create_model(sid)
        raw.ok("create_sampling_session", {"session_id": sid, "sampling_session_seq_id": 0,
                                           "base_model": FAKE})

    def in_memory(sid: str) -> tuple[int, int]:
        answers = sum(1 for key in engine.core._dedup.entries if key[1].startswith(sid))
        samplers = sum(1 for s in engine.sampling._samplers.values()
                       if s.row.session_id == sid)
        return answers, samplers

    assert in_memory(sessions[0]) == (2, 1) and in_memory(sessions[1]) == (2, 1)
    raw.ok(f"sessions/{sessions[0]}/finish", {})
    engine.prune()
    assert in_memory(sessions[0]) == (0, 0)
    assert in_memory(sessions[1]) == (2, 1)  # a live session keeps everything
