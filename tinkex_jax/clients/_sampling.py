"""SamplingClient: sample and score with a sampling session (docs/protocol.md §3.5, §3.6, §6.4).

A SamplingClient is picklable: the pickle (and `get_sampler_handle`) carries the session id,
the sampling session id, the base model, the base URL and the cached server configs, never
the API key. The copy in another process builds its own shell, heartbeats the session and
samples with seq ids in its own block of 1e9.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import os
import random
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from .._shell import (
    Future,
    QueueStateLogger,
    Shell,
    Telemetry,
    instrument_async,
    is_retryable_error,
    resolve_settings,
    sample_retry_delay,
    shadow_shell,
    with_holder_retries,
)
from ..builders import CLONE_SEQ_BLOCK, estimate_sample_bytes, sampling_seq_id
from ..errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    RateLimitError,
    TinkerError,
    invalid,
)
from ..types import (
    CancelFutureRequest,
    ClientConfigResponse,
    ClientDynamicConfigResponse,
    CreateSamplingSessionRequest,
    CreateSamplingSessionResponse,
    GetSamplerResponse,
    JoinSamplingSessionRequest,
    JoinSamplingSessionResponse,
    ModelInput,
    SampleRequest,
    SampleResponse,
    SamplingParams,
    TensorData,
    UntypedAPIFuture,
)
from ..wire import decode_sample_response, to_builtins
from ._client_future import ClientFuture

if TYPE_CHECKING:
    from .._shell import QueueObserver

__all__ = ["RetryConfig", "SamplingClient", "create_sampling_client"]

logger = logging.getLogger("tinkex_jax.sampling")
_BACKPRESSURE_SMALL_PROMPT = 128 * 1024


@dataclasses.dataclass(frozen=True)
class RetryConfig:
    """How `SamplingClient.sample` / `compute_logprobs` retry (docs/protocol.md §6.4).

    Each retry is a new submission with a new seq id, after ``min(base * 2**attempt,
    max)`` seconds ± `jitter_factor`. Attempts are unbounded while progress is made; with
    stuck detection, a call fails once no sample of this process finished for
    `progress_timeout` seconds.

    Attributes:
        max_connections: Most concurrent sample calls (None: the server's
            ``sample_max_concurrent_requests``).
        progress_timeout: Seconds without any finished sample before failing.
        retry_delay_base: First retry delay in seconds.
        retry_delay_max: Largest retry delay in seconds.
        jitter_factor: Relative jitter of each delay, in [0, 1].
        enable_retry_logic: Retry at all.
        enable_stuck_detection: Fail after `progress_timeout` without progress.

    Example:
        >>> RetryConfig(retry_delay_base=1.0).retry_delay_max
        10.0
    """

    max_connections: int | None = None
    progress_timeout: float = 120 * 60.0
    retry_delay_base: float = 0.5
    retry_delay_max: float = 10.0
    jitter_factor: float = 0.25
    enable_retry_logic: bool = True
    enable_stuck_detection: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.jitter_factor <= 1:
            raise invalid("RetryConfig.jitter_factor", "a number in [0, 1]", self.jitter_factor)
        if self.retry_delay_base < 0 or self.retry_delay_max < 0:
            raise invalid("RetryConfig.retry_delay_base/max", "delays >= 0",
                          (self.retry_delay_base, self.retry_delay_max))
        if self.max_connections is not None and self.max_connections < 1:
            raise invalid("RetryConfig.max_connections", "None or an int >= 1",
                          self.max_connections)


def _sample_retryable(error: BaseException) -> bool:
    if isinstance(error, APIStatusError) and error.status_code == 410:
        return True
    return is_retryable_error(error)


def _with_sequence_ids(response: SampleResponse, ids: list[str] | None) -> SampleResponse:
    """The response with one ``sequence_id`` per sequence, or None on every sequence when the
    asample future did not carry exactly one id per sequence (servers built for older SDKs
    give none; docs/protocol.md §12)."""
    if ids is not None and len(ids) == len(response.sequences):
        if all(seq.sequence_id == i for seq, i in zip(response.sequences, ids)):
            return response
        return msgspec.structs.replace(response, sequences=[  # a JSON result: stamp them
            msgspec.structs.replace(seq, sequence_id=i)
            for seq, i in zip(response.sequences, ids)])
    if ids is None:
        logger.debug("asample: the server gave no sample_sequence_ids (built for older SDKs); "
                     "the %d sequences have sequence_id=None", len(response.sequences))
    else:
        logger.debug("asample: the server gave %d sample_sequence_ids for %d sequences; "
                     "ignoring them (sequence_id=None)", len(ids), len(response.sequences))
    return msgspec.structs.replace(response, sequences=[
        msgspec.structs.replace(seq, sequence_id=None) for seq in response.sequences])


def _nan_before(values: np.ndarray, last_n: int) -> bool:
    head = values[: max(len(values) - last_n, 0)]
    return bool(np.any(~np.isnan(head[1:]))) if head.size > 1 else False


@instrument_async
class SamplingClient:
    """Generates and scores text with one sampling session.

    Create it with `ServiceClient.create_sampling_client`,
    `TrainingClient.save_weights_and_get_sampling_client` or `from_sampler_handle`.

    Example:
        >>> import tinkex_jax as tinker                                  # doctest: +SKIP
        >>> sc = service.create_sampling_client(base_model="tinkex-jax/tiny").result()  # doctest: +SKIP
        >>> out = sc.sample(tinker.ModelInput.from_ints([1, 2, 3]), num_samples=2,  # doctest: +SKIP
        ...                 sampling_params=tinker.SamplingParams(max_tokens=8)).result()
        >>> [s.tokens for s in out.sequences]  # doctest: +SKIP
    """

    def __init__(
        self,
        shell: Shell,
        *,
        sampling_session_id: str,
        base_model: str,
        model_path: str | None = None,
        retry_config: RetryConfig | None = None,
        record_stability_info: bool = False,
        clone_id: int | None = 0,
    ) -> None:
        self._shell = shell
        self._sampling_session_id = sampling_session_id
        self._base_model = base_model
        self._model_path = model_path
        self._retry_config = retry_config or RetryConfig()
        self._record_stability_info = record_stability_info
        self._clone_id = clone_id
        self._counter = 0
        self._lock = threading.Lock()
        self._join_lock: asyncio.Lock | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._tokenizer: Any = None
        self.queue_state_logger = QueueStateLogger("sampling", sampling_session_id,
                                                   clock=shell.runtime.clock)

    def __repr__(self) -> str:
        return (f"<{type(self).__module__}.{type(self).__qualname__} "
                f"sampling_session_id={self._sampling_session_id!r} "
                f"base_model={self._base_model!r}>")

    # ------------------------------------------------------------------ properties

    @property
    def sampling_session_id(self) -> str:
        """The server's id of this sampling session."""
        return self._sampling_session_id

    @property
    def model_path(self) -> str | None:
        """The tinker path the session samples from, if it was created from one."""
        return self._model_path

    def get_base_model(self) -> str:
        """The base model's name (no request)."""
        return self._base_model

    async def get_base_model_async(self) -> str:
        """`get_base_model` for async code (kept for ported code)."""
        return self._base_model

    def get_tokenizer(self) -> Any:
        """The tokenizer of the base model (`tinkex_jax.tokenizer.get_tokenizer`)."""
        if self._tokenizer is None:
            from ..tokenizer import get_tokenizer

            self._tokenizer = get_tokenizer(None, model_name=self._base_model)
        return self._tokenizer

    def add_queue_state_listener(self, listener: QueueObserver) -> None:
        """Call ``listener(queue_state, reason)`` on every queue-state report while polling."""
        self.queue_state_logger.listeners.append(listener)

    def on_queue_state_change(self, queue_state: str, queue_state_reason: str | None) -> None:
        """Report a queue state (called while polling; logs "paused" at most once a minute)."""
        self.queue_state_logger(queue_state, queue_state_reason)

    def get_telemetry(self) -> Telemetry | None:
        """The telemetry batcher of this client's session (None when telemetry is off)."""
        telemetry = self._shell.telemetry
        return telemetry if telemetry.enabled else None

    # ------------------------------------------------------------------ ids

    def _next_seq_id(self) -> int:
        assert self._clone_id is not None
        with self._lock:
            n = self._counter
            self._counter += 1
        return sampling_seq_id(self._clone_id, n)

    async def _ensure_clone_id(self) -> None:
        if self._clone_id is not None:
            return
        if self._join_lock is None:
            self._join_lock = asyncio.Lock()
        async with self._join_lock:
            if self._clone_id is not None:
                return
            if self._shell.require_client_config().sample_join_sampling_session:
                response = await self._shell.call(
                    "join_sampling_session",
                    JoinSamplingSessionRequest(sampling_session_id=self._sampling_session_id),
                    JoinSamplingSessionResponse)
                self._clone_id = response.client_counter
            else:
                self._clone_id = random.SystemRandom().randrange(1, CLONE_SEQ_BLOCK)

    # ------------------------------------------------------------------ sampling

    def sample(
        self,
        prompt: ModelInput,
        num_samples: int,
        sampling_params: SamplingParams,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
        topk_sample_logprobs: int = 0,
        target_prompt_logprobs: TensorData | None = None,
        prompt_alt_tokens_k: int = 0,
        prompt_logprobs_last_n: int | None = None,
    ) -> Future[SampleResponse]:
        """Sample `num_samples` continuations of `prompt`.

        Args:
            prompt: The prompt.
            num_samples: How many continuations.
            sampling_params: Temperature, max tokens, stops, seed, top-k/p.
            include_prompt_logprobs: Also return the logprob of every prompt token.
            topk_prompt_logprobs: Also return the top-k alternatives per prompt position.
            topk_sample_logprobs: Also return the top-k alternatives per sampled position.
            target_prompt_logprobs: int64 ``[len(prompt)-1, K]`` token ids whose logprobs to
                return per prompt position (-1 = none).
            prompt_alt_tokens_k: Return the k most likely alternative tokens per position.
            prompt_logprobs_last_n: Only compute prompt logprobs for the last n positions.

        Returns:
            A Future of the `SampleResponse`; its sequences carry ``sequence_id`` (None
            when the server gives no ids, as servers built for older SDKs do).

        Raises:
            ValidationError: bad arguments (raised here, before anything is sent).

        Example:
            >>> fut = sampler.sample(ModelInput.from_ints([1, 2]), 4,      # doctest: +SKIP
            ...                      SamplingParams(max_tokens=16, temperature=0.7))
            >>> len(fut.result().sequences)                                # doctest: +SKIP
            4
        """
        request = SampleRequest(
            sampling_session_id=self._sampling_session_id, num_samples=num_samples,
            prompt=prompt, sampling_params=sampling_params,
            prompt_logprobs=include_prompt_logprobs, topk_prompt_logprobs=topk_prompt_logprobs,
            topk_sample_logprobs=topk_sample_logprobs,
            target_prompt_logprobs=target_prompt_logprobs,
            prompt_alt_tokens_k=prompt_alt_tokens_k,
            prompt_logprobs_last_n=prompt_logprobs_last_n,
            record_stability_info=self._record_stability_info)
        return self._shell.submit(lambda: self._sample(request),
                                  sdk_method="SamplingClient.sample")

    async def sample_async(
        self,
        prompt: ModelInput,
        num_samples: int,
        sampling_params: SamplingParams,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
        topk_sample_logprobs: int = 0,
        target_prompt_logprobs: TensorData | None = None,
        prompt_alt_tokens_k: int = 0,
        prompt_logprobs_last_n: int | None = None,
    ) -> SampleResponse:
        """`await sampler.sample_async(...)` gives the `SampleResponse` (ported code)."""
        return await self.sample(prompt, num_samples, sampling_params, include_prompt_logprobs,
                                 topk_prompt_logprobs, topk_sample_logprobs,
                                 target_prompt_logprobs, prompt_alt_tokens_k,
                                 prompt_logprobs_last_n)

    def compute_logprobs(self, prompt: ModelInput, prompt_logprobs_last_n: int | None = None
                         ) -> Future[list[float | None]]:
        """The logprob of each prompt token given its prefix (None at position 0).

        Example:
            >>> sampler.compute_logprobs(ModelInput.from_ints([5, 6, 7])).result()  # doctest: +SKIP
            [None, -3.2, -0.4]
        """
        request = SampleRequest(
            sampling_session_id=self._sampling_session_id, num_samples=1, prompt=prompt,
            sampling_params=SamplingParams(max_tokens=1), prompt_logprobs=True,
            prompt_logprobs_last_n=prompt_logprobs_last_n,
            record_stability_info=self._record_stability_info)

        async def run() -> list[float | None]:
            response = await self._sample(request)
            logprobs = response.prompt_logprobs
            if logprobs is None:
                raise APIResponseValidationError(
                    "SamplingClient.compute_logprobs: the server returned no prompt_logprobs "
                    "although they were requested. What to do: check that the server supports "
                    "prompt logprobs.")
            return logprobs

        return self._shell.submit(run, sdk_method="SamplingClient.compute_logprobs")

    async def compute_logprobs_async(self, prompt: ModelInput,
                                     prompt_logprobs_last_n: int | None = None
                                     ) -> list[float | None]:
        """`await sampler.compute_logprobs_async(...)` gives the list (ported code)."""
        return await self.compute_logprobs(prompt, prompt_logprobs_last_n)

    def _call_semaphore(self) -> asyncio.Semaphore:
        if self._retry_config.max_connections is not None:
            if self._semaphore is None:
                self._semaphore = asyncio.Semaphore(self._retry_config.max_connections)
            return self._semaphore
        return self._shell.get_sample_semaphore()

    async def _sample(self, request: SampleRequest) -> SampleResponse:
        shell = self._shell
        await shell.ensure_session()
        await self._ensure_clone_id()
        config = shell.require_client_config()
        retry = self._retry_config
        retrying = retry.enable_retry_logic and not config.sample_no_retries
        stuck_detection = retry.enable_stuck_detection and config.sample_enable_stuck_detection
        async with self._call_semaphore():
            started = shell.runtime.clock()
            attempt = 0
            while True:
                attempt_request = msgspec.structs.replace(request, seq_id=self._next_seq_id())
                try:
                    response = await self._sample_once(attempt_request)
                except Exception as error:
                    if not retrying or not _sample_retryable(error):
                        raise
                    idle = shell.runtime.clock() - max(shell.last_sample_progress, started)
                    if stuck_detection and idle > retry.progress_timeout:
                        raise APIConnectionError(
                            f"SamplingClient.sample: no sample finished for {idle:.0f} s while "
                            f"retrying ({type(error).__name__}: {error}); requests appear to be "
                            "stuck. What to do: check the server's health, then retry.") from error
                    delay = sample_retry_delay(attempt, shell.runtime.random(),
                                               base=retry.retry_delay_base,
                                               cap=retry.retry_delay_max,
                                               jitter=retry.jitter_factor)
                    shell.http.waits.notice("retry", (
                        f"SamplingClient.sample: attempt {attempt + 1} failed "
                        f"({type(error).__name__}); submitting it again in {delay:.1f} s"
                        + (f", until no sample has finished for {retry.progress_timeout:.0f} s."
                           if stuck_detection else ", with no time limit.")),
                        waited=shell.runtime.clock() - started + delay)
                    attempt += 1
                    await shell.runtime.sleep(delay)
                    continue
                shell.last_sample_progress = shell.runtime.clock()
                return response

    async def _post_sample(self, request: SampleRequest) -> tuple[UntypedAPIFuture, float]:
        """POST asample, waiting and resubmitting the same seq id on 429 backpressure."""
        shell = self._shell
        size = estimate_sample_bytes(request)
        start = shell.runtime.clock()
        while True:
            async with shell.sample_dispatcher.slot(size):
                try:
                    future = await shell.call(
                        "asample", request, UntypedAPIFuture,
                        headers={"X-Tinker-Sampling-Backpressure": "1"})
                    return future, shell.runtime.clock() - start
                except RateLimitError:
                    shell.sample_dispatcher.backpressure()
            pause = 1.0 if size <= _BACKPRESSURE_SMALL_PROMPT else 5.0
            shell.http.waits.notice("backpressure", (
                f"SamplingClient.sample: the server is at capacity (HTTP 429) and holds new "
                f"samples back; submitting again every {pause:.0f} s until it accepts, with no "
                "time limit."), waited=shell.runtime.clock() - start + pause)
            await shell.runtime.sleep(pause)

    async def _sample_once(self, request: SampleRequest) -> SampleResponse:
        shell = self._shell
        future, roundtrip = await with_holder_retries(
            lambda: self._post_sample(request), runtime=shell.runtime, billing=shell.billing,
            what="POST /api/v1/asample", waits=shell.http.waits)
        ids = future.sample_sequence_ids
        sequence_ids = list(ids) if ids is not None else []
        try:
            response = await shell.poll(
                future, "Sample",
                decode_proto=lambda body: decode_sample_response(body, sequence_ids),
                observer=self.on_queue_state_change, roundtrip=roundtrip)
        except asyncio.CancelledError:
            dynamic = shell.dynamic_config
            if dynamic is not None and dynamic.sample_cancel_enabled and not shell.closed:
                shell.spawn(shell.call("cancel_future",
                                       CancelFutureRequest(request_id=future.request_id), None))
            raise
        response = _with_sequence_ids(response, ids)
        if request.prompt_alt_tokens_k > 0 and response.prompt_alt_tokens is None:
            raise APIResponseValidationError(
                "SamplingClient.sample: prompt_alt_tokens_k > 0 but the server returned no "
                "prompt_alt_tokens. What to do: check that the server supports them.")
        last_n = request.prompt_logprobs_last_n
        if last_n is not None and response.prompt_logprobs_np is not None and _nan_before(
                np.asarray(response.prompt_logprobs_np, dtype=np.float64), last_n):
            # a server built for older SDKs ignores prompt_logprobs_last_n and scores the
            # whole prompt: keep what was asked for (the answer a newer server gives)
            logger.debug("asample: the server ignored prompt_logprobs_last_n=%d; dropping the "
                         "logprobs before the last %d positions", last_n, last_n)
            values = np.array(response.prompt_logprobs_np, dtype=np.float32)
            values[: max(len(values) - last_n, 0)] = np.nan
            response = msgspec.structs.replace(response, prompt_logprobs_np=values)
        return response

    # ------------------------------------------------------------------ pickling

    def _state(self) -> dict[str, Any]:
        shell = self._shell
        if shell.session_id is None:
            raise TinkerError("SamplingClient: this client has no session yet; it cannot be "
                              "pickled or turned into a handle.")
        return {
            "session_id": shell.session_id,
            "sampling_session_id": self._sampling_session_id,
            "base_model": self._base_model,
            "model_path": self._model_path,
            "base_url": shell.settings.base_url,
            "record_stability_info": self._record_stability_info,
            "client_config": to_builtins(shell.require_client_config()),
            "dynamic_config": to_builtins(shell.dynamic_config or ClientDynamicConfigResponse()),
            "retry_config": dataclasses.asdict(self._retry_config),
        }

    def __reduce__(self) -> tuple[Callable[..., SamplingClient], tuple[dict[str, Any]]]:
        return (_unpickle_sampling_client, (self._state(),))

    def get_sampler_handle(self) -> str:
        """A string that rebuilds this sampler in any process (`from_sampler_handle`).

        The handle carries no credentials.
        """
        payload = json.dumps(self._state(), separators=(",", ":"), sort_keys=True)
        return base64.urlsafe_b64encode(payload.encode()).decode()

    @staticmethod
    def from_sampler_handle(handle: str, *, api_key: str | None = None) -> SamplingClient:
        """Rebuild a sampling client from `get_sampler_handle`, authenticating with `api_key`
        (else the key resolved from the environment, as for ``ServiceClient()``)."""
        try:
            state = json.loads(base64.urlsafe_b64decode(handle.encode()))
        except (ValueError, TypeError) as error:
            raise invalid("from_sampler_handle(handle)", "a handle from get_sampler_handle()",
                          f"<{len(handle)} characters that do not decode>") from error
        return _unpickle_sampling_client(state, api_key=api_key)


