"""Pure conversions between wire values and the backend's host arrays.

Everything a request needs checked against a base model (token ids below the vocabulary,
lengths within the context, top-k widths within the vocabulary, the loss's inputs present
and shaped right, the tokens a sample will produce within ``max_request_tokens``) is
checked here, before the request is queued, so a bad request fails with a clear message and
never touches a model's state. The checks that need no model are in `_limits`.

Example:
    >>> from tinkex_jax.builders import datum_from_tokens
    >>> from tinkex_jax.types import ForwardBackwardRequest
    >>> info = BaseModelInfo(name="m", vocab_size=10, max_context_length=32, tokenizer_id="m")
    >>> req = ForwardBackwardRequest(model_id="m", seq_id=1, loss_fn="cross_entropy",
    ...                              data=[datum_from_tokens([1, 2, 3])])
    >>> items, config = training_items(req, info)
    >>> items[0].tokens.tolist(), items[0].targets.tolist(), config
    ([1, 2], [2, 3], {})
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from ..builders import LOSS_SPECS, validate_loss_config, validate_training_data
from ..errors import ValidationError
from ..types import (
    Datum,
    EncodedTextChunk,
    ForwardBackwardOutput,
    ForwardBackwardRequest,
    ModelInput,
    PromptAltTokens,
    SampledSequence,
    SampleRequest,
    SampleResponse,
    TensorData,
    TopkLogprobs,
)
from ._backend import (
    BaseModelInfo,
    SampleJob,
    SampleOutcome,
    TrainItem,
    TrainResult,
)
from ._errors import UserError

__all__ = [
    "TOPK_SENTINEL",
    "forward_backward_output",
    "needs_prompt_table",
    "prompt_tokens",
    "sample_job",
    "sample_response",
    "training_items",
]

#: Logprob of an unused top-k cell on the wire.
TOPK_SENTINEL = -99999.0


def _text_tokens(model_input: ModelInput, where: str) -> np.ndarray:
    for j, chunk in enumerate(model_input.chunks):
        if not isinstance(chunk, EncodedTextChunk):
            raise UserError(
                f"{where}.chunks[{j}]: expected a text chunk (encoded_text), got "
                f"{type(chunk).__name__}. Fix: the local backend's models read text only; "
                "send token ids (ModelInput.from_ints(tokenizer.encode(text))).")
    return model_input.token_array()


def _check_ids(ids: np.ndarray, vocab: int, where: str, base: str) -> None:
    if ids.size == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab:
        bad = high if high >= vocab else low
        position = np.argwhere((ids < 0) | (ids >= vocab))[0].tolist()
        raise UserError(
            f"{where}: token id {bad} at position {position} is outside the vocabulary of "
            f"{base!r} (ids must be in [0, {vocab})). Fix: tokenize with the base model's "
            "tokenizer (get_info().model_data.tokenizer_id).")


def _check_k(where: str, k: int, info: BaseModelInfo) -> None:
    if k > info.vocab_size:
        raise UserError(f"{where}: {k} is more than the vocabulary of {info.name!r} "
                        f"({info.vocab_size} tokens). Fix: ask for at most {info.vocab_size}.")


def _validated(data: Sequence[Datum], loss_fn: str,
               config: dict[str, float | str] | None) -> dict[str, float]:
    """The checks of the loss table (`losses.LOSS_SPECS`), the same the client runs before
    sending; only a loss this server computes is accepted."""
    from losses import loss_spec

    try:
        loss_spec(loss_fn)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    try:
        validate_training_data(data, loss_fn, config)
        return validate_loss_config(loss_fn, config)
    except ValidationError as exc:
        raise UserError(str(exc)) from None


def training_items(request: ForwardBackwardRequest, info: BaseModelInfo, *,
                   max_width: int | None = None) -> tuple[list[TrainItem], dict[str, float]]:
    """Check a forward / forward_backward request against a base model and convert it.

    Returns the per-datum host arrays and the loss config with defaults filled in. A 2-D
    loss input (K values per position) may be at most the vocabulary (and `max_width`,
    the server's ``max_logprobs_topk``) wide, checked before anything is made dense.

    The items carry the loss's required client inputs only; a loss that needs provenance
    gets its derived inputs from `tinkex_jax.local._stability.StabilityRecords.resolve`.

    Raises:
        UserError: unknown loss, missing or mis-shaped ``loss_fn_inputs``, token ids outside
            the vocabulary, a sequence longer than the context, or a non-text chunk.
    """
    config = _validated(request.data, request.loss_fn, request.loss_fn_config)
    required = LOSS_SPECS[request.loss_fn].required_inputs
    items: list[TrainItem] = []
    for i, datum in enumerate(request.data):
        where = f"data[{i}]"
        tokens = _text_tokens(datum.model_input, f"{where}.model_input")
        if tokens.size > info.max_context_length:
            raise UserError(
                f"{where}.model_input: {tokens.size} tokens is longer than the context of "
                f"{info.name!r} ({info.max_context_length}). Fix: truncate or split the "
                "sequence.")
        _check_ids(tokens, info.vocab_size, f"{where}.model_input", info.name)
        for key, tensor in datum.loss_fn_inputs.items():
            shape = tensor.shape or ()
            if len(shape) == 2:  # before any densifying: K values per position
                _check_k(f"{where}.loss_fn_inputs[{key!r}] width", shape[1], info)
                if max_width is not None and shape[1] > max_width:
                    raise UserError(
                        f"{where}.loss_fn_inputs[{key!r}] (shape {list(shape)}): {shape[1]} "
                        f"columns is more than this server takes ({max_width}: "
                        f"ServerConfig.max_logprobs_topk). Fix: send at most {max_width}.")
        targets = datum.loss_fn_inputs["target_tokens"].to_numpy(pad_value=0)
        _check_ids(targets, info.vocab_size, f"{where}.loss_fn_inputs['target_tokens']",
                   info.name)
        inputs = {}
        for key in required:
            array = datum.loss_fn_inputs[key].to_numpy(pad_value=0).astype(np.float32)
            if not np.all(np.isfinite(array)):
                raise UserError(f"{where}.loss_fn_inputs[{key!r}]: expected finite numbers, "
                                "got NaN or infinity. Fix: clean the values before sending.")
            inputs[key] = array
        items.append(TrainItem(tokens=tokens.astype(np.int32), targets=targets.astype(np.int64),
                               inputs=inputs))
    return items, config


def forward_backward_output(result: TrainResult, items: Sequence[TrainItem],
                            extra_metrics: Mapping[str, float] | None = None
                            ) -> ForwardBackwardOutput:
    """Per-datum ``logprobs`` and ``elementwise_loss`` plus ``name:reduction`` metrics
    (``loss:sum``, ``num_tokens:sum`` and any `extra_metrics`).

    Example:
        >>> item = TrainItem(tokens=np.array([1, 2], np.int32), targets=np.array([2, 3]))
        >>> res = TrainResult(logprobs=[np.array([-1.0, -2.0], np.float32)],
        ...                   losses=[np.array([1.0, 0.0], np.float32)])
        >>> out = forward_backward_output(res, [item])
        >>> out.metrics["loss:sum"], out.loss_fn_outputs[0]["logprobs"].shape
        (1.0, (2,))
    """
    outputs = []
    total = 0.0
    for item, lp, loss in zip(items, result.logprobs, result.losses):
        lp = np.asarray(lp, np.float32).reshape(item.targets.shape)
        loss = np.asarray(loss, np.float32).reshape(item.targets.shape)
        total += float(loss.sum(dtype=np.float64))
        outputs.append({"logprobs": TensorData.from_numpy(lp),
                        "elementwise_loss": TensorData.from_numpy(loss)})
    tokens = float(sum(int(item.tokens.size) for item in items))
    return ForwardBackwardOutput(loss_fn_output_type="ArrayRecord", loss_fn_outputs=outputs,
                                 metrics={"loss:sum": total, "num_tokens:sum": tokens,
                                          **(extra_metrics or {})})


# ----------------------------------------------------------------------------- sampling


def prompt_tokens(request: SampleRequest, info: BaseModelInfo) -> np.ndarray:
    """The prompt's token ids, checked against the base model (int32)."""
    tokens = _text_tokens(request.prompt, "prompt")
    _check_ids(tokens, info.vocab_size, "prompt", info.name)
    return tokens.astype(np.int32)


def sample_job(request: SampleRequest, info: BaseModelInfo, *, default_max_tokens: int,
               seed: int | None = None, max_request_tokens: int | None = None) -> SampleJob:
    """Resolve a sample request's parameters against a base model.

    ``max_tokens`` defaults to `default_max_tokens`, clipped to the room left in the
    context; ``stop=None`` means the model's end-of-sequence tokens; a missing seed is
    taken from `seed` (the server passes one drawn from its `Effects`), else drawn here; a
    ``top_k`` of the vocabulary size or more means no limit (-1).

    Raises:
        UserError: the prompt leaves no room to generate, ``max_tokens`` does not fit, a
            top-k width is larger than the vocabulary, a stop token id is outside the
            vocabulary, or ``num_samples * (prompt + max_tokens)`` is more than
            `max_request_tokens`.

    Example:
        >>> from tinkex_jax.types import ModelInput, SamplingParams
        >>> info = BaseModelInfo(name="m", vocab_size=10, max_context_length=8,
        ...                      tokenizer_id="m", eos_token_ids=(9,))
        >>> req = SampleRequest(prompt=ModelInput.from_ints([1, 2]),
        ...                     sampling_params=SamplingParams(seed=3))
        >>> job = sample_job(req, info, default_max_tokens=16)
        >>> job.max_tokens, job.stop_tokens, job.seed
        (6, (9,), 3)
    """
    for name in ("topk_prompt_logprobs", "topk_sample_logprobs", "prompt_alt_tokens_k"):
        _check_k(name, getattr(request, name), info)
    if request.target_prompt_logprobs is not None:
        _check_k("target_prompt_logprobs width", request.target_prompt_logprobs.shape[1], info)
    prompt = prompt_tokens(request, info)
    params = request.sampling_params
    room = info.max_context_length - int(prompt.size)
    if room < 1:
        raise UserError(
            f"prompt: {prompt.size} tokens leave no room to generate within the context of "
            f"{info.name!r} ({info.max_context_length} tokens). Fix: shorten the prompt.")
    if params.max_tokens is None:
        max_tokens = min(default_max_tokens, room)
    elif params.max_tokens > room:
        raise UserError(
            f"sampling_params.max_tokens: {params.max_tokens} new tokens after a "
            f"{prompt.size}-token prompt exceed the context of {info.name!r} "
            f"({info.max_context_length}). Fix: pass max_tokens <= {room}.")
    else:
        max_tokens = params.max_tokens
    work = request.num_samples * (int(prompt.size) + max_tokens)
    if max_request_tokens is not None and work > max_request_tokens:
        raise UserError(
            f"num_samples * (prompt + max_tokens) = {request.num_samples} * ({prompt.size} + "
            f"{max_tokens}) = {work} tokens is more than this server takes in one request "
            f"({max_request_tokens}: tinkex serve --max-request-tokens). Fix: lower "
            "num_samples or max_tokens, or send several requests.")
    stop_tokens: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    if params.stop is None:
        stop_tokens = tuple(info.eos_token_ids)
    else:
        stop_strings = tuple(params.stop_strings)
        stop_tokens = tuple(params.stop_tokens)
        for t in stop_tokens:
            if not 0 <= t < info.vocab_size:
                raise UserError(f"sampling_params.stop: token id {t} is outside the vocabulary "
                                f"of {info.name!r} ([0, {info.vocab_size})).")
    if params.seed is not None:
        seed_value = int(params.seed) % (2**63)
    elif seed is not None:
        seed_value = seed
    else:
        seed_value = int.from_bytes(os.urandom(8), "little") % (2**63)
    top_k = int(params.top_k)
    return SampleJob(prompt=prompt, num_samples=request.num_samples, max_tokens=max_tokens,
                     temperature=float(params.temperature),
                     top_k=-1 if top_k >= info.vocab_size else top_k,
                     top_p=float(params.top_p), seed=seed_value, stop_tokens=stop_tokens,
                     stop_strings=stop_strings)


def _topk_rows(table: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k ids (int32) and logprobs (float32) of each row, best first."""
    k = min(k, table.shape[-1])
    if table.shape[0] == 0:
        return np.zeros((0, k), np.int32), np.zeros((0, k), np.float32)
    ids = np.argpartition(-table, k - 1, axis=-1)[:, :k]
    vals = np.take_along_axis(table, ids, axis=-1)
    order = np.argsort(-vals, axis=-1, kind="stable")
    return (np.take_along_axis(ids, order, axis=-1).astype(np.int32),
            np.take_along_axis(vals, order, axis=-1).astype(np.float32))


def _topk_with_blank_rows(table: np.ndarray, k: int, blank: np.ndarray) -> TopkLogprobs:
    """Top-k per row; rows where `blank` is True hold only sentinels (reported as None)."""
    ids, vals = _topk_rows(table, k)
    ids = np.where(blank[:, None], 0, ids).astype(np.int32)
    vals = np.where(blank[:, None], TOPK_SENTINEL, vals).astype(np.float32)
    return TopkLogprobs(token_ids=ids, logprobs=vals)


def _target_prompt_logprobs(spec: TensorData, table: np.ndarray) -> TensorData:
    """Logprobs of requested targets per prompt position, in the request's layout."""
    rows = table.shape[0]
    if spec.is_sparse:
        crow = np.asarray(spec.sparse_crow_indices)
        row_of = np.repeat(np.arange(rows), np.diff(crow))
        ids = spec.values.astype(np.int64)
        ok = (ids >= 0) & (ids < table.shape[1])
        vals = np.where(ok, table[row_of, np.clip(ids, 0, table.shape[1] - 1)], 0.0)
        return TensorData(data=vals.astype(np.float32), dtype="float32",
                          shape=list(spec.shape or ()),
                          sparse_crow_indices=crow, sparse_col_indices=spec.sparse_col_indices)
    ids = spec.to_numpy().astype(np.int64)
    ok = (ids >= 0) & (ids < table.shape[1])
    picked = np.take_along_axis(table, np.clip(ids, 0, table.shape[1] - 1), axis=1)
    return TensorData.from_numpy(np.where(ok, picked, 0.0).astype(np.float32))


def _blank_before(P: int, last_n: int | None) -> np.ndarray:
    """True for prompt positions that get no score (0, and those before the last n)."""
    first = 1 if last_n is None else max(1, P - last_n)
    return np.arange(P) < first


def sample_response(request: SampleRequest, prompt: np.ndarray, outcome: SampleOutcome,
                    prompt_table: np.ndarray | None = None,
                    sample_tables: Sequence[np.ndarray] | None = None) -> SampleResponse:
    """Assemble the wire SampleResponse.

    Args:
        request: The request (decides which optional parts are filled).
        prompt: Prompt token ids ``[P]``.
        outcome: The sequences and prompt scores from the backend.
        prompt_table: ``[P, V]`` next-token logprobs after each prompt position (needed only
            for ``target_prompt_logprobs`` and ``prompt_alt_tokens_k``).
        sample_tables: Per sequence, ``[n, V]`` logprobs of each generated position's
            distribution (needed only for ``topk_sample_logprobs``).

    Example:
        >>> from tinkex_jax.types import ModelInput, SamplingParams
        >>> from tinkex_jax.local._backend import SampledRow
        >>> req = SampleRequest(prompt=ModelInput.from_ints([0, 1]), prompt_logprobs=True,
        ...                     sampling_params=SamplingParams())
        >>> row = SampledRow(tokens=np.array([1]), logprobs=np.array([-0.69]),
        ...                  stop_reason="length")
        >>> out = SampleOutcome(rows=[row], prompt_logprobs=np.array([np.nan, -0.7]))
        >>> sample_response(req, np.array([0, 1]), out).prompt_logprobs[0] is None
        True
    """
    P = int(prompt.size)
    blank = _blank_before(P, request.prompt_logprobs_last_n)
    sequences = []
    for i, row in enumerate(outcome.rows):
        topk = None
        if request.topk_sample_logprobs and sample_tables is not None:
            table = sample_tables[i]
            topk = _topk_with_blank_rows(table, request.topk_sample_logprobs,
                                         np.zeros(table.shape[0], bool))
        sequences.append(SampledSequence(
            stop_reason="stop" if row.stop_reason == "stop" else "length",
            tokens_np=np.asarray(row.tokens, np.int32),
            logprobs_np=np.asarray(row.logprobs, np.float32), topk_logprobs_np=topk))
    prompt_lp = topk_prompt = target = alt = None
    if request.prompt_logprobs and outcome.prompt_logprobs is not None:
        scored = np.asarray(outcome.prompt_logprobs, np.float32)
        prompt_lp = np.where(blank, np.nan, scored).astype(np.float32)
    if request.topk_prompt_logprobs and outcome.topk_prompt is not None:
        ids, vals = outcome.topk_prompt
        k = request.topk_prompt_logprobs
        ids, vals = np.asarray(ids)[:, :k], np.asarray(vals)[:, :k]
        topk_prompt = TopkLogprobs(
            token_ids=np.where(blank[:, None], 0, ids).astype(np.int32),
            logprobs=np.where(blank[:, None], TOPK_SENTINEL, vals).astype(np.float32))
    if prompt_table is not None:
        if request.target_prompt_logprobs is not None:
            target = _target_prompt_logprobs(request.target_prompt_logprobs,
                                             prompt_table[:P - 1])
        if request.prompt_alt_tokens_k:
            ids, vals = _topk_rows(prompt_table[:P - 1], request.prompt_alt_tokens_k)
            alt = PromptAltTokens(tokens=TensorData.from_numpy(ids.astype(np.int64)),
                                  logprobs=TensorData.from_numpy(vals))
    return SampleResponse(sequences=sequences, prompt_logprobs_np=prompt_lp,
                          topk_prompt_logprobs_np=topk_prompt, target_prompt_logprobs=target,
                          prompt_alt_tokens=alt, prompt_cache_hit_tokens=0)


def needs_prompt_table(request: SampleRequest) -> bool:
    """Whether the response needs the prompt's full logprob table."""
    return bool(request.target_prompt_logprobs is not None or request.prompt_alt_tokens_k)


