"""Response bodies (docs/protocol.md §3, §5). Lenient: unknown fields ignored, optional ones absent."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
import numpy as np

from ._base import WireStruct
from ._params import AdamOptimizerConfig, OptimizerConfig, StopReason
from ._tensor import TensorData

__all__ = [
    "ClientConfigResponse",
    "ClientDynamicConfigResponse",
    "CreateCustomLossResponse",
    "CreateModelResponse",
    "CreateSamplingSessionResponse",
    "CreateSessionResponse",
    "ForwardBackwardOutput",
    "FutureCompletion",
    "FutureMetadataResponse",
    "FuturesRetrieveResponse",
    "GetInfoResponse",
    "GetSamplerResponse",
    "GetServerCapabilitiesResponse",
    "HealthResponse",
    "JoinSamplingSessionResponse",
    "LoadWeightsResponse",
    "LossFnOutput",
    "ModelData",
    "OptimStepResponse",
    "PromptAltTokens",
    "QueueState",
    "RequestFailedResponse",
    "SampleResponse",
    "SampledSequence",
    "SaveWeightsExternalResponse",
    "SaveWeightsForSamplerResponse",
    "SaveWeightsResponse",
    "SessionHeartbeatResponse",
    "SupportedModel",
    "TopkLogprobs",
    "TryAgainResponse",
    "UntypedAPIFuture",
]

QueueState = Literal["active", "paused_capacity", "paused_rate_limit", "unknown"]
LossFnOutput = dict[str, TensorData]


class ClientConfigResponse(WireStruct, frozen=True, kw_only=True):
    """What the server tells the client about itself (every field optional)."""

    pjwt_auth_enabled: bool = False
    credential_default_source: str = "api_key"
    sample_dispatch_bytes_semaphore_size: int = 10 * 1024 * 1024
    inflight_response_bytes_semaphore_size: int = 50 * 1024 * 1024
    parallel_fwdbwd_chunks: bool = True
    proto_compress_fwdbwd: bool = False
    fwdbwd_max_chunk_len: int = 1024
    fwdbwd_max_chunk_bytes_count: int = 5_000_000
    fwdbwd_dispatch_bytes_semaphore_size: int = 50_000_000
    billing_exception_max_pause_duration_sec: float = 3600.0
    sample_no_retries: bool = False
    sample_enable_stuck_detection: bool = True
    sample_max_concurrent_requests: int = 2000
    use_pyqwest_transport: bool = True
    sample_use_retrieve_futures: bool = False
    custom_loss_server_side: bool = False
    sample_join_sampling_session: bool = False
    #: Sent by servers built for older SDKs only: False means they cannot create a model
    #: from a checkpoint in one load_weights (the SDK then uses create_model + load_weights).
    create_model_via_load_weights: bool | None = None


class ClientDynamicConfigResponse(WireStruct, frozen=True, kw_only=True):
    """Settings the client refreshes periodically."""

    refresh_interval_sec: float = 300.0
    sample_cancel_enabled: bool = False
    sample_cancel_max_batch_size: int = 64


class CreateSessionResponse(WireStruct, frozen=True, kw_only=True):
    """Answer to ``create_session``."""

    session_id: str
    info_message: str | None = None
    warning_message: str | None = None
    error_message: str | None = None
    type: str = "create_session"


class SessionHeartbeatResponse(WireStruct, frozen=True, kw_only=True):
    """Answer to ``session_heartbeat``."""

    type: str = "session_heartbeat"


class UntypedAPIFuture(WireStruct, frozen=True, kw_only=True):
    """Answer of every future-returning endpoint."""

    request_id: str
    model_id: str | None = None
    sample_sequence_ids: list[str] | None = None


class TryAgainResponse(WireStruct, frozen=True, kw_only=True):
    """retrieve_future: still pending."""

    request_id: str = ""
    queue_state: QueueState = "active"
    queue_state_reason: str | None = None
    type: Literal["try_again"] = "try_again"


class FutureMetadataResponse(WireStruct, frozen=True, kw_only=True):
    """retrieve_future: done, payload large; poll again with allow_metadata_only=False."""

    response_payload_size: int = 0
    status: Literal["complete_metadata"] = "complete_metadata"


class RequestFailedResponse(WireStruct, frozen=True, kw_only=True):
    """retrieve_future: the request failed."""

    error: str
    category: Literal["unknown", "server", "user"] = "unknown"


class CreateModelResponse(WireStruct, frozen=True, kw_only=True):
    """Result of a ``create_model`` future."""

    model_id: str
    type: str = "create_model"


class ModelData(WireStruct, frozen=True, kw_only=True):
    """Facts about a model's architecture and tokenizer."""

    arch: str | None = None
    model_name: str | None = None
    tokenizer_id: str | None = None


class GetInfoResponse(WireStruct, frozen=True, kw_only=True):
    """Answer to ``get_info``."""

    model_id: str
    model_data: ModelData = msgspec.field(default_factory=ModelData)
    optimizer_config: OptimizerConfig = msgspec.field(default_factory=AdamOptimizerConfig)
    is_lora: bool | None = None
    lora_rank: int | None = None
    model_name: str | None = None
    type: str = "get_info"


