"""Chat renderers: conversations ↔ token ids, generation prompts and supervised datums.

A renderer turns a list of messages (``{"role": "system" | "user" | "assistant",
"content": str}``) into tokens for one model's chat format. It builds the prompt to sample
from (`Renderer.build_generation_prompt`), the training datum with per-token weights
(`Renderer.build_supervised_example`, shifted by one with
`tinkex_jax.builders.datum_from_tokens`), reads a sampled reply back into a message
(`Renderer.parse_response`) and says where sampling should stop
(`Renderer.get_stop_sequences`).

Built-in formats (both are `DelimitedRenderer`s):

``"role_tags"`` — the format of the byte-level local presets, which have no chat tokens, so
the delimiters are plain text (special tokens of the same spelling are used when the
tokenizer has them)::

    <|system|>You are terse.<|end|><|user|>Hi<|end|><|assistant|>Hello!<|end|>

``"chatml"`` — Qwen style; ``<|im_start|>`` / ``<|im_end|>`` are single special tokens in
Qwen's vocabularies::

    <|im_start|>user
    Hi<|im_end|>
    <|im_start|>assistant
    Hello!<|im_end|>

Each message is ``header + content + end``, followed by a separator (nothing for role tags,
a newline for ChatML). The generation prompt is the conversation followed by the assistant
header, so the supervised tokens of a conversation always start with the generation prompt
of each of its prefixes. Training weights are 1 on the content and end marker of trained
messages (the end marker is what teaches the model to stop) and 0 elsewhere; headers,
separators and BOS are trained only with ``train_on="all_tokens"``. Every piece is encoded
separately and empty pieces are dropped, so no empty text chunk is ever produced.

Add a model-specific format with `register_renderer` (any object with the `Renderer` methods
works; subclassing `DelimitedRenderer` is the shortest path).

Example:
    >>> from tinkex_jax.tokenizer import byte_tokenizer
    >>> tok = byte_tokenizer()
    >>> r = get_renderer("role_tags", tok)
    >>> prompt = r.build_generation_prompt([{"role": "user", "content": "2+2?"}])
    >>> tok.decode(prompt.to_ints())
    '<|user|>2+2?<|end|><|assistant|>'
    >>> r.parse_response(tok.encode("4<|end|>"))
    ({'role': 'assistant', 'content': '4'}, True)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, Protocol, TypedDict, get_args, runtime_checkable

from .builders import datum_from_tokens
from .errors import invalid
from .types import Datum, ModelInput

__all__ = [
    "ROLES",
    "TRAIN_ON",
    "ChatMLRenderer",
    "DelimitedRenderer",
    "Message",
    "Renderer",
    "RendererFactory",
    "Role",
    "RoleTagRenderer",
    "TokenizerLike",
    "TrainOn",
    "get_renderer",
    "register_renderer",
    "renderer_names",
]

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = get_args(Role)
"""The roles a message may have."""

TrainOn = Literal["last_assistant_message", "all_assistant_messages", "all_messages",
                  "all_tokens"]
TRAIN_ON: tuple[str, ...] = get_args(TrainOn)
"""What `Renderer.build_supervised_example` can train on.

