"""Benchmark: what each client costs, tinkex_jax vs the official SDK, against one local backend.

One local backend (``tinkex serve``, tinkex-jax/tiny) runs in its own process for the whole
benchmark. Three clients take turns driving the same two workloads against it, each in a
fresh process of its own (so one client's threads never run beside another's):

* ``sample``: a burst of N ``sample`` calls (16-token prompt, ``max_tokens=1``), all submitted
  before any result is awaited;
* ``train``: P pipelined ``forward_backward`` (4 datums x 32 tokens, ``cross_entropy``) +
  ``optim_step`` pairs, all submitted before any result is awaited.

The clients: tinkex_jax (``ServiceClient``), the official ``tinker`` SDK, and a bare client
(httpx + this repository's codecs, no SDK logic: one POST per request, then ``retrieve_future``
until the result) that shows what the server alone allows. For each run the benchmark
records the wall time of the workload, the CPU time the client process spent on it and the
CPU time the server process spent on it (from ``/proc/<pid>/stat``); so the server's cost per
request is measured on the server, and a client that is slower only because it keeps the
CPU busy shows it in its own CPU column. Each client warms up first (session, model,
compiled shapes) and then runs each workload once untimed and once timed; rounds rotate the
order of the clients, and the tables give medians over rounds.

Run:  python tests/benchmarks/bench_client_overhead.py [--samples 400] [--pairs 40]
        [--rounds 3] [--json out.json]
(Linux: it reads the server's CPU time from /proc.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TINY = "tinkex-jax/tiny"
PROMPT = list(b"abc=cba\nhello=o")  # 16 tokens
DATUM_TOKENS = 32
DATUMS = 4
CLIENTS = ("tinkex_jax", "official", "bare")


# ----------------------------------------------------------------------------- measuring


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) the process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(run: Callable[[], int], server_pid: int) -> dict[str, float]:
    """Run a workload (it returns how many calls it made) and time it three ways."""
    cpu0, srv0, t0 = time.process_time(), server_cpu(server_pid), time.perf_counter()
    calls = run()
    wall = time.perf_counter() - t0
    return {"calls": calls, "wall_s": wall, "client_cpu_s": time.process_time() - cpu0,
            "server_cpu_s": server_cpu(server_pid) - srv0}


def token_rows(seed: int) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.integers(32, 127, DATUM_TOKENS + 1).tolist() for _ in range(DATUMS)]


# ----------------------------------------------------------------------------- the clients


def run_sdk(sdk: Any, base_url: str, server_pid: int, samples: int, pairs: int,
            workloads: tuple[str, ...] = ("sample", "train")) -> dict[str, dict[str, float]]:
    """The workloads through an SDK module with the official surface (tinker or tinkex_jax)."""
    types = sdk.types
    extra = {"telemetry": False} if sdk.__name__ == "tinkex_jax" else {}
    service = sdk.ServiceClient(base_url=base_url, api_key="tml-bench", **extra)
    sampler = service.create_sampling_client(base_model=TINY).result()
    training = service.create_lora_training_client(base_model=TINY, rank=8, seed=0).result()
    prompt = types.ModelInput.from_ints(PROMPT)
    params = types.SamplingParams(max_tokens=1, temperature=1.0)
    data = [types.Datum(model_input=types.ModelInput.from_ints(row[:-1]),
                        loss_fn_inputs={"target_tokens": row[1:],
                                        "weights": [1.0] * DATUM_TOKENS})
            for row in token_rows(0)]
    adam = types.AdamParams(learning_rate=1e-4)

    def burst() -> int:
        futures = [sampler.sample(prompt=prompt, num_samples=1, sampling_params=params)
                   for _ in range(samples)]
        for future in futures:
            assert len(future.result().sequences[0].tokens) == 1
        return samples

    def train() -> int:
        futures = []
        for _ in range(pairs):
            futures.append(training.forward_backward(data, "cross_entropy"))
            futures.append(training.optim_step(adam))
        for future in futures:
            future.result()
        return 2 * pairs

    results = {}
    for name, workload in (("sample", burst), ("train", train)):
        if name not in workloads:
            continue
        workload()  # untimed: connections, compiled shapes, the server's batch sizes
        results[name] = measure(workload, server_pid)
    service.close("success").result()
    return results


def run_bare(base_url: str, server_pid: int, samples: int, pairs: int
             ) -> dict[str, dict[str, float]]:
    """The workloads through httpx with this repository's codecs and nothing else."""
    import httpx

    from tinkex_jax.types import Datum, ForwardBackwardRequest, ModelInput
    from tinkex_jax.wire import encode_forward_backward_request

    async def main() -> dict[str, dict[str, float]]:
        async with httpx.AsyncClient(
                base_url=f"{base_url}/api/v1", headers={"X-API-Key": "tml-bench"},
                timeout=600, limits=httpx.Limits(max_connections=1000,
                                                 max_keepalive_connections=20)) as http:
            async def post(path: str, **kwargs: Any) -> Any:
                response = await http.post(path, **kwargs)
                response.raise_for_status()
                return response.json()

            async def result(request_id: str) -> Any:
                while True:
                    response = await http.post("retrieve_future",
                                               json={"request_id": request_id})
                    response.raise_for_status()
                    if "x-protobuf" in response.headers.get("content-type", ""):
                        return response.content
                    body = response.json()
                    if body.get("type") != "try_again":
                        assert "error" not in body, body
                        return body

            session = (await post("create_session", json={
                "tags": [], "user_metadata": {}, "sdk_version": "0.38.0"}))["session_id"]
            sampler = (await post("create_sampling_session", json={
                "session_id": session, "sampling_session_seq_id": 0,
                "base_model": TINY}))["sampling_session_id"]
            created = await post("create_model", json={
                "session_id": session, "model_seq_id": 0, "base_model": TINY,
                "lora_config": {"rank": 8, "seed": 0}})
            model = (await result(created["request_id"]))["model_id"]
            data = [Datum(model_input=ModelInput.from_ints(row[:-1]),
                          loss_fn_inputs={"target_tokens": row[1:],
                                          "weights": [1.0] * DATUM_TOKENS})
                    for row in token_rows(0)]
            seq = [0, 0]

            async def one_sample() -> None:
                seq[0] += 1
                future = await post("asample", json={
                    "sampling_session_id": sampler, "seq_id": seq[0], "num_samples": 1,
                    "prompt": {"chunks": [{"type": "encoded_text", "tokens": PROMPT}]},
                    "sampling_params": {"max_tokens": 1, "temperature": 1.0}})
                await result(future["request_id"])

            async def burst() -> int:
                await asyncio.gather(*(one_sample() for _ in range(samples)))
                return samples

            async def train() -> int:
                requests = []
                for _ in range(pairs):  # submitted in order, awaited together
                    seq[1] += 1
                    body = encode_forward_backward_request(ForwardBackwardRequest(
                        model_id=model, seq_id=seq[1], data=data, loss_fn="cross_entropy"))
                    requests.append(await post("forward_backward", content=body, headers={
                        "Content-Type": "application/x-protobuf"}))
                    seq[1] += 1
                    requests.append(await post("optim_step", json={
                        "model_id": model, "seq_id": seq[1],
                        "adam_params": {"learning_rate": 1e-4}}))
                await asyncio.gather(*(result(r["request_id"]) for r in requests))
                return 2 * pairs

            out = {}
            for name, workload in (("sample", burst), ("train", train)):
                await workload()
                cpu0, srv0 = time.process_time(), server_cpu(server_pid)
                t0 = time.perf_counter()
                calls = await workload()
                out[name] = {"calls": calls, "wall_s": time.perf_counter() - t0,
                             "client_cpu_s": time.process_time() - cpu0,
                             "server_cpu_s": server_cpu(server_pid) - srv0}
            return out

    return asyncio.run(main())


