"""ServiceClient: the entry point. Owns the session and creates the other clients.

``ServiceClient()`` does nothing on the network. The first method that needs a session
fetches the client config, creates the session and starts heartbeats (docs/protocol.md §2).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import httpx

from .._shell import (
    REAL_RUNTIME,
    FinishStatus,
    Future,
    Runtime,
    Shell,
    Telemetry,
    as_sdk_method,
    instrument_async,
    redact,
    resolve_settings,
)
from ..builders import seq_id_of, training_model_id
from ..errors import BadRequestError, TinkerError, UnprocessableEntityError
from ..types import (
    AdamOptimizerConfig,
    CopyWeightsRequest,
    CreateModelRequest,
    CreateModelResponse,
    GetInfoRequest,
    GetInfoResponse,
    GetServerCapabilitiesResponse,
    LoadWeightsRequest,
    LoadWeightsResponse,
    LoraConfig,
    OptimizerConfig,
    WeightsInfoRequest,
    WeightsInfoResponse,
)
from ._client_future import ClientFuture
from ._rest import RestClient, copy_weights
from ._sampling import RetryConfig, SamplingClient, create_sampling_client
from ._training import TrainingClient

__all__ = ["ServiceClient"]

logger = logging.getLogger("tinkex_jax.session")


@instrument_async
class ServiceClient:
    """Connects to a Tinker server and creates training, sampling and REST clients.

    Args:
        user_metadata: Metadata stored with the session.
        project_id: Project of the session (else ``TINKER_PROJECT_ID``).
        display_name: A name for the session.
        base_url: Server URL (else ``TINKER_BASE_URL``, else the hosted service). A path
            prefix is kept.
        api_key: The ``tml-…`` key (else ``TINKER_API_KEY``; a loopback server needs none).
        default_headers_overrides: Extra headers on every request (override the defaults).
        default_headers: Same as `default_headers_overrides` (httpx's name).
        timeout: Request timeout in seconds or an `httpx.Timeout` (default 60 s, 5 s connect).
        max_retries: Base retries per request (default 10).
        wait_for_server: Seconds to keep trying while no server at `base_url` has answered
            yet (refused connection, unknown host, connect timeout); then the call fails with
            an `APIConnectionError` that says so. Default 5 s, else
            ``TINKEX_WAIT_FOR_SERVER``; raise it to wait for a server that is still starting.
            Once the server has answered, failures get the usual retries (docs/protocol.md
            §6).
        proxy: Proxy URL for every connection (else ``HTTPS_PROXY`` / ``HTTP_PROXY`` /
            ``ALL_PROXY``, honouring ``NO_PROXY``).
        transport: An httpx transport replacing the network (tests, in-process ASGI apps).
        tags: Session tags (else ``TINKER_TAGS``).
        telemetry: Send telemetry (else ``TINKER_TELEMETRY``, default on).

    Example:
        >>> import tinkex_jax as tinker                                        # doctest: +SKIP
        >>> with tinker.ServiceClient(base_url=server.base_url) as service:  # doctest: +SKIP
        ...     tc = service.create_lora_training_client("tinkex-jax/tiny", rank=8).result()
        ...     sampler = tc.save_weights_and_get_sampling_client().result()
    """

    def __init__(
        self,
        user_metadata: dict[str, str] | None = None,
        project_id: str | None = None,
        *,
        display_name: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        default_headers_overrides: Mapping[str, str] | None = None,
        default_headers: Mapping[str, str] | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int | None = None,
        proxy: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        tags: list[str] | tuple[str, ...] | None = None,
        telemetry: bool | None = None,
        wait_for_server: float | None = None,
        _runtime: Runtime | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            warnings.warn(f"ServiceClient ignores unsupported arguments: "
                          f"{', '.join(sorted(kwargs))}", UserWarning, stacklevel=2)
        headers = {**(default_headers or {}), **(default_headers_overrides or {})}
        settings = resolve_settings(api_key=api_key, base_url=base_url, project_id=project_id,
                                    tags=tags, telemetry=telemetry, default_headers=headers,
                                    timeout=timeout, max_retries=max_retries, proxy=proxy,
                                    wait_for_server=wait_for_server, env=os.environ)
        self._shell = Shell(settings, runtime=_runtime or REAL_RUNTIME, transport=transport,
                            name="ServiceClient", user_metadata=user_metadata,
                            display_name=display_name)

    def __repr__(self) -> str:
        return (f"<{type(self).__module__}.{type(self).__qualname__} "
                f"base_url={self._shell.settings.base_url!r} "
                f"session_id={self._shell.session_id!r}>")

    def __reduce__(self) -> Any:
        raise TypeError("A ServiceClient cannot be pickled. Pickle a SamplingClient (or pass "
                        "its get_sampler_handle()) to use it in another process.")

    @property
    def session_id(self) -> str | None:
        """The session's id, once the first client was created (else None)."""
        return self._shell.session_id

    @property
    def base_url(self) -> str:
        """The resolved base URL."""
        return self._shell.settings.base_url

    def get_telemetry(self) -> Telemetry | None:
        """The telemetry batcher (None when telemetry is off)."""
        return self._shell.telemetry if self._shell.telemetry.enabled else None

    def get_console_url(self) -> str:
        """The console page of this session (of your sessions, before one exists).

        No request is made; see `tinkex_jax.console_urls` for where the console is.

        Example:
            >>> tinker.ServiceClient(base_url="http://127.0.0.1:8000").get_console_url()  # doctest: +SKIP
            'http://127.0.0.1:8000/console/sessions'
        """
        from ..console_urls import session_console_url, sessions_console_url

        base_url = self._shell.settings.base_url
        session_id = self._shell.session_id
        if session_id is None:
            return sessions_console_url(base_url=base_url)
        return session_console_url(session_id, base_url=base_url)

    # ------------------------------------------------------------------ training clients

    async def _training_client(self, model_id: str, model_seq_id: int) -> TrainingClient:
        info = await self._shell.call("get_info", GetInfoRequest(model_id=model_id),
                                      GetInfoResponse)
        return TrainingClient(self._shell, model_id=model_id, model_seq_id=model_seq_id,
                              info=info)

    def create_lora_training_client(
        self,
        base_model: str,
        rank: int = 32,
        seed: int | None = None,
        train_mlp: bool = True,
        train_attn: bool = True,
        train_unembed: bool = True,
        user_metadata: dict[str, str] | None = None,
        optimizer: OptimizerConfig | None = None,
    ) -> ClientFuture[TrainingClient]:
        """Create a LoRA training model on `base_model`.

        Returns:
            A Future of the `TrainingClient` (``.result()`` or ``await`` it).

        Raises:
            ValidationError: bad rank, seed or flags (raised here, nothing is sent).

        Example:
            >>> tc = service.create_lora_training_client("tinkex-jax/tiny", rank=8).result()  # doctest: +SKIP
        """
        lora = LoraConfig(rank=rank, seed=seed, train_unembed=train_unembed,
                          train_mlp=train_mlp, train_attn=train_attn)

        def build(session_id: str, model_seq_id: int) -> CreateModelRequest:
            return CreateModelRequest(session_id=session_id, model_seq_id=model_seq_id,
                                      base_model=base_model, lora_config=lora,
                                      user_metadata=user_metadata,
                                      optimizer_config=optimizer or AdamOptimizerConfig())

        build("pending", 0)
        seq = self._shell.next_model_seq_id()

        async def run() -> TrainingClient:
            shell = self._shell
            session_id = await shell.ensure_session()
            future, roundtrip = await shell.submit_request("create_model", build(session_id, seq))
            created = await shell.poll(future, "CreateModel", json_type=CreateModelResponse,
                                       roundtrip=roundtrip)
            return await self._training_client(created.model_id, seq)

        return self._shell.submit(run,  # type: ignore[return-value]
                                  sdk_method="ServiceClient.create_lora_training_client",
                                  future_cls=ClientFuture)

    def _from_state(self, path: str, *, optimizer: bool, base_model: str | None,
                    user_metadata: dict[str, str] | None, weights_access_token: str | None,
                    optimizer_config: OptimizerConfig | None,
                    sdk_method: str) -> ClientFuture[TrainingClient]:
        def build(session_id: str, model_seq_id: int) -> LoadWeightsRequest:
            return LoadWeightsRequest(path=path, optimizer=optimizer, session_id=session_id,
                                      model_seq_id=model_seq_id, base_model=base_model,
                                      user_metadata=user_metadata,
                                      optimizer_config=optimizer_config,
                                      weights_access_token=weights_access_token)

        build("pending", 0)
        seq = self._shell.next_model_seq_id()

        async def run() -> TrainingClient:
            shell = self._shell
            session_id = await shell.ensure_session()
            if shell.require_client_config().create_model_via_load_weights is False:
                logger.debug("%s: the server cannot create a model by loading (client config "
                             "create_model_via_load_weights=false); using create_model + "
                             "load_weights", sdk_method)
                return await self._from_state_legacy(
                    path, seq, optimizer=optimizer, base_model=base_model,
                    user_metadata=user_metadata, weights_access_token=weights_access_token,
                    optimizer_config=optimizer_config)
            try:
                future, roundtrip = await shell.submit_request("load_weights",
                                                               build(session_id, seq))
            except (BadRequestError, UnprocessableEntityError) as error:
                if "model_id" not in json.dumps(error.body, default=str):
                    raise
                logger.debug("%s: the server wants load_weights with a model_id (built for "
                             "older SDKs); using create_model + load_weights", sdk_method)
                return await self._from_state_legacy(
                    path, seq, optimizer=optimizer, base_model=base_model,
                    user_metadata=user_metadata, weights_access_token=weights_access_token,
                    optimizer_config=optimizer_config)
            await shell.poll(future, "LoadWeights", json_type=LoadWeightsResponse,
                             roundtrip=roundtrip)
            return await self._training_client(training_model_id(session_id, seq), seq)

        return self._shell.submit(run, sdk_method=sdk_method,  # type: ignore[return-value]
                                  future_cls=ClientFuture)

    async def _from_state_legacy(self, path: str, seq: int, *, optimizer: bool,
                                 base_model: str | None, user_metadata: dict[str, str] | None,
                                 weights_access_token: str | None,
                                 optimizer_config: OptimizerConfig | None) -> TrainingClient:
        """The older servers' flow (docs/protocol.md §12): ``weights_info`` for the checkpoint's
        model and LoRA shape, ``create_model``, then the model's first request, a
        ``load_weights`` by ``model_id``."""
        shell = self._shell
        info = await shell.call("weights_info", WeightsInfoRequest(tinker_path=path),
                                WeightsInfoResponse)
        lora = LoraConfig(rank=info.lora_rank or 32,
                          train_mlp=True if info.train_mlp is None else info.train_mlp,
                          train_attn=True if info.train_attn is None else info.train_attn,
                          train_unembed=True if info.train_unembed is None
                          else info.train_unembed)
        session_id = await shell.ensure_session()
        request = CreateModelRequest(session_id=session_id, model_seq_id=seq,
                                     base_model=base_model or info.base_model, lora_config=lora,
                                     user_metadata=user_metadata,
                                     optimizer_config=optimizer_config or info.optimizer_config)
        future, roundtrip = await shell.submit_request("create_model", request)
        created = await shell.poll(future, "CreateModel", json_type=CreateModelResponse,
                                   roundtrip=roundtrip)
        client = await self._training_client(created.model_id, seq)
        ids = client._reserve_request_ids(1)
        load = LoadWeightsRequest(model_id=created.model_id, seq_id=seq_id_of(ids[0]),
                                  path=path, optimizer=optimizer,
                                  weights_access_token=weights_access_token)
        await client._send_one(ids[0], "load_weights", load, "LoadWeights", LoadWeightsResponse)
        return client

    def create_training_client_from_state(
        self, path: str, base_model: str | None = None,
        user_metadata: dict[str, str] | None = None, weights_access_token: str | None = None,
        optimizer: OptimizerConfig | None = None,
    ) -> ClientFuture[TrainingClient]:
        """A new training model with the weights (not the optimizer state) at `path`.

        Example:
            >>> tc = service.create_training_client_from_state(          # doctest: +SKIP
            ...     "tinker://run/weights/step-100").result()
        """
        return self._from_state(path, optimizer=False, base_model=base_model,
                                user_metadata=user_metadata,
                                weights_access_token=weights_access_token,
                                optimizer_config=optimizer,
                                sdk_method="ServiceClient.create_training_client_from_state")

    def create_training_client_from_state_with_optimizer(
        self, path: str, base_model: str | None = None,
        user_metadata: dict[str, str] | None = None, weights_access_token: str | None = None,
    ) -> ClientFuture[TrainingClient]:
        """A new training model with the weights and optimizer state at `path` (resume)."""
        return self._from_state(
            path, optimizer=True, base_model=base_model, user_metadata=user_metadata,
            weights_access_token=weights_access_token, optimizer_config=None,
            sdk_method="ServiceClient.create_training_client_from_state_with_optimizer")

    # ------------------------------------------------------------------ other clients

    def create_sampling_client(self, model_path: str | None = None,
                               base_model: str | None = None,
                               retry_config: RetryConfig | None = None,
                               record_stability_info: bool = False
                               ) -> ClientFuture[SamplingClient]:
        """A sampling client for saved sampler weights (`model_path`) or a base model.

        Example:
            >>> sc = service.create_sampling_client(base_model="tinkex-jax/tiny").result()  # doctest: +SKIP
        """
        return create_sampling_client(self._shell, model_path=model_path,
                                      base_model=base_model, retry_config=retry_config,
                                      record_stability_info=record_stability_info,
                                      sdk_method="ServiceClient.create_sampling_client")

    def create_rest_client(self) -> RestClient:
        """A RestClient sharing this client's connections (no session needed)."""
        return RestClient(self._shell)

    def get_server_capabilities(self) -> GetServerCapabilitiesResponse:
        """The models the server supports (blocks; see `RestClient` for a Future)."""
        with as_sdk_method("ServiceClient.get_server_capabilities"):
            future = RestClient(self._shell).get_server_capabilities()
        return future.result()

    async def get_server_capabilities_async(self) -> GetServerCapabilitiesResponse:
        """`get_server_capabilities` for async code."""
        return await RestClient(self._shell).get_server_capabilities()

    def copy_weights(self, path: str, *, ttl_seconds: int | None = None,
                     weights_access_token: str | None = None) -> Future[str]:
        """Copy a checkpoint into this session (as a new training run); returns its path."""
        CopyWeightsRequest(source_path=path, ttl_seconds=ttl_seconds)
        seq = self._shell.next_model_seq_id()

        async def run() -> str:
            session_id = await self._shell.ensure_session()
            body = CopyWeightsRequest(source_path=path, session_id=session_id,
                                      model_seq_id=seq, ttl_seconds=ttl_seconds)
            return await copy_weights(self._shell, body,
                                      weights_access_token=weights_access_token)

        return self._shell.submit(run, sdk_method="ServiceClient.copy_weights")

    # ------------------------------------------------------------------ life cycle

    def close(self, status: FinishStatus = "success", detail: str | None = None) -> Future[None]:
        """Finish the session and stop the background thread.

        Sends ``sessions/{id}/finish`` (when a session exists), stops heartbeats, flushes
        telemetry (at most a few seconds) and closes the connections. The returned Future
        fails if the server rejected the finish; a server without the endpoint (404 / 405,
        built for older SDKs) or a session finished already (410) counts as finished.
        """
        if status not in ("success", "errored", "interrupted"):
            raise TinkerError(f"close(status): expected 'success', 'errored' or 'interrupted', "
                              f"got {status!r}")
        return self._shell.close(status, detail)

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        status: FinishStatus = "success"
        detail = None
        if exc_type is not None:
            status = "errored" if issubclass(exc_type, Exception) else "interrupted"
            detail = redact(f"{exc_type.__name__}: {exc}", self._shell.secrets)[:1000]
        future = self.close(status, detail)
        try:
            future.result(timeout=60.0)
        except Exception:
            if exc_type is None:
                raise
            logger.warning("Closing the session after an error failed as well", exc_info=True)

    # ------------------------------------------------------------------ ported *_async names

    async def create_lora_training_client_async(
        self, base_model: str, rank: int = 32, seed: int | None = None, train_mlp: bool = True,
        train_attn: bool = True, train_unembed: bool = True,
        user_metadata: dict[str, str] | None = None, optimizer: OptimizerConfig | None = None,
    ) -> TrainingClient:
        """``await service.create_lora_training_client_async(...)`` gives the client."""
        return await self.create_lora_training_client(base_model, rank, seed, train_mlp,
                                                      train_attn, train_unembed, user_metadata,
                                                      optimizer)

    async def create_training_client_from_state_async(
        self, path: str, base_model: str | None = None,
        user_metadata: dict[str, str] | None = None, weights_access_token: str | None = None,
        optimizer: OptimizerConfig | None = None,
    ) -> TrainingClient:
        """``await service.create_training_client_from_state_async(path)`` gives the client."""
        return await self.create_training_client_from_state(path, base_model, user_metadata,
                                                            weights_access_token, optimizer)

    async def create_training_client_from_state_with_optimizer_async(
        self, path: str, base_model: str | None = None,
        user_metadata: dict[str, str] | None = None, weights_access_token: str | None = None,
    ) -> TrainingClient:
        """Awaitable `create_training_client_from_state_with_optimizer` client."""
        return await self.create_training_client_from_state_with_optimizer(
            path, base_model, user_metadata, weights_access_token)

    async def create_sampling_client_async(self, model_path: str | None = None,
                                           base_model: str | None = None,
                                           retry_config: RetryConfig | None = None,
                                           record_stability_info: bool = False
                                           ) -> SamplingClient:
        """``await service.create_sampling_client_async(...)`` gives the client."""
        return await self.create_sampling_client(model_path, base_model, retry_config,
                                                 record_stability_info)