class ForwardBackwardOutput(WireStruct, frozen=True, kw_only=True):
    """Result of forward / forward_backward: per-datum outputs and ``name:reduction`` metrics.

    Example:
        >>> out = ForwardBackwardOutput(loss_fn_output_type="ArrayRecord",
        ...     loss_fn_outputs=[{"logprobs": TensorData(data=[-1.0], dtype="float32")}],
        ...     metrics={"loss:sum": 1.0})
        >>> out.loss_fn_outputs[0]["logprobs"].tolist(), out.metrics["loss:sum"]
        ([-1.0], 1.0)
    """

    loss_fn_output_type: str = "ArrayRecord"
    loss_fn_outputs: list[LossFnOutput] = msgspec.field(default_factory=list)
    metrics: dict[str, float] = msgspec.field(default_factory=dict)


class OptimStepResponse(WireStruct, frozen=True, kw_only=True):
    """Result of ``optim_step``."""

    metrics: dict[str, float] | None = None


class SaveWeightsResponse(WireStruct, frozen=True, kw_only=True):
    """Result of ``save_weights`` (save_state)."""

    path: str
    type: str = "save_weights"

    def get_console_url(self, *, base_url: str | None = None) -> str:
        """The console page of this checkpoint on the server at `base_url` (default:
        ``TINKER_BASE_URL``, else the hosted service); see `tinkex_jax.console_urls`.

        Example:
            >>> SaveWeightsResponse(path="tinker://r1/weights/s1").get_console_url(
            ...     base_url="http://127.0.0.1:8000")
            'http://127.0.0.1:8000/console/checkpoints/r1/weights%2Fs1'
        """
        return _checkpoint_console_url(self.path, base_url)


class SaveWeightsForSamplerResponse(WireStruct, frozen=True, kw_only=True):
    """Result of ``save_weights_for_sampler``: ``path`` (named) or ``sampling_session_id``."""

    path: str | None = None
    sampling_session_id: str | None = None
    type: str = "save_weights_for_sampler"

    def get_console_url(self, *, base_url: str | None = None) -> str:
        """The console page of these sampler weights (see `SaveWeightsResponse`)."""
        return _checkpoint_console_url(self.path, base_url)

    def get_playground_url(self, *, base_url: str | None = None) -> str:
        """The console page for trying out these sampler weights (`base_url` as for
        `get_console_url`).

        Example:
            >>> SaveWeightsForSamplerResponse(path="tinker://r/sampler_weights/s"
            ...     ).get_playground_url(base_url="http://h:1")
            'http://h:1/console/playground?mode=checkpoint&checkpoint=tinker%3A%2F%2Fr%2Fsampler_weights%2Fs'
        """
        from ..console_urls import checkpoint_playground_url

        return checkpoint_playground_url(_saved_path(self.path), base_url=base_url)


def _saved_path(path: str | None) -> str:
    if not path:
        from ..errors import invalid

        raise invalid("get_console_url", "a result with a tinker path", path,
                      "only named saves (save_weights_for_sampler(name)) have a page")
    return path


def _checkpoint_console_url(path: str | None, base_url: str | None) -> str:
    from ..console_urls import checkpoint_console_url
    from ._rest import ParsedCheckpointTinkerPath

    parsed = ParsedCheckpointTinkerPath.from_tinker_path(_saved_path(path))
    return checkpoint_console_url(parsed.training_run_id, parsed.checkpoint_id,
                                  base_url=base_url)


class SaveWeightsExternalResponse(WireStruct, frozen=True, kw_only=True):
    """Result of ``save_weights_external``."""

    path: str
    size_bytes: int | None = None
    type: str = "save_weights_external"


class LoadWeightsResponse(WireStruct, frozen=True, kw_only=True):
    """Result of ``load_weights``."""

    path: str | None = None
    model_id: str | None = None
    type: str = "load_weights"


class CreateSamplingSessionResponse(WireStruct, frozen=True, kw_only=True):
    """Answer to ``create_sampling_session``."""

    sampling_session_id: str
    type: str = "create_sampling_session"


class GetSamplerResponse(WireStruct, frozen=True, kw_only=True):
    """Answer to ``GET samplers/{id}``."""

    sampler_id: str
    base_model: str
    model_path: str | None = None


class JoinSamplingSessionResponse(WireStruct, frozen=True, kw_only=True):
    """Answer to ``join_sampling_session``."""

    client_counter: int
    type: str = "join_sampling_session"


class CreateCustomLossResponse(WireStruct, frozen=True, kw_only=True):
    """Result of ``create_custom_loss``."""

    loss_id: str
    type: str = "create_custom_loss"


class FutureCompletion(WireStruct, frozen=True, kw_only=True):
    """One event of ``retrieve_futures``."""

    request_id: str
    state: Literal["finished", "failed"] = "finished"
    response_payload_uncompressed_size: int | None = None


