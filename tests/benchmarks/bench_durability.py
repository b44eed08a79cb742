"""What durability costs the local backend (a script, not a test).

Measures, interleaved so that the machine's noise hits both sides alike:

* a checkpoint save's storage part (`Storage.add_checkpoint`: fsync of every file and
  directory, the rename, the parent's fsync, the row committed with a sync) against the same
  steps without any sync, for checkpoints of a few sizes;
* the record a save request leaves before its id is answered and settles afterwards
  (`Storage.record_request` + `settle_request`);
* `Core.submit` of a request kind that is recorded (a save) against one that is not (every
  training and sampling request), i.e. what the common path pays: nothing but a set lookup.

Run:  python tests/benchmarks/bench_durability.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tinkex_jax.local import _storage  # noqa: E402
from tinkex_jax.local._storage import CheckpointRow, Storage  # noqa: E402


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def _save(st: Storage, size: int, name: str) -> None:
    staged = st.new_checkpoint_dir()
    (staged / "adapter.safetensors").write_bytes(b"\1" * size)
    (staged / "optimizer.safetensors").write_bytes(b"\2" * (2 * size))
    (staged / "meta.json").write_text("{}")
    st.add_checkpoint(CheckpointRow(run_id="r", checkpoint_id=f"weights/{name}",
                                    kind="weights", name=name,
                                    tinker_path=f"tinker://r/weights/{name}", dir="",
                                    created_at=0.0), staged)


def bench_saves(runs: int) -> None:
    print("checkpoint save, storage part (median ms; adapter + 2x optimizer + meta.json):")
    no_sync = [mock.patch.object(_storage, "_fsync_tree", lambda root: None),
               mock.patch.object(_storage, "_sync_dir", lambda path: None)]
    for size in (256 * 1024, 8 * 2**20, 64 * 2**20):
        st = Storage(Path(tempfile.mkdtemp()))
        synced: list[float] = []
        unsynced: list[float] = []
        for i in range(runs):
            start = time.perf_counter()
            _save(st, size, f"s{i}")
            synced.append(time.perf_counter() - start)
            for patch in no_sync:
                patch.start()
            try:
                start = time.perf_counter()
                _save(st, size, f"u{i}")
                unsynced.append(time.perf_counter() - start)
            finally:
                for patch in no_sync:
                    patch.stop()
        st.close()
        total = 3 * size / 2**20
        print(f"  {total:7.2f} MiB: with syncs {_median_ms(synced):7.2f}, without "
              f"{_median_ms(unsynced):7.2f}, difference {_median_ms(synced) - _median_ms(unsynced):+.2f}")


def bench_records(runs: int) -> None:
    st = Storage(Path(tempfile.mkdtemp()))
    times: list[float] = []
    for i in range(runs * 20):
        start = time.perf_counter()
        st.record_request(f"req-x-{i}", "SaveWeights", None)
        st.settle_request(f"req-x-{i}", answer=b'{"path": "tinker://r/weights/a"}')
        times.append(time.perf_counter() - start)
    st.close()
    print(f"save request record + settle: {_median_ms(times):.3f} ms (median)")


def bench_submit(runs: int) -> None:
    from tinkex_jax.local._config import ServerConfig
    from tinkex_jax.local._core import Core
    from tinkex_jax.local._effects import REAL_EFFECTS
    from tinkex_jax.local._futures import Payload

    data = Path(tempfile.mkdtemp())
    config = ServerConfig(data_dir=data, base_models=("x",), warm_up=False, api_key="tml-bench1")
    core = Core(config, backend=Any, storage=Storage(data), effects=REAL_EFFECTS)  # type: ignore[arg-type]
    core.start()
    work: Callable[[], Payload] = lambda: Payload(b"{}")  # noqa: E731

    def batch(kind: str, n: int = 200) -> float:
        start = time.perf_counter()
        for _ in range(n):
            core.submit(kind, "lane", None, b"", work)
        core.scheduler.join()
        return (time.perf_counter() - start) / n

    plain, saves = [], []
    for _ in range(runs):
        plain.append(batch("OptimStep"))
        saves.append(batch("SaveWeights"))
    core.stop()
    print(f"Core.submit + run, per request (median us): training/sampling kinds "
          f"{statistics.median(plain) * 1e6:.1f}, recorded save kinds "
          f"{statistics.median(saves) * 1e6:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    bench_saves(args.runs)
    bench_records(args.runs)
    bench_submit(args.runs)


if __name__ == "__main__":
    main()
