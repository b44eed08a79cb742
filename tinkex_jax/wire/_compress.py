"""zstd request compression (forward_backward bodies when ``proto_compress_fwdbwd`` is on)."""

from __future__ import annotations

import zstandard

__all__ = ["MAX_DECOMPRESSED_BYTES", "zstd_compress", "zstd_decompress"]

#: Bodies larger than this after decompression are refused (a guard against zstd bombs).
MAX_DECOMPRESSED_BYTES = 1 << 30


def zstd_compress(data: bytes, *, level: int = 3) -> bytes:
    """Compress into one zstd frame (with the content size in its header).

    Example:
        >>> zstd_decompress(zstd_compress(b"abc" * 100)) == b"abc" * 100
        True
    """
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)


def zstd_decompress(data: bytes, *, max_size: int = MAX_DECOMPRESSED_BYTES) -> bytes:
    """Decompress one zstd frame, refusing output larger than `max_size` bytes."""
    reader = zstandard.ZstdDecompressor().stream_reader(data)
    out = reader.read(max_size + 1)
    if len(out) > max_size:
        raise ValueError(f"zstd body decompresses to more than {max_size} bytes")
    return out
