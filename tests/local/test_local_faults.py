"""Fault injection (`tinkex_jax.local._faults`, ``serve(inject_faults=...)``) and what it
proves: under 5xx, 429, 408, try_again, dropped connections and slow answers, plus a server
restart in the middle, a 50-step training loop through either SDK ends with exactly the
weights of a fault-free run (nothing lost, nothing applied twice), every one of a burst of
200 samples is answered with exactly the fault-free tokens, and the only error a loop sees
is the restart (which it survives through `tinkex_jax.checkpointing.resume`).

The quick tests check the spec, its determinism and final faults on the fake backend; the
end-to-end ones run the tiny preset and are marked slow.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support.local_support import FAKE, TINY
from tinkex_jax.checkpointing import CheckpointLog, resume, save_checkpoint
from tinkex_jax.errors import ValidationError
from tinkex_jax.local import LocalServer, ServerConfig, serve
from tinkex_jax.local._checkpoints import read_checkpoint
from tinkex_jax.local._faults import FaultPlan, FaultSpec

API_KEY = "tml-faults"

# ----------------------------------------------------------------------------- the spec


def test_the_spec_parses_round_trips_and_refuses_nonsense() -> None:
    spec = FaultSpec.parse("5xx=0.1, 429=0.05,408=0.05,try_again=0.1,drop=0.05,slow=0.05,"
                           "seed=9,slow_s=0.01,retry_after=0.2,max_in_a_row=3,"
                           "routes=asample|optim_step")
    assert (spec.error_5xx, spec.rate_limit, spec.timeout_408, spec.try_again, spec.drop,
            spec.slow) == (0.1, 0.05, 0.05, 0.1, 0.05, 0.05)
    assert (spec.seed, spec.slow_s, spec.retry_after_s, spec.max_in_a_row, spec.routes) == (
        9, 0.01, 0.2, 3, ("asample", "optim_step"))
    assert FaultSpec.parse(str(spec)) == spec
    for bad, match in [("5xx=0.7,drop=0.5", "add up to at most 1"), ("boom=0.1", "keys"),
                       ("5xx", "keys"), ("5xx=lots", "a number"), ("drop=-0.1", "fraction"),
                       ("max_in_a_row=0", "max_in_a_row"), ("retry_after=0", "retry_after")]:
        with pytest.raises(ValidationError, match=match):
            FaultSpec.parse(bad)
    with pytest.raises(ValidationError, match="inject_faults"):
        ServerConfig(data_dir=Path("unused"), inject_faults="5xx=2")
    config = ServerConfig(data_dir=Path("unused"), inject_faults=FaultSpec(drop=0.5, seed=1))
    assert config.inject_faults == str(FaultSpec(drop=0.5, seed=1))


def test_faults_are_deterministic_per_request_whatever_the_order() -> None:
    spec = FaultSpec(error_5xx=0.2, rate_limit=0.1, drop=0.1, slow=0.1, seed=5)
    bodies = [f'{{"seq_id": {i}}}'.encode() for i in range(300)]

    def run(order: list[int]) -> dict[int, list[str | None]]:
        plan = FaultPlan(spec)
        seen: dict[int, list[str | None]] = {}
        for i in order:
            seen.setdefault(i, []).append(plan.decide("POST", "/api/v1/optim_step", "",
                                                      bodies[i]))
        return seen

    forward = run([i for i in range(300) for _ in range(4)])
    shuffled = list(np.random.default_rng(0).permutation([i for i in range(300)
                                                          for _ in range(4)]))
    assert run(shuffled) == forward  # the same request meets the same faults, in any order
    kinds = [k for ks in forward.values() for k in ks]
    for kind, fraction in [("5xx", 0.2), ("429", 0.1), ("drop", 0.1), ("slow", 0.1)]:
        assert abs(kinds.count(kind) / len(kinds) - fraction) < 0.05, kind
    # never more than max_in_a_row failures in a row for one request
    for ks in forward.values():
        failures = "".join("x" if k not in (None, "slow") else "." for k in ks)
        assert "xxx" not in failures
    other_seed = FaultPlan(FaultSpec(error_5xx=0.2, rate_limit=0.1, drop=0.1, seed=6))
    assert [other_seed.decide("POST", "/api/v1/optim_step", "", bodies[i])
            for i in range(300)] != [forward[i][0] for i in range(300)]


def test_routes_healthz_and_try_again_scope() -> None:
    plan = FaultPlan(FaultSpec(try_again=1.0, routes=("retrieve_future",)))
    assert plan.decide("POST", "/api/v1/retrieve_future", "", b"{}") == "try_again"
    assert plan.decide("POST", "/api/v1/asample", "", b"{}") is None  # another route
    every = FaultPlan(FaultSpec(try_again=0.5, error_5xx=0.5, max_in_a_row=100))
    assert {every.decide("POST", "/api/v1/asample", "", bytes([i])) for i in range(64)} == {
        None, "5xx"}  # try_again only answers future polls
    assert every.decide("GET", "/api/v1/healthz", "", b"") is None
    assert every.decide("GET", "/console", "", b"") is None


# ----------------------------------------------------------------------------- over HTTP


@pytest.fixture
def faulty(tmp_path: Path, fake_backend: Any, request: pytest.FixtureRequest
           ) -> Iterator[LocalServer]:
    with serve(tmp_path / "data", base_models=[FAKE], backend=fake_backend, api_key=API_KEY,
               long_poll_timeout_s=0.2, inject_faults=request.param) as server:
        yield server


def _raw(server: LocalServer) -> httpx.Client:
    return httpx.Client(base_url=f"{server.base_url}/api/v1", timeout=10,
                        headers={"X-API-Key": API_KEY})


@pytest.mark.parametrize("faulty", ["5xx=1,routes=create_session,max_in_a_row=1000"],
                         indirect=True)
def test_a_final_5xx_is_an_error_and_nothing_was_done(faulty: LocalServer) -> None:
    http = _raw(faulty)
    answers = [http.post("create_session", json={}) for _ in range(5)]
    assert {a.status_code for a in answers} <= {500, 502, 503, 504}
    assert all(a.json()["code"] == "injected_fault" for a in answers)
    assert faulty.engine.storage.list_sessions(100, 0) == []  # never handled
    assert http.get("healthz").json() == {"status": "ok"}
    assert faulty.faults.stats() == {"5xx": 5}


@pytest.mark.parametrize("faulty", ["drop=1,routes=create_session,max_in_a_row=1000"],
                         indirect=True)
def test_a_dropped_connection_happens_after_the_work(faulty: LocalServer) -> None:
    http = _raw(faulty)
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("create_session", json={})
    assert len(faulty.engine.storage.list_sessions(100, 0)) == 1  # done, the answer lost
    assert http.get("healthz").status_code == 200  # a new connection works


@pytest.mark.parametrize("faulty", ["429=0.5,408=0.5,seed=3,retry_after=2"], indirect=True)
def test_429_carries_retry_after_and_408_looks_like_try_again(faulty: LocalServer) -> None:
    http = _raw(faulty)
    seen = {}
    for i in range(20):
        response = http.post("retrieve_future", json={"request_id": f"req-{i}"})
        seen[response.status_code] = response
    assert set(seen) == {429, 408}
    assert seen[429].headers["retry-after"] == "2"
    assert seen[429].headers["retry-after-ms"] == "2000"
    assert seen[408].json()["type"] == "try_again"
    assert seen[408].json()["queue_state"] == "active"


def test_serve_refuses_a_bad_spec_before_starting() -> None:
    from tinkex_jax.cli import main

    assert main(["serve", "--inject-faults", "5xx=3", "--data-dir", tempfile.mkdtemp(),
                 "--no-warm-up"]) == 2


# ----------------------------------------------------------------------------- end to end

STEPS = 50
CHECKPOINT_EVERY = 10
RESTART_AT = 25  # between a forward_backward's submission and its optim_step
SAMPLES = 200
FAULTS = ("5xx=0.04,429=0.02,408=0.03,try_again=0.04,drop=0.04,slow=0.04,slow_s=0.05,"
          "retry_after=0.1,seed=11,max_in_a_row=2")
WORDS = ["apple", "bread", "chair", "dance", "eagle", "flame", "grape", "house", "ivory",
         "joker", "knife", "lemon"]


def _batch(T: Any, step: int) -> list[Any]:
    """Two datums of one fixed shape, chosen by the step."""
    out = []
    for k in range(2):
        tokens = list(f"{WORDS[(3 * step + k) % len(WORDS)]}={WORDS[(step + 5 * k) % 12]}"
                      .encode())
        out.append(T.Datum(model_input=T.ModelInput.from_ints(tokens[:-1]),
                           loss_fn_inputs={"target_tokens": tokens[1:],
                                           "weights": [1.0] * (len(tokens) - 1)}))
    return out


@dataclass
class Outcome:
    adapter: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray] | None
    samples: list[list[int]]
    errors: list[str]
    resumed_at: list[int]


def _final_state(server: LocalServer, path: str) -> tuple[dict[str, np.ndarray], Any]:
    run_id, _, name = path[len("tinker://"):].partition("/weights/")
    row = server.engine.storage.get_checkpoint(run_id, f"weights/{name}")
    _, adapter, optimizer = read_checkpoint(server.engine.storage.checkpoint_path(row))
    return adapter, optimizer


def _run(make_service: Callable[[str], Any], T: Any, server: LocalServer, log_dir: Path,
         restart: Callable[[], LocalServer] | None) -> Outcome:
    """The loop a user writes: train with periodic checkpoints, resume after an error, then
    sample a burst from the final weights."""
    log = CheckpointLog(log_dir / "checkpoints.jsonl")
    errors: list[str] = []
    resumed_at: list[int] = []
    service = make_service(server.base_url)
    with contextlib.ExitStack() as stack:
        if hasattr(service, "__exit__"):
            stack.enter_context(service)
        training = service.create_lora_training_client(base_model=TINY, rank=4,
                                                       seed=7).result()
        save_checkpoint(training, "step-0", step=0, log=log)
        step = 0
        while step < STEPS:
            try:
                fb = training.forward_backward(_batch(T, step), "cross_entropy")
                if restart is not None and step == RESTART_AT:
                    server, restart = restart(), None
                opt = training.optim_step(T.AdamParams(learning_rate=0.05))
                fb.result()
                opt.result()
            except Exception as exc:  # the restart lost the model: resume from the log
                errors.append(f"{type(exc).__name__}: {exc}")
                resumed = resume(service, log)
                assert resumed is not None
                training, record = resumed
                step = record.step
                resumed_at.append(step)
                continue
            step += 1
            if step % CHECKPOINT_EVERY == 0:
                save_checkpoint(training, f"step-{step}", step=step, log=log)
        final = training.save_state("final").result().path
        adapter, optimizer = _final_state(server, final)
        sampler_path = training.save_weights_for_sampler("final").result().path
        sampler = service.create_sampling_client(model_path=sampler_path).result()
        prompt = T.ModelInput.from_ints(list(b"apple="))
        futures = [sampler.sample(prompt=prompt, num_samples=1, sampling_params=T.SamplingParams(
            max_tokens=6, temperature=1.0, seed=i)) for i in range(SAMPLES)]
        samples = [list(f.result().sequences[0].tokens) for f in futures]
    return Outcome(adapter, optimizer, samples, errors, resumed_at)


def _start(data: Path, backend: Any, port: int = 0, faults: str | None = None) -> LocalServer:
    config = ServerConfig(data_dir=data, port=port, base_models=(TINY,), api_key=API_KEY,
                          long_poll_timeout_s=2.0, inject_faults=faults)
    return LocalServer(config, backend).start()


@pytest.fixture(scope="module")
def fault_free(tmp_path_factory: pytest.TempPathFactory, jax_backend: Any) -> Outcome:
    import tinkex_jax

    data = tmp_path_factory.mktemp("fault-free")
    server = _start(data / "data", jax_backend)
    try:
        return _run(lambda url: tinkex_jax.ServiceClient(base_url=url, api_key=API_KEY),
                    tinkex_jax.types, server, data, restart=None)
    finally:
        server.stop()


def _faulty_run(tmp_path: Path, backend: Any, make_service: Callable[[str], Any],
                T: Any) -> tuple[Outcome, dict[str, int]]:
    servers = [_start(tmp_path / "data", backend, faults=FAULTS)]

    def restart() -> LocalServer:
        old = servers[-1]
        stats = old.faults.stats()
        old.stop()  # in-memory state (models, futures, dedup) is gone
        servers.append(_start(tmp_path / "data", backend, port=old.config.port, faults=FAULTS))
        servers[-1].faults.plan.injected.update(stats)
        return servers[-1]

    try:
        outcome = _run(make_service, T, servers[0], tmp_path, restart)
        return outcome, servers[-1].faults.stats()
    finally:
        servers[-1].stop()


def _check(outcome: Outcome, stats: dict[str, int], fault_free: Outcome) -> None:
    assert fault_free.errors == [] and fault_free.resumed_at == []
    for kind in ("5xx", "429", "408", "try_again", "drop", "slow"):
        assert stats.get(kind, 0) >= 3, stats  # every kind of fault really happened
    # the only error is the restart's, and the loop resumed from the step-20 checkpoint
    assert len(outcome.errors) == 1 and outcome.resumed_at == [20], outcome.errors
    # nothing lost, nothing applied twice: bit for bit the fault-free weights and optimizer
    assert sorted(outcome.adapter) == sorted(fault_free.adapter)
    for name, value in fault_free.adapter.items():
        np.testing.assert_array_equal(outcome.adapter[name], value, err_msg=name)
    assert outcome.optimizer is not None and fault_free.optimizer is not None
    for name, value in fault_free.optimizer.items():
        np.testing.assert_array_equal(outcome.optimizer[name], value, err_msg=name)
    # every sample answered, each exactly as without faults
    assert len(outcome.samples) == SAMPLES and outcome.samples == fault_free.samples


@pytest.mark.slow
def test_our_sdk_loses_nothing_under_faults_and_a_restart(
        tmp_path: Path, jax_backend: Any, fault_free: Outcome) -> None:
    import tinkex_jax

    outcome, stats = _faulty_run(
        tmp_path, jax_backend,
        lambda url: tinkex_jax.ServiceClient(base_url=url, api_key=API_KEY),
        tinkex_jax.types)
    _check(outcome, stats, fault_free)


@pytest.mark.slow
@pytest.mark.official
def test_the_official_sdk_loses_nothing_under_faults_and_a_restart(
        tmp_path: Path, jax_backend: Any, fault_free: Outcome) -> None:
    tinker = pytest.importorskip("tinker")
    outcome, stats = _faulty_run(
        tmp_path, jax_backend, lambda url: tinker.ServiceClient(base_url=url, api_key=API_KEY),
        tinker.types)
    _check(outcome, stats, fault_free)

