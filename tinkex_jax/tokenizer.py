"""Tokenizers: one small `Tokenizer` over Hugging Face `tokenizers` and `tiktoken`.

`get_tokenizer` resolves a tokenizer id or path in this order:

1. **A local path** that exists: a directory holding ``tokenizer.json`` (a Hugging Face fast
   tokenizer) or ``tiktoken.model`` + ``tokenizer_config.json`` (Kimi K2), or a path to a
   ``*tokenizer.json`` / ``tiktoken.model`` file. Absolute paths and paths starting with
   ``./``, ``../`` or ``~`` are always treated as paths.
2. **A built-in preset** ``tinkex-jax/<name>`` of the local backend: the first file found of
   ``<presets>/<name>/tokenizer.json`` and ``<presets>/<name>.tokenizer.json``, where
   ``<presets>`` is ``tinkex_jax/local/model/presets/`` (`PRESETS_ROOT`; see
   `find_preset_tokenizer`).
3. **A Hugging Face repo id** (after `hub_tokenizer_id`'s mapping: cut at the first ``:``,
   Llama-3 → the ungated tokenizer repo, ``<org>/<model>/<variant>`` → ``<org>/<model>``,
   pinned Kimi revisions): first the local Hugging Face cache (``cache_dir``, else
   ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``), then, unless
   offline (``offline=True`` or ``HF_HUB_OFFLINE=1``), a download of the tokenizer files from
   ``https://huggingface.co/<id>/resolve/<revision>/<file>`` (``HF_ENDPOINT`` overrides the
   host) into that same cache layout, with ``HF_TOKEN`` for gated repos.

Next to ``tokenizer.json`` the loader reads ``tokenizer_config.json`` and
``special_tokens_map.json`` (BOS/EOS/PAD tokens, ``chat_template``) and
``chat_template.jinja``. For a file named ``<prefix>tokenizer.json`` the siblings are
``<prefix>tokenizer_config.json`` and so on, so flat preset files can carry their configs.

Results are cached for the life of the process: the same id, revision and cache options give
the same `Tokenizer` object. Nothing here prints or logs the Hugging Face token; it appears in
no message, repr or cache key.

`tokenizers` and `tiktoken` are imported when a tokenizer is first loaded, and ``httpx`` only
when something is downloaded, so ``import tinkex_jax.tokenizer`` is cheap.

Example:
    >>> tok = byte_tokenizer()
    >>> tok.encode("hi!")
    [104, 105, 33]
    >>> tok.decode([104, 105, 33])
    'hi!'
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
import shutil
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import TinkerError, invalid

if TYPE_CHECKING:
    import httpx

    from .renderers import Message, Renderer

__all__ = [
    "KIMI_PAT_STR",
    "LLAMA3_TOKENIZER_ID",
    "PRESETS_ROOT",
    "PRESET_PREFIX",
    "Tokenizer",
    "TokenizerDownloadError",
    "byte_tokenizer",
    "clear_tokenizer_cache",
    "find_preset_tokenizer",
    "get_tokenizer",
    "hf_hub_cache_dir",
    "hub_tokenizer_id",
]

PRESET_PREFIX = "tinkex-jax/"
"""Ids starting with this prefix name a built-in local-backend preset."""

PRESETS_ROOT = Path(__file__).resolve().parent / "local" / "model" / "presets"
"""Where `find_preset_tokenizer` looks for presets (tests may point it elsewhere)."""

LLAMA3_TOKENIZER_ID = "thinkingmachineslabinc/meta-llama-3-instruct-tokenizer"
"""Ungated repo that holds the Llama-3 tokenizer (the ``meta-llama`` repos are gated)."""

# Kimi's pre-tokenisation pattern (from Moonshot's ``tokenization_kimi.py``): Han runs split
# apart from other letters; otherwise cl100k-like. `&&` is character-class intersection.
KIMI_PAT_STR = "|".join([
    r"[\p{Han}]+",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*"
    r"[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+"
    r"[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"\p{N}{1,3}",
    r" ?[^\s\p{L}\p{N}]+[\r\n]*",
    r"\s*[\r\n]+",
    r"\s+(?!\S)",
    r"\s+",
])
"""The pre-tokenisation regex of Kimi K2's tiktoken tokenizer."""

_KIMI_NUM_RESERVED_SPECIAL = 256  # ids [n_ranks, n_ranks + 256) are special in Kimi's scheme

# Hub ids that need a different repo or a pinned revision (the official SDK pins these
# because their tokenizer code changes between revisions).
_HUB_ALIASES = {"moonshotai/Kimi-K2.5-Text-Only": "moonshotai/Kimi-K2.5"}
_HUB_PINNED_REVISIONS = {
    "moonshotai/Kimi-K2-Thinking": "612681931a8c906ddb349f8ad0f582cb552189cd",
    "moonshotai/Kimi-K2.5": "4d01dfe0332d63057c186e0b262165819efb6611",
    "moonshotai/Kimi-K2.6": "b5aabbfb20227ed42becbf5541dbffd213942c58",
    "moonshotai/Kimi-K3": "f831ab66814297da540d832a5235f8e904f29d06",
}

_TOKENIZER_JSON = "tokenizer.json"
_TIKTOKEN_MODEL = "tiktoken.model"
_CONFIG = "tokenizer_config.json"
_SPECIAL_MAP = "special_tokens_map.json"
_CHAT_TEMPLATE = "chat_template.jinja"
_OPTIONAL_FILES = (_CONFIG, _SPECIAL_MAP, _CHAT_TEMPLATE)

