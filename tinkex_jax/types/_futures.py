"""Future results, request envelopes and the small aliases of the protocol.

The clients build and read these on their own; they are public because code written for
the official SDK names them (in type hints, ``isinstance`` checks and fakes in its tests).

Example:
    >>> import msgspec
    >>> msgspec.json.decode(b'{"state": "failed", "request_id": "r1"}',
    ...                     type=FutureFinished | FutureFailed)
    FutureFailed(request_id='r1')
    >>> RequestErrorCategory.User == "user"
    True
"""

from __future__ import annotations

import enum
from typing import Literal

from ..errors import invalid
from ._base import WireStruct
from ._datum import Datum, ProvenanceSpan
from ._requests import RetrieveFuturesTarget
from ._responses import (
    CreateModelResponse,
    ForwardBackwardOutput,
    LoadWeightsResponse,
    OptimStepResponse,
    RequestFailedResponse,
    SaveWeightsExternalResponse,
    SaveWeightsForSamplerResponse,
    SaveWeightsResponse,
    TryAgainResponse,
)
from ._telemetry import TelemetrySendRequest

__all__ = [
    "AuthTokenResponse",
    "EventType",
    "ForwardBackwardInput",
    "ForwardRequest",
    "FutureFailed",
    "FutureFinished",
    "FutureRetrieveResponse",
    "ModelID",
    "ProvenanceSpans",
    "RequestErrorCategory",
    "RequestID",
    "SamplingClientKind",
    "SamplingSessionFuturesTarget",
    "SaveWeightsExternalResponseInternal",
    "SaveWeightsForSamplerResponseInternal",
    "TelemetryBatch",
    "UnloadModelResponse",
]

#: A training model's id (from ``create_model``).
ModelID = str
#: A submitted request's id (what ``retrieve_future`` polls).
RequestID = str
#: Which weights a sampling client samples from: a fixed ``snapshot`` (the default), or the
#: ``inflight`` weights its training model keeps updating with each save.
SamplingClientKind = Literal["snapshot", "inflight"]
#: Kinds of telemetry events.
EventType = Literal["SESSION_START", "SESSION_END", "UNHANDLED_EXCEPTION", "GENERIC_EVENT"]
#: The provenance of a datum field: runs that tile it (see `Datum.with_provenance`).
ProvenanceSpans = list[ProvenanceSpan]
#: Sampling-session futures polled by ``retrieve_futures`` (the official SDK's name).
SamplingSessionFuturesTarget = RetrieveFuturesTarget
#: A telemetry batch (the same body as `TelemetrySendRequest`).
TelemetryBatch = TelemetrySendRequest
#: What ``save_weights_for_sampler`` answers on the wire: a path, or a sampling session id.
SaveWeightsForSamplerResponseInternal = SaveWeightsForSamplerResponse


class RequestErrorCategory(enum.StrEnum):
    """Whose fault a failed request was; each member equals its lowercase string."""

    Unknown = "unknown"
    Server = "server"
    User = "user"


class FutureFinished(WireStruct, frozen=True, kw_only=True, tag="finished", tag_field="state"):
    """A finished request reported by ``retrieve_futures``, with its payload's size."""

    request_id: RequestID
    response_payload_uncompressed_size: int | None = None

    @property
    def state(self) -> str:
        """``"finished"``."""
        return "finished"


class FutureFailed(WireStruct, frozen=True, kw_only=True, tag="failed", tag_field="state"):
    """A failed request reported by ``retrieve_futures`` (fetch it for the error)."""

    request_id: RequestID

    @property
    def state(self) -> str:
        """``"failed"``."""
        return "failed"


class UnloadModelResponse(WireStruct, frozen=True, kw_only=True):
    """Result of the legacy ``unload_model``."""

    model_id: ModelID
    type: Literal["unload_model"] | None = None


#: What ``retrieve_future`` can answer.
FutureRetrieveResponse = (TryAgainResponse | ForwardBackwardOutput | OptimStepResponse
                          | SaveWeightsResponse | LoadWeightsResponse
                          | SaveWeightsForSamplerResponse | SaveWeightsExternalResponse
                          | CreateModelResponse | UnloadModelResponse | RequestFailedResponse)


class AuthTokenResponse(WireStruct, frozen=True, kw_only=True):
    """Answer to ``auth/token``: a short-lived JWT (never shown in reprs)."""

    jwt: str

    def __repr__(self) -> str:
        return "AuthTokenResponse(jwt=<redacted>)"


class SaveWeightsExternalResponseInternal(WireStruct, frozen=True, kw_only=True):
    """What ``save_weights_external`` answers on the wire (the path may be absent)."""

    path: str | None = None
    size_bytes: int | None = None
    type: Literal["save_weights_external"] | None = None


class ForwardBackwardInput(WireStruct, frozen=True, kw_only=True):
    """The data and loss of one forward or forward_backward call.

    Example:
        >>> from tinkex_jax.types import ModelInput
        >>> d = Datum(model_input=ModelInput.from_ints([1, 2]),
        ...           loss_fn_inputs={"target_tokens": [2, 3], "weights": [1, 1]})
        >>> ForwardBackwardInput(data=[d], loss_fn="cross_entropy").loss_fn
        'cross_entropy'
    """

    data: list[Datum]
    loss_fn: str
    loss_fn_config: dict[str, float | str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.loss_fn, str) or not self.loss_fn:
            raise invalid("ForwardBackwardInput.loss_fn", "a loss name", self.loss_fn,
                          "e.g. 'cross_entropy'")


class ForwardRequest(WireStruct, frozen=True, kw_only=True):
    """A forward pass (no gradients) of `forward_input` on a training model."""

    forward_input: ForwardBackwardInput
    model_id: ModelID
    seq_id: int | None = None
