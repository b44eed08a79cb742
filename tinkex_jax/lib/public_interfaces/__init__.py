"""The clients under the official SDK's module path ``tinker.lib.public_interfaces``.

Its submodules (``.rest_client``, ``.api_future``, ``.training_client``, ...) are generated
on first import (see `tinkex_jax._modules`) and hold these same objects.

Example:
    >>> from tinkex_jax.lib.public_interfaces.rest_client import RestClient
    >>> from tinkex_jax import RestClient as Same
    >>> RestClient is Same
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..._shell import Future
from ...clients import ClientFuture, RestClient, SamplingClient, ServiceClient, TrainingClient
from ...clients._rest import AdminClient
from ...types import Datum

if TYPE_CHECKING:
    import torch

__all__ = [
    "APIFuture",
    "AdminClient",
    "AwaitableConcurrentFuture",
    "BackcompatClientFuture",
    "BackcompatSamplingClientFuture",
    "BackcompatTrainingClientFuture",
    "CustomLossFnV1",
    "RestClient",
    "SamplingClient",
    "ServiceClient",
    "TrainingClient",
]

#: Every method that submits work returns this (``.result()``, ``await``, ``.result_async()``).
APIFuture = Future
#: The official SDK's concrete future over a `concurrent.futures.Future`: the same class here.
AwaitableConcurrentFuture = Future
#: What client-creating methods return: a `Future` of the client that also forwards the
#: client's attributes (with a `FutureWarning`), as the official SDK's deprecated pattern.
BackcompatClientFuture = ClientFuture
BackcompatTrainingClientFuture = ClientFuture
BackcompatSamplingClientFuture = ClientFuture

#: A custom loss in the official SDK's signature: ``loss_fn(data, logprobs_list) ->
#: (loss, metrics)`` with torch tensors (see `TrainingClient.forward_backward_custom`).
CustomLossFnV1 = Callable[[list[Datum], list["torch.Tensor"]],
                          tuple["torch.Tensor", dict[str, float]]]


def __getattr__(name: str) -> Any:
    from ..._modules import submodule

    return submodule(__name__, name)