_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_PRESET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_REVISION_RE = re.compile(r"^[A-Za-z0-9_.-][A-Za-z0-9_./-]*$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_TRUE = {"1", "true", "yes", "on"}


class TokenizerDownloadError(TinkerError, OSError):
    """Downloading tokenizer files from the Hugging Face Hub failed.

    Raised for network failures and HTTP errors (gated or missing repos, server errors).
    Nothing is left in the cache when it is raised. It is also an `OSError`.
    """


# --------------------------------------------------------------------------------------------
# The Tokenizer wrapper and its two backends
# --------------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character table (byte-level token strings)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class _HFBackend:
    """Adapter over a `tokenizers.Tokenizer`."""

    kind = "tokenizers"

    def __init__(self, tok: Any) -> None:
        self.raw = tok
        self.vocab_size: int = tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self.raw.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return str(self.raw.decode(ids, skip_special_tokens=skip_special_tokens))

    def token_to_id(self, token: str) -> int | None:
        result = self.raw.token_to_id(token)
        return None if result is None else int(result)

    def id_to_token(self, token_id: int) -> str | None:
        result = self.raw.id_to_token(token_id)
        return None if result is None else str(result)


class _TiktokenBackend:
    """Adapter over a `tiktoken.Encoding` (Kimi K2 style)."""

    kind = "tiktoken"

    def __init__(self, encoding: Any, special_tokens: Mapping[str, int]) -> None:
        self.raw = encoding
        self.vocab_size: int = int(encoding.n_vocab)
        self._special_by_id = {i: s for s, i in special_tokens.items()}
        self._special_by_str = dict(special_tokens)
        self._b2u = _bytes_to_unicode()
        self._u2b = {c: b for b, c in self._b2u.items()}

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self.raw.encode(text, allowed_special="all"))

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_by_id]
        return str(self.raw.decode(ids))

    def token_to_id(self, token: str) -> int | None:
        if token in self._special_by_str:
            return self._special_by_str[token]
        try:
            raw = bytes(self._u2b[c] for c in token)
        except KeyError:
            return None
        try:
            return int(self.raw.encode_single_token(raw))
        except KeyError:
            return None

    def id_to_token(self, token_id: int) -> str | None:
        if token_id in self._special_by_id:
            return self._special_by_id[token_id]
        try:
            raw = self.raw.decode_single_token_bytes(token_id)
        except KeyError:
            return None
        return "".join(self._b2u[b] for b in raw)


