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

The official SDK's module paths work too (``from tinkex_jax.types.tensor_data import
TensorData``, ``tinkex_jax.lib.public_interfaces.APIFuture``; see `tinkex_jax._modules`), and
for code you do not control, ``tinkex_jax.install_as_tinker()`` makes ``import tinker`` itself
resolve to tinkex_jax in the whole process (docs/porting.md).
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING, Any as _Any

from . import _modules
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
    from httpx import Timeout

    from . import auth, lib, types
    from ._as_tinker import TinkerAlias, install_as_tinker, uninstall_as_tinker
    from ._shell import PACKAGE_VERSION as __version__, Future, Future as APIFuture
    from .clients import (
        ClientFuture as BackcompatSamplingClientFuture,
        ClientFuture as BackcompatTrainingClientFuture,
        RestClient,
        RetryConfig,
        SamplingClient,
        ServiceClient,
        TrainingClient,
    )
    from .clients._rest import AdminClient
    from .lib import ExperimentalWarning
    from .types import (
        AdamOptimizerConfig,
        AdamParams,
        Checkpoint,
        CheckpointType,
        Datum,
        DimuonOptimizerConfig,
        DimuonParams,
        DmelChunk,
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
        OptimStepRequest,
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
    "AdminClient",
    "AuthenticationError",
    "BackcompatSamplingClientFuture",
    "BackcompatTrainingClientFuture",
    "BadRequestError",
    "BillingError",
    "Checkpoint",
    "CheckpointType",
    "ClientPoisonedError",
    "ConflictError",
    "Datum",
    "DimuonOptimizerConfig",
    "DimuonParams",
    "DmelChunk",
    "EncodedTextChunk",
    "ExperimentalWarning",
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
    "OptimStepRequest",
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
    "Timeout",
    "TinkerAlias",
    "TinkerError",
    "TrainingClient",
    "TrainingRun",
    "UnprocessableEntityError",
    "ValidationError",
    "__title__",
    "__version__",
    "auth",
    "install_as_tinker",
    "lib",
    "types",
    "uninstall_as_tinker",
]

#: The distribution's name (the official SDK's ``tinker.__title__`` is its own).
__title__ = "tinkex_jax"

_ERRORS = frozenset(n for n in __all__ if n in globals() and isinstance(globals()[n], type)
                    and issubclass(globals()[n], BaseException))
_EAGER = frozenset(n for n in __all__ if n in globals())


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
    import importlib

    import httpx

    from . import _shell, clients, types

    # Not ``from . import auth, lib``: that asks this module's __getattr__ first.
    auth = importlib.import_module(".auth", __name__)
    lib = importlib.import_module(".lib", __name__)

    namespace: dict[str, _Any] = {
        "types": types, "auth": auth, "lib": lib, "__version__": _shell.PACKAGE_VERSION,
        "Future": _shell.Future, "APIFuture": _shell.Future, "Timeout": httpx.Timeout,
        "BackcompatTrainingClientFuture": clients.ClientFuture,
        "BackcompatSamplingClientFuture": clients.ClientFuture,
        "ExperimentalWarning": lib.ExperimentalWarning,
        "AdminClient": importlib.import_module(".clients._rest", __name__).AdminClient}
    for name in __all__:
        if name in namespace or name in _EAGER or name in _SWITCH:
            continue
        namespace[name] = getattr(clients, name, None) or getattr(types, name)
    for name, obj in namespace.items():
        _export_name(obj, name)
    globals().update(namespace)
    __getattr__("install_as_tinker")


_SWITCH = frozenset({"TinkerAlias", "install_as_tinker", "uninstall_as_tinker"})


def __getattr__(name: str) -> _Any:
    if name in _SWITCH:  # no httpx for these: load only the switch
        from . import _as_tinker

        globals().update({n: getattr(_as_tinker, n) for n in _SWITCH})
        return globals()[name]
    if name in __all__:
        _load_clients()
        return globals()[name]
    return _modules.submodule(__name__, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


for _name in _ERRORS:
    _export_name(globals()[_name], _name)
del _name
_modules.install()
