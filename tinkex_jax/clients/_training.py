"""TrainingClient: forward / backward passes, optimizer steps and checkpoints of one LoRA
training model (docs/protocol.md §3.3, §3.4, §7).

Every submitting method validates its input, reserves its request ids synchronously (in
program order) and returns a `Future` at once. Requests are POSTed in the order the calls
were made: call i+1's POST waits until call i's POST returned. The chunks of one
forward / forward_backward call go out together (chunks 2..n first, then chunk 1, when the
server enables ``parallel_fwdbwd_chunks``); their results are merged.

Custom losses (``tinkex_jax.custom_loss``) go through one public seam,
`TrainingClient.forward_backward_surrogate`: the client owns the requests, the request order
and the state of stateful loss terms (``loss_states``); the loss only turns logprobs into
gradients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from .._shell import Future, QueueStateLogger, Shell, Telemetry, TurnSequencer, instrument_async
from ..builders import (
    LOSS_SPECS,
    RequestCounter,
    SurrogateGradients,
    build_forward_backward_requests,
    chunk_data,
    combine_forward_backward_outputs,
    estimate_datum_bytes,
    merge_custom_metrics,
    reserve_request_ids,
    seq_id_of,
    split_like,
    surrogate_data,
    surrogate_forward_data,
    validate_training_data,
)
from ..errors import APIResponseValidationError, invalid
from ..types import (
    AdamParams,
    Datum,
    DimuonParams,
    ForwardBackwardOutput,
    GetInfoResponse,
    LoadWeightsRequest,
    LoadWeightsResponse,
    OptimStepRequest,
    OptimStepResponse,
    SaveWeightsExternalRequest,
    SaveWeightsExternalResponse,
    SaveWeightsForSamplerRequest,
    SaveWeightsForSamplerResponse,
    SaveWeightsRequest,
    SaveWeightsResponse,
)
from ..wire import decode_forward_backward_output, encode_forward_backward_request, zstd_compress
from ._client_future import ClientFuture
from ._sampling import (
    RetryConfig,
    SamplingClient,
    create_sampling_client,
    fetch_base_model,
    open_sampling_session,
)

if TYPE_CHECKING:
    from .._shell import QueueObserver

__all__ = ["TrainingClient"]

T = TypeVar("T")
logger = logging.getLogger("tinkex_jax.training")

#: Loss names the wire accepts (docs/protocol.md §4.1): the names of the one loss table
#: (`losses.LOSS_SPECS`); the built-in ones are validated fully.
_WIRE_LOSSES = tuple(LOSS_SPECS)


def _validate_forward_input(data: Sequence[Datum], loss_fn: str,
                            loss_fn_config: Mapping[str, float | str] | None) -> list[Datum]:
    if loss_fn not in _WIRE_LOSSES:
        raise invalid("loss_fn", f"one of {list(_WIRE_LOSSES)}", loss_fn,
                      "use forward_backward_custom for your own loss")
    validate_training_data(data, loss_fn if loss_fn in LOSS_SPECS else None, loss_fn_config)
    return [datum.snapshot() for datum in data]  # later in-place edits cannot reach the request


def _optim_fields(optim_params: AdamParams | DimuonParams | None,
                  adam_params: AdamParams | None) -> dict[str, Any]:
    if (optim_params is None) == (adam_params is None):
        raise invalid("optim_step", "exactly one of optim_params / adam_params",
                      "<both>" if optim_params is not None else "<neither>",
                      "call optim_step(AdamParams(learning_rate=1e-4))")
    params = optim_params if optim_params is not None else adam_params
    if isinstance(params, AdamParams):
        return {"adam_params": params}
    if isinstance(params, DimuonParams):
        return {"optimizer_params": params}
    raise invalid("optim_step(optim_params)", "AdamParams or DimuonParams",
                  f"<{type(params).__name__}>")


@instrument_async
class TrainingClient:
    """One LoRA training model on the server.

    Create it with `ServiceClient.create_lora_training_client` or
    `ServiceClient.create_training_client_from_state(_with_optimizer)`.

    Example:
        >>> tc = service.create_lora_training_client("tinkex-jax/tiny", rank=8).result()  # doctest: +SKIP
        >>> fb = tc.forward_backward(data, "cross_entropy")                  # doctest: +SKIP
        >>> opt = tc.optim_step(AdamParams(learning_rate=1e-4))             # doctest: +SKIP
        >>> fb.result().metrics["loss:sum"], opt.result()                  # doctest: +SKIP
    """

    def __init__(self, shell: Shell, *, model_id: str, model_seq_id: int | None,
                 info: GetInfoResponse) -> None:
        self._shell = shell
        self.model_id = model_id
        self.model_seq_id = model_seq_id
        self._info = info
        self._counter = RequestCounter()
        self._counter_lock = threading.Lock()
        self._turns = TurnSequencer()
        self._tokenizer: Any = None
        self.queue_state_logger = QueueStateLogger("training", model_id,
                                                   clock=shell.runtime.clock)
        #: State of stateful custom-loss terms (adaptive KL coefficients, ...) by loss: owned
        #: by this client, advanced in submission order by ``forward_backward_custom``.
        self.loss_states: dict[Hashable, Any] = {}

    def __repr__(self) -> str:
        return (f"<{type(self).__module__}.{type(self).__qualname__} "
                f"model_id={self.model_id!r} base_model={self._info.model_data.model_name!r}>")

    def __reduce__(self) -> Any:
        raise TypeError("A TrainingClient cannot be pickled (it owns a live request order). "
                        "Pickle a SamplingClient, or pass the model's checkpoint path and call "
                        "create_training_client_from_state in the other process.")

    # ------------------------------------------------------------------ hooks

    def _reserve_request_ids(self, n: int) -> range:
        """Reserve `n` consecutive request ids now, in program order (thread-safe).

        Request id ``r`` travels as ``seq_id = r + 1``. Every reserved id must be released
        by `_send_forward_backward` / `_submit` (which they do, on success, failure or
        cancellation), or later calls would wait forever.
        """
        with self._counter_lock:
            ids, self._counter = reserve_request_ids(self._counter, n)
        return ids

    def _chunk(self, data: Sequence[Datum]) -> list[list[Datum]]:
        """Split data into request chunks with the server's limits (docs/protocol.md §7.3)."""
        config = self._shell.require_client_config()
        return chunk_data(data, max_chunk_len=config.fwdbwd_max_chunk_len,
                          max_chunk_bytes=config.fwdbwd_max_chunk_bytes_count)

    @property
    def _poisoned(self) -> BaseException | None:
        return self._turns.poisoned

    def _poison(self, error: BaseException) -> None:
        """Fail every queued and later request of this client with `ClientPoisonedError`.

        Thread-safe; used when a forward_backward_custom chain fails half-way.
        """
        if self._shell.loop_thread.is_current():
            self._turns.poison(error)
        else:
            self._shell.loop_thread.loop.call_soon_threadsafe(self._turns.poison, error)

    def _release_soon(self, ids: range) -> None:
        with contextlib.suppress(Exception):  # a closed loop: nothing waits any more
            self._shell.loop_thread.loop.call_soon_threadsafe(self._turns.release, ids)

    def _submit(self, fn: Callable[[], Awaitable[T]], *, request_ids: range, sdk_method: str,
                poison_on_failure: bool = False) -> Future[T]:
        """Run ``fn()`` on the shell's loop as `sdk_method`; release `request_ids` when done.

        With `poison_on_failure`, any failure or cancellation of the chain poisons the client
        (queued and later calls then fail with `ClientPoisonedError`). The ids are released
        however the future ends, even if it is cancelled before it starts.
        """
        async def run() -> T:
            try:
                return await fn()
            except BaseException as error:
                if poison_on_failure:
                    self._turns.poison(error)
                raise
            finally:
                self._turns.release(request_ids)

        future = self._shell.submit(run, sdk_method=sdk_method)

        def on_done(f: Future[T]) -> None:
            if poison_on_failure and f.cancelled():
                self._poison(asyncio.CancelledError(f"{sdk_method} was cancelled"))
            self._release_soon(request_ids)

        future.add_done_callback(on_done)
        return future

    async def _send_forward_backward(
        self,
        request_ids: range,
        chunks: Sequence[Sequence[Datum]],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None,
        *,
        forward_only: bool,
    ) -> ForwardBackwardOutput:
        """POST the chunks with the given request ids in turn, poll, and merge the results.

        Runs on the shell's loop. Each chunk waits for its turn (all chunks wait for the
        first id when ``parallel_fwdbwd_chunks``), releases its id when its POST returned,
        and starts polling at once.
        """
        shell = self._shell
        config = shell.require_client_config()
        requests = build_forward_backward_requests(self.model_id, request_ids, chunks, loss_fn,
                                                   loss_fn_config, forward_only=forward_only)
        request_type = "Forward" if forward_only else "ForwardBackward"
        parallel = config.parallel_fwdbwd_chunks
        first_id = request_ids[0]
        polls: list[asyncio.Task[ForwardBackwardOutput]] = []

        async def post(i: int) -> asyncio.Task[ForwardBackwardOutput]:
            request_id = request_ids[i]
            try:
                body = encode_forward_backward_request(requests[i])
                headers: dict[str, str] = {}
                if config.proto_compress_fwdbwd:
                    body = zstd_compress(body)
                    headers["Content-Encoding"] = "zstd"
                size = sum(estimate_datum_bytes(d) for d in requests[i].data)
                await self._turns.wait(first_id if parallel else request_id)
                async with shell.fwdbwd_budget.hold(size):
                    future, roundtrip = await shell.submit_request(
                        "forward_backward", None, content=body,
                        content_type="application/x-protobuf", headers=headers)
            finally:
                self._turns.release(range(request_id, request_id + 1))
            task = asyncio.get_running_loop().create_task(shell.poll(
                future, request_type, decode_proto=decode_forward_backward_output,
                observer=self.on_queue_state_change, roundtrip=roundtrip))
            polls.append(task)
            return task

        try:
            if parallel and len(requests) > 1:
                rest = await asyncio.gather(*(post(i) for i in range(1, len(requests))))
                tasks = [await post(0), *rest]
            else:
                tasks = list(await asyncio.gather(*(post(i) for i in range(len(requests)))))
            outputs = await asyncio.gather(*tasks)
        except BaseException:
            for task in polls:
                task.cancel()
            raise
        return combine_forward_backward_outputs(outputs)

    async def _send_one(self, request_id: int, endpoint: str, body: Any, request_type: str,
                        json_type: type[T]) -> T:
        """POST a single-request operation in turn, then poll its JSON result."""
        shell = self._shell
        try:
            await self._turns.wait(request_id)
            future, roundtrip = await shell.submit_request(endpoint, body)
        finally:
            self._turns.release(range(request_id, request_id + 1))
        return await shell.poll(future, request_type, json_type=json_type,
                                observer=self.on_queue_state_change, roundtrip=roundtrip)

    def _one(self, endpoint: str, build: Callable[[int], Any], request_type: str,
             json_type: type[T], sdk_method: str) -> Future[T]:
        build(1)  # validate before reserving anything
        ids = self._reserve_request_ids(1)
        body = build(seq_id_of(ids[0]))
        return self._submit(
            lambda: self._send_one(ids[0], endpoint, body, request_type, json_type),
            request_ids=ids, sdk_method=sdk_method)

    # ------------------------------------------------------------------ training

    def _forward_backward(self, data: Sequence[Datum], loss_fn: str,
                          loss_fn_config: Mapping[str, float | str] | None, *,
                          forward_only: bool, sdk_method: str) -> Future[ForwardBackwardOutput]:
        datums = _validate_forward_input(data, loss_fn, loss_fn_config)
        chunks = self._chunk(datums)
        ids = self._reserve_request_ids(len(chunks))
        config = dict(loss_fn_config) if loss_fn_config else None
        return self._submit(
            lambda: self._send_forward_backward(ids, chunks, loss_fn, config,
                                                forward_only=forward_only),
            request_ids=ids, sdk_method=sdk_method)

    def forward(self, data: Sequence[Datum], loss_fn: str,
                loss_fn_config: Mapping[str, float | str] | None = None
                ) -> Future[ForwardBackwardOutput]:
        """Run the model on `data` and compute `loss_fn` without gradients.

        Returns:
            A Future of the merged `ForwardBackwardOutput` (per-datum ``logprobs``, metrics).

        Raises:
            ValidationError: bad data or loss (raised here, before anything is sent).

        Example:
            >>> out = tc.forward([datum_from_tokens([1, 2, 3])], "cross_entropy").result()  # doctest: +SKIP
            >>> out.loss_fn_outputs[0]["logprobs"].tolist()                               # doctest: +SKIP
        """
        return self._forward_backward(data, loss_fn, loss_fn_config, forward_only=True,
                                      sdk_method="TrainingClient.forward")

    def forward_backward(self, data: Sequence[Datum], loss_fn: str,
                         loss_fn_config: Mapping[str, float | str] | None = None
                         ) -> Future[ForwardBackwardOutput]:
        """Compute `loss_fn` on `data` and accumulate its gradient (applied by `optim_step`).

        Args:
            data: The datums (validated before anything is sent).
            loss_fn: A built-in loss: ``cross_entropy``, ``importance_sampling``, ``ppo``,
                ``cispo``, ``dro``, ``gspo`` (or ``stable_reinforce`` / ``custom``).
            loss_fn_config: The loss's hyperparameters (e.g. PPO clip thresholds).

        Returns:
            A Future of the merged `ForwardBackwardOutput`.

        Example:
            >>> fb = tc.forward_backward(data, "cross_entropy")          # doctest: +SKIP
            >>> opt = tc.optim_step(AdamParams(learning_rate=1e-4))     # doctest: +SKIP
            >>> fb.result().metrics["loss:sum"]                         # doctest: +SKIP
        """
        return self._forward_backward(data, loss_fn, loss_fn_config, forward_only=False,
                                      sdk_method="TrainingClient.forward_backward")

    def forward_backward_custom(
        self,
        data: Sequence[Datum],
        loss_fn: Any,
        *,
        regularizers: Sequence[Any] | None = None,
        extras: Mapping[str, Any] | None = None,
        datum_extras: Sequence[Mapping[str, Any]] | None = None,
        policy: Any = None,
        loss_type_input: Literal["logprobs"] | None = None,
        loss_signature: Literal["jax", "torch"] | None = None,
    ) -> Future[ForwardBackwardOutput]:
        """Train with your own loss of the per-token logprobs: a jit-compiled JAX function,
        or an official-SDK torch function.

        A forward pass gives the logprobs, the loss and its gradient with respect to them are
        computed here (``jax.value_and_grad`` compiled per length bucket, with the weighted
        `regularizers`; or ``loss.backward()`` for a torch loss), and a ``cross_entropy``
        forward_backward with ``weights = -grad`` applies it (docs/protocol.md §8.1). Both phases'
        request ids are reserved now, so calls submitted after this one wait behind it; a
        failure in the chain poisons this client.

        Args:
            data: the datums; every ``loss_fn_inputs`` key reaches the loss.
            loss_fn: ``(logprobs [B, T], batch: losses.LossBatch) -> (scalar, metrics)``, a
                ``tinkex_jax.custom_loss.CustomLoss``, or the official SDK's
                ``(data: list[Datum], logprobs_list: list[torch.Tensor]) -> (loss, metrics)``
                (needs PyTorch; told apart by its signature, see docs/custom-losses.md).
            regularizers: ``(name, term, weight)`` terms from ``regularizers``; their value,
                contribution and gradient norm come back as ``reg/<name>/...`` metrics.
            extras: batch-level side arrays (``batch.extras``), e.g. DPO pair indices.
            datum_extras: per-datum side arrays, padded into ``batch.extras``.
            policy: a ``losses.BucketPolicy`` (the padded shapes, hence the compiles).
            loss_type_input: accepted for compatibility; only ``"logprobs"`` exists.
            loss_signature: ``"jax"`` or ``"torch"`` to say which kind `loss_fn` is; None
                infers it from its parameter names and annotations.

        Returns:
            A Future of the `ForwardBackwardOutput`: ``metrics["loss:sum"]`` is the custom
            loss, ``metrics["surrogate_loss:sum"]`` the server's linear surrogate.

        Raises:
            ValidationError: bad data or side arrays, or a loss that fails to trace
                (raised here, before anything is sent).

        Example:
            >>> import jax.numpy as jnp
            >>> def nll(logprobs, batch):
            ...     return -jnp.sum(logprobs * batch.inputs["weights"] * batch.mask), {}
            >>> tc.forward_backward_custom(data, nll).result().metrics["loss:sum"]  # doctest: +SKIP
        """
        if loss_type_input not in (None, "logprobs"):
            raise invalid("loss_type_input", "None or 'logprobs'", loss_type_input)
        from ..custom_loss import forward_backward_custom

        return forward_backward_custom(self, data, loss_fn, regularizers=regularizers,
                                       extras=extras, datum_extras=datum_extras, policy=policy,
                                       loss_signature=loss_signature)

    def forward_backward_surrogate(
        self,
        data: Sequence[Datum],
        gradients: Callable[[list[np.ndarray]], SurrogateGradients],
        *,
        sdk_method: str = "TrainingClient.forward_backward_surrogate",
    ) -> Future[ForwardBackwardOutput]:
        """Train on a loss computed here from the per-token logprobs (docs/protocol.md §8.1).

        The seam custom losses go through. A forward pass (``cross_entropy``, only
        ``target_tokens`` and ``weights`` sent) gives each datum's logprobs of its targets;
        `gradients` turns them into the loss, ``dLoss / dlogprobs`` per datum and metrics (in
        a worker thread, off the event loop); a ``cross_entropy`` forward_backward with
        ``weights = -grad`` over the same chunks applies the step. Both phases' request ids
        are reserved now, so later calls wait behind both; any failure in the chain poisons
        this client (its reserved ids cannot be skipped).

        Args:
            data: the datums (checked here, before anything is sent).
            gradients: ``logprobs (list of arrays shaped like each target_tokens) ->
                SurrogateGradients``.
            sdk_method: the name the requests are reported under.

        Returns:
            A Future of the backward phase's result: ``loss:sum`` is the loss,
            ``surrogate_loss:sum`` the server's linear surrogate, plus the loss's metrics.

        Example:
            >>> def gradients(logprobs):  # the sum of the target logprobs, maximised
            ...     grads = [np.full(lp.shape, -1.0, np.float32) for lp in logprobs]
            ...     return SurrogateGradients(-sum(float(lp.sum()) for lp in logprobs), grads, {})
            >>> tc.forward_backward_surrogate(data, gradients).result()  # doctest: +SKIP
        """
        forward_data = surrogate_forward_data(data)
        validate_training_data(forward_data, "cross_entropy")
        chunks = self._chunk(forward_data)
        n = len(chunks)
        ids = self._reserve_request_ids(2 * n)

        async def run() -> ForwardBackwardOutput:
            forward = await self._send_forward_backward(ids[:n], chunks, "cross_entropy", None,
                                                        forward_only=True)
            logprobs = [out["logprobs"].to_numpy() for out in forward.loss_fn_outputs]
            result = await asyncio.to_thread(gradients, logprobs)
            backward_chunks = split_like(surrogate_data(forward_data, result.grads), chunks)
            backward = await self._send_forward_backward(ids[n:], backward_chunks,
                                                         "cross_entropy", None,
                                                         forward_only=False)
            metrics = merge_custom_metrics(backward.metrics, result.loss, result.metrics)
            return ForwardBackwardOutput(loss_fn_output_type=backward.loss_fn_output_type,
                                         loss_fn_outputs=backward.loss_fn_outputs,
                                         metrics=metrics)

        return self._submit(run, request_ids=ids, sdk_method=sdk_method,
                            poison_on_failure=True)

    def optim_step(self, optim_params: AdamParams | DimuonParams | None = None, *,
                   adam_params: AdamParams | None = None) -> Future[OptimStepResponse]:
        """Apply the accumulated gradients with the given optimizer hyperparameters.

        Example:
            >>> tc.optim_step(AdamParams(learning_rate=1e-4)).result().metrics  # doctest: +SKIP
        """
        fields = _optim_fields(optim_params, adam_params)
        return self._one("optim_step",
                         lambda seq: OptimStepRequest(model_id=self.model_id, seq_id=seq,
                                                      **fields),
                         "OptimStep", OptimStepResponse, "TrainingClient.optim_step")

    # ------------------------------------------------------------------ checkpoints

    def save_state(self, name: str, ttl_seconds: int | None = None, overwrite: bool = False,
                   user_metadata: dict[str, str] | None = None) -> Future[SaveWeightsResponse]:
        """Save weights and optimizer state as ``tinker://<model>/weights/<name>``.

        Example:
            >>> tc.save_state("step-100").result().path                   # doctest: +SKIP
            'tinker://.../weights/step-100'
        """
        return self._one("save_weights",
                         lambda seq: SaveWeightsRequest(
                             model_id=self.model_id, path=name, seq_id=seq,
                             ttl_seconds=ttl_seconds, overwrite=overwrite,
                             user_metadata=user_metadata),
                         "SaveWeights", SaveWeightsResponse, "TrainingClient.save_state")

    def _load(self, path: str, optimizer: bool, weights_access_token: str | None,
              sdk_method: str) -> Future[LoadWeightsResponse]:
        return self._one("load_weights",
                         lambda seq: LoadWeightsRequest(
                             model_id=self.model_id, seq_id=seq, path=path, optimizer=optimizer,
                             weights_access_token=weights_access_token),
                         "LoadWeights", LoadWeightsResponse, sdk_method)

    def load_state(self, path: str, weights_access_token: str | None = None
                   ) -> Future[LoadWeightsResponse]:
        """Load weights (not the optimizer state) from a ``tinker://…/weights/…`` path.

        Prefer ``ServiceClient.create_training_client_from_state``: servers may only allow a
        load as a model's first request.
        """
        return self._load(path, False, weights_access_token, "TrainingClient.load_state")

    def load_state_with_optimizer(self, path: str, weights_access_token: str | None = None
                                  ) -> Future[LoadWeightsResponse]:
        """Load weights and optimizer state from a ``tinker://…/weights/…`` path."""
        return self._load(path, True, weights_access_token,
                          "TrainingClient.load_state_with_optimizer")

    def save_weights_for_sampler(self, name: str, ttl_seconds: int | None = None,
                                 user_metadata: dict[str, str] | None = None
                                 ) -> Future[SaveWeightsForSamplerResponse]:
        """Save weights for sampling as ``tinker://<model>/sampler_weights/<name>``."""
        def build(seq: int) -> SaveWeightsForSamplerRequest:
            return SaveWeightsForSamplerRequest(model_id=self.model_id, seq_id=seq, path=name,
                                                ttl_seconds=ttl_seconds,
                                                user_metadata=user_metadata)

        build(1)
        ids = self._reserve_request_ids(1)
        body = build(seq_id_of(ids[0]))

        async def run() -> SaveWeightsForSamplerResponse:
            result = await self._send_one(ids[0], "save_weights_for_sampler", body,
                                          "SaveWeightsForSampler", SaveWeightsForSamplerResponse)
            if not result.path:
                raise APIResponseValidationError(
                    "TrainingClient.save_weights_for_sampler: the result has no 'path'. The "
                    "server does not follow the Tinker protocol for named sampler saves.")
            return result

        return self._submit(run, request_ids=ids,
                            sdk_method="TrainingClient.save_weights_for_sampler")

    def save_weights_external(self, name: str, ttl_seconds: int | None = None,
                              age_encryption_recipients: list[str] | None = None
                              ) -> Future[SaveWeightsExternalResponse]:
        """Export weights in Hugging Face format as ``tinker://<model>/external_weights/<name>``."""
        return self._one("save_weights_external",
                         lambda seq: SaveWeightsExternalRequest(
                             model_id=self.model_id, path=name, seq_id=seq,
                             ttl_seconds=ttl_seconds,
                             age_encryption_recipients=age_encryption_recipients),
                         "SaveWeightsExternal", SaveWeightsExternalResponse,
                         "TrainingClient.save_weights_external")

    def save_weights_and_get_sampling_client(
        self,
        name: str | None = None,
        retry_config: RetryConfig | None = None,
        record_stability_info: bool = False,
        kind: str = "snapshot",
    ) -> ClientFuture[SamplingClient]:
        """Snapshot the current weights into a new sampling session and return its client.

        `name` is ignored (the weights are ephemeral; use `save_weights_for_sampler` for a
        named checkpoint). `kind` is ``"snapshot"`` or ``"inflight"``.

        Example:
            >>> sampler = tc.save_weights_and_get_sampling_client().result()  # doctest: +SKIP
        """
        if name is not None:
            logger.debug("save_weights_and_get_sampling_client: name=%r is ignored", name)
        shell = self._shell

        def build(seq: int, sampling_seq: int) -> SaveWeightsForSamplerRequest:
            return SaveWeightsForSamplerRequest(model_id=self.model_id, seq_id=seq,
                                                sampling_session_seq_id=sampling_seq,
                                                kind=kind)  # type: ignore[arg-type]

        build(1, 0)
        ids = self._reserve_request_ids(1)
        body = build(seq_id_of(ids[0]), shell.next_sampling_session_seq_id())

        async def run() -> SamplingClient:
            result = await self._send_one(ids[0], "save_weights_for_sampler", body,
                                          "SaveWeightsForSampler", SaveWeightsForSamplerResponse)
            if not result.sampling_session_id and result.path:
                # an older server saved named weights instead: open a session on them
                logger.debug("save_weights_and_get_sampling_client: no sampling_session_id in "
                             "the result; opening a sampling session on %s", result.path)
                return await open_sampling_session(
                    shell, shell.next_sampling_session_seq_id(), model_path=result.path,
                    base_model=self._info.model_data.model_name or None,
                    retry_config=retry_config, record_stability_info=record_stability_info)
            if not result.sampling_session_id:
                raise APIResponseValidationError(
                    "TrainingClient.save_weights_and_get_sampling_client: the result has neither "
                    "'sampling_session_id' nor 'path'. The server does not follow the Tinker "
                    "protocol for ephemeral sampler saves.")
            base_model = self._info.model_data.model_name or await fetch_base_model(
                shell, result.sampling_session_id)
            return SamplingClient(shell, sampling_session_id=result.sampling_session_id,
                                  base_model=base_model, retry_config=retry_config,
                                  record_stability_info=record_stability_info)

        future = self._submit(run, request_ids=ids,
                              sdk_method="TrainingClient.save_weights_and_get_sampling_client")
        return ClientFuture(future.future(), is_loop_thread=shell.loop_thread.is_current)

    def create_sampling_client(self, model_path: str, retry_config: RetryConfig | None = None,
                               record_stability_info: bool = False
                               ) -> ClientFuture[SamplingClient]:
        """A sampling client for saved sampler weights (``tinker://…/sampler_weights/…``)."""
        return create_sampling_client(self._shell, model_path=model_path, base_model=None,
                                      retry_config=retry_config,
                                      record_stability_info=record_stability_info,
                                      sdk_method="TrainingClient.create_sampling_client")

    # ------------------------------------------------------------------ info

    def get_info(self) -> GetInfoResponse:
        """The model's info, fetched once when the client was created (no request)."""
        return self._info

    async def get_info_async(self) -> GetInfoResponse:
        """`get_info` for async code (kept for ported code)."""
        return self._info

    def get_console_url(self) -> str:
        """The console page of this model's training run (no request; see
        `tinkex_jax.console_urls`)."""
        from ..console_urls import training_run_console_url

        return training_run_console_url(self.model_id, base_url=self._shell.settings.base_url)

    def get_tokenizer(self) -> Any:
        """The model's tokenizer (`tinkex_jax.tokenizer.get_tokenizer` on get_info's
        ``tokenizer_id``, else the model name), cached on the client."""
        if self._tokenizer is None:
            from ..tokenizer import get_tokenizer

            data = self._info.model_data
            self._tokenizer = get_tokenizer(data.tokenizer_id or None,
                                            model_name=data.model_name or self._info.model_name)
        return self._tokenizer

    def add_queue_state_listener(self, listener: QueueObserver) -> None:
        """Call ``listener(queue_state, reason)`` on every queue-state report while polling."""
        self.queue_state_logger.listeners.append(listener)

    def on_queue_state_change(self, queue_state: str, queue_state_reason: str | None) -> None:
        """Report a queue state (called while polling; logs "paused" after 15 min, then at
        most once a minute)."""
        self.queue_state_logger(queue_state, queue_state_reason)

    def get_telemetry(self) -> Telemetry | None:
        """The telemetry batcher of this client's session (None when telemetry is off)."""
        telemetry = self._shell.telemetry
        return telemetry if telemetry.enabled else None

    # ------------------------------------------------------------------ ported *_async names

    async def forward_async(self, data: Sequence[Datum], loss_fn: str,
                            loss_fn_config: Mapping[str, float | str] | None = None
                            ) -> Future[ForwardBackwardOutput]:
        """``await tc.forward_async(...)`` gives the Future (as in the official SDK)."""
        return self.forward(data, loss_fn, loss_fn_config)

    async def forward_backward_async(self, data: Sequence[Datum], loss_fn: str,
                                     loss_fn_config: Mapping[str, float | str] | None = None
                                     ) -> Future[ForwardBackwardOutput]:
        """``await tc.forward_backward_async(...)`` gives the Future."""
        return self.forward_backward(data, loss_fn, loss_fn_config)

    async def forward_backward_custom_async(
            self, data: Sequence[Datum], loss_fn: Any, *,
            loss_type_input: Literal["logprobs"] | None = None, **kwargs: Any
    ) -> Future[ForwardBackwardOutput]:
        """``await tc.forward_backward_custom_async(...)`` gives the Future."""
        return self.forward_backward_custom(data, loss_fn, loss_type_input=loss_type_input,
                                            **kwargs)

    async def optim_step_async(self, optim_params: AdamParams | DimuonParams | None = None, *,
                               adam_params: AdamParams | None = None
                               ) -> Future[OptimStepResponse]:
        """``await tc.optim_step_async(...)`` gives the Future."""
        return self.optim_step(optim_params, adam_params=adam_params)

    async def save_state_async(self, name: str, ttl_seconds: int | None = None,
                               overwrite: bool = False,
                               user_metadata: dict[str, str] | None = None
                               ) -> Future[SaveWeightsResponse]:
        """``await tc.save_state_async(...)`` gives the Future."""
        return self.save_state(name, ttl_seconds, overwrite, user_metadata)

    async def load_state_async(self, path: str, weights_access_token: str | None = None
                               ) -> Future[LoadWeightsResponse]:
        """``await tc.load_state_async(...)`` gives the Future."""
        return self.load_state(path, weights_access_token)

    async def load_state_with_optimizer_async(self, path: str,
                                              weights_access_token: str | None = None
                                              ) -> Future[LoadWeightsResponse]:
        """``await tc.load_state_with_optimizer_async(...)`` gives the Future."""
        return self.load_state_with_optimizer(path, weights_access_token)

    async def save_weights_for_sampler_async(self, name: str, ttl_seconds: int | None = None,
                                             user_metadata: dict[str, str] | None = None
                                             ) -> Future[SaveWeightsForSamplerResponse]:
        """``await tc.save_weights_for_sampler_async(...)`` gives the Future."""
        return self.save_weights_for_sampler(name, ttl_seconds, user_metadata)

    async def save_weights_external_async(self, name: str, ttl_seconds: int | None = None,
                                          age_encryption_recipients: list[str] | None = None
                                          ) -> Future[SaveWeightsExternalResponse]:
        """``await tc.save_weights_external_async(...)`` gives the Future."""
        return self.save_weights_external(name, ttl_seconds, age_encryption_recipients)

    async def save_weights_and_get_sampling_client_async(
        self, name: str | None = None, retry_config: RetryConfig | None = None,
        record_stability_info: bool = False, kind: str = "snapshot",
    ) -> SamplingClient:
        """``await tc.save_weights_and_get_sampling_client_async()`` gives the client."""
        return await self.save_weights_and_get_sampling_client(name, retry_config,
                                                               record_stability_info, kind)

    async def create_sampling_client_async(self, model_path: str,
                                           retry_config: RetryConfig | None = None,
                                           record_stability_info: bool = False
                                           ) -> SamplingClient:
        """``await tc.create_sampling_client_async(path)`` gives the client."""
        return await self.create_sampling_client(model_path, retry_config,
                                                 record_stability_info)

