"""The REST side of runs and checkpoints: listing training runs and checkpoints, publish,
TTL, delete, expiry, and the files behind export download URLs.

Everything here answers from `Storage` rows (shaped by `_rest`); nothing reads or changes a
live model, and nothing is queued. Deleting or expiring a checkpoint removes its row and its
directory; a model that was loaded from it is unaffected.

**Owners.** A run and its checkpoints belong to the owner that created the run. Another
owner gets 404 for the run and its unpublished checkpoints; a published checkpoint is
readable by every owner (its info and download URLs), but only its owner may delete it,
publish or unpublish it or change its TTL (403 for others). Lists show the caller's own.

**Downloads.** The files of an exported checkpoint are served at
``/api/v1/files/{token}/{file}?expires=E&signature=S``: ``token`` names the checkpoint's
directory, ``E`` is the URL's expiry (epoch seconds) and ``S`` an HMAC-SHA256, under a
random secret of this server process, of the token, the file name and ``E``. `file_path`
serves a file only for a valid, unexpired signature, so a URL works for whoever holds it,
until it expires (``ServerConfig.download_url_lifetime_s``) or the server restarts, and
cannot be made or extended without the secret.

This module never touches HTTP itself (the app builds URLs and responses), and it is the
only place that turns a download token into a file path.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from ._checkpoints import META_FILE
from ._core import Core, Json
from ._errors import NotFoundError, PermissionDeniedError, UserError
from ._rest import checkpoint_json, iso_time, training_run_json
from ._storage import CheckpointRow, RunRow, may_use

__all__ = ["Catalog"]


class Catalog:
    """Training runs and their checkpoints, as the REST API shows them.

    Args:
        core: Storage and its clock.
    """

    def __init__(self, core: Core) -> None:
        self.core = core
        self.storage = core.storage
        # truly random on purpose (never from Effects): it is what makes a download URL
        # unforgeable
        self._url_secret = secrets.token_bytes(32)

    def __repr__(self) -> str:
        return "Catalog(url_secret=<redacted>)"

    def run(self, run_id: str, owner: str | None = None) -> RunRow:
        """A training run's row that `owner` may use, or a `NotFoundError`."""
        run = self.storage.get_run(run_id)
        if run is None or not may_use(run.owner, owner):
            raise NotFoundError(f"Unknown training run {run_id!r}. Fix: list your runs with "
                                "RestClient.list_training_runs().")
        return run

    def _run_json(self, run: RunRow) -> Json:
        return training_run_json(run, self.storage.latest_checkpoint(run.run_id, "weights"),
                                 self.storage.latest_checkpoint(run.run_id, "sampler_weights"))

    def list_training_runs(self, limit: int, offset: int, owner: str | None = None) -> Json:
        """``GET training_runs``: `owner`'s."""
        runs, total = self.storage.list_runs(limit, offset, owner)
        return {"training_runs": [self._run_json(r) for r in runs],
                "cursor": {"offset": offset, "limit": limit, "total_count": total}}

    def get_training_run(self, run_id: str, owner: str | None = None) -> Json:
        """``GET training_runs/{id}``."""
        return self._run_json(self.run(run_id, owner))

    def list_checkpoints(self, run_id: str, owner: str | None = None) -> Json:
        """``GET training_runs/{id}/checkpoints``."""
        self.run(run_id, owner)
        rows = self.storage.list_checkpoints(run_id)
        return {"checkpoints": [checkpoint_json(r) for r in rows],
                "cursor": {"offset": 0, "limit": len(rows), "total_count": len(rows)}}

    def list_user_checkpoints(self, limit: int, offset: int, owner: str | None = None) -> Json:
        """``GET checkpoints``: the checkpoints of every run of `owner`, newest first."""
        rows, total = self.storage.list_all_checkpoints(limit, offset, owner)
        return {"checkpoints": [checkpoint_json(r) for r in rows],
                "cursor": {"offset": offset, "limit": limit, "total_count": total}}

    def stored(self, run_id: str, checkpoint_id: str, owner: str | None = None, *,
               change: bool = False) -> CheckpointRow:
        """A checkpoint's row that `owner` may read (its own or a published one), or with
        `change` may change (its own only).

        Raises:
            NotFoundError: unknown run or checkpoint, or another owner's unpublished one.
            PermissionDeniedError: `change` on another owner's published checkpoint.
        """
        row = self.storage.get_checkpoint(run_id, checkpoint_id)
        if row is not None and not may_use(row.owner, owner):
            if row.public and change:
                raise PermissionDeniedError(
                    f"tinker://{run_id}/{checkpoint_id} is published by another key: every "
                    "key may read it, only its owner may delete it, publish or unpublish it "
                    "or change its TTL. Fix: copy it (copy_weights) to get one of your own.")
            if not row.public:
                row = None
        if row is None:
            self.run(run_id, owner)
            raise NotFoundError(
                f"Run {run_id!r} has no checkpoint {checkpoint_id!r} (never saved, deleted or "
                "expired). Fix: list them with RestClient.list_checkpoints(run_id).")
        return row

    def delete_checkpoint(self, run_id: str, checkpoint_id: str, owner: str | None = None
                          ) -> Json:
        """``DELETE …/checkpoints/{kind}/{name}``."""
        self.stored(run_id, checkpoint_id, owner, change=True)
        self.storage.delete_checkpoint(run_id, checkpoint_id)
        return {"deleted": f"tinker://{run_id}/{checkpoint_id}"}

    def set_published(self, run_id: str, checkpoint_id: str, public: bool,
                      owner: str | None = None) -> Json:
        """Publish / unpublish a checkpoint (idempotent)."""
        self.stored(run_id, checkpoint_id, owner, change=True)
        self.storage.set_checkpoint_public(run_id, checkpoint_id, public)
        return {"tinker_path": f"tinker://{run_id}/{checkpoint_id}", "public": public}

    def set_ttl(self, run_id: str, checkpoint_id: str, ttl_seconds: int | None,
                owner: str | None = None) -> Json:
        """``PUT …/ttl``: expire the checkpoint `ttl_seconds` from now (None: never)."""
        self.stored(run_id, checkpoint_id, owner, change=True)
        self.storage.set_checkpoint_ttl(run_id, checkpoint_id, ttl_seconds)
        return checkpoint_json(self.stored(run_id, checkpoint_id, owner))

    def delete_expired(self) -> int:
        """Delete checkpoints past their TTL; returns how many."""
        return self.storage.reap_expired()

    def external_weights_files(self, run_id: str, checkpoint_id: str, owner: str | None = None
                               ) -> tuple[str, list[str]]:
        """The download token (directory name) and relative file names of an export `owner`
        may read."""
        if not checkpoint_id.startswith("external_weights/"):
            raise UserError(f"{checkpoint_id!r} is not an external_weights checkpoint. Fix: "
                            "export with save_weights_external first.")
        row = self.stored(run_id, checkpoint_id, owner)
        root = self.storage.checkpoint_path(row)
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                       if p.is_file() and p.name != META_FILE)
        return row.dir, files

    def expires_at(self, seconds: float) -> str:
        """An ISO time `seconds` from now."""
        return iso_time(self.storage.now() + seconds)

    def sign(self, token: str, relative: str, expires: int) -> str:
        """The signature of a download URL (see the module docstring).

        Example:
            >>> import tempfile
            >>> from pathlib import Path
            >>> from tinkex_jax.local._config import ServerConfig
            >>> from tinkex_jax.local._effects import Effects
            >>> from tinkex_jax.local._storage import Storage
            >>> config = ServerConfig(data_dir=Path(tempfile.mkdtemp()), base_models=("m",))
            >>> core = Core(config, None, Storage(config.data_dir), Effects())  # type: ignore
            >>> catalog = Catalog(core)
            >>> signature = catalog.sign("d", "a.bin", 2**40)
            >>> len(signature), signature == catalog.sign("d", "b.bin", 2**40)
            (64, False)
            >>> core.stop()
        """
        message = f"{token}\n{relative}\n{expires}".encode("utf-8", "surrogateescape")
        return hmac.new(self._url_secret, message, hashlib.sha256).hexdigest()

    def file_path(self, token: str, relative: str, expires: str | None = None,
                  signature: str | None = None) -> Path:
        """The file behind a signed download URL.

        Raises:
            PermissionDeniedError: no signature, a signature this server did not make for
                this file and expiry, or an expired URL.
            NotFoundError: the file is gone (the checkpoint was deleted or replaced).
        """
        fresh = "Fix: ask for fresh URLs with RestClient.get_external_weights_urls(path)."
        if not expires or not signature:
            raise PermissionDeniedError(
                "This download URL carries no signature (expires= and signature= query "
                f"parameters). {fresh}")
        try:
            deadline = int(expires)
        except ValueError:
            deadline = None
        expected = self.sign(token, relative, deadline) if deadline is not None else ""
        if deadline is None or not hmac.compare_digest(
                expected.encode(), signature.encode("utf-8", "replace")):
            raise PermissionDeniedError(
                f"This download URL's signature is not valid (altered or from another server "
                f"run). {fresh}")
        if deadline <= self.storage.now():
            raise PermissionDeniedError(
                f"This download URL expired at {iso_time(deadline)} (URLs live "
                f"{self.core.config.download_url_lifetime_s:.0f} s). {fresh}")
        root = (self.storage.checkpoint_root / token).resolve()
        target = (root / relative).resolve()
        if (not token or "/" in token or token.startswith(".") or root not in target.parents
                or not target.is_file()):
            raise NotFoundError("No such file. Fix: ask for fresh URLs with "
                                "RestClient.get_external_weights_urls(path).")
        return target
