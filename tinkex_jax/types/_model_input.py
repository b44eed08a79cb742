"""ModelInput and its tagged chunk union (encoded_text, image, image_asset_pointer, dmel)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from ..errors import invalid
from ._base import FrozenList, WireStruct, force_set, is_array_like, readonly_array
from ._dmel import DmelChunk

__all__ = [
    "EncodedTextChunk",
    "ImageAssetPointerChunk",
    "ImageChunk",
    "ModelInput",
    "ModelInputChunk",
]

if TYPE_CHECKING:
    _Tokens = tuple[int, ...] | npt.NDArray[Any]
    _TokensInput = Sequence[int] | npt.NDArray[Any]
else:  # what msgspec decodes from JSON
    _Tokens = tuple[int, ...]

_INT32_MAX = 2**31 - 1
ImageFormat = Literal["png", "jpeg"]


def _token_array(tokens: Any, where: str) -> np.ndarray:
    """Validate an array of token ids; the caller's array is never kept (see readonly_array)."""
    if type(tokens) is not np.ndarray and type(tokens).__module__.startswith("torch"):
        tokens = tokens.detach().cpu().numpy()
    arr = np.asarray(tokens)
    if arr.ndim != 1 or (arr.dtype.kind not in "iu" and arr.size):
        raise invalid(where, "a 1-D integer array of token ids",
                      f"<array of shape {arr.shape} and dtype {arr.dtype}>",
                      "pass a flat list or array of ints")
    if not arr.size:
        return readonly_array(arr.astype(np.int64))
    # one pass: seen as unsigned, a negative id is larger than any valid one
    if int(arr.view(f"u{arr.dtype.itemsize}").max()) > _INT32_MAX:
        raise invalid(where, "token ids in [0, 2**31)", f"<ids from {arr.min()} to {arr.max()}>")
    return readonly_array(arr)


def _token_tuple(tokens: Any, where: str) -> FrozenList:
    """Validate token ids given as a sequence; returns them as a FrozenList of Python ints."""
    ids = FrozenList(tokens)
    if all(type(t) is int for t in ids):  # the common case, checked in C
        if ids and (min(ids) < 0 or max(ids) > _INT32_MAX):
            bad = next(i for i, t in enumerate(ids) if t < 0 or t > _INT32_MAX)
            raise invalid(f"{where}[{bad}]", "a token id: an int in [0, 2**31)", ids[bad])
        return ids
    out = []
    for i, t in enumerate(ids):
        if not isinstance(t, int | np.integer) or isinstance(t, bool | np.bool_) or t < 0 \
                or t > _INT32_MAX:
            raise invalid(f"{where}[{i}]", "a token id: an int in [0, 2**31)", t,
                          "tokenize text first, e.g. with tokenizer.encode(text)")
        out.append(int(t))
    return FrozenList(out)


def _normalise_tokens(tokens: Any, where: str) -> FrozenList | np.ndarray:
    """Token ids as the chunk keeps them: a FrozenList (an immutable list) for sequences, a
    read-only array for arrays (copied unless read-only all the way down)."""
    if type(tokens) is np.ndarray or is_array_like(tokens):
        return _token_array(tokens, where)
    if isinstance(tokens, str | bytes) or not isinstance(tokens, Iterable):
        raise invalid(where, "a sequence or 1-D array of token ids", f"<{type(tokens).__name__}>",
                      "tokenize text first, e.g. with tokenizer.encode(text)")
    return _token_tuple(tokens, where)


class EncodedTextChunk(WireStruct, frozen=True, kw_only=True, tag="encoded_text",
                       tag_field="type", eq=False):
    """A run of token ids.

    ``tokens`` may be any sequence of ints (kept as a `FrozenList`, an immutable list) or a
    1-D integer array (kept as a read-only array; a writeable one is copied). The chunk owns its tokens: changing the
    list or array it was built from changes nothing here. An empty chunk is allowed (it
    adds no positions), as in the official SDK.

    Example:
        >>> tokens = [1, 2, 3]
        >>> chunk = EncodedTextChunk(tokens=tokens)
        >>> tokens.append(4)
        >>> chunk.length, chunk.tokens
        (3, (1, 2, 3))
    """

    __freezes_itself__ = True  # tokens: a FrozenList or a read-only array

    tokens: _Tokens

    if TYPE_CHECKING:
        def __init__(self, *, tokens: _TokensInput) -> None: ...

    def __post_init__(self) -> None:
        force_set(self, "tokens", _normalise_tokens(self.tokens, "EncodedTextChunk.tokens"))

    @property
    def length(self) -> int:
        """Number of tokens."""
        return len(self.tokens)

    def token_array(self) -> np.ndarray:
        """The tokens as a 1-D numpy array (no copy when stored as an array)."""
        return np.asarray(self.tokens)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EncodedTextChunk):
            return NotImplemented
        return np.array_equal(np.asarray(self.tokens), np.asarray(other.tokens))

    __hash__ = None  # type: ignore[assignment]


