"""Wire codecs: JSON (msgspec) for JSON endpoints, protobuf for forward_backward requests and
forward / forward_backward / sample results, zstd for compressed request bodies."""

from ._compress import zstd_compress, zstd_decompress
from ._json import decode_json, encode_json, to_builtins
from ._proto import (
    decode_forward_backward_output,
    decode_forward_backward_request,
    decode_sample_response,
    encode_forward_backward_output,
    encode_forward_backward_request,
    encode_sample_response,
    tensor_from_proto,
    tensor_to_proto,
)

__all__ = [
    "decode_forward_backward_output",
    "decode_forward_backward_request",
    "decode_json",
    "decode_sample_response",
    "encode_forward_backward_output",
    "encode_forward_backward_request",
    "encode_json",
    "encode_sample_response",
    "tensor_from_proto",
    "tensor_to_proto",
    "to_builtins",
    "zstd_compress",
    "zstd_decompress",
]
