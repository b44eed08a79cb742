"""The `Tokenizer` wrapper: one interface over both backends, with special token roles, input
checks and chat rendering; and `byte_tokenizer`, an in-memory byte-level tokenizer.

For: what callers do with a tokenizer once they have one. Not for: finding or reading
tokenizer files (`_files`, `_presets`, `_hub`, `_download`, `_resolve` do that). Nothing
here reads files or the network; ``tokenizers`` is imported only by `byte_tokenizer`.

Example:
    >>> tok = byte_tokenizer()
    >>> tok.encode("hi!"), tok.decode([104, 105, 33])
    ([104, 105, 33], 'hi!')
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import invalid
from ._backends import Backend, HFBackend, TiktokenBackend, bytes_to_unicode

if TYPE_CHECKING:
    from ..renderers import Message, Renderer

__all__ = ["Tokenizer", "byte_tokenizer"]


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
        backend: Backend,
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
        backend = HFBackend(tokenizer)
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
        backend = TiktokenBackend(encoding, special)
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
                from ..renderers import get_renderer

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
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

    vocab = {ch: b for b, ch in bytes_to_unicode().items()}
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = decoders.ByteLevel()
    if special_tokens:
        hf.add_special_tokens(list(special_tokens))
    return Tokenizer.from_tokenizers(hf, name_or_path=name_or_path, bos_token=bos_token,
                                     eos_token=eos_token, pad_token=pad_token)

