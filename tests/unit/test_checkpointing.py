"""The checkpoint log and the argument checks of tinkex_jax.checkpointing (no server)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tinkex_jax.checkpointing import (
    CheckpointLog,
    CheckpointRecord,
    RecoveryPolicy,
    RunMonitor,
    save_checkpoint,
)
from tinkex_jax.errors import ValidationError


def record(step: int, *, state: bool = True, **extra: Any) -> CheckpointRecord:
    return CheckpointRecord(
        name=f"step-{step}", step=step,
        state_path=f"tinker://run/weights/step-{step}" if state else None,
        sampler_path=f"tinker://run/sampler_weights/step-{step}", **extra)


def test_log_round_trip_and_latest(tmp_path: Path) -> None:
    log = CheckpointLog(tmp_path / "deep" / "checkpoints.jsonl")
    assert log.records() == [] and log.latest() is None
    first = record(10, loop_state={"epoch": 1, "cursor": [3, 4], "best": 0.5})
    log.append(first)
    log.append(record(20, state=False))
    assert log.records() == [first, record(20, state=False)]
    assert log.latest() == first  # the sampler-only record cannot be resumed from
    log.append(record(30, final=True))
    assert log.latest() == record(30, final=True)
    assert CheckpointLog(log.path).records()[0].loop_state == {"epoch": 1, "cursor": [3, 4],
                                                               "best": 0.5}


def test_a_torn_last_line_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                     ) -> None:
    log = CheckpointLog(tmp_path / "c.jsonl")
    log.append(record(1))
    with open(log.path, "ab") as f:
        f.write(b'{"name": "step-2", "st')  # a crash in the middle of a write
    with caplog.at_level(logging.WARNING, logger="tinkex_jax.checkpointing"):
        assert log.records() == [record(1)]
    assert "torn last line" in caplog.text


def test_a_bad_line_in_the_middle_is_an_error(tmp_path: Path) -> None:
    log = CheckpointLog(tmp_path / "c.jsonl")
    log.path.write_text('{"name": "a", "step": 1}\nnot json\n{"name": "b", "step": 2}\n')
    with pytest.raises(ValueError, match=r"c\.jsonl:2: not a checkpoint record"):
        log.records()


class _MustNotBeCalled:
    model_id = "run"

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"{name} was called: the request was sent despite bad input")


@pytest.mark.parametrize(("kwargs", "where"), [
    ({"step": 1, "kind": "weights"}, "save_checkpoint(kind)"),
    ({"step": -1}, "save_checkpoint(step)"),
    ({"step": True}, "save_checkpoint(step)"),
    ({"step": 1, "ttl_seconds": 0}, "save_checkpoint(ttl_seconds)"),
    ({"step": 1, "loop_state": {"cursor": np.arange(3)}}, "save_checkpoint(loop_state)"),
])
def test_bad_arguments_fail_before_anything_is_sent(kwargs: dict[str, Any], where: str
                                                    ) -> None:
    with pytest.raises(ValidationError) as info:
        save_checkpoint(_MustNotBeCalled(), "x", **kwargs)  # type: ignore[arg-type]
    assert str(info.value).startswith(where) and "expected" in str(info.value)


def test_policy_and_monitor_arguments() -> None:
    with pytest.raises(ValidationError, match="max_attempts"):
        RecoveryPolicy(max_attempts=0)
    with pytest.raises(ValidationError, match="backoff_s"):
        RecoveryPolicy(backoff_s=-1.0)
    with pytest.raises(ValidationError, match="interval_s"):
        RunMonitor(_MustNotBeCalled(), "run", interval_s=0)  # type: ignore[arg-type]
