"""Soak: many sessions, each with a training client and samplers, created, used and closed
against one server in a child process (the real model layer, tiny preset). The server's
memory (RSS), open files and SQLite size must plateau: the last third of the cycles may not
exceed the middle third by more than a margin measured on this machine (mean RSS drifts by
1.5 to 3 MiB between thirds of 30 cycles, and fluctuates by about 2 MiB from cycle to
cycle). Keeping each finished session's samplers in memory (about 2 MiB per cycle of
prepared weights) fails by far; so would an open file or SQLite rows per cycle.

Size: ``TINKEX_SOAK_CYCLES`` cycles (default 90, about a minute on 2 cores after the
model compiles). Retentions are short so that the steady state comes within the run: results
5 s, finished sessions' rows at once (the reaper runs every second); every other bound is
the default (finished sessions' samplers and remembered answers leave memory at the next
reap).
"""

from __future__ import annotations

import os
import sqlite3
import statistics
from pathlib import Path
from typing import Any

import pytest

import tinkex_jax
from tests.support.local_support import TINY
from tests.support.subprocess_server import ChildServer

pytestmark = pytest.mark.slow

CYCLES = int(os.environ.get("TINKEX_SOAK_CYCLES", "90"))
MiB = 2**20


def _measure(server: ChildServer) -> dict[str, float]:
    assert server.proc is not None
    pid = server.proc.pid
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS"))
    db = server.data_dir / "tinkex.sqlite3"
    # fold the write-ahead log into the database first (the server does this itself every
    # 1000 pages), so that the size is the data's, not the log's fill level
    with sqlite3.connect(db, timeout=10) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return {"rss": rss, "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "sqlite": db.stat().st_size,
            "dirs": len(list((server.data_dir / "checkpoints").iterdir()))}


def _cycle(server: ChildServer, cycle: int) -> None:
    T = tinkex_jax.types
    tokens = list(b"apple=bread")
    datum = T.Datum(model_input=T.ModelInput.from_ints(tokens[:-1]),
                    loss_fn_inputs={"target_tokens": tokens[1:],
                                    "weights": [1.0] * (len(tokens) - 1)})
    prompt = T.ModelInput.from_ints(list(b"abc="))
    params = T.SamplingParams(max_tokens=4, seed=cycle)
    with tinkex_jax.ServiceClient(base_url=server.base_url, api_key=server.api_key) as service:
        training = service.create_lora_training_client(base_model=TINY, rank=4,
                                                       seed=cycle).result()
        training.forward_backward([datum, datum], "cross_entropy").result()
        training.optim_step(T.AdamParams(learning_rate=0.01)).result()
        trained = training.save_weights_and_get_sampling_client().result()
        base = service.create_sampling_client(base_model=TINY).result()
        futures = [s.sample(prompt=prompt, num_samples=2, sampling_params=params)
                   for s in (trained, trained, base)]
        assert all(len(f.result().sequences) == 2 for f in futures)


def test_memory_files_and_sqlite_plateau(tmp_path: Path) -> None:
    server = ChildServer(tmp_path / "data", backend="jax", result_retention_s=5.0,
                         reap_interval_s=1.0, finished_sampler_retention_s=0.0,
                         finished_session_retention_s=0.0, long_poll_timeout_s=5.0)
    server.start()
    rows: list[dict[str, Any]] = []
    try:
        for cycle in range(CYCLES):
            _cycle(server, cycle)
            rows.append(_measure(server))
    finally:
        server.stop()
    third = CYCLES // 3
    middle, last = rows[third:2 * third], rows[2 * third:]

    def mean(part: list[dict[str, Any]], key: str) -> float:
        return statistics.fmean(r[key] for r in part)

    def top(part: list[dict[str, Any]], key: str) -> float:
        return max(r[key] for r in part)

    print(f"\nsoak: {CYCLES} cycles; first / middle / last third (mean RSS MiB, max fds, "
          f"max SQLite KiB):")
    for name, part in (("first", rows[:third]), ("middle", middle), ("last", last)):
        print(f"  {name:6s} {mean(part, 'rss') / MiB:8.1f} {top(part, 'fds'):4.0f} "
              f"{top(part, 'sqlite') / 1024:8.1f}")
    assert mean(last, "rss") <= mean(middle, "rss") + 8 * MiB
    assert top(last, "fds") <= top(middle, "fds") + 4
    assert top(last, "sqlite") <= top(middle, "sqlite") + 32 * 1024
    assert rows[-1]["dirs"] == 0  # no checkpoint directory left behind by the samplers
