"""`get_tokenizer`: from an id or a path to a `Tokenizer`, and the process cache that makes
the same request return the same object.

For: the lookup order (a local path, a preset, the Hugging Face cache, a download), the
checks of the id and revision, and the cache keyed by what was resolved. Not for: reading
files, the environment or the network itself (`_files`, `_presets`, `_hub`, `_download`
do). The Hugging Face token is never part of a cache key.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import invalid
from ._download import download_tokenizer
from ._files import TIKTOKEN_MODEL, TOKENIZER_JSON, load_path
from ._hub import (
    cached_snapshot,
    hf_hub_cache_dir,
    hf_token,
    hub_endpoint,
    hub_tokenizer_id,
    is_offline,
    repo_folder,
)
from ._presets import PRESET_PREFIX, find_preset_tokenizer
from ._tokenizer import Tokenizer

if TYPE_CHECKING:
    import httpx

    from .._shell import Runtime

__all__ = ["clear_tokenizer_cache", "get_tokenizer"]

_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_REVISION_RE = re.compile(r"^[A-Za-z0-9_.-][A-Za-z0-9_./-]*$")

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
    _runtime: Runtime | None = None,
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
            ``httpx.MockTransport``). Downloads go through the SDK's download client and its
            retry policy: timeouts, dropped connections and 408 / 429 / 5xx answers are
            retried with backoff (3 tries per file); other errors are raised at once.
        _runtime: Paces those retries (tests pass ``tinkex_jax._shell.FakeTime().runtime``
            so that nothing sleeps).

    Returns:
        The `Tokenizer`.

    Raises:
        ValidationError: Nothing matches the id or path (offline and not cached, no such
            preset or directory, malformed files); the message says what was looked for,
            where, and how to fix it.
        TokenizerDownloadError: The download failed (network, HTTP 401/403/404/5xx; a
            retryable failure after its retries).

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
        return _cached(("path", str(resolved)), lambda: load_path(resolved, spec))
    if _looks_like_path(spec):
        raise invalid(where, "an existing tokenizer directory or file",
                      f"<{expanded} does not exist>",
                      "check the path, or pass a Hugging Face repo id such as 'Qwen/Qwen3-8B'")

    if spec.startswith(PRESET_PREFIX):
        preset_file = find_preset_tokenizer(spec)
        return _cached(("path", str(preset_file.resolve())),
                       lambda: load_path(preset_file, spec.split(":", 1)[0]))

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
    key = ("hub", repo_id, rev, str(cache_root.resolve()), hub_endpoint())

    def load() -> Tokenizer:
        snapshot = cached_snapshot(cache_root, repo_id, rev)
        if snapshot is None:
            repo_dir = repo_folder(cache_root, repo_id)
            if is_offline(offline):
                raise invalid(
                    where, f"the tokenizer of {repo_id!r} (revision {rev!r}) in the Hugging "
                    f"Face cache: {TOKENIZER_JSON} or {TIKTOKEN_MODEL} under "
                    f"{repo_dir}/snapshots/<commit>/ (found via refs/{rev})",
                    "<not cached, and offline mode is on>",
                    "set HF_HOME (or pass cache_dir=) to the cache that holds it, pass a local "
                    "tokenizer directory, or go online (unset HF_HUB_OFFLINE) to download it")
            return download_tokenizer(repo_id, rev, cache_root, hf_token(token), http_transport,
                                      _runtime)
        return load_path(snapshot, repo_id)

    return _cached(key, load)
