"""Request bodies of every endpoint (docs/protocol.md §3).

Each JSON request carries its constant ``type`` discriminator. ``None`` fields are omitted on
the wire (see `tinkex_jax.wire.encode_json`). Validation happens in ``__post_init__``, so a
bad request fails before it is sent, and the local backend gets the same checks when it
decodes a request.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from ..errors import invalid
from ._base import WireStruct
from ._datum import Datum
from ._model_input import ModelInput
from ._params import AdamParams, DimuonParams, LoraConfig, OptimizerConfig, SamplingParams
from ._tensor import TensorData

__all__ = [
    "AuthTokenRequest",
    "CancelFutureRequest",
    "ClientConfigRequest",
    "CopyWeightsRequest",
    "CreateModelRequest",
    "CreateSamplingSessionRequest",
    "CreateSessionRequest",
    "FinishReason",
    "ForwardBackwardRequest",
    "FutureRetrieveRequest",
    "FuturesRetrieveRequest",
    "GetInfoRequest",
    "JoinSamplingSessionRequest",
    "LoadWeightsRequest",
    "OptimStepRequest",
    "RetrieveFuturesTarget",
    "SampleRequest",
    "SaveWeightsExternalRequest",
    "SaveWeightsForSamplerRequest",
    "SaveWeightsRequest",
    "SessionFinishRequest",
    "SessionHeartbeatRequest",
    "SetCheckpointTTLRequest",
    "UnloadModelRequest",
    "WeightsInfoRequest",
]

_TEN_YEARS = 10 * 365 * 24 * 3600
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")


def _check_tinker_path(where: str, path: str | None, *, required: bool = True) -> None:
    if path is None:
        if required:
            raise invalid(where, "a tinker:// path", None)
        return
    if not isinstance(path, str) or not path.startswith("tinker://"):
        raise invalid(where, "a path starting with 'tinker://'", path,
                      "use the .path returned by save_state / save_weights_for_sampler")


def _check_checkpoint_name(where: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise invalid(where, "a checkpoint name of 1-128 letters, digits, '.', '_' or '-' "
                      "(starting with a letter or digit)", name, "e.g. 'step-100'")


def _check_ttl(where: str, ttl: int | None) -> None:
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int)
                            or not 3600 <= ttl <= _TEN_YEARS):
        raise invalid(where, "None (never expires) or seconds in [3600, 10 years]", ttl)


def _check_seq_id(where: str, seq_id: int) -> None:
    if isinstance(seq_id, bool) or not isinstance(seq_id, int) or seq_id < 0:
        raise invalid(where, "a non-negative int", seq_id)


class ClientConfigRequest(WireStruct, frozen=True, kw_only=True):
    """Body of ``client/config`` and ``client/dynamic_config``."""

    sdk_version: str


class AuthTokenRequest(WireStruct, frozen=True, kw_only=True):
    """Body of ``auth/token`` (empty)."""


class CreateSessionRequest(WireStruct, frozen=True, kw_only=True):
    """Body of ``create_session``."""

    tags: list[str] = msgspec.field(default_factory=list)
    user_metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    sdk_version: str = ""
    project_id: str | None = None
    display_name: str | None = None
    type: Literal["create_session"] = "create_session"


class SessionHeartbeatRequest(WireStruct, frozen=True, kw_only=True):
    """Body of ``session_heartbeat``."""

    session_id: str
    type: Literal["session_heartbeat"] = "session_heartbeat"


class FinishReason(WireStruct, frozen=True, kw_only=True):
    """Why a session ended."""

    type: Literal["success", "errored", "interrupted"] = "success"


class SessionFinishRequest(WireStruct, frozen=True, kw_only=True):
    """Body of ``sessions/{id}/finish``."""

    reason: FinishReason = msgspec.field(default_factory=FinishReason)
    detail: str | None = None


class CreateModelRequest(WireStruct, frozen=True, kw_only=True):
    """Body of ``create_model`` (a LoRA training model on a base model)."""

    session_id: str
    model_seq_id: int
    base_model: str
    lora_config: LoraConfig | None = None
    user_metadata: dict[str, Any] | None = None
    optimizer_config: OptimizerConfig | None = None
    type: Literal["create_model"] = "create_model"

    def __post_init__(self) -> None:
        if not self.base_model:
            raise invalid("CreateModelRequest.base_model", "a base model name", self.base_model,
                          "e.g. 'tinkex-jax/tiny' on the local backend")
        _check_seq_id("CreateModelRequest.model_seq_id", self.model_seq_id)


class GetInfoRequest(WireStruct, frozen=True, kw_only=True):
    """Body of ``get_info``."""

    model_id: str
    type: Literal["get_info"] = "get_info"


class UnloadModelRequest(WireStruct, frozen=True, kw_only=True):
    """Body of the legacy ``unload_model``."""

    model_id: str
    type: Literal["unload_model"] = "unload_model"


class ForwardBackwardRequest(WireStruct, frozen=True, kw_only=True):
    """One forward_backward (or forward, with ``forward_only``) request; sent as protobuf.

    ``loss_fn_config`` values are floats or strings (strings travel only in the proto's
    ``loss_fn_config_v2``).
    """

    model_id: str
    seq_id: int
    data: list[Datum]
    loss_fn: str
    loss_fn_config: dict[str, float | str] | None = None
    forward_only: bool = False

    def __post_init__(self) -> None:
        _check_seq_id("ForwardBackwardRequest.seq_id", self.seq_id)
        if not self.loss_fn:
            raise invalid("ForwardBackwardRequest.loss_fn", "a loss name", self.loss_fn,
                          "e.g. 'cross_entropy'")
        for key, value in (self.loss_fn_config or {}).items():
            if not isinstance(value, int | float | str) or isinstance(value, bool):
                raise invalid(f"loss_fn_config[{key!r}]", "a number or a string", value)


class OptimStepRequest(WireStruct, frozen=True, kw_only=True):
    """Body of ``optim_step``: Adam hyperparameters, or another family's."""

    model_id: str
    seq_id: int
    adam_params: AdamParams | None = None
    optimizer_params: DimuonParams | None = None
    type: Literal["optim_step"] = "optim_step"

    def __post_init__(self) -> None:
        _check_seq_id("OptimStepRequest.seq_id", self.seq_id)
        if (self.adam_params is None) == (self.optimizer_params is None):
            raise invalid("OptimStepRequest", "exactly one of adam_params / optimizer_params",
                          "<both or neither>", "pass AdamParams(learning_rate=...)")