``last_assistant_message``: the final message, which must be the assistant's.
``all_assistant_messages``: every assistant message. ``all_messages``: every message's
content and end marker. ``all_tokens``: everything, headers and separators included.
"""


class Message(TypedDict):
    """One chat message."""

    role: Role
    content: str


class TokenizerLike(Protocol):
    """What a renderer needs from a tokenizer (`tinkex_jax.tokenizer.Tokenizer` has it)."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of text."""
        ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of token ids."""
        ...

    def token_to_id(self, token: str) -> int | None:
        """Id of one token string, or None."""
        ...

    @property
    def bos_token_id(self) -> int | None:
        """Id of the BOS token, or None."""
        ...

    @property
    def eos_token_id(self) -> int | None:
        """Id of the EOS token, or None."""
        ...


@runtime_checkable
class Renderer(Protocol):
    """A chat format: how conversations become tokens, and how replies are read back."""

    name: str

    def build_generation_prompt(self, messages: Sequence[Message], *,
                                prefill: str | None = None) -> ModelInput:
        """The conversation followed by the assistant header (and `prefill`), to sample from."""
        ...

    def build_supervised_example(self, messages: Sequence[Message], *,
                                 train_on: TrainOn = "last_assistant_message") -> Datum:
        """A cross-entropy datum for the conversation, weighted as `train_on` says."""
        ...

    def parse_response(self, tokens: Sequence[int]) -> tuple[Message, bool]:
        """The assistant message in sampled tokens, and whether its end marker was seen."""
        ...

    def get_stop_sequences(self) -> list[str] | list[int]:
        """Stop sequences for `SamplingParams.stop` (token ids or strings)."""
        ...

    def render_conversation(self, messages: Sequence[Message]) -> list[int]:
        """All messages as tokens, without a generation prompt."""
        ...


RendererFactory = Callable[[TokenizerLike], Renderer]
"""Builds a renderer for a tokenizer; what `register_renderer` stores."""


_HEADER, _BODY, _SEP, _BOS = "header", "body", "sep", "bos"


class DelimitedRenderer:
    """A chat format where each message is ``header + content + end`` plus a separator.

    Delimiters given as *markers* become one special token when the tokenizer has a token
    of that spelling, and are tokenized as text otherwise; *text* parts are always
    tokenized as text.

    Args:
        tokenizer: The tokenizer (a `tinkex_jax.tokenizer.Tokenizer` or anything
            `TokenizerLike`).
        headers: For each role, ``(marker, text)``: e.g. ``("<|im_start|>", "user\\n")``.
        end_marker: Ends every message; the stop sequence for sampling.
        separator: Text between messages (after the end marker).
        add_bos: Start conversations with BOS; by default when the tokenizer has one.
        name: The name reported by the renderer.

    Example:
        >>> from tinkex_jax.tokenizer import byte_tokenizer
        >>> tok = byte_tokenizer()
        >>> r = DelimitedRenderer(tok, headers={"system": ("[S]", ""), "user": ("[U]", ""),
        ...                       "assistant": ("[A]", "")}, end_marker="[E]")
        >>> tok.decode(r.render_conversation([{"role": "user", "content": "hi"}]))
        '[U]hi[E]'
    """

    name = "delimited"

    def __init__(
        self,
        tokenizer: TokenizerLike,
        *,
        headers: Mapping[str, tuple[str, str]],
        end_marker: str,
        separator: str = "",
        add_bos: bool | None = None,
        name: str | None = None,
    ) -> None:
        missing = [r for r in ROLES if r not in headers]
        if missing:
            raise invalid("DelimitedRenderer(headers)", f"a (marker, text) header for {ROLES}",
                          f"<no header for {missing}>", "give every role a header")
        if not end_marker:
            raise invalid("DelimitedRenderer(end_marker)", "a non-empty end marker", end_marker)
        self.tokenizer = tokenizer
        if name is not None:
            self.name = name
        self.end_marker = end_marker
        self.separator = separator
        self._headers = {role: self._marker(m) + self._text(t)
                         for role, (m, t) in headers.items()}
        self._end = self._marker(end_marker)
        self._sep = self._text(separator)
        bos = tokenizer.bos_token_id
        if add_bos and bos is None:
            raise invalid("DelimitedRenderer(add_bos)", "a tokenizer with a BOS token", add_bos,
                          "set bos_token in tokenizer_config.json, or pass add_bos=None")
        self._bos = [bos] if bos is not None and add_bos is not False else []

    # -- encoding helpers --------------------------------------------------------------------

    def _marker(self, marker: str) -> list[int]:
        if not marker:
            return []
        token_id = self.tokenizer.token_to_id(marker)
        return [token_id] if token_id is not None else self.tokenizer.encode(marker)

    def _text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text) if text else []

    def _pieces(self, messages: Sequence[Message], where: str
                ) -> list[tuple[list[int], str, int]]:
        """(tokens, kind, message index) for every non-empty piece of the conversation."""
        _check_messages(messages, where)
        pieces: list[tuple[list[int], str, int]] = []
        if self._bos:
            pieces.append((self._bos, _BOS, -1))
        for i, message in enumerate(messages):
            pieces.append((self._headers[message["role"]], _HEADER, i))
            pieces.append((self._text(message["content"]) + self._end, _BODY, i))
            pieces.append((self._sep, _SEP, i))
        return [p for p in pieces if p[0]]

    # -- the Renderer interface --------------------------------------------------------------

    def render_conversation(self, messages: Sequence[Message]) -> list[int]:
        """All messages as tokens, without a generation prompt.

        Example:
            >>> from tinkex_jax.tokenizer import byte_tokenizer
            >>> tok = byte_tokenizer()
            >>> tok.decode(RoleTagRenderer(tok).render_conversation(
            ...     [{"role": "system", "content": "Be brief."}]))
            '<|system|>Be brief.<|end|>'
        """
        pieces = self._pieces(messages, f"{self.name}.render_conversation(messages)")
        return [t for tokens, _, _ in pieces for t in tokens]

    def build_generation_prompt(self, messages: Sequence[Message], *,
                                prefill: str | None = None) -> ModelInput:
        """The conversation followed by the assistant header, ready for sampling.

        Args:
            messages: The conversation so far (usually ending with a user message).
            prefill: Text the assistant's reply starts with; it is part of the prompt, so
                `parse_response` of the sampled tokens does not include it.

        Returns:
            A `ModelInput` with one non-empty text chunk.

        Example:
            >>> from tinkex_jax.tokenizer import byte_tokenizer
            >>> tok = byte_tokenizer()
            >>> mi = RoleTagRenderer(tok).build_generation_prompt(
            ...     [{"role": "user", "content": "Name a colour"}], prefill="Red")
            >>> tok.decode(mi.to_ints())
            '<|user|>Name a colour<|end|><|assistant|>Red'
        """
        if prefill is not None and not isinstance(prefill, str):
            raise invalid(f"{self.name}.build_generation_prompt(prefill)", "a str or None",
                          f"<{type(prefill).__name__}>")
        tokens = self.render_conversation(messages) + self._headers["assistant"]
        if prefill:
            tokens += self._text(prefill)
        return ModelInput.from_ints(tokens)

    def build_supervised_tokens(self, messages: Sequence[Message], *,
                                train_on: TrainOn = "last_assistant_message"
                                ) -> tuple[list[int], list[float]]:
        """The conversation's tokens and one weight per token (before the shift by one).

        Example:
            >>> from tinkex_jax.tokenizer import byte_tokenizer
            >>> r = DelimitedRenderer(byte_tokenizer(), headers={"system": ("S", ""),
            ...     "user": ("U", ""), "assistant": ("A", "")}, end_marker=".")
            >>> r.build_supervised_tokens([{"role": "user", "content": "q"},
            ...                            {"role": "assistant", "content": "a"}])[1]
            [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
        """
        where = f"{self.name}.build_supervised_example"
        if train_on not in TRAIN_ON:
            raise invalid(f"{where}(train_on)", f"one of {TRAIN_ON}", train_on)
        pieces = self._pieces(messages, f"{where}(messages)")
        roles = [m["role"] for m in messages]
        if not messages:
            raise invalid(f"{where}(messages)", "at least one message", [],
                          "a supervised example needs something to train on")
        if train_on == "last_assistant_message" and roles[-1] != "assistant":
            raise invalid(f"{where}(messages)", "a conversation ending with an assistant "
                          "message (train_on='last_assistant_message')",
                          f"<last message has role {roles[-1]!r}>",
                          "append the assistant reply, or use train_on='all_assistant_messages'")
        if train_on == "all_assistant_messages" and "assistant" not in roles:
            raise invalid(f"{where}(messages)", "at least one assistant message",
                          f"<roles {roles}>", "add the assistant replies to train on")
        last = len(messages) - 1
        tokens: list[int] = []
        weights: list[float] = []
        for piece, kind, index in pieces:
            if train_on == "all_tokens":
                trained = True
            elif kind != _BODY:
                trained = False
            elif train_on == "all_messages":
                trained = True
            elif train_on == "all_assistant_messages":
                trained = roles[index] == "assistant"
            else:
                trained = index == last
            tokens += piece
            weights += [1.0 if trained else 0.0] * len(piece)
        return tokens, weights

    def build_supervised_example(self, messages: Sequence[Message], *,
                                 train_on: TrainOn = "last_assistant_message") -> Datum:
        """A cross-entropy datum for the conversation (inputs and targets shifted by one).

        Args:
            messages: The whole conversation, assistant replies included.
            train_on: Which tokens get weight 1 (see `TRAIN_ON`); the rest get 0.

        Returns:
            A `Datum` with ``target_tokens`` and ``weights``.

        Example:
            >>> from tinkex_jax.tokenizer import byte_tokenizer
            >>> d = RoleTagRenderer(byte_tokenizer()).build_supervised_example(
            ...     [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
            >>> int(d.loss_fn_inputs["weights"].to_numpy().sum())  # "yo" + "<|end|>"
            9
        """
        tokens, weights = self.build_supervised_tokens(messages, train_on=train_on)
        return datum_from_tokens(tokens, weights)

    def parse_response(self, tokens: Sequence[int]) -> tuple[Message, bool]:
        """Read a sampled reply back into an assistant message.

        The reply ends at the first end marker (or EOS token). Without one — the sample hit
        ``max_tokens``, or the server cut a stop string off — the whole text is the content
        and the flag is False.

        Args:
            tokens: The sampled tokens (after the generation prompt).

        Returns:
            ``(message, terminated)``: a plain bool, so ``if not terminated:`` works.

        Example:
            >>> from tinkex_jax.tokenizer import byte_tokenizer
            >>> tok = byte_tokenizer()
            >>> RoleTagRenderer(tok).parse_response(tok.encode("Hel"))
            ({'role': 'assistant', 'content': 'Hel'}, False)
        """
        ids = [int(t) for t in tokens]
        cut = _find(ids, self._end)
        eos = self.tokenizer.eos_token_id
        if eos is not None and eos in ids and (cut is None or ids.index(eos) < cut):
            cut = ids.index(eos)
        if cut is not None:
            return {"role": "assistant", "content": self.tokenizer.decode(ids[:cut])}, True
        text = self.tokenizer.decode(ids)
        pos = text.find(self.end_marker)  # the marker tokenized differently when sampled
        if pos >= 0:
            return {"role": "assistant", "content": text[:pos]}, True
        return {"role": "assistant", "content": text}, False

    def get_stop_sequences(self) -> list[str] | list[int]:
        """The end marker, as one token id when it is a single token, else as a string.

        Example:
            >>> from tinkex_jax.tokenizer import byte_tokenizer
            >>> RoleTagRenderer(byte_tokenizer()).get_stop_sequences()
            ['<|end|>']
        """
        if len(self._end) == 1:
            return [self._end[0]]
        return [self.end_marker]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _find(haystack: list[int], needle: list[int]) -> int | None:
    if not needle:
        return None
    n = len(needle)
    first = needle[0]
    for i, token in enumerate(haystack):
        if token == first and haystack[i:i + n] == needle:
            return i
    return None


def _check_messages(messages: Sequence[Message], where: str) -> None:
    if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Sequence):
        raise invalid(where, "a list of {'role': ..., 'content': ...} dicts",
                      f"<{type(messages).__name__}>", "wrap a single message in a list")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise invalid(f"{where}[{i}]", "a {'role': ..., 'content': ...} dict",
                          f"<{type(message).__name__}>")
        role = message.get("role")
        if role not in ROLES:
            raise invalid(f"{where}[{i}]['role']", f"one of {ROLES}", role,
                          "map other roles (e.g. 'tool') to one of these")
        content = message.get("content")
        if not isinstance(content, str):
            raise invalid(f"{where}[{i}]['content']", "a str", f"<{type(content).__name__}>",
                          "join text parts into one string; this renderer handles text only")


class RoleTagRenderer(DelimitedRenderer):
    """``<|role|>content<|end|>``: the chat format of the byte-level local presets.

    Example:
        >>> from tinkex_jax.tokenizer import byte_tokenizer
        >>> tok = byte_tokenizer()
        >>> tok.decode(RoleTagRenderer(tok).render_conversation(
        ...     [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]))
        '<|user|>a<|end|><|assistant|>b<|end|>'
    """

    name = "role_tags"

    def __init__(self, tokenizer: TokenizerLike, *, add_bos: bool | None = None) -> None:
        super().__init__(tokenizer, headers={r: (f"<|{r}|>", "") for r in ROLES},
                         end_marker="<|end|>", separator="", add_bos=add_bos)


class ChatMLRenderer(DelimitedRenderer):
    """``<|im_start|>role\\ncontent<|im_end|>\\n``: the Qwen (ChatML) chat format.

    Example:
        >>> from tinkex_jax.tokenizer import byte_tokenizer
        >>> tok = byte_tokenizer(special_tokens=["<|im_start|>", "<|im_end|>"])
        >>> r = ChatMLRenderer(tok)
        >>> tok.decode(r.build_generation_prompt([{"role": "user", "content": "hi"}]).to_ints())
        '<|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\n'
        >>> r.get_stop_sequences()
        [257]
    """

    name = "chatml"

    def __init__(self, tokenizer: TokenizerLike, *, add_bos: bool | None = None) -> None:
        super().__init__(tokenizer, headers={r: ("<|im_start|>", f"{r}\n") for r in ROLES},
                         end_marker="<|im_end|>", separator="\n", add_bos=add_bos)


_REGISTRY: dict[str, RendererFactory] = {
    RoleTagRenderer.name: RoleTagRenderer,
    ChatMLRenderer.name: ChatMLRenderer,
}
_REGISTRY_LOCK = threading.Lock()


def register_renderer(name: str, factory: RendererFactory, *, overwrite: bool = False) -> None:
    """Make a renderer available to `get_renderer` under `name`.

    Args:
        name: The renderer's name (store it with your checkpoints).
        factory: Called with a tokenizer; returns an object with the `Renderer` methods.
        overwrite: Replace an existing registration (built-ins included).

    Example:
        >>> register_renderer("my_chatml", ChatMLRenderer, overwrite=True)
        >>> "my_chatml" in renderer_names()
        True
    """
    if not isinstance(name, str) or not name:
        raise invalid("register_renderer(name)", "a non-empty str", name)
    if not callable(factory):
        raise invalid("register_renderer(factory)", "a callable tokenizer -> Renderer",
                      f"<{type(factory).__name__}>")
    with _REGISTRY_LOCK:
        if name in _REGISTRY and not overwrite and _REGISTRY[name] is not factory:
            raise invalid("register_renderer(name)", "a name not registered yet", name,
                          "pick another name, or pass overwrite=True to replace it")
        _REGISTRY[name] = factory


def renderer_names() -> list[str]:
    """The registered renderer names, sorted.

    Example:
        >>> {"chatml", "role_tags"} <= set(renderer_names())
        True
    """
    with _REGISTRY_LOCK:
        return sorted(_REGISTRY)


def get_renderer(name: str, tokenizer: TokenizerLike) -> Renderer:
    """Build the renderer registered as `name` for `tokenizer`.

    Args:
        name: ``"role_tags"``, ``"chatml"`` or a name given to `register_renderer`.
        tokenizer: The model's tokenizer.

    Returns:
        The renderer.

    Example:
        >>> from tinkex_jax.tokenizer import byte_tokenizer
        >>> get_renderer("chatml", byte_tokenizer())
        ChatMLRenderer(name='chatml')
    """
    with _REGISTRY_LOCK:
        factory = _REGISTRY.get(name)
        known = sorted(_REGISTRY)
    if factory is None:
        raise invalid("get_renderer(name)", f"a registered renderer, one of {known}", name,
                      "register it first with register_renderer(name, factory)")
    return factory(tokenizer)