class Tokenizer:
    """One interface over a Hugging Face fast tokenizer and a tiktoken encoding.

    Build one with `get_tokenizer` (files, presets, the Hugging Face cache or Hub),
    `Tokenizer.from_tokenizers` or `Tokenizer.from_tiktoken`.

    Attributes:
        name_or_path: The id or path the tokenizer was loaded from.
        backend: ``"tokenizers"`` or ``"tiktoken"``.
        raw: The underlying `tokenizers.Tokenizer` or `tiktoken.Encoding`.
        bos_token, eos_token, pad_token: Special token strings, or None when absent.
        chat_template: The Jinja chat template from the tokenizer config, or None.
        renderer_name: The built-in renderer (see `tinkex_jax.renderers`) that matches this
            tokenizer's chat format, or None when there is none; `apply_chat_template` uses it.

    Example:
        >>> tok = byte_tokenizer(special_tokens=["<|end|>"], eos_token="<|end|>")
        >>> tok.encode("ab<|end|>")
        [97, 98, 256]
        >>> tok.eos_token_id, tok.pad_token_id, tok.vocab_size
        (256, None, 257)
        >>> tok.decode([97, 98, 256], skip_special_tokens=True)
        'ab'
    """

    def __init__(
        self,
        backend: _HFBackend | _TiktokenBackend,
        *,
        name_or_path: str,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        chat_template: str | None = None,
        renderer_name: str | None = None,
        add_bos_token: bool = False,
        add_eos_token: bool = False,
    ) -> None:
        self._backend = backend
        self.name_or_path = name_or_path
        self.backend: str = backend.kind
        self.raw: Any = backend.raw
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.pad_token = pad_token
        self.chat_template = chat_template
        self.renderer_name = renderer_name
        # Only the tiktoken backend uses these; a tokenizer.json has its own post-processor.
        self._add_bos = add_bos_token
        self._add_eos = add_eos_token
        self._renderers: dict[str, Renderer] = {}
        self._lock = threading.Lock()

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_tokenizers(
        cls,
        tokenizer: Any,
        *,
        name_or_path: str = "<in-memory>",
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        chat_template: str | None = None,
        renderer_name: str | None = None,
    ) -> Tokenizer:
        """Wrap a `tokenizers.Tokenizer`.

        Args:
            tokenizer: A `tokenizers.Tokenizer`.
            name_or_path: Shown in reprs and error messages.
            bos_token, eos_token, pad_token: Special token strings (must be in the vocab).
            chat_template: The Jinja chat template, if any (informative; used to pick the
                renderer when `renderer_name` is None).
            renderer_name: The renderer `apply_chat_template` uses; inferred when None.

        Returns:
            The wrapper.

        Example:
            >>> from tokenizers import Tokenizer as HFTokenizer, models
            >>> hf = HFTokenizer(models.WordLevel({"hi": 0, "[UNK]": 1}, unk_token="[UNK]"))
            >>> Tokenizer.from_tokenizers(hf).encode("hi")
            [0]
        """
        backend = _HFBackend(tokenizer)
        for where, token in (("bos_token", bos_token), ("eos_token", eos_token),
                             ("pad_token", pad_token)):
            if token is not None and backend.token_to_id(token) is None:
                raise invalid(f"Tokenizer.{where}", "a token of the vocabulary", token,
                              f"add it to the tokenizer or fix {where} in tokenizer_config.json")
        if renderer_name is None:
            renderer_name = _infer_renderer_name(chat_template, backend.token_to_id)
        return cls(backend, name_or_path=name_or_path, bos_token=bos_token,
                   eos_token=eos_token, pad_token=pad_token, chat_template=chat_template,
                   renderer_name=renderer_name)

    @classmethod
    def from_tiktoken(
        cls,
        encoding: Any,
        *,
        name_or_path: str = "<in-memory>",
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        chat_template: str | None = None,
        renderer_name: str | None = None,
        add_bos_token: bool = False,
        add_eos_token: bool = False,
    ) -> Tokenizer:
        """Wrap a `tiktoken.Encoding`.

        Special tokens in text are always recognised (``allowed_special="all"``), as the
        Hugging Face tokenizers do. ``add_special_tokens=True`` in `encode` adds BOS / EOS
        only when `add_bos_token` / `add_eos_token` say so.

        Args:
            encoding: A `tiktoken.Encoding`.
            name_or_path: Shown in reprs and error messages.
            bos_token, eos_token, pad_token: Special token strings (must be special tokens
                or single tokens of the encoding).
            chat_template: The Jinja chat template, if any.
            renderer_name: The renderer `apply_chat_template` uses; inferred when None.
            add_bos_token, add_eos_token: What ``encode(..., add_special_tokens=True)`` adds.

        Returns:
            The wrapper.

        Example:
            >>> import tiktoken
            >>> enc = tiktoken.Encoding(name="bytes", pat_str=r"\\S+|\\s+",
            ...     mergeable_ranks={bytes([b]): b for b in range(256)},
            ...     special_tokens={"[EOS]": 256})
            >>> tok = Tokenizer.from_tiktoken(enc, eos_token="[EOS]")
            >>> tok.encode("a[EOS]"), tok.eos_token_id
            ([97, 256], 256)
        """
        special = {s: int(encoding.encode_single_token(s)) for s in encoding.special_tokens_set}
        backend = _TiktokenBackend(encoding, special)
        for where, token in (("bos_token", bos_token), ("eos_token", eos_token),
                             ("pad_token", pad_token)):
            if token is not None and backend.token_to_id(token) is None:
                raise invalid(f"Tokenizer.{where}", "a special token of the encoding", token,
                              "list it in tokenizer_config.json's added_tokens_decoder")
        if renderer_name is None:
            renderer_name = _infer_renderer_name(chat_template, backend.token_to_id)
        return cls(backend, name_or_path=name_or_path, bos_token=bos_token,
                   eos_token=eos_token, pad_token=pad_token, chat_template=chat_template,
                   renderer_name=renderer_name, add_bos_token=add_bos_token,
                   add_eos_token=add_eos_token)

    # -- the interface -----------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`.

        Args:
            text: The text. Special token strings in it (e.g. ``"<|im_end|>"``) become their
                special token ids.
            add_special_tokens: Add what the tokenizer adds around a sequence (e.g. BOS).
                Off by default: renderers and datum builders place special tokens themselves.

        Returns:
            The token ids.

        Example:
            >>> byte_tokenizer().encode("é")
            [195, 169]
        """
        if not isinstance(text, str):
            raise invalid(f"{self._where}.encode(text)", "a str", f"<{type(text).__name__}>",
                          "decode bytes first, or pass token ids straight to ModelInput")
        ids = self._backend.encode(text, add_special_tokens)
        if add_special_tokens and self.backend == "tiktoken":
            if self._add_bos and self.bos_token_id is not None:
                ids.insert(0, self.bos_token_id)
            if self._add_eos and self.eos_token_id is not None:
                ids.append(self.eos_token_id)
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """The text of token ids (invalid UTF-8 from partial tokens becomes U+FFFD).

        Args:
            ids: Token ids (a list or 1-D integer array).
            skip_special_tokens: Leave special tokens (BOS, EOS, chat markers) out.

        Returns:
            The text.

        Example:
            >>> byte_tokenizer().decode([195, 169])
            'é'
        """
        checked = self._check_ids(ids, "decode(ids)")
        return self._backend.decode(checked, skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added and special tokens included (max id + 1)."""
        return self._backend.vocab_size

    def __len__(self) -> int:
        return self._backend.vocab_size

    def token_to_id(self, token: str) -> int | None:
        """The id of one token string (special or regular), or None if it is not one token.

        Regular tokens of byte-level vocabularies are spelled in GPT-2's byte-to-character
        alphabet (a space is ``"Ġ"``), as `id_to_token` returns them.

        Example:
            >>> tok = byte_tokenizer(special_tokens=["<|end|>"])
            >>> tok.token_to_id("<|end|>"), tok.token_to_id("a"), tok.token_to_id("ab")
            (256, 97, None)
        """
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """The token string of one id, or None for an id outside the vocabulary.

        Example:
            >>> byte_tokenizer().id_to_token(32)
            'Ġ'
        """
        return self._backend.id_to_token(int(token_id))

    @property
    def bos_token_id(self) -> int | None:
        """Id of the beginning-of-sequence token, or None."""
        return None if self.bos_token is None else self._backend.token_to_id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        """Id of the end-of-sequence token, or None."""
        return None if self.eos_token is None else self._backend.token_to_id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        """Id of the padding token, or None."""
        return None if self.pad_token is None else self._backend.token_to_id(self.pad_token)

    def apply_chat_template(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool = False,
        *,
        renderer: str | None = None,
    ) -> list[int]:
        """Render a conversation to token ids with a `tinkex_jax.renderers` renderer.

        This does not run the Jinja ``chat_template``: it uses the renderer named by
        `renderer` or, by default, `renderer_name` (``"chatml"`` for ChatML tokenizers,
        ``"role_tags"`` for tokenizers without a chat template, such as the byte-level local
        presets).

        Args:
            messages: ``{"role": "system" | "user" | "assistant", "content": str}`` dicts.
            add_generation_prompt: End with the assistant header, ready for sampling.
            renderer: A registered renderer name overriding `renderer_name`.

        Returns:
            The token ids.

        Example:
            >>> tok = byte_tokenizer()
            >>> tok.decode(tok.apply_chat_template([{"role": "user", "content": "hi"}],
            ...                                    add_generation_prompt=True))
            '<|user|>hi<|end|><|assistant|>'
        """
        name = renderer or self.renderer_name
        if name is None:
            raise invalid(f"{self._where}.apply_chat_template(renderer)",
                          "a renderer for this tokenizer's chat format",
                          "<no built-in renderer matches this tokenizer's chat_template>",
                          "pass renderer='chatml' or 'role_tags', or register your own with "
                          "tinkex_jax.renderers.register_renderer(name, factory)")
        with self._lock:
            rend = self._renderers.get(name)
            if rend is None:
                from .renderers import get_renderer

                rend = self._renderers[name] = get_renderer(name, self)
        if add_generation_prompt:
            return rend.build_generation_prompt(messages).to_ints()
        return rend.render_conversation(messages)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_renderers"] = {}
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"Tokenizer(name_or_path={self.name_or_path!r}, backend={self.backend!r}, "
                f"vocab_size={self.vocab_size})")

    # -- helpers -----------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return f"Tokenizer({self.name_or_path!r})"

    def _check_ids(self, ids: Sequence[int], what: str) -> list[int]:
        try:
            out = [int(i) for i in ids]
        except (TypeError, ValueError):
            raise invalid(f"{self._where}.{what}", "a sequence of int token ids",
                          f"<{type(ids).__name__}>") from None
        n = self._backend.vocab_size
        for pos, i in enumerate(out):
            if i < 0 or i >= n:
                raise invalid(f"{self._where}.{what}[{pos}]", f"a token id in [0, {n})", i,
                              "use ids produced by this tokenizer (is it the model's tokenizer?)")
        return out