class SaveWeightsRequest(WireStruct, frozen=True, kw_only=True):
    """Body of ``save_weights`` (``TrainingClient.save_state``)."""

    model_id: str
    path: str
    seq_id: int
    ttl_seconds: int | None = None
    overwrite: bool = False
    user_metadata: dict[str, str] | None = None
    type: Literal["save_weights"] = "save_weights"

    def __post_init__(self) -> None:
        _check_checkpoint_name("save_state(name)", self.path)
        _check_ttl("save_state(ttl_seconds)", self.ttl_seconds)
        _check_seq_id("SaveWeightsRequest.seq_id", self.seq_id)


class SaveWeightsForSamplerRequest(WireStruct, frozen=True, kw_only=True):
    """Body of ``save_weights_for_sampler``: named (``path``) or ephemeral form."""

    model_id: str
    seq_id: int
    path: str | None = None
    sampling_session_seq_id: int | None = None
    kind: Literal["snapshot", "inflight"] = "snapshot"
    ttl_seconds: int | None = None
    user_metadata: dict[str, str] | None = None
    type: Literal["save_weights_for_sampler"] = "save_weights_for_sampler"

    def __post_init__(self) -> None:
        if (self.path is None) == (self.sampling_session_seq_id is None):
            raise invalid("SaveWeightsForSamplerRequest",
                          "exactly one of path (named save) / sampling_session_seq_id",
                          "<both or neither>")
        if self.path is not None:
            _check_checkpoint_name("save_weights_for_sampler(name)", self.path)
        _check_ttl("save_weights_for_sampler(ttl_seconds)", self.ttl_seconds)
        _check_seq_id("SaveWeightsForSamplerRequest.seq_id", self.seq_id)


