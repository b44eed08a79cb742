"""tinker:// paths and id formats (docs/protocol.md §10)."""

from __future__ import annotations

from typing import Literal

from ..errors import invalid
from ..types import ParsedCheckpointTinkerPath

__all__ = ["parse_tinker_path", "tinker_path", "training_model_id"]

PathKind = Literal["weights", "sampler_weights", "external_weights"]


def parse_tinker_path(path: str) -> ParsedCheckpointTinkerPath:
    """Parse ``tinker://<run>/<kind>/<name>``.

    Example:
        >>> parse_tinker_path("tinker://s:train:0/sampler_weights/final").checkpoint_type
        'sampler'
    """
    return ParsedCheckpointTinkerPath.from_tinker_path(path)


def tinker_path(training_run_id: str, kind: PathKind, name: str) -> str:
    """Build a tinker path.

    Example:
        >>> tinker_path("run-1", "weights", "step-10")
        'tinker://run-1/weights/step-10'
    """
    if not training_run_id or "/" in training_run_id or not name or "/" in name:
        raise invalid("tinker_path", "a run id and a name without '/'", (training_run_id, name))
    if kind not in ("weights", "sampler_weights", "external_weights"):
        raise invalid("tinker_path(kind)", "weights, sampler_weights or external_weights", kind)
    return f"tinker://{training_run_id}/{kind}/{name}"


def training_model_id(session_id: str, model_seq_id: int) -> str:
    """The id Tinker gives a training model: ``"<session_id>:train:<model_seq_id>"``.

    Example:
        >>> training_model_id("sess-1", 0)
        'sess-1:train:0'
    """
    return f"{session_id}:train:{model_seq_id}"
