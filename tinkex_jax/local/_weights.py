"""Saving and loading weights: save_weights, save_weights_external, load_weights,
weights_info, copy_weights, and finding a checkpoint by its tinker path.

Saves run in the model's lane (after every earlier request of that model): they stage the
files in a fresh directory, then add the row, so a failed save leaves nothing behind.
Loading into an existing model is a lane barrier too; loading as a new model registers it
through `Training.submit_new_model`. `_sampling` reuses `Weights.write` for sampler
checkpoints and `Weights.adapter_at` for sampling from a path.

A checkpoint belongs to the owner of its training run; another owner may read it (load,
sample, weights_info, copy, download) only when it is published, and gets 404 otherwise.

This module is the only place that writes or reads checkpoint directories for the engine
(through `_checkpoints`, the file format). It never touches HTTP, and it changes a live
model only inside that model's lane.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..builders import parse_tinker_path, tinker_path, training_model_id
from ..errors import ValidationError
from ..types import (
    CopyWeightsRequest,
    LoadWeightsRequest,
    ParsedCheckpointTinkerPath,
    SaveWeightsExternalRequest,
    SaveWeightsRequest,
)
from ._catalog import Catalog
from ._checkpoints import CheckpointMeta, read_checkpoint, read_meta, write_checkpoint, write_meta
from ._core import Core, Json, json_payload
from ._errors import ConflictError, NotFoundError, UserError
from ._futures import Payload
from ._storage import CheckpointRow, may_use
from ._training import LiveModel, Training

__all__ = ["Weights"]


class Weights:
    """Checkpoints of one engine's training models.

    Args:
        core: Dedup, futures, lanes.
        training: The live models saved from and loaded into.
        catalog: Training-run lookup (copies keep the source run's settings).
    """

    def __init__(self, core: Core, training: Training, catalog: Catalog) -> None:
        self.core = core
        self.training = training
        self.catalog = catalog

    # ------------------------------------------------------------------ reading

    def checkpoint(self, path: str, *, kinds: tuple[str, ...], owner: str | None = None
                   ) -> tuple[CheckpointRow, Path]:
        """A live checkpoint by tinker path (its row and directory) that `owner` may read:
        its own, or a published one."""
        try:
            parsed = parse_tinker_path(path)
        except ValidationError as exc:
            raise UserError(str(exc)) from None
        if parsed.kind not in kinds:
            raise UserError(
                f"{path!r} is a {parsed.kind} checkpoint; this call needs one of {list(kinds)}. "
                "Fix: pass the path returned by save_state (weights) or "
                "save_weights_for_sampler (sampler_weights).")
        storage = self.core.storage
        row = storage.get_checkpoint(parsed.training_run_id, parsed.checkpoint_id)
        if row is None or not (row.public or may_use(row.owner, owner)):
            raise NotFoundError(
                f"No checkpoint at {path!r} (it never existed, was deleted or expired). Fix: "
                "list checkpoints with RestClient.list_checkpoints(run_id).")
        return row, storage.checkpoint_path(row)

    def restore(self, meta: CheckpointMeta, directory: Path, *, optimizer: bool
                ) -> tuple[Any, Any]:
        """The adapter (and, if asked and saved, the optimizer state) of a checkpoint."""
        backend = self.core.backend
        _, arrays, opt_arrays = read_checkpoint(directory, optimizer=optimizer)
        adapter = backend.adapter_from_arrays(meta.base_model, meta.lora, arrays)
        opt_state = None
        if optimizer and opt_arrays is not None:
            opt_state = backend.optimizer_from_arrays(meta.base_model, adapter, opt_arrays)
        return adapter, opt_state

    def adapter_at(self, path: str, owner: str | None = None) -> tuple[str, Any]:
        """Base model name and the adapter of saved weights (to sample from them)."""
        _, directory = self.checkpoint(path, kinds=("sampler_weights", "weights"), owner=owner)
        meta = read_meta(directory)
        self.core.base(meta.base_model)
        adapter, _ = self.restore(meta, directory, optimizer=False)
        return meta.base_model, adapter

    def weights_info(self, path: str, owner: str | None = None) -> Json:
        """``weights_info``: base model and LoRA settings of a checkpoint."""
        _, directory = self.checkpoint(path, kinds=("weights", "sampler_weights",
                                                    "external_weights"), owner=owner)
        meta = read_meta(directory)
        return {"base_model": meta.base_model, "optimizer_config": dict(meta.optimizer_config),
                "is_lora": True, "lora_rank": meta.lora.rank,
                "train_unembed": meta.lora.train_unembed, "train_mlp": meta.lora.train_mlp,
                "train_attn": meta.lora.train_attn}

    # ------------------------------------------------------------------ writing

    def write(self, model: LiveModel, kind: str, name: str, *, optimizer: bool,
              ttl_seconds: int | None, metadata: Mapping[str, str] | None,
              writer: Callable[[Path], None] | None = None) -> CheckpointRow:
        """Write the model's current state as a checkpoint of `kind` (call in its lane).

        Args:
            writer: Writes the files itself (an export); the default writes the adapter
                (and the optimizer state when `optimizer`) in the checkpoint format.
        """
        storage, backend = self.core.storage, self.core.backend
        staged = storage.new_checkpoint_dir()
        try:
            if writer is not None:
                writer(staged)
                write_meta(staged, _meta(model, optimizer=False))
            else:
                opt = backend.optimizer_to_arrays(model.opt_state) if optimizer else None
                write_checkpoint(staged, _meta(model, optimizer=optimizer),
                                 backend.adapter_to_arrays(model.adapter), opt)
            now = storage.now()
            row = CheckpointRow(
                run_id=model.model_id, checkpoint_id=f"{kind}/{name}", kind=kind, name=name,
                tinker_path=tinker_path(model.model_id, kind, name),  # type: ignore[arg-type]
                dir=staged.name, created_at=now,
                expires_at=None if ttl_seconds is None else now + ttl_seconds,
                user_metadata=dict(metadata) if metadata is not None else None,
                has_optimizer=optimizer, owner=model.run.owner)
            return storage.add_checkpoint(row, staged)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise

    def submit_save_weights(self, req: SaveWeightsRequest, body_fp: bytes,
                            owner: str | None = None) -> Json:
        """``save_weights`` (save_state): adapter and optimizer state."""

        def prepare(model: LiveModel) -> Callable[[], Payload]:
            def work() -> Payload:
                if not req.overwrite and self.core.storage.get_checkpoint(
                        model.model_id, f"weights/{req.path}") is not None:
                    raise ConflictError(
                        f"A checkpoint named {req.path!r} already exists in run "
                        f"{model.model_id!r}. Fix: pass overwrite=True or choose another name.")
                row = self.write(model, "weights", req.path, optimizer=True,
                                 ttl_seconds=req.ttl_seconds, metadata=req.user_metadata)
                return json_payload({"path": row.tinker_path, "type": "save_weights"})

            return work

        return self.training.submit_op("SaveWeights", req.model_id, req.seq_id, body_fp,
                                       prepare, owner=owner)

    def submit_save_external(self, req: SaveWeightsExternalRequest, body_fp: bytes,
                             owner: str | None = None) -> Json:
        """``save_weights_external``: export the adapter in Hugging Face (PEFT) format."""

        def prepare(model: LiveModel) -> Callable[[], Payload]:
            if req.age_encryption_recipients:
                raise UserError("The local backend cannot encrypt exports (age_encryption_"
                                "recipients). Fix: omit the recipients.")

            def writer(directory: Path) -> None:
                self.core.backend.export_hf(model.run.base_model, model.spec, model.adapter,
                                            directory)

            def work() -> Payload:
                row = self.write(model, "external_weights", req.path, optimizer=False,
                                 ttl_seconds=req.ttl_seconds, metadata=None, writer=writer)
                return json_payload({"path": row.tinker_path, "size_bytes": row.size_bytes,
                                     "type": "save_weights_external"})

            return work

        return self.training.submit_op("SaveWeightsExternal", req.model_id, req.seq_id,
                                       body_fp, prepare, owner=owner)

    # ------------------------------------------------------------------ loading

    def submit_load_weights(self, req: LoadWeightsRequest, body_fp: bytes,
                            owner: str | None = None) -> Json:
        """``load_weights``: create a model from a checkpoint, or (legacy) load into one."""
        if req.model_id is not None:
            self.training.check_owner(req.model_id, owner)
        _, directory = self.checkpoint(req.path, kinds=("weights", "sampler_weights"),
                                       owner=owner)
        meta = read_meta(directory)
        if req.optimizer and not meta.has_optimizer:
            raise UserError(
                f"{req.path!r} holds no optimizer state (sampler checkpoints never do). Fix: "
                "load it without the optimizer, or use a save_state checkpoint.")
        if req.model_id is None:
            return self._load_as_new_model(req, body_fp, meta, directory, owner)

        def prepare(model: LiveModel) -> Callable[[], Payload]:
            if meta.base_model != model.run.base_model or meta.lora.rank != model.spec.rank:
                raise UserError(
                    f"{req.path!r} was trained on {meta.base_model!r} with LoRA rank "
                    f"{meta.lora.rank}, but model {req.model_id!r} is {model.run.base_model!r} "
                    f"with rank {model.spec.rank}. Fix: use "
                    "create_training_client_from_state(path).")

            def work() -> Payload:
                adapter, opt_state = self._restore_state(meta, directory, req.optimizer)
                model.adapter, model.opt_state, model.grads, model.accumulated = (
                    adapter, opt_state, None, 0)
                model.step = meta.step
                if model.corrupted is not None:
                    model.corrupted = None
                    self.core.storage.clear_run_corrupted(model.model_id)
                return json_payload({"path": req.path, "model_id": model.model_id,
                                     "type": "load_weights"})

            return work

        return self.training.submit_op("LoadWeights", req.model_id, req.seq_id, body_fp,
                                       prepare, owner=owner, restoring=True)

    def _restore_state(self, meta: CheckpointMeta, directory: Path, optimizer: bool
                       ) -> tuple[Any, Any]:
        """Adapter and optimizer state to train on (a fresh optimizer when not restored)."""
        adapter, opt_state = self.restore(meta, directory, optimizer=optimizer)
        if opt_state is None:
            opt_state = self.core.backend.init_optimizer(meta.base_model, adapter)
        return adapter, opt_state

    def _load_as_new_model(self, req: LoadWeightsRequest, body_fp: bytes, meta: CheckpointMeta,
                           directory: Path, owner: str | None) -> Json:
        session_id, seq = str(req.session_id), int(req.model_seq_id)  # type: ignore[arg-type]
        key, seen = self.training.new_model_key(session_id, seq, body_fp, owner)
        if seen is not None:
            return seen
        self.core.base(meta.base_model)
        if req.base_model is not None and req.base_model != meta.base_model:
            raise UserError(f"{req.path!r} was trained on {meta.base_model!r}, not "
                            f"{req.base_model!r}. Fix: omit base_model or pass the right one.")
        model_id = training_model_id(session_id, seq)
        return self.training.submit_new_model(
            "LoadWeights", key, body_fp, session_id=session_id, model_seq_id=seq,
            base=meta.base_model, spec=meta.lora, metadata=req.user_metadata,
            init=lambda: self._restore_state(meta, directory, req.optimizer),
            step=meta.step if req.optimizer else 0,
            answer={"path": req.path, "model_id": model_id, "type": "load_weights"},
            owner=owner)

    # ------------------------------------------------------------------ copying

    def copy_weights(self, req: CopyWeightsRequest, owner: str | None = None) -> Json:
        """``copy_weights``: duplicate a checkpoint `owner` may read into a run of `owner`
        (in one of its sessions when ``session_id`` is given)."""
        row, directory = self.checkpoint(req.source_path, kinds=(
            "weights", "sampler_weights", "external_weights"), owner=owner)
        if req.session_id is not None:
            self.core.session(req.session_id, owner)
        parsed = ParsedCheckpointTinkerPath.from_tinker_path(req.source_path)
        source_run = self.catalog.run(parsed.training_run_id)
        if req.session_id is not None and req.model_seq_id is not None:
            run_id = training_model_id(req.session_id, req.model_seq_id)
        else:
            run_id = f"copy-{self.core.effects.new_id()[:16]}"
        storage = self.core.storage
        if storage.get_run(run_id) is None:
            now = storage.now()
            storage.create_run(dataclasses.replace(
                source_run, run_id=run_id, session_id=req.session_id or (
                    source_run.session_id if may_use(source_run.owner, owner) else ""),
                model_seq_id=req.model_seq_id or 0, created_at=now, last_request_time=now,
                owner=owner or "local"))
        staged = storage.new_checkpoint_dir()
        shutil.copytree(directory, staged, dirs_exist_ok=True)
        now = storage.now()
        copy = CheckpointRow(
            run_id=run_id, checkpoint_id=row.checkpoint_id, kind=row.kind, name=row.name,
            tinker_path=f"tinker://{run_id}/{row.checkpoint_id}", dir=staged.name,
            created_at=now,
            expires_at=None if req.ttl_seconds is None else now + req.ttl_seconds,
            user_metadata=row.user_metadata, has_optimizer=row.has_optimizer,
            owner=owner or "local")
        stored = storage.add_checkpoint(copy, staged)
        return {"tinker_path": stored.tinker_path}


def _meta(model: LiveModel, *, optimizer: bool) -> CheckpointMeta:
    return CheckpointMeta(base_model=model.run.base_model, lora=model.spec, step=model.step,
                          has_optimizer=optimizer, optimizer_config=model.run.optimizer_config)