class FuturesRetrieveResponse(WireStruct, frozen=True, kw_only=True):
    """Answer to ``retrieve_futures``."""

    completions: list[FutureCompletion] = msgspec.field(default_factory=list)
    cursor: int = 0


class SupportedModel(WireStruct, frozen=True, kw_only=True):
    """A model the server can train or sample."""

    model_name: str | None = None
    max_context_length: int | None = None
    trainable: bool | None = None
    sampleable: bool | None = None


class GetServerCapabilitiesResponse(WireStruct, frozen=True, kw_only=True):
    """Answer to ``get_server_capabilities``."""

    supported_models: list[SupportedModel] = msgspec.field(default_factory=list)


class HealthResponse(WireStruct, frozen=True, kw_only=True):
    """Answer to ``healthz``.

    Attributes:
        status: ``"ok"`` once the server takes requests.
        devices: How many accelerator devices the server's models run on (the local
            backend; None from servers that do not say).
        mesh: The device mesh's axis sizes, e.g. ``{"fsdp": 4, "tp": 2}`` (local backend).
        platform: ``"cpu"``, ``"gpu"`` or ``"tpu"`` (local backend).
    """

    status: str = "ok"
    devices: int | None = None
    mesh: dict[str, int] | None = None
    platform: str | None = None


# ----------------------------------------------------------------------------- sampling


class TopkLogprobs(WireStruct, frozen=True, kw_only=True, eq=False):
    """Top-k (token id, logprob) pairs per position as two ``[length, k]`` arrays.

    Unused cells hold token id 0 and logprob -99999.0 (the wire's sentinel).
    """

    token_ids: Any  # np.ndarray [length, k] int32
    logprobs: Any  # np.ndarray [length, k] float32

    def to_lists(self) -> list[list[tuple[int, float]] | None]:
        """Per position a list of (token id, logprob), or None where nothing was reported."""
        rows: list[list[tuple[int, float]] | None] = []
        ids, lps = np.asarray(self.token_ids), np.asarray(self.logprobs)
        for row_ids, row_lps in zip(ids.tolist(), lps.tolist()):
            pairs = [(t, lp) for t, lp in zip(row_ids, row_lps) if lp > -99999.0]
            rows.append(pairs or None)
        return rows


class PromptAltTokens(WireStruct, frozen=True, kw_only=True):
    """Alternative tokens per prompt position: ids and logprobs, ``[len(prompt)-1, k]``."""

    tokens: TensorData
    logprobs: TensorData


class SampledSequence(WireStruct, frozen=True, kw_only=True, eq=False):
    """One sampled continuation.

    ``tokens_np`` / ``logprobs_np`` are the numpy arrays as decoded (no conversion);
    ``tokens`` / ``logprobs`` are Python lists. ``sequence_id`` names the sequence in later
    requests (provenance spans for ``stable_reinforce``); it is None when the server did not
    give one (servers built for older SDKs), and such a sequence cannot be referenced.
    """

    stop_reason: StopReason
    tokens_np: Any  # np.ndarray int32 [n]
    logprobs_np: Any = None  # np.ndarray float32 [n] | None
    topk_logprobs_np: TopkLogprobs | None = None
    sequence_id: str | None = None

    @property
    def tokens(self) -> list[int]:
        """Generated token ids."""
        return np.asarray(self.tokens_np).tolist()

    @property
    def logprobs(self) -> list[float] | None:
        """Logprob of each generated token under the model, or None if not returned."""
        if self.logprobs_np is None:
            return None
        return np.asarray(self.logprobs_np).tolist()

    @property
    def topk_logprobs(self) -> list[list[tuple[int, float]] | None] | None:
        """Top-k alternatives per generated position, if requested."""
        return None if self.topk_logprobs_np is None else self.topk_logprobs_np.to_lists()


class SampleResponse(WireStruct, frozen=True, kw_only=True, eq=False):
    """Result of ``asample``: the sequences and optional prompt-level logprobs."""

    sequences: list[SampledSequence]
    prompt_logprobs_np: Any = None  # np.ndarray float32 [len(prompt)], NaN where undefined
    topk_prompt_logprobs_np: TopkLogprobs | None = None
    target_prompt_logprobs: TensorData | None = None
    prompt_alt_tokens: PromptAltTokens | None = None
    prompt_cache_hit_tokens: int = 0

    @property
    def prompt_logprobs(self) -> list[float | None] | None:
        """Per prompt position the logprob of that token given the prefix (None at 0)."""
        if self.prompt_logprobs_np is None:
            return None
        values = np.asarray(self.prompt_logprobs_np, dtype=np.float64)
        return [None if np.isnan(v) else float(v) for v in values]

    @property
    def topk_prompt_logprobs(self) -> list[list[tuple[int, float]] | None] | None:
        """Top-k alternatives per prompt position, if requested."""
        if self.topk_prompt_logprobs_np is None:
            return None
        return self.topk_prompt_logprobs_np.to_lists()