def _unpickle_sampling_client(state: dict[str, Any], api_key: str | None = None
                              ) -> SamplingClient:
    settings = resolve_settings(api_key=api_key, base_url=state["base_url"], env=os.environ)
    shell = shadow_shell(
        settings, session_id=state["session_id"],
        client_config=msgspec.convert(state.get("client_config") or {}, ClientConfigResponse),
        dynamic_config=msgspec.convert(state.get("dynamic_config") or {},
                                       ClientDynamicConfigResponse))
    return SamplingClient(
        shell, sampling_session_id=state["sampling_session_id"], base_model=state["base_model"],
        model_path=state.get("model_path"),
        retry_config=RetryConfig(**state["retry_config"]) if state.get("retry_config") else None,
        record_stability_info=bool(state.get("record_stability_info", False)), clone_id=None)


async def open_sampling_session(
    shell: Shell,
    seq: int,
    *,
    model_path: str | None,
    base_model: str | None,
    retry_config: RetryConfig | None,
    record_stability_info: bool,
) -> SamplingClient:
    """``create_sampling_session`` with sampling-session seq id `seq` (already reserved), then
    ``GET samplers/{id}`` when the base model is unknown; runs on the shell's loop.

    The session is opened on `model_path` when given (`base_model` then only names the
    model for the client), else on `base_model`.
    """
    session_id = await shell.ensure_session()
    request = CreateSamplingSessionRequest(
        session_id=session_id, sampling_session_seq_id=seq,
        base_model=None if model_path else base_model, model_path=model_path)
    created = await shell.call("create_sampling_session", request, CreateSamplingSessionResponse)
    name = base_model or await fetch_base_model(shell, created.sampling_session_id)
    return SamplingClient(shell, sampling_session_id=created.sampling_session_id,
                          base_model=name, model_path=model_path, retry_config=retry_config,
                          record_stability_info=record_stability_info)


