"""Bounds on what one request may ask of the local backend, checked before any work starts.

Every number a client gives that sizes work (samples, tokens, ranks, top-k widths, list
and string lengths, body sizes) is compared with a limit of `ServerConfig` when the request
is decoded, so an oversized request is answered 4xx at once and never reaches a lane, a
worker or the event loop's memory. Integers that the protocol carries as int64 (sequence
ids) must fit in one; floats the server computes in float32 must stay finite there.

=================================  ==========================================================
``max_body_bytes``                 a body as sent (413, refused before it is read whole)
``max_decompressed_bytes``         a zstd body once decompressed (413)
``max_num_samples``                ``num_samples`` of one sample request
``max_request_tokens``             input tokens of forward(_backward) (`fwdbwd_size_check`);
                                   ``num_samples * (prompt + max_tokens)`` of a sample
                                   (checked in `_convert`)
``fwdbwd_max_chunk_len``           datums of one forward(_backward) (clients split larger
                                   calls: ``client/config`` tells them this number)
``max_lora_rank``                  ``lora_config.rank``
``max_logprobs_topk``              the top-k widths of a sample request, the width of
                                   ``target_prompt_logprobs`` and of 2-D loss inputs (in
                                   `_convert`, before anything is made dense)
``max_string_length``              tags, names, SDK version, finish detail, stop strings
``max_list_length``                tags, stop sequences, ``user_metadata`` and
                                   ``loss_fn_config`` entries
``max_metadata_bytes``             ``user_metadata`` as JSON
=================================  ==========================================================

The checks that need the base model (token ids below the vocabulary, lengths within the
context, top-k widths below the vocabulary) are in `_convert`. Each check here is
O(size of the request) and allocates nothing proportional to a client-given number. This
module never touches HTTP, storage or a model.

Example:
    >>> from pathlib import Path
    >>> from tinkex_jax.local._config import ServerConfig
    >>> from tinkex_jax.types import CreateSessionRequest
    >>> config = ServerConfig(data_dir=Path("unused"), max_list_length=2)
    >>> check_request(CreateSessionRequest(tags=["a", "b"]), config)
    >>> check_request(CreateSessionRequest(tags=["a", "b", "c"]), config)
    Traceback (most recent call last):
    ...
    tinkex_jax.local._errors.UserError: tags: 3 items is more than this server takes (2: ServerConfig.max_list_length). Fix: send at most 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
import numpy as np
import zstandard

from ..types import (
    AdamParams,
    CopyWeightsRequest,
    CreateModelRequest,
    CreateSamplingSessionRequest,
    CreateSessionRequest,
    ForwardBackwardRequest,
    LoadWeightsRequest,
    OptimStepRequest,
    SampleRequest,
    SaveWeightsExternalRequest,
    SaveWeightsForSamplerRequest,
    SaveWeightsRequest,
    SessionFinishRequest,
    TensorData,
)
from ._config import ServerConfig
from ._errors import PayloadTooLargeError, UserError

__all__ = [
    "MAX_WIRE_INT",
    "check_float32",
    "check_int",
    "check_request",
    "check_text",
    "decompress_zstd",
    "fwdbwd_size_check",
]

#: The largest sequence id (the protocol's int64).
MAX_WIRE_INT = 2**63 - 1
_F32_MAX = float(np.finfo(np.float32).max)
_READ_CHUNK = 1 << 20


def _too_many(where: str, count: int, limit: int, setting: str, unit: str = "items") -> UserError:
    return UserError(f"{where}: {count} {unit} is more than this server takes ({limit}: "
                     f"ServerConfig.{setting}). Fix: send at most {limit}.")


def check_int(where: str, value: int | None, *, low: int = 0, high: int = MAX_WIRE_INT) -> None:
    """Raise `UserError` unless `value` (when given) is an int in ``[low, high]``.

    Example:
        >>> check_int("seq_id", 2**70)
        Traceback (most recent call last):
        ...
        tinkex_jax.local._errors.UserError: seq_id: 1180591620717411303424 is outside [0, 9223372036854775807] (the protocol's int64). Fix: count from 0; clients do this for you.
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserError(f"{where}: {value!r} is outside [{low}, {high}] (the protocol's int64). "
                        "Fix: count from 0; clients do this for you.")


def check_float32(where: str, value: float) -> None:
    """Raise `UserError` unless `value` is finite in float32 (the server computes in it).

    Example:
        >>> check_float32("temperature", 1e308)
        Traceback (most recent call last):
        ...
        tinkex_jax.local._errors.UserError: temperature: 1e+308 is not a finite float32 (the server computes in float32; |x| <= 3.4e38). Fix: pass a smaller value.
    """
    if not (math.isfinite(value) and abs(value) <= _F32_MAX):
        raise UserError(f"{where}: {value!r} is not a finite float32 (the server computes in "
                        "float32; |x| <= 3.4e38). Fix: pass a smaller value.")


def check_text(where: str, value: str | None, config: ServerConfig) -> None:
    """Raise `UserError` if a client-given string is longer than ``max_string_length``."""
    if value is not None and len(value) > config.max_string_length:
        raise _too_many(where, len(value), config.max_string_length, "max_string_length",
                        "characters")


def _check_texts(where: str, values: Sequence[Any], config: ServerConfig) -> None:
    if len(values) > config.max_list_length:
        raise _too_many(where, len(values), config.max_list_length, "max_list_length")
    for i, value in enumerate(values):
        if isinstance(value, str):
            check_text(f"{where}[{i}]", value, config)


def _check_metadata(where: str, metadata: Mapping[str, Any] | None,
                    config: ServerConfig) -> None:
    if not metadata:
        return
    if len(metadata) > config.max_list_length:
        raise _too_many(where, len(metadata), config.max_list_length, "max_list_length",
                        "entries")
    size = len(msgspec.json.encode(metadata))
    if size > config.max_metadata_bytes:
        raise _too_many(where, size, config.max_metadata_bytes, "max_metadata_bytes",
                        "bytes of JSON")


def _check_width(where: str, tensor: TensorData, config: ServerConfig) -> None:
    """The second dimension of a 2-D tensor (K values per position) within the top-k limit;
    a sparse tensor's dense size is otherwise unbounded by its body."""
    shape = tensor.shape or ()
    if len(shape) == 2 and shape[1] > config.max_logprobs_topk:
        raise _too_many(f"{where} (shape {list(shape)})", shape[1], config.max_logprobs_topk,
                        "max_logprobs_topk", "columns")


def _session(req: CreateSessionRequest, config: ServerConfig) -> None:
    _check_texts("tags", req.tags, config)
    _check_metadata("user_metadata", req.user_metadata, config)
    for name in ("sdk_version", "project_id", "display_name"):
        check_text(name, getattr(req, name), config)


def _finish(req: SessionFinishRequest, config: ServerConfig) -> None:
    check_text("detail", req.detail, config)


def _create_model(req: CreateModelRequest, config: ServerConfig) -> None:
    check_int("model_seq_id", req.model_seq_id)
    if req.lora_config is not None and req.lora_config.rank > config.max_lora_rank:
        raise UserError(
            f"lora_config.rank: {req.lora_config.rank} is more than this server takes "
            f"({config.max_lora_rank}: tinkex serve --max-lora-rank). Fix: use a rank "
            f"<= {config.max_lora_rank} (8-128 is usual).")
    _check_metadata("user_metadata", req.user_metadata, config)


def fwdbwd_size_check(config: ServerConfig) -> Callable[[int, int], None]:
    """The check `tinkex_jax.wire.decode_forward_backward_request` runs on a parsed body
    before it builds any datum: at most ``fwdbwd_max_chunk_len`` datums and
    ``max_request_tokens`` input tokens.

    Example:
        >>> from pathlib import Path
        >>> check = fwdbwd_size_check(ServerConfig(data_dir=Path("unused")))
        >>> check(8, 2048)
        >>> check(8, 2**21)
        Traceback (most recent call last):
        ...
        tinkex_jax.local._errors.UserError: data: 2097152 input tokens in one request is more than this server takes (1048576: tinkex serve --max-request-tokens). Fix: send fewer datums per call.
    """
    def check(datums: int, tokens: int) -> None:
        if datums > config.fwdbwd_max_chunk_len:
            raise UserError(
                f"data: {datums} datums in one request is more than this server takes "
                f"({config.fwdbwd_max_chunk_len}, the fwdbwd_max_chunk_len of its client/"
                "config). Fix: send fewer datums per call (Tinker SDKs split calls by it).")
        if tokens > config.max_request_tokens:
            raise UserError(
                f"data: {tokens} input tokens in one request is more than this server takes "
                f"({config.max_request_tokens}: tinkex serve --max-request-tokens). Fix: send "
                "fewer datums per call.")

    return check


def _forward_backward(req: ForwardBackwardRequest, config: ServerConfig) -> None:
    check_int("seq_id", req.seq_id)
    if req.loss_fn_config is not None and len(req.loss_fn_config) > config.max_list_length:
        raise _too_many("loss_fn_config", len(req.loss_fn_config), config.max_list_length,
                        "max_list_length", "entries")


def _adam(where: str, params: AdamParams | None) -> None:
    if params is None:
        return
    for name in ("learning_rate", "beta1", "beta2", "eps", "weight_decay", "grad_clip_norm"):
        check_float32(f"{where}.{name}", getattr(params, name))


def _optim(req: OptimStepRequest, config: ServerConfig) -> None:
    check_int("seq_id", req.seq_id)
    _adam("adam_params", req.adam_params)


def _save(req: SaveWeightsRequest | SaveWeightsForSamplerRequest | SaveWeightsExternalRequest,
          config: ServerConfig) -> None:
    check_int("seq_id", req.seq_id)
    check_int("sampling_session_seq_id", getattr(req, "sampling_session_seq_id", None))
    _check_metadata("user_metadata", getattr(req, "user_metadata", None), config)


def _load(req: LoadWeightsRequest, config: ServerConfig) -> None:
    check_int("seq_id", req.seq_id)
    check_int("model_seq_id", req.model_seq_id)
    _check_metadata("user_metadata", req.user_metadata, config)


def _create_sampler(req: CreateSamplingSessionRequest, config: ServerConfig) -> None:
    check_int("sampling_session_seq_id", req.sampling_session_seq_id)


def _copy(req: CopyWeightsRequest, config: ServerConfig) -> None:
    check_int("model_seq_id", req.model_seq_id)
    check_text("destination_project_id", req.destination_project_id, config)


def _sample(req: SampleRequest, config: ServerConfig) -> None:
    check_int("seq_id", req.seq_id)
    if req.num_samples > config.max_num_samples:
        raise UserError(
            f"num_samples: {req.num_samples} is more than this server takes "
            f"({config.max_num_samples}: tinkex serve --max-num-samples). Fix: ask for at "
            f"most {config.max_num_samples} per request and send several requests.")
    for name in ("topk_prompt_logprobs", "topk_sample_logprobs", "prompt_alt_tokens_k"):
        k = getattr(req, name)
        if k > config.max_logprobs_topk:
            raise UserError(
                f"{name}: {k} is more than this server takes ({config.max_logprobs_topk}: "
                f"tinkex serve --max-logprobs-topk). Fix: ask for at most "
                f"{config.max_logprobs_topk}.")
    if req.target_prompt_logprobs is not None:
        _check_width("target_prompt_logprobs", req.target_prompt_logprobs, config)
    params = req.sampling_params
    check_float32("sampling_params.temperature", params.temperature)
    if params.max_tokens is not None and params.max_tokens > config.max_request_tokens:
        raise _too_many("sampling_params.max_tokens", params.max_tokens,
                        config.max_request_tokens, "max_request_tokens", "tokens")
    if params.stop is not None and not isinstance(params.stop, str):
        _check_texts("sampling_params.stop", params.stop, config)
    else:
        check_text("sampling_params.stop", params.stop, config)


_CHECKS: dict[type, Callable[[Any, ServerConfig], None]] = {
    CreateSessionRequest: _session,
    SessionFinishRequest: _finish,
    CreateModelRequest: _create_model,
    ForwardBackwardRequest: _forward_backward,
    OptimStepRequest: _optim,
    SaveWeightsRequest: _save,
    SaveWeightsForSamplerRequest: _save,
    SaveWeightsExternalRequest: _save,
    LoadWeightsRequest: _load,
    CreateSamplingSessionRequest: _create_sampler,
    CopyWeightsRequest: _copy,
    SampleRequest: _sample,
}


def check_request(request: object, config: ServerConfig) -> None:
    """Check a decoded request against the limits of `config` (types without sized fields
    pass).

    Raises:
        UserError: naming the field, the value, the limit and its setting.
    """
    check = _CHECKS.get(type(request))
    if check is not None:
        check(request, config)


def decompress_zstd(body: bytes, max_bytes: int) -> bytes:
    """Decompress a zstd body, refusing more than `max_bytes` of output without producing it.

    A frame header that announces a larger size is refused at once; otherwise output is read
    a megabyte at a time, so memory stays within the limit.

    Raises:
        PayloadTooLargeError: more than `max_bytes` once decompressed.
        UserError: not a zstd frame.

    Example:
        >>> frame = zstandard.ZstdCompressor().compress(b"a" * 100)
        >>> len(decompress_zstd(frame, 1000))
        100
        >>> decompress_zstd(frame, 10)
        Traceback (most recent call last):
        ...
        tinkex_jax.local._errors.PayloadTooLargeError: The body decompresses to 100 bytes, more than this server takes (10: tinkex serve --max-decompressed-bytes). Fix: send smaller requests (fewer datums per forward_backward call).
    """
    def too_large(size: str) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"The body decompresses to {size} bytes, more than this server takes "
            f"({max_bytes}: tinkex serve --max-decompressed-bytes). Fix: send smaller "
            "requests (fewer datums per forward_backward call).")

    try:
        declared = zstandard.frame_content_size(body)
    except zstandard.ZstdError as exc:
        raise UserError(f"Content-Encoding is zstd but the body is not a valid zstd frame "
                        f"({exc}).") from None
    if declared > max_bytes:
        raise too_large(str(declared))
    parts: list[bytes] = []
    total = 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(body) as reader:
            while True:
                part = reader.read(min(_READ_CHUNK, max_bytes + 1 - total))
                if not part:
                    break
                parts.append(part)
                total += len(part)
                if total > max_bytes:
                    raise too_large(f"more than {max_bytes}")
    except zstandard.ZstdError as exc:
        raise UserError(f"Content-Encoding is zstd but the body is not a valid zstd frame "
                        f"({exc}).") from None
    return b"".join(parts)
