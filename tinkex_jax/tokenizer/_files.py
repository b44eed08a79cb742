"""Reading tokenizer files from disk: a Hugging Face ``tokenizer.json`` with its configs, or a
tiktoken ``tiktoken.model`` with ``tokenizer_config.json`` (Kimi K2).

For: turning an existing directory or file into a `Tokenizer`, with a clear error for each
malformed file. Not for: deciding where to look (presets, the Hugging Face cache: `_presets`,
`_hub`), downloading, or caching; ``tokenizers`` and ``tiktoken`` are imported only when a
file is loaded.

Next to ``tokenizer.json`` the loader reads ``tokenizer_config.json`` and
``special_tokens_map.json`` (BOS/EOS/PAD tokens, ``chat_template``) and
``chat_template.jinja``. For a file named ``<prefix>tokenizer.json`` the siblings are
``<prefix>tokenizer_config.json`` and so on, so flat preset files can carry their configs.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> load_path(d, "empty")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tinkex_jax.ValidationError: get_tokenizer('empty'): expected a directory with tokenizer.json, ...
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

from ..errors import invalid
from ._tokenizer import Tokenizer

__all__ = [
    "CHAT_TEMPLATE",
    "KIMI_PAT_STR",
    "OPTIONAL_FILES",
    "SPECIAL_TOKENS_MAP",
    "TIKTOKEN_MODEL",
    "TOKENIZER_CONFIG",
    "TOKENIZER_JSON",
    "load_path",
]


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


TOKENIZER_JSON = "tokenizer.json"
TIKTOKEN_MODEL = "tiktoken.model"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
CHAT_TEMPLATE = "chat_template.jinja"
OPTIONAL_FILES = (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, CHAT_TEMPLATE)


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
    config_path = directory / f"{prefix}{TOKENIZER_CONFIG}"
    special_path = directory / f"{prefix}{SPECIAL_TOKENS_MAP}"
    template_path = directory / f"{prefix}{CHAT_TEMPLATE}"
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

    prefix = path.name[: -len(TOKENIZER_JSON)]
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
    if not (directory / TOKENIZER_CONFIG).is_file():
        raise invalid(f"tokenizer directory {str(directory)!r}",
                      f"{TOKENIZER_CONFIG} next to {TIKTOKEN_MODEL} (it lists the special tokens)",
                      "<no tokenizer_config.json>", "copy tokenizer_config.json from the repo")
    cfg = _read_configs(directory)
    ranks = _read_tiktoken_ranks(model_path)
    n = len(ranks)
    special = {f"<|reserved_token_{i}|>": i for i in range(n, n + _KIMI_NUM_RESERVED_SPECIAL)
               if i not in cfg.added_tokens}
    special.update({content: i for i, content in cfg.added_tokens.items()})
    collisions = sorted(i for i in special.values() if i < n)
    if collisions:
        raise invalid(f"{TOKENIZER_CONFIG} added_tokens_decoder", f"special token ids >= {n} "
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


def load_path(path: Path, name_or_path: str) -> Tokenizer:
    """Load from a directory or file that exists."""
    if path.is_dir():
        if (path / TOKENIZER_JSON).is_file():
            return _load_tokenizer_json(path / TOKENIZER_JSON, name_or_path)
        if (path / TIKTOKEN_MODEL).is_file():
            return _load_tiktoken_dir(path / TIKTOKEN_MODEL, name_or_path)
        found = sorted(p.name for p in path.iterdir())[:12]
        raise invalid(f"get_tokenizer({name_or_path!r})",
                      f"a directory with {TOKENIZER_JSON}, or {TIKTOKEN_MODEL} + {TOKENIZER_CONFIG}",
                      f"<directory containing {found}>",
                      "point at the directory that holds the tokenizer files")
    if path.name == TIKTOKEN_MODEL:
        return _load_tiktoken_dir(path, name_or_path)
    if path.name.endswith(TOKENIZER_JSON):
        return _load_tokenizer_json(path, name_or_path)
    raise invalid(f"get_tokenizer({name_or_path!r})",
                  f"a tokenizer directory, a *{TOKENIZER_JSON} file or a {TIKTOKEN_MODEL} file",
                  f"<file {path.name!r}>", "pass the directory that contains the tokenizer")