class ImageChunk(WireStruct, frozen=True, kw_only=True, tag="image", tag_field="type"):
    """Raw image bytes (base64 in JSON). ``expected_tokens`` is needed to know its length.

    Example:
        >>> ImageChunk(data=b"\\x89PNG", format="png", expected_tokens=16).length
        16
    """

    data: bytes
    format: ImageFormat
    expected_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.format not in ("png", "jpeg"):
            raise invalid("ImageChunk.format", "'png' or 'jpeg'", self.format)
        if self.expected_tokens is not None and self.expected_tokens < 0:
            raise invalid("ImageChunk.expected_tokens", "a non-negative int", self.expected_tokens)

    @property
    def length(self) -> int:
        """The advisory token count; raises when it was not given."""
        if self.expected_tokens is None:
            raise invalid("ImageChunk.expected_tokens", "the image's token count", None,
                          "pass expected_tokens= so the input length is known")
        return self.expected_tokens


class ImageAssetPointerChunk(WireStruct, frozen=True, kw_only=True, tag="image_asset_pointer",
                             tag_field="type"):
    """An image by reference (path or URL). Only sampling accepts it, not training."""

    format: ImageFormat
    location: str
    expected_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.format not in ("png", "jpeg"):
            raise invalid("ImageAssetPointerChunk.format", "'png' or 'jpeg'", self.format)
        if not self.location:
            raise invalid("ImageAssetPointerChunk.location", "a non-empty path or URL", "")

    @property
    def length(self) -> int:
        """The advisory token count; raises when it was not given."""
        if self.expected_tokens is None:
            raise invalid("ImageAssetPointerChunk.expected_tokens", "the image's token count",
                          None, "pass expected_tokens= so the input length is known")
        return self.expected_tokens


ModelInputChunk = EncodedTextChunk | ImageChunk | ImageAssetPointerChunk | DmelChunk


class ModelInput(WireStruct, frozen=True, kw_only=True):
    """What the model reads: a sequence of chunks (kept as a tuple).

    Example:
        >>> mi = ModelInput.from_ints([5, 6, 7])
        >>> mi.length, mi.to_ints()
        (3, [5, 6, 7])
        >>> mi.append_int(8).to_ints()
        [5, 6, 7, 8]
    """

    __freezes_itself__ = True  # chunks: a FrozenList of (immutable) chunk structs

    chunks: tuple[ModelInputChunk, ...] = ()

    if TYPE_CHECKING:
        def __init__(self, *, chunks: Iterable[ModelInputChunk] = ()) -> None: ...

    def __post_init__(self) -> None:
        if isinstance(self.chunks, str | bytes) or not isinstance(self.chunks, Iterable):
            raise invalid("ModelInput.chunks", "a list of chunks", f"<{type(self.chunks).__name__}>",
                          "build inputs with ModelInput.from_ints(tokens)")
        chunks = FrozenList(self.chunks)
        for i, chunk in enumerate(chunks):
            if not isinstance(chunk, EncodedTextChunk | ImageChunk | ImageAssetPointerChunk
                              | DmelChunk):
                raise invalid(f"ModelInput.chunks[{i}]",
                              "an EncodedTextChunk, ImageChunk, ImageAssetPointerChunk or "
                              "DmelChunk",
                              f"<{type(chunk).__name__}>",
                              "build inputs with ModelInput.from_ints(tokens)")
        force_set(self, "chunks", chunks)

    @classmethod
    def from_ints(cls, tokens: Sequence[int] | npt.NDArray[Any]) -> ModelInput:
        """One text chunk of token ids (a sequence or 1-D int array; copied)."""
        return cls(chunks=(EncodedTextChunk(tokens=tokens),))

    @classmethod
    def empty(cls) -> ModelInput:
        """A ModelInput with no chunks."""
        return cls(chunks=())

    @classmethod
    def concat(cls, parts: Iterable[ModelInput]) -> ModelInput:
        """Concatenate several inputs into one."""
        return cls(chunks=tuple(c for p in parts for c in p.chunks))

    @property
    def length(self) -> int:
        """Total number of positions (tokens plus image tokens)."""
        return sum(c.length for c in self.chunks)

    def to_ints(self) -> list[int]:
        """All token ids as a list; raises if there is an image chunk."""
        return self.token_array().tolist()

    def token_array(self) -> np.ndarray:
        """All token ids as one int64 numpy array; raises if there is an image chunk."""
        arrays = []
        for i, c in enumerate(self.chunks):
            if not isinstance(c, EncodedTextChunk):
                raise invalid(f"ModelInput.chunks[{i}]", "only text chunks for to_ints()",
                              f"<{type(c).__name__}>", "read token ids from text-only inputs")
            arrays.append(np.asarray(c.tokens, dtype=np.int64))
        if not arrays:
            return np.zeros(0, dtype=np.int64)
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    def append(self, chunk: ModelInputChunk) -> ModelInput:
        """A new ModelInput with `chunk` appended."""
        return ModelInput(chunks=(*self.chunks, chunk))

    def append_int(self, token: int) -> ModelInput:
        """A new ModelInput with one token appended."""
        return self.append(EncodedTextChunk(tokens=(token,)))
