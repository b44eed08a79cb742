"""Downloading a tokenizer from the Hugging Face Hub into the local cache layout.

For: fetching a repo revision's tokenizer files
(``<endpoint>/<repo>/resolve/<revision>/<file>``) into a temporary directory, checking that
they load, and only then moving them into ``snapshots/<commit>/`` with ``refs/<revision>``.
Not for: deciding whether to download (offline mode, the cache lookup: `_resolve`, `_hub`),
parsing files (`_files`), or HTTP of its own: the client and the retries are the SDK's
(`tinkex_jax._shell.build_download_client`, `tinkex_jax._shell.get_file`). A failed
download leaves nothing in the cache, and the token never appears in a message; ``httpx``
and the SDK's HTTP layer are imported only when something is downloaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import tempfile
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import TinkerError
from ._files import OPTIONAL_FILES, TIKTOKEN_MODEL, TOKENIZER_CONFIG, TOKENIZER_JSON, load_path
from ._hub import hub_endpoint, repo_folder

if TYPE_CHECKING:
    import httpx

    from .._shell import Runtime
    from ._tokenizer import Tokenizer

__all__ = ["TokenizerDownloadError", "download_tokenizer"]

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


class TokenizerDownloadError(TinkerError, OSError):
    """Downloading tokenizer files from the Hugging Face Hub failed.

    Raised for network failures and HTTP errors (gated or missing repos, server errors).
    Nothing is left in the cache when it is raised. It is also an `OSError`.
    """


def download_tokenizer(repo_id: str, revision: str, cache_root: Path, token: str | None,
                       transport: httpx.BaseTransport | None,
                       runtime: Runtime | None = None) -> Tokenizer:
    """Download the tokenizer files of a repo into the HF cache layout and load them.

    Every file goes to a temporary directory first and is loaded from there; only when all
    of them have arrived and parse are they renamed into ``snapshots/<commit>/`` and
    ``refs/<revision>`` written. On any failure the temporary files, and the directories this
    call created, are removed, so a broken download never poisons the cache.

    The files are fetched with the SDK's download client and file GET
    (`tinkex_jax._shell.build_download_client`, `tinkex_jax._shell.get_file`): a dropped
    connection, a timeout or a 408 / 429 / 5xx is retried with the SDK's backoff (paced by
    `runtime`), anything else is answered at once.
    """
    import httpx

    from .._shell import build_download_client

    endpoint = hub_endpoint()
    headers = {"user-agent": "tinkex-jax (tokenizer download)"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    repo_dir = repo_folder(cache_root, repo_id)
    snapshots = repo_dir / "snapshots"
    created = [d for d in (cache_root, repo_dir, snapshots) if not d.exists()]
    repo_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".tmp-download-", dir=repo_dir))
    committed = False
    try:
        with build_download_client(transport=transport, headers=headers,
                                   timeout=httpx.Timeout(30.0, read=120.0)) as client:
            fetch = _Fetcher(client, endpoint, repo_id, revision, tmp_dir, runtime=runtime,
                             secrets=[token] if token else [])
            if fetch(TOKENIZER_JSON, required=False):
                main_files = [TOKENIZER_JSON]
            elif fetch(TIKTOKEN_MODEL, required=False):
                main_files = [TIKTOKEN_MODEL]
                fetch(TOKENIZER_CONFIG, required=True)
            else:
                raise TokenizerDownloadError(
                    f"Hugging Face repo {repo_id!r} (revision {revision!r}) has neither "
                    f"{TOKENIZER_JSON} nor {TIKTOKEN_MODEL}. Fix: pass the id of a repo with "
                    "a fast tokenizer, or a local directory holding the tokenizer files.")
            for name in OPTIONAL_FILES:
                if not (tmp_dir / name).exists():
                    fetch(name, required=False)
        tokenizer = load_path(tmp_dir, repo_id)  # garbage (an HTML page, ...) fails here
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


@dataclasses.dataclass
class _Fetcher:
    """Downloads single files of one repo revision into a temporary directory; `commit` is
    the commit the first answer named (later files are pinned to it)."""

    client: httpx.Client
    endpoint: str
    repo_id: str
    revision: str
    tmp_dir: Path
    runtime: Runtime | None
    secrets: list[str]
    commit: str | None = None

    def __call__(self, filename: str, *, required: bool) -> bool:
        """Fetch one file; False when it does not exist (and is not required)."""
        import httpx

        from .._shell import REAL_RUNTIME, describe_error, get_file, write_body

        # Once the commit is known, pin it so all files come from the same snapshot.
        revision = urllib.parse.quote(self.commit or self.revision, safe="")
        url = f"{self.endpoint}/{self.repo_id}/resolve/{revision}/{filename}"
        target = self.tmp_dir / filename

        def consume(response: httpx.Response) -> bool:
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
            write_body(response, target)
            return True

        try:
            return get_file(self.client, url, consume, dest=target,
                            runtime=self.runtime or REAL_RUNTIME,
                            what=f"{filename} of {self.repo_id}")
        except httpx.HTTPError as exc:
            raise TokenizerDownloadError(
                f"Downloading {url} failed: {describe_error(exc, self.secrets)}. Fix: check "
                "your network, or go offline (HF_HUB_OFFLINE=1) with the files already in the "
                "Hugging Face cache (HF_HOME), or pass a local tokenizer directory.") from exc


def _commit_of(response: httpx.Response) -> str | None:
    for r in (*response.history, response):
        commit = r.headers.get("x-repo-commit")
        if commit and _COMMIT_RE.match(commit):
            return str(commit)
    return None

