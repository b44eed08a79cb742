"""The byte-level tokenizer of the built-in presets, built with Hugging Face ``tokenizers``.

Token ids:

=========  =============  ==================================================
id         token          meaning
=========  =============  ==================================================
0 … 255    one byte       the UTF-8 byte with that value (id = byte value)
256        ``<|bos|>``    beginning of sequence (never added automatically)
257        ``<|eos|>``    end of sequence (the presets' EOS / default stop)
258        ``<|pad|>``    padding
=========  =============  ==================================================

``BYTE_VOCAB_SIZE`` is 259. Every UTF-8 string round-trips exactly:
``decode(encode(s)) == s``. The tokenizer is saved as a standard ``tokenizer.json`` that
``tokenizers.Tokenizer.from_file`` loads (a BPE model with no merges over the GPT-2 byte
alphabet, a ``ByteLevel`` pre-tokenizer without regex splitting, and a ``ByteLevel``
decoder), plus a ``tokenizer_config.json`` naming the special tokens.

Example:
    >>> tok = build_byte_tokenizer()
    >>> tok.encode("hé").ids
    [104, 195, 169]
    >>> tok.decode([104, 195, 169, 257], skip_special_tokens=True)
    'hé'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = [
    "BOS_ID",
    "BOS_TOKEN",
    "BYTE_VOCAB_SIZE",
    "EOS_ID",
    "EOS_TOKEN",
    "PAD_ID",
    "PAD_TOKEN",
    "build_byte_tokenizer",
    "save_tokenizer",
    "tokenizer_config",
]

BOS_TOKEN, EOS_TOKEN, PAD_TOKEN = "<|bos|>", "<|eos|>", "<|pad|>"
BOS_ID, EOS_ID, PAD_ID = 256, 257, 258
BYTE_VOCAB_SIZE = 259


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte-to-printable-character table (what ``ByteLevel`` uses)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table: dict[int, str] = {}
    extra = 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def build_byte_tokenizer() -> Any:
    """A fresh byte-level ``tokenizers.Tokenizer`` with the ids in the module docstring.

    Example:
        >>> build_byte_tokenizer().token_to_id("<|eos|>")
        257
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: b for b, ch in _byte_alphabet().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)])
    assert tok.get_vocab_size() == BYTE_VOCAB_SIZE
    return tok


def tokenizer_config() -> dict[str, Any]:
    """The ``tokenizer_config.json`` content naming the special tokens."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
    }


def save_tokenizer(tokenizer: Any, path: str | Path, *,
                   config: dict[str, Any] | None = None) -> Path:
    """Writes ``tokenizer.json`` (to `path`, a file or a directory) and its config.

    For a directory the files are ``tokenizer.json`` and ``tokenizer_config.json``; for a
    file ``<prefix>tokenizer.json`` the config goes to ``<prefix>tokenizer_config.json``.

    Args:
        tokenizer: A ``tokenizers.Tokenizer``.
        path: Target directory or ``*tokenizer.json`` file.
        config: The config to write (default `tokenizer_config`); None writes the default.

    Returns:
        The path of the written ``tokenizer.json``.

    Example:
        >>> import tempfile, tokenizers
        >>> p = save_tokenizer(build_byte_tokenizer(), tempfile.mkdtemp())
        >>> tokenizers.Tokenizer.from_file(str(p)).encode("ok").ids
        [111, 107]
    """
    p = Path(path)
    if p.suffix == ".json":
        target, cfg_path = p, p.with_name(p.name.replace("tokenizer.json",
                                                         "tokenizer_config.json"))
    else:
        p.mkdir(parents=True, exist_ok=True)
        target, cfg_path = p / "tokenizer.json", p / "tokenizer_config.json"
    tokenizer.save(str(target))
    cfg_path.write_text(json.dumps(config or tokenizer_config(), indent=2) + "\n",
                        encoding="utf-8")
    return target