class SaveWeightsExternalRequest(WireStruct, frozen=True, kw_only=True):
    """Body of ``save_weights_external`` (Hugging Face format export)."""

    model_id: str
    path: str
    seq_id: int
    ttl_seconds: int | None = None
    age_encryption_recipients: list[str] | None = None
    type: Literal["save_weights_external"] = "save_weights_external"

    def __post_init__(self) -> None:
        _check_checkpoint_name("save_weights_external(name)", self.path)
        _check_ttl("save_weights_external(ttl_seconds)", self.ttl_seconds)
        if self.age_encryption_recipients is not None and len(self.age_encryption_recipients) > 10:
            raise invalid("age_encryption_recipients", "at most 10 recipients",
                          len(self.age_encryption_recipients))


class LoadWeightsRequest(WireStruct, frozen=True, kw_only=True):
    """Body of ``load_weights``: create-via-load (session_id + model_seq_id) or legacy form."""

    path: str
    optimizer: bool = False
    model_id: str | None = None
    seq_id: int | None = None
    session_id: str | None = None
    model_seq_id: int | None = None
    base_model: str | None = None
    user_metadata: dict[str, Any] | None = None
    optimizer_config: OptimizerConfig | None = None
    weights_access_token: str | None = None
    type: Literal["load_weights"] = "load_weights"

    def __post_init__(self) -> None:
        _check_tinker_path("LoadWeightsRequest.path", self.path)
        create = self.session_id is not None and self.model_seq_id is not None
        legacy = self.model_id is not None
        if create == legacy:
            raise invalid("LoadWeightsRequest",
                          "either session_id + model_seq_id (create) or model_id (legacy)",
                          "<both or neither>")

    def __repr__(self) -> str:
        token = "<redacted>" if self.weights_access_token else None
        return (f"LoadWeightsRequest(path={self.path!r}, optimizer={self.optimizer}, "
                f"model_id={self.model_id!r}, session_id={self.session_id!r}, "
                f"model_seq_id={self.model_seq_id}, weights_access_token={token})")


class CreateSamplingSessionRequest(WireStruct, frozen=True, kw_only=True):
    """Body of ``create_sampling_session``: exactly one of model_path / base_model."""

    session_id: str
    sampling_session_seq_id: int
    base_model: str | None = None
    model_path: str | None = None
    type: Literal["create_sampling_session"] = "create_sampling_session"

    def __post_init__(self) -> None:
        if (self.base_model is None) == (self.model_path is None):
            raise invalid("create_sampling_client", "exactly one of model_path / base_model",
                          "<both or neither>",
                          "pass model_path='tinker://...' or base_model='tinkex-jax/tiny'")
        if self.model_path is not None:
            _check_tinker_path("create_sampling_client(model_path)", self.model_path)


class JoinSamplingSessionRequest(WireStruct, frozen=True, kw_only=True):
    """Body of ``join_sampling_session``."""

    sampling_session_id: str
    type: Literal["join_sampling_session"] = "join_sampling_session"


