"""The built-in losses' signatures and request validation, in pure Python (no JAX import).

The server validates a ``forward_backward`` request with :func:`validate_loss_request` before
running anything, and the client can do the same before sending, without importing JAX.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import NamedTuple

__all__ = [
    "DEFAULT_CLIP_HIGH_THRESHOLD",
    "DEFAULT_CLIP_LOW_THRESHOLD",
    "DEFAULT_DRO_BETA",
    "LOSS_SIGNATURES",
    "LossSignature",
    "check_unknown_config",
    "resolve_loss_config",
    "validate_loss_request",
]

DEFAULT_CLIP_LOW_THRESHOLD = 0.8
"""Default lower clip threshold of ``ppo``, ``cispo`` and ``gspo`` (ε_low = 0.2)."""
DEFAULT_CLIP_HIGH_THRESHOLD = 1.2
"""Default upper clip threshold of ``ppo``, ``cispo`` and ``gspo`` (ε_high = 0.2)."""
DEFAULT_DRO_BETA = 0.05
"""Default ``beta`` of ``dro``. Tinker's server default is undocumented; its docs use 0.05."""


class LossSignature(NamedTuple):
    """What a built-in loss accepts: its required inputs and its config keys with defaults."""

    required_inputs: tuple[str, ...]
    config_defaults: Mapping[str, float]


_CLIP_DEFAULTS: Mapping[str, float] = MappingProxyType(
    {
        "clip_low_threshold": DEFAULT_CLIP_LOW_THRESHOLD,
        "clip_high_threshold": DEFAULT_CLIP_HIGH_THRESHOLD,
    }
)

LOSS_SIGNATURES: Mapping[str, LossSignature] = MappingProxyType(
    {
        "cispo": LossSignature(("logprobs", "advantages"), _CLIP_DEFAULTS),
        "cross_entropy": LossSignature(("weights",), MappingProxyType({})),
        "dro": LossSignature(
            ("logprobs", "advantages"), MappingProxyType({"beta": DEFAULT_DRO_BETA})
        ),
        "gspo": LossSignature(("logprobs", "advantages", "sequence_ratio_mask"), _CLIP_DEFAULTS),
        "importance_sampling": LossSignature(("logprobs", "advantages"), MappingProxyType({})),
        "ppo": LossSignature(("logprobs", "advantages"), _CLIP_DEFAULTS),
    }
)
"""Signatures of the built-in losses by ``loss_fn`` name (the keys of ``BUILTIN_LOSSES``)."""


def check_unknown_config(name: str, config: Mapping[str, object], *, where: str) -> None:
    """Raises a ``ValueError`` naming the config keys that loss ``name`` does not accept."""
    defaults = LOSS_SIGNATURES[name].config_defaults
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        accepted = sorted(defaults) or "none"
        raise ValueError(
            f"{where}: loss_fn {name!r} does not accept loss_fn_config keys {unknown} "
            f"(accepted: {accepted}; given: {sorted(config)}). Fix: remove them, or choose a "
            f"loss that takes them."
        )


# --------------------------------------------------------------------------------------------
# Request validation (pure Python; the server calls it before running anything).


