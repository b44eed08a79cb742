"""The four clients: ServiceClient, TrainingClient, SamplingClient, RestClient.

They are thin: they validate input with the pure builders, reserve ids, and hand requests
to the shell (`tinkex_jax._shell`). Import them from ``tinkex_jax`` directly.
"""

from ._client_future import ClientFuture
from ._rest import AccessScope, RestClient
from ._sampling import RetryConfig, SamplingClient
from ._service import ServiceClient
from ._training import TrainingClient

__all__ = [
    "AccessScope",
    "ClientFuture",
    "RestClient",
    "RetryConfig",
    "SamplingClient",
    "ServiceClient",
    "TrainingClient",
]
