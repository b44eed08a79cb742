"""The effectful shell (private): HTTP, retries, futures, polling, session life cycle.

Clients in `tinkex_jax.clients` are thin layers over `Shell`; the only public name that
comes from here is `Future` (re-exported as ``tinkex_jax.Future``).
"""

from ._auth import CredentialAuth, JwtCore, whoami_from_jwt
from ._background import Telemetry
from ._config import (
    LOCAL_API_KEY,
    Secret,
    Settings,
    check_api_key,
    credentials_path,
    join_url,
    resolve_settings,
)
from ._constants import DEFAULT_BASE_URL, ENDPOINTS, PACKAGE_VERSION, PROTOCOL_VERSION, Endpoint
from ._errors import redact
from ._fetch import describe_error, get_file, write_body
from ._future import Future
from ._http import SDK_METHOD, HttpCore, build_async_client, build_download_client
from ._instrument import as_sdk_method, current_outer_method, instrument_async
from ._ordering import TurnSequencer
from ._polling import QueueObserver, QueueStateLogger, retrieve_future
from ._retry import is_retryable_error, sample_retry_delay, with_holder_retries
from ._runtime import REAL_RUNTIME, FakeTime, Runtime
from ._shell import FinishStatus, Shell, shadow_shell

__all__ = [
    "DEFAULT_BASE_URL",
    "ENDPOINTS",
    "LOCAL_API_KEY",
    "PACKAGE_VERSION",
    "PROTOCOL_VERSION",
    "REAL_RUNTIME",
    "SDK_METHOD",
    "CredentialAuth",
    "Endpoint",
    "FakeTime",
    "FinishStatus",
    "Future",
    "HttpCore",
    "JwtCore",
    "QueueObserver",
    "QueueStateLogger",
    "Runtime",
    "Secret",
    "Settings",
    "Shell",
    "Telemetry",
    "TurnSequencer",
    "as_sdk_method",
    "build_async_client",
    "build_download_client",
    "check_api_key",
    "credentials_path",
    "current_outer_method",
    "describe_error",
    "get_file",
    "instrument_async",
    "is_retryable_error",
    "join_url",
    "redact",
    "resolve_settings",
    "retrieve_future",
    "sample_retry_delay",
    "shadow_shell",
    "whoami_from_jwt",
    "with_holder_retries",
    "write_body",
]
