"""RestClient types: checkpoints, training runs, sessions, weights info; tinker paths."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import msgspec

from ..errors import invalid
from ._base import WireStruct
from ._params import AdamOptimizerConfig, OptimizerConfig

__all__ = [
    "Checkpoint",
    "CheckpointType",
    "CheckpointsListResponse",
    "CopyWeightsResponse",
    "Cursor",
    "ExternalWeightsUrlsResponse",
    "GetSessionResponse",
    "ListSessionsResponse",
    "ParsedCheckpointTinkerPath",
    "TraceExportResponse",
    "TrainingRun",
    "TrainingRunsResponse",
    "WeightsInfoResponse",
    "WhoamiResponse",
]

CheckpointType = Literal["training", "sampler", "external"]

_KIND_TO_TYPE: dict[str, CheckpointType] = {
    "weights": "training",
    "sampler_weights": "sampler",
    "external_weights": "external",
}


class ParsedCheckpointTinkerPath(WireStruct, frozen=True, kw_only=True):
    """A parsed ``tinker://<training_run_id>/<kind>/<name>`` path.

    ``checkpoint_id`` is ``"<kind>/<name>"``, the form REST URLs use.

    Example:
        >>> p = ParsedCheckpointTinkerPath.from_tinker_path("tinker://run-1/weights/step-10")
        >>> p.training_run_id, p.checkpoint_type, p.checkpoint_id, p.name
        ('run-1', 'training', 'weights/step-10', 'step-10')
    """

    tinker_path: str
    training_run_id: str
    checkpoint_type: CheckpointType
    checkpoint_id: str

    @property
    def kind(self) -> str:
        """The path segment: ``weights``, ``sampler_weights`` or ``external_weights``."""
        return self.checkpoint_id.split("/", 1)[0]

    @property
    def name(self) -> str:
        """The checkpoint's name."""
        return self.checkpoint_id.split("/", 1)[1]

    @classmethod
    def from_tinker_path(cls, tinker_path: str) -> ParsedCheckpointTinkerPath:
        """Parse a tinker path; raises `ValidationError` with the expected form."""
        expected = "'tinker://<training_run_id>/<weights|sampler_weights|external_weights>/<name>'"
        if not isinstance(tinker_path, str) or not tinker_path.startswith("tinker://"):
            raise invalid("tinker path", expected, tinker_path)
        parts = tinker_path[len("tinker://"):].split("/")
        if len(parts) != 3 or not all(parts):
            raise invalid("tinker path", expected, tinker_path,
                          "use the .path returned by save_state / save_weights_for_sampler")
        run_id, kind, name = parts
        if kind not in _KIND_TO_TYPE:
            raise invalid("tinker path kind", "weights, sampler_weights or external_weights",
                          kind)
        return cls(tinker_path=tinker_path, training_run_id=run_id,
                   checkpoint_type=_KIND_TO_TYPE[kind], checkpoint_id=f"{kind}/{name}")


class Checkpoint(WireStruct, frozen=True, kw_only=True):
    """A saved checkpoint."""

    checkpoint_id: str
    checkpoint_type: CheckpointType
    time: dt.datetime
    tinker_path: str
    size_bytes: int | None = None
    public: bool = False
    user_metadata: dict[str, str] | None = None
    expires_at: dt.datetime | None = None


class Cursor(WireStruct, frozen=True, kw_only=True):
    """Pagination state."""

    offset: int
    limit: int
    total_count: int


class CheckpointsListResponse(WireStruct, frozen=True, kw_only=True):
    """A page of checkpoints."""

    checkpoints: list[Checkpoint] = msgspec.field(default_factory=list)
    cursor: Cursor | None = None


class TrainingRun(WireStruct, frozen=True, kw_only=True):
    """A training run (one training model and its checkpoints)."""

    training_run_id: str
    base_model: str
    model_owner: str
    is_lora: bool
    last_request_time: dt.datetime
    corrupted: bool = False
    lora_rank: int | None = None
    last_checkpoint: Checkpoint | None = None
    last_sampler_checkpoint: Checkpoint | None = None
    user_metadata: dict[str, str] | None = None


class TrainingRunsResponse(WireStruct, frozen=True, kw_only=True):
    """A page of training runs."""

    training_runs: list[TrainingRun] = msgspec.field(default_factory=list)
    cursor: Cursor | None = None


class ListSessionsResponse(WireStruct, frozen=True, kw_only=True):
    """A page of session ids."""

    sessions: list[str] = msgspec.field(default_factory=list)


class GetSessionResponse(WireStruct, frozen=True, kw_only=True):
    """What a session created."""

    training_run_ids: list[str] = msgspec.field(default_factory=list)
    sampler_ids: list[str] = msgspec.field(default_factory=list)
    user_metadata: dict[str, Any] | None = None
    display_name: str | None = None


class WeightsInfoResponse(WireStruct, frozen=True, kw_only=True):
    """Facts about saved weights."""

    base_model: str
    is_lora: bool
    optimizer_config: OptimizerConfig = msgspec.field(default_factory=AdamOptimizerConfig)
    lora_rank: int | None = None
    train_unembed: bool | None = None
    train_mlp: bool | None = None
    train_attn: bool | None = None


class ExternalWeightsUrlsResponse(WireStruct, frozen=True, kw_only=True):
    """Download URLs of an exported (Hugging Face format) checkpoint."""

    urls: dict[str, str]
    expires: dt.datetime


class CopyWeightsResponse(WireStruct, frozen=True, kw_only=True):
    """Answer to ``copy_weights``."""

    tinker_path: str


class TraceExportResponse(WireStruct, frozen=True, kw_only=True):
    """Answer to ``sessions/{id}/trace_export``."""

    status: Literal["pending", "ready", "failed"] = "pending"
    url: str | None = None
    error: str | None = None


class WhoamiResponse(WireStruct, frozen=True, kw_only=True):
    """Who the credential in use belongs to (`RestClient.whoami`; read from JWT claims).

    Example:
        >>> WhoamiResponse(user_urn="tml:user:1", org_urn="tml:organization:o").email is None
        True
    """

    user_urn: str
    org_urn: str
    email: str | None = None
