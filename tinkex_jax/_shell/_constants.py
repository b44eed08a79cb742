"""Constants of the shell: versions, defaults and the endpoint table (docs/protocol.md §3, §6).

Every endpoint's retry policy lives here as data, so one function sends every request and
a reader can check the table against docs/protocol.md in one place.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    "DEFAULT_WAIT_FOR_SERVER",
    "ENDPOINTS",
    "PACKAGE_VERSION",
    "PROTOCOL_VERSION",
    "PROTO_REQUEST_TYPES",
    "Endpoint",
    "RequestType",
]

#: This package's version (User-Agent, platform headers).
PACKAGE_VERSION = "0.1.0"
#: The protocol version we speak, sent as ``sdk_version`` and ``x-sdk-version``: servers gate
#: features (e.g. ``sample_sequence_ids``) on it, so it names the official SDK release whose
#: wire contract we implement (docs/protocol.md).
PROTOCOL_VERSION = "0.38.0"

DEFAULT_BASE_URL = "https://tinker.thinkingmachines.dev/services/tinker-prod"
DEFAULT_TIMEOUT = 60.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_MAX_RETRIES = 10
#: Seconds the SDK keeps retrying a refused connection or an unknown host before the server
#: has answered once (``ServiceClient(wait_for_server=...)``, ``TINKEX_WAIT_FOR_SERVER``).
DEFAULT_WAIT_FOR_SERVER = 5.0

RequestType = Literal[
    "CreateModel", "ForwardBackward", "Forward", "OptimStep", "SaveWeights", "LoadWeights",
    "SaveWeightsForSampler", "SaveWeightsExternal", "Sample", "CreateCustomLoss",
]
#: Future kinds whose success payload is protobuf (docs/protocol.md §4.2).
PROTO_REQUEST_TYPES: frozenset[str] = frozenset({"ForwardBackward", "Forward", "Sample"})


class Endpoint(NamedTuple):
    """How one endpoint is called.

    Attributes:
        method: HTTP method.
        path: Path under ``/api/v1/``; ``{name}`` placeholders are filled per call.
        max_retries: Base-client retries (§6.1); ``None`` means the client's setting.
        holder_retries: Whether the 300 s holder retry loop (§6.2) wraps the call.
        timeout: Per-call timeout in seconds; ``None`` means the client's setting.
    """

    method: str
    path: str
    max_retries: int | None = None
    holder_retries: bool = True
    timeout: float | None = None


ENDPOINTS: dict[str, Endpoint] = {
    # JWT exchange (§1.3): sent from inside another request's auth flow, which has the outer
    # retry loops, so only the base retries here
    "auth_token": Endpoint("POST", "auth/token", holder_retries=False),
    # life cycle (§2, §3.1, §3.2)
    "client_config": Endpoint("POST", "client/config"),
    "dynamic_config": Endpoint("POST", "client/dynamic_config", max_retries=0, timeout=10.0),
    "dynamic_config_refresh": Endpoint("POST", "client/dynamic_config", max_retries=0,
                                       holder_retries=False, timeout=10.0),
    "create_session": Endpoint("POST", "create_session", holder_retries=False),
    "session_heartbeat": Endpoint("POST", "session_heartbeat", max_retries=0,
                                  holder_retries=False, timeout=10.0),
    "session_finish": Endpoint("POST", "sessions/{session_id}/finish"),
    "telemetry": Endpoint("POST", "telemetry", max_retries=1, holder_retries=False, timeout=5.0),
    # training (§3.3, §3.4)
    "create_model": Endpoint("POST", "create_model", holder_retries=False),
    "get_info": Endpoint("POST", "get_info"),
    "forward_backward": Endpoint("POST", "forward_backward"),
    "optim_step": Endpoint("POST", "optim_step"),
    "save_weights": Endpoint("POST", "save_weights", max_retries=0),
    "save_weights_for_sampler": Endpoint("POST", "save_weights_for_sampler", max_retries=0),
    "save_weights_external": Endpoint("POST", "save_weights_external", max_retries=0),
    "load_weights": Endpoint("POST", "load_weights"),
    # sampling (§3.5, §3.6)
    "create_sampling_session": Endpoint("POST", "create_sampling_session", holder_retries=False),
    "join_sampling_session": Endpoint("POST", "join_sampling_session"),
    # asample: holder retries run around the 429 backpressure loop, in the sampling client
    "asample": Endpoint("POST", "asample", max_retries=0, holder_retries=False),
    "cancel_future": Endpoint("POST", "cancel_future", max_retries=0, timeout=30.0),
    # futures (§5)
    "retrieve_future": Endpoint("POST", "retrieve_future", max_retries=0, holder_retries=False,
                                timeout=45.0),
    # service info (§3.9)
    "get_server_capabilities": Endpoint("GET", "get_server_capabilities"),
    "healthz": Endpoint("GET", "healthz"),
    # REST (§3.2, §3.10)
    "list_sessions": Endpoint("GET", "sessions"),
    "get_session": Endpoint("GET", "sessions/{session_id}"),
    "assign_session_project": Endpoint("PUT", "sessions/{session_id}/project"),
    "export_session_trace": Endpoint("GET", "sessions/{session_id}/trace_export"),
    "list_training_runs": Endpoint("GET", "training_runs"),
    "get_training_run": Endpoint("GET", "training_runs/{run_id}"),
    "list_checkpoints": Endpoint("GET", "training_runs/{run_id}/checkpoints"),
    "list_user_checkpoints": Endpoint("GET", "checkpoints"),
    "delete_checkpoint": Endpoint("DELETE", "training_runs/{run_id}/checkpoints/{checkpoint_id}"),
    "publish_checkpoint": Endpoint(
        "POST", "training_runs/{run_id}/checkpoints/{checkpoint_id}/publish"),
    "unpublish_checkpoint": Endpoint(
        "DELETE", "training_runs/{run_id}/checkpoints/{checkpoint_id}/publish"),
    "set_checkpoint_ttl": Endpoint(
        "PUT", "training_runs/{run_id}/checkpoints/{checkpoint_id}/ttl"),
    "external_weights_urls": Endpoint(
        "GET", "training_runs/{run_id}/checkpoints/{checkpoint_id}/external_weights_urls"),
    "weights_info": Endpoint("POST", "weights_info"),
    "copy_weights": Endpoint("POST", "copy_weights"),
    "get_sampler": Endpoint("GET", "samplers/{sampler_id}"),
    # admin (§3.10, §3.11)
    "audit_log": Endpoint("GET", "audit"),
    "billing_usage": Endpoint("GET", "billing/usage/events"),
    "checkpoint_storage_usage": Endpoint("GET", "billing/usage/checkpoints/current"),
}