def create_sampling_client(
    shell: Shell,
    *,
    model_path: str | None,
    base_model: str | None,
    retry_config: RetryConfig | None,
    record_stability_info: bool,
    sdk_method: str,
) -> ClientFuture[SamplingClient]:
    """Create a sampling session and its client (docs/protocol.md §2, §3.5).

    ``create_sampling_session``, then ``GET samplers/{id}`` when the base model is unknown.
    Arguments are validated before anything is sent or reserved.
    """
    CreateSamplingSessionRequest(session_id="pending", sampling_session_seq_id=0,
                                 base_model=base_model, model_path=model_path)
    seq = shell.next_sampling_session_seq_id()

    async def run() -> SamplingClient:
        return await open_sampling_session(shell, seq, model_path=model_path,
                                           base_model=base_model, retry_config=retry_config,
                                           record_stability_info=record_stability_info)

    return shell.submit(run, sdk_method=sdk_method,  # type: ignore[return-value]
                        future_cls=ClientFuture)


async def fetch_base_model(shell: Shell, sampling_session_id: str) -> str:
    """The base model of a sampler (``GET samplers/{id}``)."""
    sampler = await shell.call("get_sampler", None, GetSamplerResponse,
                               path_params={"sampler_id": sampling_session_id})
    return sampler.base_model

