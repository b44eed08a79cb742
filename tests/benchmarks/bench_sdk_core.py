"""Benchmark: build and encode one forward_backward request, tinkex_jax vs the official SDK.

The workload is the issue's: 128 datums x 2048 tokens (``target_tokens`` + ``weights``),
starting from numpy arrays, through everything the SDK does before the bytes hit the
socket (datum construction, validation, chunking, request structs, protobuf encoding).
Also measures ``import tinkex_jax`` (which must not import jax) next to ``import tinker``.

Run:  python tests/benchmarks/bench_sdk_core.py [--datums 128] [--tokens 2048] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def make_arrays(n_datums: int, n_tokens: int, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_datums):
        seq = rng.integers(0, 150_000, n_tokens + 1, dtype=np.int64)
        weights = (rng.random(n_tokens) > 0.3).astype(np.float32)
        out.append((seq[:-1], seq[1:], weights))
    return out


def ours(arrays: list[tuple[np.ndarray, ...]]) -> int:
    from tinkex_jax.builders import (
        RequestCounter,
        build_forward_backward_requests,
        chunk_data,
        reserve_request_ids,
        validate_training_data,
    )
    from tinkex_jax.types import Datum, ModelInput
    from tinkex_jax.wire import encode_forward_backward_request

    data = [Datum(model_input=ModelInput.from_ints(inp),
                  loss_fn_inputs={"target_tokens": tgt, "weights": w}) for inp, tgt, w in arrays]
    validate_training_data(data, "cross_entropy")
    chunks = chunk_data(data)
    ids, _ = reserve_request_ids(RequestCounter(), len(chunks))
    requests = build_forward_backward_requests("session:train:0", ids, chunks, "cross_entropy",
                                               None, forward_only=False)
    return sum(len(encode_forward_backward_request(r)) for r in requests)


def official(arrays: list[tuple[np.ndarray, ...]]) -> int:
    import tinker
    from tinker.lib.public_interfaces.training_client import _estimate_datum_bytes_count_proto
    from tinker.proto.request_conv import forward_backward_request_to_proto

    data = [tinker.Datum(model_input=tinker.ModelInput.from_ints(inp.tolist()),
                         loss_fn_inputs={"target_tokens": tinker.TensorData.from_numpy(tgt),
                                         "weights": tinker.TensorData.from_numpy(w)})
            for inp, tgt, w in arrays]
    # the SDK's own chunking estimate, then one request per chunk (one chunk here)
    sum(_estimate_datum_bytes_count_proto(d) for d in data)
    request = tinker.types.ForwardBackwardRequest(
        forward_backward_input=tinker.types.ForwardBackwardInput(data=data,
                                                                 loss_fn="cross_entropy"),
        model_id="session:train:0", seq_id=1)
    return len(forward_backward_request_to_proto(request).SerializeToString())


def time_it(fn: Callable[[Any], int], arg: Any, repeats: int) -> tuple[float, int]:
    size = fn(arg)  # warm-up (imports, descriptor pools)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(arg)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), size


def import_time(module: str, repeats: int = 5) -> float:
    code = (f"import time, sys; t = time.perf_counter(); import {module}; "
            f"print(time.perf_counter() - t, 'jax' in sys.modules)")
    times = []
    jax_loaded = False
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout.split()
        times.append(float(out[0]))
        jax_loaded = jax_loaded or out[1] == "True"
    if module == "tinkex_jax" and jax_loaded:
        raise SystemExit("FAIL: `import tinkex_jax` imported jax")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datums", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    arrays = make_arrays(args.datums, args.tokens)
    ours_s, ours_bytes = time_it(ours, arrays, args.repeats)
    print(f"workload: {args.datums} datums x {args.tokens} tokens (target_tokens + weights)")
    print(f"tinkex_jax : {ours_s * 1e3:8.2f} ms  ({ours_bytes / 1e6:.2f} MB of protobuf)")
    try:
        off_s, off_bytes = time_it(official, arrays, args.repeats)
    except ImportError:
        print("official tinker SDK not installed: pip install tinker==0.38.0")
    else:
        print(f"tinker 0.38: {off_s * 1e3:8.2f} ms  ({off_bytes / 1e6:.2f} MB of protobuf)")
        print(f"speed-up   : {off_s / ours_s:8.2f}x  (target >= 5x)")
    ours_import = import_time("tinkex_jax")
    print(f"import tinkex_jax: {ours_import * 1e3:7.1f} ms (jax not imported)")
    try:
        print(f"import tinker    : {import_time('tinker') * 1e3:7.1f} ms")
    except subprocess.CalledProcessError:
        print("import tinker    : not installed")


if __name__ == "__main__":
    main()
