"""Hugging Face names and places: which repo (and revision) a model's tokenizer lives in,
where the local Hugging Face cache is, the token and offline switches, and which cached
snapshot holds usable files.

For: reading the environment (``HF_HOME``, ``HF_HUB_CACHE``, ``HF_TOKEN``,
``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` ...) and the cache layout the way ``huggingface_hub``
does. Not for: downloading (`_download`) or loading (`_files`); nothing here writes, and the
token is returned to the caller, never printed, logged or put in a message.

Example:
    >>> hub_tokenizer_id("Qwen/Qwen3-8B:peft")
    ('Qwen/Qwen3-8B', None)
"""

from __future__ import annotations

import os
from pathlib import Path

from ._files import TIKTOKEN_MODEL, TOKENIZER_CONFIG, TOKENIZER_JSON

__all__ = [
    "LLAMA3_TOKENIZER_ID",
    "cached_snapshot",
    "hf_hub_cache_dir",
    "hf_token",
    "hub_endpoint",
    "hub_tokenizer_id",
    "is_offline",
    "repo_folder",
]

LLAMA3_TOKENIZER_ID = "thinkingmachineslabinc/meta-llama-3-instruct-tokenizer"
"""Ungated repo that holds the Llama-3 tokenizer (the ``meta-llama`` repos are gated)."""

# Hub ids that need a different repo or a pinned revision (the official SDK pins these
# because their tokenizer code changes between revisions).
_HUB_ALIASES = {"moonshotai/Kimi-K2.5-Text-Only": "moonshotai/Kimi-K2.5"}
_HUB_PINNED_REVISIONS = {
    "moonshotai/Kimi-K2-Thinking": "612681931a8c906ddb349f8ad0f582cb552189cd",
    "moonshotai/Kimi-K2.5": "4d01dfe0332d63057c186e0b262165819efb6611",
    "moonshotai/Kimi-K2.6": "b5aabbfb20227ed42becbf5541dbffd213942c58",
    "moonshotai/Kimi-K3": "f831ab66814297da540d832a5235f8e904f29d06",
}

_TRUE = {"1", "true", "yes", "on"}


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


def hf_token(token: str | None) -> str | None:
    """The Hugging Face token: `token`, else ``HF_TOKEN`` / ``HUGGING_FACE_HUB_TOKEN``, else the
    token file (``HF_TOKEN_PATH``, else ``$HF_HOME/token``); None when there is none.

    Example:
        >>> hf_token("hf_given")
        'hf_given'
    """
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


def is_offline(offline: bool | None) -> bool:
    """`offline` when given, else whether ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is on.

    Example:
        >>> is_offline(True)
        True
    """
    if offline is not None:
        return offline
    return any(os.environ.get(v, "").strip().lower() in _TRUE
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def repo_folder(cache_root: Path, repo_id: str) -> Path:
    """A repo's folder in the Hugging Face cache layout.

    Example:
        >>> repo_folder(Path("/hub"), "Qwen/Qwen3-8B").as_posix()
        '/hub/models--Qwen--Qwen3-8B'
    """
    return cache_root / ("models--" + repo_id.replace("/", "--"))


def cached_snapshot(cache_root: Path, repo_id: str, revision: str) -> Path | None:
    """The snapshot directory holding a usable tokenizer, or None."""
    repo_dir = repo_folder(cache_root, repo_id)
    commits = []
    ref = repo_dir / "refs" / revision
    if ref.is_file():
        commits.append(ref.read_text(encoding="utf-8").strip())
    commits.append(revision)  # a commit hash, or a snapshot named after the revision
    for commit in commits:
        snapshot = repo_dir / "snapshots" / commit
        if (snapshot / TOKENIZER_JSON).is_file() or (
                (snapshot / TIKTOKEN_MODEL).is_file() and (snapshot / TOKENIZER_CONFIG).is_file()):
            return snapshot
    return None


def hub_endpoint() -> str:
    """The Hub's base URL: ``HF_ENDPOINT``, else ``https://huggingface.co`` (no trailing /)."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")

