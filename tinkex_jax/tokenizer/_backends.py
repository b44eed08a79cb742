"""The two tokenizer backends behind `Tokenizer`: adapters over a Hugging Face
`tokenizers.Tokenizer` and over a `tiktoken.Encoding`, with one small interface.

For: encode / decode / token <-> id on one library's object, and GPT-2's byte-to-character
table that byte-level vocabularies spell their tokens in. Not for: input checks, special
token roles or chat templates (the `Tokenizer` wrapper does those), and no import of
``tokenizers`` or ``tiktoken``: the adapters get the library's object already built.

Example:
    >>> table = bytes_to_unicode()
    >>> table[ord("a")], table[ord(" ")], len(set(table.values()))
    ('a', 'Ġ', 256)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["Backend", "HFBackend", "TiktokenBackend", "bytes_to_unicode"]


def bytes_to_unicode() -> dict[int, str]:
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


class HFBackend:
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


class TiktokenBackend:
    """Adapter over a `tiktoken.Encoding` (Kimi K2 style)."""

    kind = "tiktoken"

    def __init__(self, encoding: Any, special_tokens: Mapping[str, int]) -> None:
        self.raw = encoding
        self.vocab_size: int = int(encoding.n_vocab)
        self._special_by_id = {i: s for s, i in special_tokens.items()}
        self._special_by_str = dict(special_tokens)
        self._b2u = bytes_to_unicode()
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



Backend = HFBackend | TiktokenBackend
"""Either adapter."""
