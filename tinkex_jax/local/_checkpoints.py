"""Checkpoint files: adapter and optimizer arrays as safetensors, plus ``meta.json``.

A checkpoint directory holds::

    meta.json                 {"format": 1, "base_model", "lora": {...}, "step", "has_optimizer"}
    adapter.safetensors       flat adapter arrays (the backend's names)
    optimizer.safetensors     flat optimizer state (training checkpoints only)

Example:
    >>> import tempfile, numpy as np
    >>> d = Path(tempfile.mkdtemp())
    >>> meta = CheckpointMeta(base_model="m", lora=AdapterSpec(rank=2, seed=0), step=3)
    >>> write_checkpoint(d, meta, {"a": np.ones((2, 2), np.float32)}, None)
    >>> back, arrays, opt = read_checkpoint(d)
    >>> back.step, arrays["a"].shape, opt is None
    (3, (2, 2), True)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._backend import AdapterSpec
from ._errors import NotFoundError, ServerError

__all__ = ["META_FILE", "CheckpointMeta", "read_checkpoint", "read_meta", "write_checkpoint",
           "write_meta"]

_FORMAT = 1
#: The metadata file every checkpoint directory holds (exports too).
META_FILE = "meta.json"


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint was trained from and how far."""

    base_model: str
    lora: AdapterSpec
    step: int = 0
    has_optimizer: bool = False
    optimizer_config: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: {"type": "adamw"})

    def to_json(self) -> dict[str, Any]:
        """The ``meta.json`` content."""
        return {"format": _FORMAT, "base_model": self.base_model,
                "lora": dataclasses.asdict(self.lora), "step": self.step,
                "has_optimizer": self.has_optimizer,
                "optimizer_config": dict(self.optimizer_config)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CheckpointMeta:
        """Parse ``meta.json`` content."""
        return cls(base_model=str(data["base_model"]), lora=AdapterSpec(**data["lora"]),
                   step=int(data.get("step", 0)),
                   has_optimizer=bool(data.get("has_optimizer", False)),
                   optimizer_config=dict(data.get("optimizer_config") or {"type": "adamw"}))


def _save(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    # np.asarray(order="C"), not ascontiguousarray: the latter turns 0-d arrays into 1-d.
    save_file({k: np.asarray(v, order="C") for k, v in arrays.items()}, str(path))


def _load(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return dict(load_file(str(path)))


def write_meta(directory: Path, meta: CheckpointMeta) -> None:
    """Write ``meta.json`` into `directory`."""
    (directory / META_FILE).write_text(json.dumps(meta.to_json(), indent=1))


def write_checkpoint(directory: Path, meta: CheckpointMeta, adapter: Mapping[str, np.ndarray],
                     optimizer: Mapping[str, np.ndarray] | None) -> None:
    """Write a checkpoint's files into `directory` (which must exist)."""
    meta = dataclasses.replace(meta, has_optimizer=optimizer is not None)
    _save(directory / "adapter.safetensors", adapter)
    if optimizer is not None:
        _save(directory / "optimizer.safetensors", optimizer)
    write_meta(directory, meta)


def read_meta(directory: Path) -> CheckpointMeta:
    """Read only ``meta.json``."""
    try:
        return CheckpointMeta.from_json(json.loads((directory / META_FILE).read_text()))
    except FileNotFoundError:
        raise NotFoundError(f"checkpoint files are missing under {directory.name}; the "
                            "checkpoint was deleted or the data directory was changed") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ServerError(f"checkpoint metadata is unreadable ({exc})") from None


def read_checkpoint(directory: Path, *, optimizer: bool = True
                    ) -> tuple[CheckpointMeta, dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """Read a checkpoint: its meta, adapter arrays and (if present and wanted) optimizer."""
    meta = read_meta(directory)
    adapter = _load(directory / "adapter.safetensors")
    opt = None
    if optimizer and meta.has_optimizer:
        opt = _load(directory / "optimizer.safetensors")
    return meta, adapter, opt
