"""Checkpoint logs, exact resume, recovery from corrupted runs and non-finite steps, against
the real local backend over HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tinkex_jax as tinker
from tinkex_jax.builders import datum_from_prompt_completion
from tinkex_jax.checkpointing import (
    CheckpointLog,
    RecoveryError,
    RecoveryPolicy,
    RunMonitor,
    recover,
    resume,
    save_checkpoint,
)
from tinkex_jax.local import LocalServer, serve

pytestmark = pytest.mark.slow

BASE = "tinkex-jax/tiny"
ADAM = tinker.AdamParams(learning_rate=5e-3)
PROBE = [datum_from_prompt_completion(list(b"hello="), list(b"olleh\n"))]


def batch(step: int) -> list[tinker.Datum]:
    rng = np.random.default_rng(step)
    words = ["".join(rng.choice(list("abcdefgh"), 4)) for _ in range(4)]
    return [datum_from_prompt_completion(list(f"{w}=".encode()), list(f"{w[::-1]}\n".encode()))
            for w in words]


def train_step(training: Any, step: int, adam: tinker.AdamParams = ADAM) -> None:
    training.forward_backward(batch(step), "cross_entropy")
    training.optim_step(adam).result()


def probe(training: Any) -> np.ndarray:
    out = training.forward(PROBE, "cross_entropy").result()
    return np.asarray(out.loss_fn_outputs[0]["logprobs"].to_numpy())


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    with serve(base_models=[BASE]) as running:
        yield running


@pytest.fixture
def service(server: LocalServer) -> Iterator[Any]:
    with tinker.ServiceClient(base_url=server.base_url, api_key=server.api_key) as client:
        yield client


def new_training(service: Any) -> Any:
    return service.create_lora_training_client(BASE, rank=4, seed=1).result()


def test_resume_continues_exactly_where_the_checkpoint_was(service: Any, tmp_path: Path
                                                           ) -> None:
    log = CheckpointLog(tmp_path / "checkpoints.jsonl")
    training = new_training(service)
    for step in range(3):
        train_step(training, step)
    saved = save_checkpoint(training, "step-3", step=3, kind="both", ttl_seconds=3600,
                            loop_state={"cursor": 3, "seed": 1}, log=log)
    assert saved.state_path and saved.sampler_path and saved.run_id == training.model_id
    for step in range(3, 5):
        train_step(training, step)
    uninterrupted = probe(training)

    resumed = resume(service, log)
    assert resumed is not None
    again, record = resumed
    assert record == saved and record.loop_state == {"cursor": 3, "seed": 1}
    for step in range(record.loop_state["cursor"], 5):
        train_step(again, step)
    np.testing.assert_allclose(probe(again), uninterrupted, rtol=1e-5, atol=1e-5)

    # without the optimizer state the same two steps land elsewhere (Adam's moments matter)
    fresh_optimizer, _ = resume(service, log, with_optimizer=False)  # type: ignore[misc]
    for step in range(3, 5):
        train_step(fresh_optimizer, step)
    assert np.max(np.abs(probe(fresh_optimizer) - uninterrupted)) > 1e-4


def test_a_corrupted_run_refuses_work_and_recover_resumes_it(
        server: LocalServer, service: Any, tmp_path: Path) -> None:
    log = CheckpointLog(tmp_path / "checkpoints.jsonl")
    training = new_training(service)
    train_step(training, 0)
    save_checkpoint(training, "step-1", step=1, loop_state={"cursor": 1}, log=log)
    at_checkpoint = probe(training)
    train_step(training, 1)

    healthy = recover(service, training, log)
    assert healthy == (training, None, False)

    rest = service.create_rest_client()
    server.corrupt_run(training.model_id, "the accelerator holding it failed")
    assert rest.get_training_run(training.model_id).result().corrupted is True
    with pytest.raises(tinker.TinkerError) as info:
        training.forward_backward(batch(2), "cross_entropy").result()
    assert "is corrupted (the accelerator holding it failed)" in str(info.value)
    assert "load_state_with_optimizer" in str(info.value)

    seen: list[str] = []
    policy = RecoveryPolicy(
        on_corrupted=lambda run: seen.append(f"corrupted {run.training_run_id}"),
        on_recovered=lambda client, record: seen.append(f"recovered at {record.step}"))
    training2, record, recovered = recover(service, training, log, policy=policy, rest=rest)
    assert recovered and record is not None and record.loop_state == {"cursor": 1}
    assert seen == [f"corrupted {training.model_id}", "recovered at 1"]
    assert training2.model_id != training.model_id
    np.testing.assert_allclose(probe(training2), at_checkpoint, rtol=1e-5, atol=1e-5)
    train_step(training2, 1)  # and it trains
    assert rest.get_training_run(training2.model_id).result().corrupted is False


def test_loading_a_checkpoint_in_place_clears_the_corruption(server: LocalServer,
                                                             service: Any) -> None:
    training = new_training(service)
    train_step(training, 0)
    path = training.save_state("good").result().path
    server.corrupt_run(training.model_id)
    training.load_state_with_optimizer(path).result()
    train_step(training, 1)
    rest = service.create_rest_client()
    assert rest.get_training_run(training.model_id).result().corrupted is False


def test_recover_without_a_checkpoint_or_with_a_deleted_one(server: LocalServer, service: Any,
                                                            tmp_path: Path) -> None:
    training = new_training(service)
    server.corrupt_run(training.model_id)
    empty = CheckpointLog(tmp_path / "empty.jsonl")
    with pytest.raises(RecoveryError, match="holds no checkpoint with a state_path"):
        recover(service, training, empty)

    # a record whose checkpoint was deleted: bounded retries with backoff, then give up
    other = new_training(service)
    log = CheckpointLog(tmp_path / "checkpoints.jsonl")
    saved = save_checkpoint(other, "gone", step=0, log=log)
    rest = service.create_rest_client()
    rest.delete_checkpoint_from_tinker_path(saved.state_path).result()
    server.corrupt_run(other.model_id)
    sleeps: list[float] = []
    gave_up: list[BaseException] = []
    policy = RecoveryPolicy(max_attempts=3, backoff_s=0.5, on_give_up=gave_up.append)
    with pytest.raises(RecoveryError, match="failed 3 time") as info:
        recover(service, other, log, policy=policy, sleep=sleeps.append)
    assert sleeps == [0.5, 1.0]
    assert len(gave_up) == 1 and info.value.__cause__ is gave_up[0]


def test_run_monitor_raises_its_flag_once(server: LocalServer, service: Any) -> None:
    training = new_training(service)
    calls: list[str] = []
    rest = service.create_rest_client()
    with RunMonitor(rest, training.model_id, interval_s=0.05,
                    on_corrupted=lambda run: calls.append(run.training_run_id)) as monitor:
        assert monitor.check() is False
        server.corrupt_run(training.model_id)
        deadline = time.monotonic() + 20
        while not monitor.corrupted:
            assert time.monotonic() < deadline, "the monitor never saw the corruption"
            time.sleep(0.02)
        time.sleep(0.2)  # a few more polls: the callback still ran once
        assert calls == [training.model_id]
        healthy = new_training(service)
        monitor.watch(healthy.model_id)
        assert monitor.corrupted is False and monitor.check() is False


def test_a_non_finite_step_is_dropped_whole(service: Any) -> None:
    training = new_training(service)
    train_step(training, 0)
    before = probe(training)
    with pytest.raises(tinker.TinkerError) as info:
        train_step(training, 1, tinker.AdamParams(learning_rate=1e30))
    message = str(info.value)
    assert "non-finite" in message and "update and the accumulated gradient were discarded" \
        in message and "lower the learning rate" in message
    np.testing.assert_array_equal(probe(training), before)
    train_step(training, 1)  # a sane step afterwards trains normally
    assert np.max(np.abs(probe(training) - before)) > 1e-4