def _infer_renderer_name(chat_template: str | None,
                         token_to_id: Callable[[str], int | None]) -> str | None:
    if chat_template is not None:
        return "chatml" if "<|im_start|>" in chat_template else None
    if token_to_id("<|im_start|>") is not None and token_to_id("<|im_end|>") is not None:
        return "chatml"
    return "role_tags"


def byte_tokenizer(
    *,
    special_tokens: Sequence[str] = (),
    bos_token: str | None = None,
    eos_token: str | None = None,
    pad_token: str | None = None,
    name_or_path: str = "<byte-level>",
) -> Tokenizer:
    """An in-memory byte-level tokenizer: token id = byte value (0–255).

    Every text round-trips through ``decode(encode(text))``. Extra special tokens get ids from
    256 upward in the order given. Handy for tests, examples and toy models; the local
    backend's tiny presets use a byte vocabulary too.

    Args:
        special_tokens: Extra special tokens (ids 256, 257, ...).
        bos_token, eos_token, pad_token: Which of `special_tokens` play these roles.
        name_or_path: Shown in reprs and error messages.

    Returns:
        A `Tokenizer` with the ``tokenizers`` backend.

    Example:
        >>> tok = byte_tokenizer(special_tokens=["<s>"], bos_token="<s>")
        >>> tok.encode("A", add_special_tokens=False), tok.bos_token_id
        ([65], 256)
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = decoders.ByteLevel()
    if special_tokens:
        hf.add_special_tokens(list(special_tokens))
    return Tokenizer.from_tokenizers(hf, name_or_path=name_or_path, bos_token=bos_token,
                                     eos_token=eos_token, pad_token=pad_token)


# --------------------------------------------------------------------------------------------
# Loading from local files
# --------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid(f"tokenizer file {str(path)!r}", "a readable JSON object",
                      f"<unreadable: {exc}>", "re-download or regenerate the file") from exc
    if not isinstance(data, dict):
        raise invalid(f"tokenizer file {str(path)!r}", "a JSON object",
                      f"<JSON {type(data).__name__}>", "re-download or regenerate the file")
    return data


def _token_content(value: Any) -> str | None:
    """A special token as written in a config: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


class _Config:
    """What the loader takes from tokenizer_config.json and friends."""

    def __init__(self) -> None:
        self.tokens: dict[str, str | None] = {"bos_token": None, "eos_token": None,
                                              "pad_token": None}
        self.chat_template: str | None = None
        self.add_bos_token = False
        self.add_eos_token = False
        self.added_tokens: dict[int, str] = {}


def _read_configs(directory: Path, prefix: str = "") -> _Config:
    cfg = _Config()
    config_path = directory / f"{prefix}{_CONFIG}"
    special_path = directory / f"{prefix}{_SPECIAL_MAP}"
    template_path = directory / f"{prefix}{_CHAT_TEMPLATE}"
    layers = []
    if config_path.is_file():
        config = _read_json(config_path)
        layers.append(config)
        template = config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": "..."}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if isinstance(template, str):
            cfg.chat_template = template
        cfg.add_bos_token = bool(config.get("add_bos_token", False))
        cfg.add_eos_token = bool(config.get("add_eos_token", False))
        decoder = config.get("added_tokens_decoder") or {}
        if isinstance(decoder, dict):
            for key, attrs in decoder.items():
                content = _token_content(attrs)
                try:
                    token_id = int(key)
                except (TypeError, ValueError):
                    continue
                if content is not None:
                    cfg.added_tokens[token_id] = content
    if special_path.is_file():  # overrides tokenizer_config.json, as in transformers
        layers.append(_read_json(special_path))
    for layer in layers:
        for key in cfg.tokens:
            if key in layer:
                cfg.tokens[key] = _token_content(layer[key])
    if cfg.chat_template is None and template_path.is_file():
        cfg.chat_template = template_path.read_text(encoding="utf-8")
    return cfg