class SampleRequest(WireStruct, frozen=True, kw_only=True):
    """Body of ``asample``."""

    sampling_session_id: str | None = None
    seq_id: int = 0
    num_samples: int = 1
    prompt: ModelInput
    sampling_params: SamplingParams
    prompt_logprobs: bool = False
    topk_prompt_logprobs: int = 0
    topk_sample_logprobs: int = 0
    target_prompt_logprobs: TensorData | None = None
    prompt_alt_tokens_k: int = 0
    prompt_logprobs_last_n: int | None = None
    record_stability_info: bool = False
    base_model: str | None = None
    model_path: str | None = None
    type: Literal["sample"] = "sample"

    def __post_init__(self) -> None:
        if isinstance(self.num_samples, bool) or not isinstance(self.num_samples, int) or (
            self.num_samples < 1
        ):
            raise invalid("sample(num_samples)", "an int >= 1", self.num_samples)
        for name in ("topk_prompt_logprobs", "topk_sample_logprobs", "prompt_alt_tokens_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise invalid(f"sample({name})", "an int >= 0", value)
        if self.prompt.length == 0:
            raise invalid("sample(prompt)", "a prompt with at least one token", "<empty prompt>")
        n = self.prompt_logprobs_last_n
        if n is not None:
            if not self.prompt_logprobs:
                raise invalid("sample(prompt_logprobs_last_n)",
                              "prompt logprobs to be requested too", n,
                              "pass include_prompt_logprobs=True")
            if not 1 <= n <= max(self.prompt.length - 1, 1):
                raise invalid("sample(prompt_logprobs_last_n)",
                              f"an int in [1, {max(self.prompt.length - 1, 1)}]", n)
        if self.topk_prompt_logprobs and not self.prompt_logprobs:
            raise invalid("sample(topk_prompt_logprobs)", "include_prompt_logprobs=True as well",
                          self.topk_prompt_logprobs)
        if self.target_prompt_logprobs is not None:
            shape = self.target_prompt_logprobs.shape or ()
            if len(shape) != 2 or shape[0] != self.prompt.length - 1:
                raise invalid("sample(target_prompt_logprobs)",
                              f"an int64 tensor of shape [{self.prompt.length - 1}, K]",
                              f"<shape {list(shape)}>")


class FutureRetrieveRequest(WireStruct, frozen=True, kw_only=True):
    """Body of ``retrieve_future``."""

    request_id: str
    allow_metadata_only: bool = False


class RetrieveFuturesTarget(WireStruct, frozen=True, kw_only=True):
    """Which futures a ``retrieve_futures`` poll covers."""

    sampling_session_id: str
    cloned_sampler_id: int = 0
    type: Literal["sampling_session"] = "sampling_session"


class FuturesRetrieveRequest(WireStruct, frozen=True, kw_only=True):
    """Body of ``retrieve_futures``."""

    target: RetrieveFuturesTarget
    prev_cursor: int = 0
    timeout: float | None = None
    retrieved_request_ids: list[str] = msgspec.field(default_factory=list)


class CancelFutureRequest(WireStruct, frozen=True, kw_only=True):
    """Body of ``cancel_future``."""

    request_id: str


class WeightsInfoRequest(WireStruct, frozen=True, kw_only=True):
    """Body of ``weights_info``."""

    tinker_path: str

    def __post_init__(self) -> None:
        _check_tinker_path("weights_info(tinker_path)", self.tinker_path)


class CopyWeightsRequest(WireStruct, frozen=True, kw_only=True):
    """Body of ``copy_weights``."""

    source_path: str
    destination_project_id: str | None = None
    session_id: str | None = None
    model_seq_id: int | None = None
    ttl_seconds: int | None = None
    weights_access_token: str | None = None

    def __post_init__(self) -> None:
        _check_tinker_path("copy_weights(path)", self.source_path)
        _check_ttl("copy_weights(ttl_seconds)", self.ttl_seconds)

    def __repr__(self) -> str:
        return (f"CopyWeightsRequest(source_path={self.source_path!r}, "
                f"destination_project_id={self.destination_project_id!r}, "
                f"weights_access_token={'<redacted>' if self.weights_access_token else None})")


class SetCheckpointTTLRequest(WireStruct, frozen=True, kw_only=True):
    """Body of ``PUT …/checkpoints/{id}/ttl``; ``None`` removes the expiry."""

    ttl_seconds: int | None = None

    def __post_init__(self) -> None:
        _check_ttl("set_checkpoint_ttl(ttl_seconds)", self.ttl_seconds)
