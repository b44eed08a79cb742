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

For: getting a tokenizer for a model and using it (encode, decode, special tokens, chat
rendering). Not for: anything at import time: `tokenizers` and `tiktoken` are imported when a
tokenizer is first loaded, and ``httpx`` (through the SDK's download path, with its retry
policy) only when something is downloaded, so ``import tinkex_jax.tokenizer`` is cheap.

The package has one module per job: ``_backends`` (the two library adapters), ``_tokenizer``
(the `Tokenizer` wrapper), ``_files`` (reading tokenizer files), ``_presets`` (the built-in
presets), ``_hub`` (Hugging Face names, the cache layout and the environment), ``_download``
(filling the cache from the Hub) and ``_resolve`` (`get_tokenizer` and its process cache).

Example:
    >>> tok = byte_tokenizer()
    >>> tok.encode("hi!")
    [104, 105, 33]
    >>> tok.decode([104, 105, 33])
    'hi!'
"""

from __future__ import annotations

from pathlib import Path

from ._download import TokenizerDownloadError
from ._files import KIMI_PAT_STR
from ._hub import LLAMA3_TOKENIZER_ID, hf_hub_cache_dir, hub_tokenizer_id
from ._presets import PRESET_PREFIX, find_preset_tokenizer
from ._resolve import clear_tokenizer_cache, get_tokenizer
from ._tokenizer import Tokenizer, byte_tokenizer

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

PRESETS_ROOT = Path(__file__).resolve().parent.parent / "local" / "model" / "presets"
"""Where `find_preset_tokenizer` looks for presets (read at call time: tests may point it
elsewhere)."""