def _load_tokenizer_json(path: Path, name_or_path: str) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    prefix = path.name[: -len(_TOKENIZER_JSON)]
    cfg = _read_configs(path.parent, prefix)
    try:
        hf = HFTokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises a bare Exception
        raise invalid(f"tokenizer file {str(path)!r}", "a Hugging Face tokenizer.json",
                      f"<unparseable: {exc}>", "re-download or regenerate the file") from exc
    return Tokenizer.from_tokenizers(hf, name_or_path=name_or_path, chat_template=cfg.chat_template,
                                     **cfg.tokens)


def _read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise invalid(f"tiktoken file {str(path)!r}", "a readable text file",
                      f"<unreadable: {exc}>", "re-download the file") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError("expected 2 fields")
            ranks[base64.b64decode(parts[0], validate=True)] = int(parts[1])
        except (ValueError, binascii.Error):
            raise invalid(f"tiktoken file {str(path)!r} line {number}",
                          "'<base64 token> <rank>'", line[:60],
                          "re-download the file; it may be truncated or not a tiktoken.model"
                          ) from None
    if not ranks:
        raise invalid(f"tiktoken file {str(path)!r}", "at least one '<base64> <rank>' line",
                      "<empty file>", "re-download the file")
    return ranks


def _load_tiktoken_dir(model_path: Path, name_or_path: str) -> Tokenizer:
    """Kimi K2 style: tiktoken.model + tokenizer_config.json in one directory."""
    import tiktoken

    directory = model_path.parent
    if not (directory / _CONFIG).is_file():
        raise invalid(f"tokenizer directory {str(directory)!r}",
                      f"{_CONFIG} next to {_TIKTOKEN_MODEL} (it lists the special tokens)",
                      "<no tokenizer_config.json>", "copy tokenizer_config.json from the repo")
    cfg = _read_configs(directory)
    ranks = _read_tiktoken_ranks(model_path)
    n = len(ranks)
    special = {f"<|reserved_token_{i}|>": i for i in range(n, n + _KIMI_NUM_RESERVED_SPECIAL)
               if i not in cfg.added_tokens}
    special.update({content: i for i, content in cfg.added_tokens.items()})
    collisions = sorted(i for i in special.values() if i < n)
    if collisions:
        raise invalid(f"{_CONFIG} added_tokens_decoder", f"special token ids >= {n} "
                      f"(the {n} BPE ranks come first)", f"<ids {collisions[:5]}>",
                      "check that tiktoken.model and tokenizer_config.json belong together")
    try:
        encoding = tiktoken.Encoding(name=f"kimi:{name_or_path}", pat_str=KIMI_PAT_STR,
                                     mergeable_ranks=ranks, special_tokens=special)
    except Exception as exc:
        raise invalid(f"tiktoken file {str(model_path)!r}", "a valid BPE rank table",
                      f"<rejected by tiktoken: {exc}>", "re-download the file") from exc
    return Tokenizer.from_tiktoken(encoding, name_or_path=name_or_path,
                                   chat_template=cfg.chat_template,
                                   add_bos_token=cfg.add_bos_token,
                                   add_eos_token=cfg.add_eos_token, **cfg.tokens)


def _load_path(path: Path, name_or_path: str) -> Tokenizer:
    """Load from a directory or file that exists."""
    if path.is_dir():
        if (path / _TOKENIZER_JSON).is_file():
            return _load_tokenizer_json(path / _TOKENIZER_JSON, name_or_path)
        if (path / _TIKTOKEN_MODEL).is_file():
            return _load_tiktoken_dir(path / _TIKTOKEN_MODEL, name_or_path)
        found = sorted(p.name for p in path.iterdir())[:12]
        raise invalid(f"get_tokenizer({name_or_path!r})",
                      f"a directory with {_TOKENIZER_JSON}, or {_TIKTOKEN_MODEL} + {_CONFIG}",
                      f"<directory containing {found}>",
                      "point at the directory that holds the tokenizer files")
    if path.name == _TIKTOKEN_MODEL:
        return _load_tiktoken_dir(path, name_or_path)
    if path.name.endswith(_TOKENIZER_JSON):
        return _load_tokenizer_json(path, name_or_path)
    raise invalid(f"get_tokenizer({name_or_path!r})",
                  f"a tokenizer directory, a *{_TOKENIZER_JSON} file or a {_TIKTOKEN_MODEL} file",
                  f"<file {path.name!r}>", "pass the directory that contains the tokenizer")


# --------------------------------------------------------------------------------------------
# Presets, hub ids, the Hugging Face cache
# --------------------------------------------------------------------------------------------