def child(args: argparse.Namespace) -> None:
    """One client's run, in this (fresh) process; prints one JSON line."""
    sys.path.insert(0, str(REPO))
    if args.child == "bare":
        results = run_bare(args.base_url, args.server_pid, args.samples, args.pairs)
    else:
        import importlib

        sdk = importlib.import_module("tinkex_jax" if args.child == "tinkex_jax" else "tinker")
        results = run_sdk(sdk, args.base_url, args.server_pid, args.samples, args.pairs,
                          tuple(args.workloads.split(",")))
    print(json.dumps({"client": args.child, "results": results}))


# ----------------------------------------------------------------------------- the parent


#: The server process: the local backend on a free port of 127.0.0.1, announced on stdout.
#: Results are kept 1 s after their first retrieval instead of 10 minutes: every client here
#: fetches each result once, and the backend's bookkeeping scans every kept result when it
#: issues a new request id, so thousands of kept results would make the server, not the
#: clients, what the benchmark measures.
SERVER = """
import sys, threading
from tinkex_jax.local import serve
with serve(sys.argv[1], base_models=[sys.argv[2]], result_retention_s=1.0,
           api_key="tml-bench") as server:
    print(server.base_url, flush=True)
    threading.Event().wait()
"""


def start_server(data_dir: str) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TINKER_TELEMETRY": "0"}
    server = subprocess.Popen([sys.executable, "-c", SERVER, data_dir, TINY], env=env,
                              stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    base_url = server.stdout.readline().strip()
    if not base_url.startswith("http://"):
        server.kill()
        raise RuntimeError("the local backend did not start")
    with urllib.request.urlopen(f"{base_url}/api/v1/healthz", timeout=30):
        return server, base_url


def run_child(name: str, base_url: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TINKER_TELEMETRY": "0"}
    out = subprocess.run(
        [sys.executable, __file__, "--child", name, "--base-url", base_url, "--server-pid",
         str(pid), "--samples", str(args.samples), "--pairs", str(args.pairs)],
        capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["results"]


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for workload in ("sample", "train"):
        rows = {}
        for client, results in runs.items():
            walls = [r[workload]["wall_s"] for r in results]
            calls = results[0][workload]["calls"]
            rows[client] = {
                "calls": calls,
                "wall_s": statistics.median(walls),
                "walls_s": walls,
                "calls_per_s": calls / statistics.median(walls),
                "client_cpu_ms_per_call": 1e3 * statistics.median(
                    r[workload]["client_cpu_s"] for r in results) / calls,
                "server_cpu_ms_per_call": 1e3 * statistics.median(
                    r[workload]["server_cpu_s"] for r in results) / calls,
            }
        rows["ratio_tinkex_jax_over_official"] = (rows["tinkex_jax"]["calls_per_s"]
                                                  / rows["official"]["calls_per_s"])
        table[workload] = rows
    return table


def print_table(table: dict[str, Any], args: argparse.Namespace) -> None:
    what = {"sample": f"burst of {args.samples} sample calls (max_tokens=1)",
            "train": f"{args.pairs} pipelined forward_backward + optim_step pairs "
                     f"({DATUMS} x {DATUM_TOKENS} tokens)"}
    for workload, rows in table.items():
        print(f"\n{what[workload]}: medians of {args.rounds} rounds")
        print(f"  {'client':<11} {'wall s':>8} {'calls/s':>9} {'client CPU ms/call':>19} "
              f"{'server CPU ms/call':>19}")
        for client in CLIENTS:
            row = rows[client]
            print(f"  {client:<11} {row['wall_s']:8.2f} {row['calls_per_s']:9.1f} "
                  f"{row['client_cpu_ms_per_call']:19.2f} {row['server_cpu_ms_per_call']:19.2f}")
        print(f"  throughput ratio tinkex_jax / official: "
              f"{rows['ratio_tinkex_jax_over_official']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument("--child", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workloads", default="sample,train", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory() as data_dir:
        server, base_url = start_server(data_dir)
        try:
            print(f"local backend {base_url} (pid {server.pid}); {os.cpu_count()} CPUs")
            runs: dict[str, list[dict[str, Any]]] = {c: [] for c in CLIENTS}
            for round_ in range(args.rounds):
                order = CLIENTS[round_ % 3:] + CLIENTS[:round_ % 3]
                for client in order:
                    runs[client].append(run_child(client, base_url, server.pid, args))
                    sample, train = runs[client][-1]["sample"], runs[client][-1]["train"]
                    print(f"round {round_ + 1}: {client:<11} sample {sample['wall_s']:6.2f} s, "
                          f"train {train['wall_s']:6.2f} s", flush=True)
        finally:
            server.terminate()
            server.wait(30)
    table = summarise(runs)
    print_table(table, args)
    if args.json is not None:
        args.json.write_text(json.dumps({"args": vars(args), "runs": runs, "table": table},
                                        indent=2, default=str))


if __name__ == "__main__":
    main()
