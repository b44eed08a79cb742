"""The REST side of runs and checkpoints: listing training runs and checkpoints, publish,
TTL, delete, expiry, and the files behind export download URLs.

Everything here answers from `Storage` rows (shaped by `_rest`); nothing reads or changes a
live model, and nothing is queued. Deleting or expiring a checkpoint removes its row and its
directory; a model that was loaded from it is unaffected.

This module never touches HTTP itself (the app builds URLs and responses), and it is the
only place that turns a download token into a file path.
"""

from __future__ import annotations

from pathlib import Path

from ._checkpoints import META_FILE
from ._core import Core, Json
from ._errors import NotFoundError, UserError
from ._rest import checkpoint_json, iso_time, training_run_json
from ._storage import CheckpointRow, RunRow

__all__ = ["Catalog"]


class Catalog:
    """Training runs and their checkpoints, as the REST API shows them.

    Args:
        core: Storage and its clock.
    """

    def __init__(self, core: Core) -> None:
        self.core = core
        self.storage = core.storage

    def run(self, run_id: str) -> RunRow:
        """A training run's row, or a `NotFoundError`."""
        run = self.storage.get_run(run_id)
        if run is None:
            raise NotFoundError(f"Unknown training run {run_id!r}. Fix: list runs with "
                                "RestClient.list_training_runs().")
        return run

    def _run_json(self, run: RunRow) -> Json:
        return training_run_json(run, self.storage.latest_checkpoint(run.run_id, "weights"),
                                 self.storage.latest_checkpoint(run.run_id, "sampler_weights"))

    def list_training_runs(self, limit: int, offset: int) -> Json:
        """``GET training_runs``."""
        runs, total = self.storage.list_runs(limit, offset)
        return {"training_runs": [self._run_json(r) for r in runs],
                "cursor": {"offset": offset, "limit": limit, "total_count": total}}

    def get_training_run(self, run_id: str) -> Json:
        """``GET training_runs/{id}``."""
        return self._run_json(self.run(run_id))

    def list_checkpoints(self, run_id: str) -> Json:
        """``GET training_runs/{id}/checkpoints``."""
        self.run(run_id)
        rows = self.storage.list_checkpoints(run_id)
        return {"checkpoints": [checkpoint_json(r) for r in rows],
                "cursor": {"offset": 0, "limit": len(rows), "total_count": len(rows)}}

    def list_user_checkpoints(self, limit: int, offset: int) -> Json:
        """``GET checkpoints``: every run's checkpoints, newest first."""
        rows, total = self.storage.list_all_checkpoints(limit, offset)
        return {"checkpoints": [checkpoint_json(r) for r in rows],
                "cursor": {"offset": offset, "limit": limit, "total_count": total}}

    def stored(self, run_id: str, checkpoint_id: str) -> CheckpointRow:
        """A checkpoint's row, or a `NotFoundError` (unknown run, or no such checkpoint)."""
        self.run(run_id)
        row = self.storage.get_checkpoint(run_id, checkpoint_id)
        if row is None:
            raise NotFoundError(
                f"Run {run_id!r} has no checkpoint {checkpoint_id!r} (never saved, deleted or "
                "expired). Fix: list them with RestClient.list_checkpoints(run_id).")
        return row

    def delete_checkpoint(self, run_id: str, checkpoint_id: str) -> Json:
        """``DELETE …/checkpoints/{kind}/{name}``."""
        self.stored(run_id, checkpoint_id)
        self.storage.delete_checkpoint(run_id, checkpoint_id)
        return {"deleted": f"tinker://{run_id}/{checkpoint_id}"}

    def set_published(self, run_id: str, checkpoint_id: str, public: bool) -> Json:
        """Publish / unpublish a checkpoint (idempotent)."""
        self.stored(run_id, checkpoint_id)
        self.storage.set_checkpoint_public(run_id, checkpoint_id, public)
        return {"tinker_path": f"tinker://{run_id}/{checkpoint_id}", "public": public}

    def set_ttl(self, run_id: str, checkpoint_id: str, ttl_seconds: int | None) -> Json:
        """``PUT …/ttl``: expire the checkpoint `ttl_seconds` from now (None: never)."""
        self.stored(run_id, checkpoint_id)
        self.storage.set_checkpoint_ttl(run_id, checkpoint_id, ttl_seconds)
        return checkpoint_json(self.stored(run_id, checkpoint_id))

    def delete_expired(self) -> int:
        """Delete checkpoints past their TTL; returns how many."""
        return self.storage.reap_expired()

    def external_weights_files(self, run_id: str, checkpoint_id: str) -> tuple[str, list[str]]:
        """The download token (directory name) and relative file names of an export."""
        if not checkpoint_id.startswith("external_weights/"):
            raise UserError(f"{checkpoint_id!r} is not an external_weights checkpoint. Fix: "
                            "export with save_weights_external first.")
        row = self.stored(run_id, checkpoint_id)
        root = self.storage.checkpoint_path(row)
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                       if p.is_file() and p.name != META_FILE)
        return row.dir, files

    def expires_at(self, seconds: float) -> str:
        """An ISO time `seconds` from now."""
        return iso_time(self.storage.now() + seconds)

    def file_path(self, token: str, relative: str) -> Path:
        """The file behind a download URL, or raise `NotFoundError`."""
        root = (self.storage.checkpoint_root / token).resolve()
        target = (root / relative).resolve()
        if (not token or "/" in token or token.startswith(".") or root not in target.parents
                or not target.is_file()):
            raise NotFoundError("No such file. Fix: ask for fresh URLs with "
                                "RestClient.get_external_weights_urls(path).")
        return target