def find_preset_tokenizer(name: str, *, presets_root: str | os.PathLike[str] | None = None
                          ) -> Path:
    """Path of a built-in preset's tokenizer file.

    A preset ``tinkex-jax/<name>`` is looked up under `presets_root` (default `PRESETS_ROOT`,
    ``tinkex_jax/local/model/presets/``), first as ``<root>/<name>/tokenizer.json`` (a
    Hugging Face style model directory), then as ``<root>/<name>.tokenizer.json`` (a flat
    file; its configs, if any, are ``<name>.tokenizer_config.json`` and so on).

    Args:
        name: ``"tiny"`` or ``"tinkex-jax/tiny"``; letters, digits, ``.``, ``_``, ``-``.
        presets_root: The presets directory; `PRESETS_ROOT` (read at call time) when None.

    Returns:
        The path of the tokenizer file.

    Raises:
        ValidationError: The name is malformed or no file exists; the message lists the
            paths searched and the presets available.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> (root / "tiny").mkdir()
        >>> _ = (root / "tiny" / "tokenizer.json").write_text("{}")
        >>> find_preset_tokenizer("tinkex-jax/tiny", presets_root=root).name
        'tokenizer.json'
    """
    bare = name[len(PRESET_PREFIX):] if name.startswith(PRESET_PREFIX) else name
    bare = bare.split(":", 1)[0]
    if not _PRESET_NAME_RE.match(bare):
        raise invalid("preset name", "letters, digits, '.', '_' or '-' (e.g. 'tinkex-jax/tiny')",
                      name)
    root = Path(PRESETS_ROOT if presets_root is None else presets_root)
    candidates = [root / bare / _TOKENIZER_JSON, root / f"{bare}.{_TOKENIZER_JSON}"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    available = _available_presets(root)
    raise invalid(f"preset {PRESET_PREFIX}{bare}",
                  f"a tokenizer file at {' or '.join(str(c) for c in candidates)}",
                  "<no such file>",
                  f"use one of the presets {available}" if available else
                  f"no presets are installed under {root}; pass a tokenizer directory instead")


def _available_presets(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    names = {p.name for p in root.iterdir() if (p / _TOKENIZER_JSON).is_file()}
    names |= {p.name[: -len("." + _TOKENIZER_JSON)] for p in root.glob(f"*.{_TOKENIZER_JSON}")}
    return sorted(PRESET_PREFIX + n for n in names)


def hub_tokenizer_id(tokenizer_id: str, revision: str | None = None) -> tuple[str, str | None]:
    """Map a model name or tokenizer id to the Hugging Face repo (and revision) to load.

    The rules the official SDK applies:

    * cut at the first ``:`` (``"Qwen/Qwen3-8B:peft"`` → ``"Qwen/Qwen3-8B"``);
    * ``meta-llama/Llama-3*`` → `LLAMA3_TOKENIZER_ID` (the meta-llama repos are gated);
    * ``<org>/<model>/<variant>`` → ``<org>/<model>``;
    * Kimi models get the revision the SDK pins (unless `revision` is given), and
      ``moonshotai/Kimi-K2.5-Text-Only`` uses ``moonshotai/Kimi-K2.5``.

    Args:
        tokenizer_id: A model name or tokenizer id, e.g. from ``get_info``.
        revision: An explicit revision; it wins over a pinned one.

    Returns:
        ``(repo_id, revision)``; the revision is None when neither given nor pinned.

    Example:
        >>> hub_tokenizer_id("meta-llama/Llama-3.1-8B:base")
        ('thinkingmachineslabinc/meta-llama-3-instruct-tokenizer', None)
        >>> hub_tokenizer_id("Qwen/Qwen3-8B/thinking")
        ('Qwen/Qwen3-8B', None)
    """
    repo = tokenizer_id.split(":", 1)[0].strip()
    if repo.startswith("meta-llama/Llama-3"):
        repo = LLAMA3_TOKENIZER_ID
    elif repo.count("/") == 2:
        org, model, _variant = repo.split("/")
        repo = f"{org}/{model}"
    repo = _HUB_ALIASES.get(repo, repo)
    if revision is None:
        revision = _HUB_PINNED_REVISIONS.get(repo)
    return repo, revision


def hf_hub_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The Hugging Face Hub cache directory, as ``huggingface_hub`` computes it.

    `cache_dir`, else ``HF_HUB_CACHE`` (or the older ``HUGGINGFACE_HUB_CACHE``), else
    ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else
    ``~/.cache/huggingface/hub``.

    Example:
        >>> hf_hub_cache_dir("/data/hf").as_posix()
        '/data/hf'
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    return _hf_home() / "hub"


def _hf_home() -> Path:
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface"


def _hf_token(token: str | None) -> str | None:
    if token:
        return token
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(var):
            return os.environ[var].strip()
    token_file = Path(os.environ.get("HF_TOKEN_PATH") or _hf_home() / "token").expanduser()
    try:
        text = token_file.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text or None


def _is_offline(offline: bool | None) -> bool:
    if offline is not None:
        return offline
    return any(os.environ.get(v, "").strip().lower() in _TRUE
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _repo_folder(cache_root: Path, repo_id: str) -> Path:
    return cache_root / ("models--" + repo_id.replace("/", "--"))


def _cached_snapshot(cache_root: Path, repo_id: str, revision: str) -> Path | None:
    """The snapshot directory holding a usable tokenizer, or None."""
    repo_dir = _repo_folder(cache_root, repo_id)
    commits = []
    ref = repo_dir / "refs" / revision
    if ref.is_file():
        commits.append(ref.read_text(encoding="utf-8").strip())
    commits.append(revision)  # a commit hash, or a snapshot named after the revision
    for commit in commits:
        snapshot = repo_dir / "snapshots" / commit
        if (snapshot / _TOKENIZER_JSON).is_file() or (
                (snapshot / _TIKTOKEN_MODEL).is_file() and (snapshot / _CONFIG).is_file()):
            return snapshot
    return None


# --------------------------------------------------------------------------------------------
# Download into the cache layout
# --------------------------------------------------------------------------------------------


def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _download(repo_id: str, revision: str, cache_root: Path, token: str | None,
              transport: httpx.BaseTransport | None) -> Tokenizer:
    """Download the tokenizer files of a repo into the HF cache layout and load them.

    Every file goes to a temporary directory first and is loaded from there; only when all
    of them have arrived and parse are they renamed into ``snapshots/<commit>/`` and
    ``refs/<revision>`` written. On any failure the temporary files, and the directories this
    call created, are removed, so a broken download never poisons the cache.
    """
    import httpx

    endpoint = _endpoint()
    headers = {"user-agent": "tinkex-jax (tokenizer download)"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    repo_dir = _repo_folder(cache_root, repo_id)
    snapshots = repo_dir / "snapshots"
    created = [d for d in (cache_root, repo_dir, snapshots) if not d.exists()]
    repo_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".tmp-download-", dir=repo_dir))
    committed = False
    try:
        with httpx.Client(transport=transport, headers=headers, follow_redirects=True,
                          timeout=httpx.Timeout(30.0, read=120.0)) as client:
            fetch = _Fetcher(client, endpoint, repo_id, revision, tmp_dir)
            if fetch(_TOKENIZER_JSON, required=False):
                main_files = [_TOKENIZER_JSON]
            elif fetch(_TIKTOKEN_MODEL, required=False):
                main_files = [_TIKTOKEN_MODEL]
                fetch(_CONFIG, required=True)
            else:
                raise TokenizerDownloadError(
                    f"Hugging Face repo {repo_id!r} (revision {revision!r}) has neither "
                    f"{_TOKENIZER_JSON} nor {_TIKTOKEN_MODEL}. Fix: pass the id of a repo with "
                    "a fast tokenizer, or a local directory holding the tokenizer files.")
            for name in _OPTIONAL_FILES:
                if not (tmp_dir / name).exists():
                    fetch(name, required=False)
        tokenizer = _load_path(tmp_dir, repo_id)  # garbage (an HTML page, ...) fails here
        commit = fetch.commit or revision
        snapshot = snapshots / commit
        if not snapshot.exists():
            created.append(snapshot)
        snapshot.mkdir(parents=True, exist_ok=True)
        # The main file goes last: its presence is what marks the snapshot as usable.
        names = sorted(p.name for p in tmp_dir.iterdir())
        for name in [n for n in names if n not in main_files] + main_files:
            os.replace(tmp_dir / name, snapshot / name)
        committed = True
        if commit != revision:
            ref = repo_dir / "refs" / revision
            ref.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_ref = tempfile.mkstemp(prefix=".tmp-ref-", dir=ref.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(commit)
            os.replace(tmp_ref, ref)
        return tokenizer
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if not committed:
            for directory in reversed(created):
                _rmdir_if_empty(directory)


def _rmdir_if_empty(directory: Path) -> None:
    with contextlib.suppress(OSError):
        directory.rmdir()


class _Fetcher:
    """Downloads single files of one repo revision into a temporary directory."""

    def __init__(self, client: httpx.Client, endpoint: str, repo_id: str, revision: str,
                 tmp_dir: Path) -> None:
        self.client = client
        self.endpoint = endpoint
        self.repo_id = repo_id
        self.revision = revision
        self.tmp_dir = tmp_dir
        self.commit: str | None = None

    def __call__(self, filename: str, *, required: bool) -> bool:
        """Fetch one file; False when it does not exist (and is not required)."""
        import httpx

        # Once the commit is known, pin it so all files come from the same snapshot.
        revision = urllib.parse.quote(self.commit or self.revision, safe="")
        url = f"{self.endpoint}/{self.repo_id}/resolve/{revision}/{filename}"
        target = self.tmp_dir / filename
        try:
            with self.client.stream("GET", url) as response:
                if response.status_code == 404 and response.headers.get("x-error-code") in (
                        "RepoNotFound", "RevisionNotFound"):
                    what = "repo" if response.headers["x-error-code"] == "RepoNotFound" else (
                        f"revision {self.revision!r} of the repo")
                    raise TokenizerDownloadError(
                        f"Downloading {url} failed: the {what} {self.repo_id!r} does not exist "
                        "on the Hugging Face Hub (HTTP 404). Fix: check the id and revision, or "
                        "pass a local tokenizer directory.")
                if response.status_code == 404 and not required:
                    return False
                if response.status_code in (401, 403):
                    raise TokenizerDownloadError(
                        f"Downloading {url} was refused (HTTP {response.status_code}): the "
                        f"repo {self.repo_id!r} is gated, private or does not exist. Fix: "
                        "check the id, accept the model's license on huggingface.co and set "
                        "HF_TOKEN to a token with access, or pass a local tokenizer directory.")
                if response.status_code >= 400:
                    raise TokenizerDownloadError(
                        f"Downloading {url} failed with HTTP {response.status_code}. Fix: "
                        "check the id and revision, retry later, or pass a local directory.")
                self.commit = self.commit or _commit_of(response)
                with open(target, "wb") as fh:
                    for chunk in response.iter_bytes():
                        fh.write(chunk)
        except httpx.HTTPError as exc:
            raise TokenizerDownloadError(
                f"Downloading {url} failed: {type(exc).__name__}: {exc}. Fix: check your "
                "network, or go offline (HF_HUB_OFFLINE=1) with the files already in the "
                "Hugging Face cache (HF_HOME), or pass a local tokenizer directory.") from exc
        return True


def _commit_of(response: httpx.Response) -> str | None:
    for r in (*response.history, response):
        commit = r.headers.get("x-repo-commit")
        if commit and _COMMIT_RE.match(commit):
            return str(commit)
    return None


# --------------------------------------------------------------------------------------------
# get_tokenizer and its cache
# --------------------------------------------------------------------------------------------

_CACHE: dict[tuple[str, ...], Tokenizer] = {}
_CACHE_LOCK = threading.Lock()
_KEY_LOCKS: dict[tuple[str, ...], threading.Lock] = {}


def clear_tokenizer_cache() -> None:
    """Forget every tokenizer `get_tokenizer` has returned (the next call loads afresh).

    Example:
        >>> clear_tokenizer_cache()
    """
    with _CACHE_LOCK:
        _CACHE.clear()
        _KEY_LOCKS.clear()


def _cached(key: tuple[str, ...], load: Callable[[], Tokenizer]) -> Tokenizer:
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with lock:  # one load per key, even when threads race
        with _CACHE_LOCK:
            if key in _CACHE:
                return _CACHE[key]
        tokenizer = load()
        with _CACHE_LOCK:
            return _CACHE.setdefault(key, tokenizer)


def _looks_like_path(spec: str) -> bool:
    return (os.path.isabs(spec) or spec.startswith(("./", "../", "~", ".\\", "..\\"))
            or spec in (".", ".."))


def get_tokenizer(
    tokenizer_id_or_path: str | None,
    *,
    model_name: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | None = None,
    offline: bool | None = None,
    http_transport: httpx.BaseTransport | None = None,
) -> Tokenizer:
    """Load a tokenizer from a local path, a built-in preset, or Hugging Face.

    See the module docstring for the lookup order. Results are cached per process: the same
    (resolved path or repo id, revision, cache directory, endpoint) gives the same object.

    Args:
        tokenizer_id_or_path: A local directory or file, ``"tinkex-jax/<preset>"``, or a
            Hugging Face repo id (``tokenizer_id`` from ``get_info`` works as is). None or
            ``""`` means "derive it from `model_name`", as the official SDK does when
            ``get_info`` gives no tokenizer id.
        model_name: The base model's name; used when `tokenizer_id_or_path` is empty.
        revision: A branch, tag or commit of the Hugging Face repo (default ``"main"``, or
            the revision pinned for Kimi models). Ignored for local paths and presets.
        cache_dir: The Hugging Face cache directory (default: `hf_hub_cache_dir`).
        token: A Hugging Face token for gated repos (default: ``HF_TOKEN``, then the token
            file in ``HF_HOME``). Never stored, logged or put in a message.
        offline: Never download (default: ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``).
        http_transport: An ``httpx`` transport for downloads (tests pass
            ``httpx.MockTransport``).

    Returns:
        The `Tokenizer`.

    Raises:
        ValidationError: Nothing matches the id or path (offline and not cached, no such
            preset or directory, malformed files); the message says what was looked for,
            where, and how to fix it.
        TokenizerDownloadError: The download failed (network, HTTP 401/403/404/5xx).

    Example:
        >>> import tempfile, pathlib
        >>> from tokenizers import Tokenizer as HFTokenizer, models
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> hf = HFTokenizer(models.WordLevel({"hello": 0, "[UNK]": 1}, unk_token="[UNK]"))
        >>> hf.save(str(d / "tokenizer.json"))
        >>> tok = get_tokenizer(str(d))
        >>> tok.encode("hello"), tok is get_tokenizer(str(d))
        ([0], True)
    """
    spec = (tokenizer_id_or_path or "").strip()
    if not spec:
        if not model_name:
            raise invalid("get_tokenizer(tokenizer_id_or_path)",
                          "a tokenizer id, a local path, or model_name=", tokenizer_id_or_path,
                          "pass e.g. 'Qwen/Qwen3-8B', a directory with tokenizer.json, or "
                          "model_name='Qwen/Qwen3-8B'")
        spec = model_name.strip()
    where = f"get_tokenizer({spec!r})"

    expanded = Path(spec).expanduser()
    if expanded.exists():
        resolved = expanded.resolve()
        return _cached(("path", str(resolved)), lambda: _load_path(resolved, spec))
    if _looks_like_path(spec):
        raise invalid(where, "an existing tokenizer directory or file",
                      f"<{expanded} does not exist>",
                      "check the path, or pass a Hugging Face repo id such as 'Qwen/Qwen3-8B'")

    if spec.startswith(PRESET_PREFIX):
        preset_file = find_preset_tokenizer(spec)
        return _cached(("path", str(preset_file.resolve())),
                       lambda: _load_path(preset_file, spec.split(":", 1)[0]))

    repo_id, revision = hub_tokenizer_id(spec, revision)
    if not _REPO_ID_RE.match(repo_id):
        raise invalid(where, "a Hugging Face repo id like 'Qwen/Qwen3-8B', "
                      f"a '{PRESET_PREFIX}<name>' preset, or an existing local path", spec,
                      "check the spelling; relative paths must exist or start with './'")
    if repo_id.startswith(("TML/", "thinkingmachines/")):
        raise invalid(where, "a tokenizer published on Hugging Face", spec,
                      "Thinking Machines models' tokenizers are not on Hugging Face; use their "
                      "renderer package, or pass a local tokenizer directory")
    rev = revision or "main"
    if not _REVISION_RE.match(rev) or ".." in rev:
        raise invalid(f"{where} revision", "a branch, tag or commit hash (e.g. 'main')", rev,
                      "pass the revision as shown on the repo's page")
    cache_root = hf_hub_cache_dir(cache_dir)
    key = ("hub", repo_id, rev, str(cache_root.resolve()), _endpoint())

    def load() -> Tokenizer:
        snapshot = _cached_snapshot(cache_root, repo_id, rev)
        if snapshot is None:
            repo_dir = _repo_folder(cache_root, repo_id)
            if _is_offline(offline):
                raise invalid(
                    where, f"the tokenizer of {repo_id!r} (revision {rev!r}) in the Hugging "
                    f"Face cache: {_TOKENIZER_JSON} or {_TIKTOKEN_MODEL} under "
                    f"{repo_dir}/snapshots/<commit>/ (found via refs/{rev})",
                    "<not cached, and offline mode is on>",
                    "set HF_HOME (or pass cache_dir=) to the cache that holds it, pass a local "
                    "tokenizer directory, or go online (unset HF_HUB_OFFLINE) to download it")
            return _download(repo_id, rev, cache_root, _hf_token(token), http_transport)
        return _load_path(snapshot, repo_id)

    return _cached(key, load)
