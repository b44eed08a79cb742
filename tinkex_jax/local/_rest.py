"""JSON shapes of the REST answers (checkpoints, training runs, sessions), built from rows.

Example:
    >>> row = CheckpointRow(run_id="r", checkpoint_id="weights/a", kind="weights", name="a",
    ...                     tinker_path="tinker://r/weights/a", dir="x", created_at=0.0)
    >>> checkpoint_json(row)["checkpoint_type"], checkpoint_json(row)["time"]
    ('training', '1970-01-01T00:00:00Z')
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from ._storage import CheckpointRow, RunRow, SessionRow

__all__ = [
    "KIND_TO_TYPE",
    "checkpoint_json",
    "iso_time",
    "session_json",
    "string_metadata",
    "training_run_json",
]

KIND_TO_TYPE = {"weights": "training", "sampler_weights": "sampler",
                "external_weights": "external"}


def iso_time(epoch_s: float) -> str:
    """An ISO-8601 UTC timestamp with a ``Z`` suffix.

    Example:
        >>> iso_time(1.5)
        '1970-01-01T00:00:01.500000Z'
    """
    text = dt.datetime.fromtimestamp(epoch_s, tz=dt.UTC).isoformat()
    return text.replace("+00:00", "Z")


def string_metadata(metadata: Mapping[str, Any] | None) -> dict[str, str] | None:
    """Metadata with string values (the REST types declare ``dict[str, str]``).

    Example:
        >>> string_metadata({"a": 1, "b": "x"})
        {'a': '1', 'b': 'x'}
    """
    if metadata is None:
        return None
    return {str(k): v if isinstance(v, str) else str(v) for k, v in metadata.items()}


def checkpoint_json(row: CheckpointRow) -> dict[str, Any]:
    """A ``Checkpoint`` object."""
    out: dict[str, Any] = {
        "checkpoint_id": row.checkpoint_id,
        "checkpoint_type": KIND_TO_TYPE[row.kind],
        "time": iso_time(row.created_at),
        "tinker_path": row.tinker_path,
        "size_bytes": row.size_bytes,
        "public": row.public,
    }
    if row.user_metadata is not None:
        out["user_metadata"] = string_metadata(row.user_metadata)
    if row.expires_at is not None:
        out["expires_at"] = iso_time(row.expires_at)
    return out


def training_run_json(run: RunRow, last_checkpoint: CheckpointRow | None,
                      last_sampler_checkpoint: CheckpointRow | None) -> dict[str, Any]:
    """A ``TrainingRun`` object."""
    out: dict[str, Any] = {
        "training_run_id": run.run_id,
        "base_model": run.base_model,
        "model_owner": run.owner,
        "is_lora": True,
        "corrupted": run.corrupted is not None,
        "lora_rank": run.lora_rank,
        "last_request_time": iso_time(run.last_request_time),
        "user_metadata": string_metadata(run.user_metadata) or None,
    }
    if last_checkpoint is not None:
        out["last_checkpoint"] = checkpoint_json(last_checkpoint)
    if last_sampler_checkpoint is not None:
        out["last_sampler_checkpoint"] = checkpoint_json(last_sampler_checkpoint)
    return {k: v for k, v in out.items() if v is not None}


def session_json(session: SessionRow, run_ids: list[str], sampler_ids: list[str]
                 ) -> dict[str, Any]:
    """A ``GetSessionResponse`` object."""
    out: dict[str, Any] = {"training_run_ids": run_ids, "sampler_ids": sampler_ids}
    if session.user_metadata:
        out["user_metadata"] = string_metadata(session.user_metadata)
    if session.display_name is not None:
        out["display_name"] = session.display_name
    return out
