"""SQLite metadata and checkpoint files: CRUD, TTL, restart persistence, crash leftovers."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from tinkex_jax.local._backend import AdapterSpec
from tinkex_jax.local._checkpoints import CheckpointMeta, read_checkpoint, write_checkpoint
from tinkex_jax.local._storage import CheckpointRow, RunRow, SamplerRow, SessionRow, Storage


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_row(run_id: str = "s:train:0") -> RunRow:
    return RunRow(run_id=run_id, session_id="s", model_seq_id=0, base_model="m", lora_rank=8,
                  lora_seed=1, lora_alpha=32.0, train_attn=True, train_mlp=False,
                  train_unembed=True, created_at=1.0, last_request_time=1.0,
                  user_metadata={"k": "v"})


def add_checkpoint(st: Storage, name: str, kind: str = "weights", ttl: float | None = None,
                   run_id: str = "s:train:0") -> CheckpointRow:
    staged = st.new_checkpoint_dir()
    meta = CheckpointMeta(base_model="m", lora=AdapterSpec(rank=8, seed=1), step=2)
    write_checkpoint(staged, meta, {"a": np.arange(4, dtype=np.float32)},
                     {"count": np.array(2)} if kind == "weights" else None)
    now = st.now()
    row = CheckpointRow(run_id=run_id, checkpoint_id=f"{kind}/{name}", kind=kind, name=name,
                        tinker_path=f"tinker://{run_id}/{kind}/{name}", dir=staged.name,
                        created_at=now, expires_at=None if ttl is None else now + ttl)
    return st.add_checkpoint(row, staged)


def test_everything_survives_reopening(tmp_path: Path) -> None:
    st = Storage(tmp_path)
    st.create_session(SessionRow(session_id="s", created_at=1.0, tags=["a"],
                                 user_metadata={"x": 1}, display_name="demo"))
    st.create_run(run_row())
    st.create_sampler(SamplerRow(sampler_id="s:sample:0", session_id="s", seq_id=0,
                                 base_model="m", created_at=2.0, model_path="tinker://p"))
    row = add_checkpoint(st, "step-1")
    st.finish_session("s", "success", None)
    st.finish_session("s", "errored", "late")  # first reason wins
    st.close()

    st = Storage(tmp_path)
    session = st.get_session("s")
    assert session is not None and session.tags == ["a"] and session.display_name == "demo"
    assert session.finish_reason == "success"
    assert st.get_run("s:train:0") == run_row()
    assert st.runs_of_session("s") == ["s:train:0"]
    assert st.samplers_of_session("s") == ["s:sample:0"]
    assert st.get_sampler("s:sample:0").model_path == "tinker://p"
    again = st.get_checkpoint("s:train:0", "weights/step-1")
    assert again == row and again.size_bytes > 0
    meta, arrays, opt = read_checkpoint(st.checkpoint_path(again))
    assert meta.step == 2 and meta.lora.rank == 8
    assert arrays["a"].tolist() == [0, 1, 2, 3] and opt["count"].shape == ()
    st.close()


def test_listing_overwrite_and_delete(tmp_path: Path) -> None:
    st = Storage(tmp_path)
    first = add_checkpoint(st, "a")
    add_checkpoint(st, "b", kind="sampler_weights")
    replaced = add_checkpoint(st, "a")  # same id: replaced, old files removed
    assert not (st.checkpoint_root / first.dir).exists()
    assert [c.checkpoint_id for c in st.list_checkpoints("s:train:0")] == [
        "sampler_weights/b", "weights/a"]
    rows, total = st.list_all_checkpoints(limit=1, offset=0)
    assert total == 2 and rows[0].checkpoint_id == "weights/a"
    assert st.latest_checkpoint("s:train:0", "weights") == replaced
    assert st.delete_checkpoint("s:train:0", "weights/a")
    assert not st.delete_checkpoint("s:train:0", "weights/a")
    assert not (st.checkpoint_root / replaced.dir).exists()
    st.set_checkpoint_public("s:train:0", "sampler_weights/b", True)
    assert st.get_checkpoint("s:train:0", "sampler_weights/b").public
    st.close()


def test_ttl_hides_then_reaps(tmp_path: Path) -> None:
    clock = Clock()
    st = Storage(tmp_path, clock=clock)
    row = add_checkpoint(st, "short", ttl=3600)
    add_checkpoint(st, "forever")
    clock.now += 3599
    assert st.get_checkpoint("s:train:0", "weights/short").name == "short"  # type: ignore[union-attr]
    clock.now += 2
    assert st.get_checkpoint("s:train:0", "weights/short") is None
    assert [c.name for c in st.list_checkpoints("s:train:0")] == ["forever"]
    assert st.list_all_checkpoints(10, 0)[1] == 1
    assert st.reap_expired() == 1
    assert not (st.checkpoint_root / row.dir).exists()
    st.set_checkpoint_ttl("s:train:0", "weights/forever", 3600)
    clock.now += 3601
    assert st.reap_expired() == 1
    st.close()


def test_partial_checkpoint_dirs_are_cleaned_on_open(tmp_path: Path) -> None:
    st = Storage(tmp_path)
    kept = add_checkpoint(st, "kept")
    orphan = st.new_checkpoint_dir()  # a crash between writing files and inserting the row
    (orphan / "adapter.safetensors").write_bytes(b"partial")
    other = Storage(tmp_path)  # a second server on the same directory, while st runs
    assert orphan.exists()  # st is alive: maybe its save is in progress
    other.close()
    st.close()
    st = Storage(tmp_path)  # st's process is gone: its temporaries go at once
    assert not orphan.exists()
    assert (st.checkpoint_root / kept.dir).exists()
    legacy = st.checkpoint_root / f".tmp-{'a' * 32}"  # named by an older version: by age
    legacy.mkdir()
    st.close()
    st = Storage(tmp_path)
    assert legacy.exists()
    st.close()
    old = time.time() - 3600
    os.utime(legacy, (old, old))
    st = Storage(tmp_path)
    assert not legacy.exists() and (st.checkpoint_root / kept.dir).exists()
    assert sorted(p.name for p in (tmp_path / "boots").iterdir()) == [f"{st.boot}.lock"]
    st.close()


def test_sessions_are_listed_newest_first(tmp_path: Path) -> None:
    st = Storage(tmp_path)
    for i in range(3):
        st.create_session(SessionRow(session_id=f"s{i}", created_at=float(i)))
    assert [s.session_id for s in st.list_sessions(2, 0)] == ["s2", "s1"]
    assert [s.session_id for s in st.list_sessions(2, 2)] == ["s0"]
    st.close()


@pytest.mark.parametrize("missing", ["meta.json"])
def test_missing_files_are_reported(tmp_path: Path, missing: str) -> None:
    from tinkex_jax.local._checkpoints import read_meta
    from tinkex_jax.local._errors import NotFoundError

    with pytest.raises(NotFoundError, match="missing"):
        read_meta(tmp_path)


def test_corruption_is_recorded_and_old_data_dirs_are_migrated(tmp_path: Path) -> None:
    st = Storage(tmp_path)
    st.create_run(run_row())
    st.close()
    raw = sqlite3.connect(tmp_path / "tinkex.sqlite3")
    raw.execute("ALTER TABLE training_runs DROP COLUMN corrupted")  # a data dir from before
    raw.commit()
    raw.close()
    st = Storage(tmp_path)
    assert st.get_run("s:train:0").corrupted is None  # type: ignore[union-attr]
    st.mark_run_corrupted("s:train:0", "first")
    st.mark_run_corrupted("s:train:0", "second")
    assert st.get_run("s:train:0").corrupted == "first"  # type: ignore[union-attr]
    st.clear_run_corrupted("s:train:0")
    assert st.get_run("s:train:0").corrupted is None  # type: ignore[union-attr]
