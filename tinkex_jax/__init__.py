"""tinkex_jax: a JAX-first SDK for the Tinker fine-tuning API, with an embedded local backend.

Code written for the official SDK ports by changing the import::

    import tinkex_jax as tinker

    service = tinker.ServiceClient()
    training = service.create_lora_training_client("Qwen/Qwen3-8B", rank=32).result()
    fb = training.forward_backward(data, "cross_entropy")
    opt = training.optim_step(tinker.AdamParams(learning_rate=1e-4))
    print(fb.result().metrics["loss:sum"])

Every submitting method returns a `Future`: ``.result()`` in scripts, ``await`` in async code
and notebooks. ``import tinkex_jax`` does not import JAX.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from .errors import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BillingError,
    ClientPoisonedError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestFailedError,
    TinkerError,
    UnprocessableEntityError,
    ValidationError,
)

if _TYPE_CHECKING:
    from . import types
    from ._shell import PACKAGE_VERSION as __version__
    from ._shell import Future
    from ._shell import Future as APIFuture
    from .clients import RestClient, RetryConfig, SamplingClient, ServiceClient, TrainingClient
    from .types import (
        AdamOptimizerConfig,
        AdamParams,
        Checkpoint,
        CheckpointType,
        Datum,
        DimuonOptimizerConfig,
        DimuonParams,
        EncodedTextChunk,
        ForwardBackwardOutput,
        ImageAssetPointerChunk,
        ImageChunk,
        LoraConfig,
        LossFnType,
        ModelInput,
        ModelInputChunk,
        OptimizerConfig,
        OptimParams,
        OptimStepResponse,
        ParsedCheckpointTinkerPath,
        PromptProvenanceSpan,
        SampledProvenanceSpan,
        SampledSequence,
        SampleRequest,
        SampleResponse,
        SamplingParams,
        StopReason,
        TensorData,
        TensorDtype,
        TrainingRun,
    )


#: Model ids are plain strings.
ModelID = str

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIFuture",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AdamOptimizerConfig",
    "AdamParams",
    "AuthenticationError",
    "BadRequestError",
    "BillingError",
    "Checkpoint",
    "CheckpointType",
    "ClientPoisonedError",
    "ConflictError",
    "Datum",
    "DimuonOptimizerConfig",
    "DimuonParams",
    "EncodedTextChunk",
    "ForwardBackwardOutput",
    "Future",
    "ImageAssetPointerChunk",
    "ImageChunk",
    "InternalServerError",
    "LoraConfig",
    "LossFnType",
    "ModelID",
    "ModelInput",
    "ModelInputChunk",
    "NotFoundError",
    "OptimParams",
    "OptimStepResponse",
    "OptimizerConfig",
    "ParsedCheckpointTinkerPath",
    "PermissionDeniedError",
    "PromptProvenanceSpan",
    "RateLimitError",
    "RequestFailedError",
    "RestClient",
    "RetryConfig",
    "SampleRequest",
    "SampleResponse",
    "SampledProvenanceSpan",
    "SampledSequence",
    "SamplingClient",
    "SamplingParams",
    "ServiceClient",
    "StopReason",
    "TensorData",
    "TensorDtype",
    "TinkerError",
    "TrainingClient",
    "TrainingRun",
    "UnprocessableEntityError",
    "ValidationError",
    "__version__",
    "types",
]

_ERRORS = frozenset(n for n in __all__ if n in globals())


def _export_name(obj: object, name: str) -> None:
    """Show ``tinkex_jax.TrainingClient`` rather than its private module in reprs and
    tracebacks (as httpx does). Every renamed object stays reachable and picklable as
    ``tinkex_jax.<name>``. Wire types (msgspec Structs) keep their modules: msgspec resolves
    their annotations there."""
    if (isinstance(obj, type) and not hasattr(obj, "__struct_fields__")
            and obj.__module__.startswith("tinkex_jax.") and obj.__name__ == name):
        obj.__module__ = "tinkex_jax"


def _load_clients() -> None:
    """Import the clients, the shell (httpx) and the wire types (numpy) on first use, so that
    ``import tinkex_jax`` stays a few milliseconds and never imports JAX."""
    from . import _shell, clients, types

    namespace: dict[str, _Any] = {"types": types, "__version__": _shell.PACKAGE_VERSION,
                                 "Future": _shell.Future, "APIFuture": _shell.Future}
    for name in __all__:
        if name in namespace or name in _ERRORS or name == "ModelID":
            continue
        namespace[name] = getattr(clients, name, None) or getattr(types, name)
    for name, obj in namespace.items():
        _export_name(obj, name)
    globals().update(namespace)


def __getattr__(name: str) -> _Any:
    if name in __all__:
        _load_clients()
        return globals()[name]
    raise AttributeError(f"module 'tinkex_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


for _name in _ERRORS:
    _export_name(globals()[_name], _name)
del _name
