"""Hyperparameter structs: SamplingParams, AdamParams, DimuonParams, LoraConfig, optimizers."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from ..errors import invalid
from ._base import WireStruct, force_set

__all__ = [
    "AdamOptimizerConfig",
    "AdamParams",
    "DimuonOptimizerConfig",
    "DimuonParams",
    "LoraConfig",
    "LossFnType",
    "OptimParams",
    "OptimizerConfig",
    "SamplingParams",
    "StopReason",
]

LossFnType = Literal[
    "cross_entropy", "importance_sampling", "ppo", "cispo", "dro", "gspo",
    "stable_reinforce", "custom",
]
StopReason = Literal["length", "stop"]

if TYPE_CHECKING:
    from collections.abc import Sequence

    _Stop = str | Sequence[str] | Sequence[int] | None
else:
    _Stop = str | tuple[str | int, ...] | None

_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1


def _finite(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise invalid(where, "a finite number", value)
    return float(value)


class SamplingParams(WireStruct, frozen=True, kw_only=True):
    """How to sample.

    Args:
        max_tokens: Most tokens to generate (None: the server's default / context limit).
        seed: Seed for reproducible sampling (0 <= seed < 2**64).
        stop: A string, a list of strings, or a list of token ids. ``None`` stops at the
            model's end-of-sequence token; ``[]`` disables every stop, EOS included.
        temperature: Softmax temperature, >= 0 (0 = greedy).
        top_k: Keep only the k most likely tokens; -1 keeps all.
        top_p: Nucleus sampling mass in (0, 1].

    Raises:
        ValidationError: a value is out of range or of the wrong type.

    Example:
        >>> SamplingParams(max_tokens=16, temperature=0.7, stop=["\\n"]).stop
        ('\\n',)
    """

    max_tokens: int | None = None
    seed: int | None = None
    stop: _Stop = None
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.max_tokens is not None and (
            isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int)
            or self.max_tokens < 1
        ):
            raise invalid("SamplingParams.max_tokens", "an int >= 1 or None", self.max_tokens)
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
            or not 0 <= self.seed <= _UINT64_MAX
        ):
            raise invalid("SamplingParams.seed", "an int in [0, 2**64) or None", self.seed)
        temperature = _finite("SamplingParams.temperature", self.temperature)
        if temperature < 0:
            raise invalid("SamplingParams.temperature", "a number >= 0 (0 = greedy)", temperature)
        force_set(self, "temperature", temperature)
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or (
            self.top_k < 1 and self.top_k != -1
        ):
            raise invalid("SamplingParams.top_k", "-1 (no limit) or an int >= 1", self.top_k)
        top_p = _finite("SamplingParams.top_p", self.top_p)
        if not 0 < top_p <= 1:
            raise invalid("SamplingParams.top_p", "a number in (0, 1]", top_p)
        force_set(self, "top_p", top_p)
        stop = self.stop
        if stop is None or isinstance(stop, str):
            if stop == "":
                raise invalid("SamplingParams.stop", "a non-empty stop string", stop)
            return
        stop_list: tuple[Any, ...] = tuple(stop)
        if all(isinstance(s, str) for s in stop_list):
            if any(s == "" for s in stop_list):
                raise invalid("SamplingParams.stop", "non-empty stop strings", stop_list)
        elif all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in stop_list):
            pass
        else:
            raise invalid("SamplingParams.stop",
                          "a string, a list of strings, or a list of token ids (not mixed)",
                          stop_list)
        force_set(self, "stop", stop_list)

    @property
    def stop_strings(self) -> list[str]:
        """The stop condition as a list of strings (empty when it is token ids or None)."""
        if isinstance(self.stop, str):
            return [self.stop]
        if self.stop and isinstance(self.stop[0], str):
            return list(self.stop)  # type: ignore[arg-type]
        return []

    @property
    def stop_tokens(self) -> list[int]:
        """The stop condition as token ids (empty when it is strings or None)."""
        if self.stop and not isinstance(self.stop, str) and isinstance(self.stop[0], int):
            return list(self.stop)  # type: ignore[arg-type]
        return []


class AdamParams(WireStruct, frozen=True, kw_only=True):
    """One AdamW step's hyperparameters (Tinker semantics, like torch.optim.AdamW).

    Args:
        learning_rate: Step size, >= 0.
        beta1: First-moment decay in [0, 1).
        beta2: Second-moment decay in [0, 1).
        eps: Denominator epsilon, > 0.
        weight_decay: Decoupled weight decay, >= 0 (applied as ``lr * wd * param``).
        grad_clip_norm: Clip gradients to this global norm; 0 disables clipping.

    Example:
        >>> AdamParams(learning_rate=3e-4).beta2
        0.95
    """

    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0

    def __post_init__(self) -> None:
        for name in ("learning_rate", "beta1", "beta2", "eps", "weight_decay", "grad_clip_norm"):
            force_set(self, name, _finite(f"AdamParams.{name}", getattr(self, name)))
        if self.learning_rate < 0:
            raise invalid("AdamParams.learning_rate", "a number >= 0", self.learning_rate)
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise invalid(f"AdamParams.{name}", "a number in [0, 1)", value,
                              "typical values are beta1=0.9, beta2=0.95")
        if self.eps <= 0:
            raise invalid("AdamParams.eps", "a number > 0", self.eps)
        if self.weight_decay < 0:
            raise invalid("AdamParams.weight_decay", "a number >= 0", self.weight_decay)
        if self.grad_clip_norm < 0:
            raise invalid("AdamParams.grad_clip_norm", "a number >= 0 (0 = no clipping)",
                          self.grad_clip_norm)


class DimuonParams(WireStruct, frozen=True, kw_only=True, tag="dimuon", tag_field="type"):
    """One step of the Dimuon optimizer family (sent as ``optimizer_params``)."""

    learning_rate: float
    grad_clip_norm: float = 0.0
    beta1: float = 0.9

    def __post_init__(self) -> None:
        if _finite("DimuonParams.learning_rate", self.learning_rate) < 0:
            raise invalid("DimuonParams.learning_rate", "a number >= 0", self.learning_rate)
        if not 0 <= _finite("DimuonParams.beta1", self.beta1) < 1:
            raise invalid("DimuonParams.beta1", "a number in [0, 1)", self.beta1)
        _finite("DimuonParams.grad_clip_norm", self.grad_clip_norm)


OptimParams = AdamParams | DimuonParams


class AdamOptimizerConfig(WireStruct, frozen=True, kw_only=True, tag="adamw", tag_field="type"):
    """Selects AdamW for a new training model (the default)."""


class DimuonOptimizerConfig(WireStruct, frozen=True, kw_only=True, tag="dimuon",
                            tag_field="type"):
    """Selects the Dimuon optimizer family for a new training model."""

    version: int = 1


OptimizerConfig = AdamOptimizerConfig | DimuonOptimizerConfig


class LoraConfig(WireStruct, frozen=True, kw_only=True):
    """Which LoRA adapters a new training model gets.

    Args:
        rank: Adapter rank, >= 1.
        seed: Seed of the adapter initialisation (None: the server picks).
        train_unembed: Adapt the unembedding (output) layer.
        train_mlp: Adapt the MLP projections.
        train_attn: Adapt the attention projections.

    Raises:
        ValidationError: rank < 1, or every ``train_*`` flag is False.

    Example:
        >>> LoraConfig(rank=8, train_unembed=False).train_mlp
        True
    """

    rank: int
    seed: int | None = None
    train_unembed: bool = True
    train_mlp: bool = True
    train_attn: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise invalid("LoraConfig.rank", "an int >= 1", self.rank, "typical ranks are 8-64")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
            or not -_INT64_MAX - 1 <= self.seed <= _INT64_MAX
        ):
            raise invalid("LoraConfig.seed", "a 64-bit int or None", self.seed)
        if not (self.train_unembed or self.train_mlp or self.train_attn):
            raise invalid("LoraConfig", "at least one of train_attn/train_mlp/train_unembed",
                          "<all False>", "set train_attn=True (the usual choice)")