def validate_loss_request(
    loss_fn: str,
    input_keys: Collection[str],
    config_keys: Collection[str],
    *,
    allow_extra_inputs: bool = True,
) -> None:
    """Checks a ``forward_backward`` request against the built-in losses.

    Pure Python: the server calls it before running anything; a client can call it before
    sending without importing JAX. :data:`LOSS_SIGNATURES` and ``BUILTIN_LOSSES`` have the
    same names, required inputs and config defaults.

    Args:
      loss_fn: the requested loss name.
      input_keys: the ``loss_fn_inputs`` keys of a datum (``target_tokens`` included).
      config_keys: the ``loss_fn_config`` keys of the request (empty when absent).
      allow_extra_inputs: when ``False``, input keys the loss does not use are an error too
        (Tinker's hosted service rejects them; the default tolerates them).

    Raises:
      ValueError: for an unknown loss (the message lists the valid names), missing inputs
        (``target_tokens`` or a required key) or unknown config keys; the message says what
        was expected, what was given and how to fix it.

    Examples:
      >>> from losses import validate_loss_request
      >>> validate_loss_request("ppo", ["target_tokens", "logprobs", "advantages"], [])
      >>> try:
      ...     validate_loss_request("ppo", ["target_tokens", "logprobs"], ["beta"])
      ... except ValueError as e:
      ...     print(str(e).split(";")[0])
      loss_fn 'ppo' requires loss_fn_inputs ['advantages', 'logprobs', 'target_tokens']
    """
    if loss_fn not in LOSS_SIGNATURES:
        raise ValueError(
            f"Unknown loss_fn {loss_fn!r}. Expected one of: {', '.join(sorted(LOSS_SIGNATURES))}. "
            f"Fix: pass one of these names (custom losses go through forward_backward_custom)."
        )
    spec = LOSS_SIGNATURES[loss_fn]
    given = sorted(set(input_keys))
    needed = sorted({"target_tokens", *spec.required_inputs})
    missing = [k for k in needed if k not in set(input_keys)]
    if missing:
        raise ValueError(
            f"loss_fn {loss_fn!r} requires loss_fn_inputs {needed}; missing {missing} (given: "
            f"{given}). Fix: add {missing} to every Datum.loss_fn_inputs."
        )
    if not allow_extra_inputs:
        extra = [k for k in given if k not in needed]
        if extra:
            raise ValueError(
                f"loss_fn {loss_fn!r} does not use loss_fn_inputs {extra} (expected exactly "
                f"{needed}; given: {given}). Fix: remove {extra} from every "
                f"Datum.loss_fn_inputs before sending."
            )
    check_unknown_config(loss_fn, {k: None for k in config_keys}, where="validate_loss_request")


def resolve_loss_config(loss_fn: str, config: Mapping[str, float] | None) -> dict[str, float]:
    """Validates a request's ``loss_fn_config`` and fills in the defaults.

    Args:
      loss_fn: a name in :data:`LOSS_SIGNATURES`.
      config: the request's ``loss_fn_config`` (``None`` = absent).

    Returns:
      Every config key of the loss mapped to a Python float.

    Raises:
      ValueError: unknown loss or key, a value that is not a finite real number, or
        ``clip_low_threshold > clip_high_threshold``.

    Examples:
      >>> from losses import resolve_loss_config
      >>> resolve_loss_config("ppo", {"clip_high_threshold": 1.3})
      {'clip_low_threshold': 0.8, 'clip_high_threshold': 1.3}
      >>> resolve_loss_config("cross_entropy", None)
      {}
    """
    config = dict(config or {})
    if loss_fn not in LOSS_SIGNATURES:
        validate_loss_request(loss_fn, (), ())  # raises the unknown-loss error
    check_unknown_config(loss_fn, config, where="resolve_loss_config")
    out: dict[str, float] = {}
    for key, default in LOSS_SIGNATURES[loss_fn].config_defaults.items():
        value = config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(
                f"resolve_loss_config: loss_fn_config[{key!r}] of {loss_fn!r} must be a real "
                f"number; got {value!r} ({type(value).__name__})."
            )
        if not math.isfinite(value):
            raise ValueError(
                f"resolve_loss_config: loss_fn_config[{key!r}] of {loss_fn!r} must be finite; "
                f"got {value!r}."
            )
        out[key] = float(value)
    if "clip_low_threshold" in out and out["clip_low_threshold"] > out["clip_high_threshold"]:
        raise ValueError(
            f"resolve_loss_config: {loss_fn!r} needs clip_low_threshold <= clip_high_threshold; "
            f"got {out['clip_low_threshold']} > {out['clip_high_threshold']}. Fix: swap them."
        )
    return out
