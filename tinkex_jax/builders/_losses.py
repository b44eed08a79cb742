"""The SDK's view of the loss table: `losses.LOSS_SPECS` (pure Python, no JAX import) and the
checks the client runs before sending, raising `ValidationError`.

There is one table: this module re-exports it and converts the table's own checks
(`losses.resolve_loss_config`, `losses.check_loss_inputs`) into the SDK's error type, so the
client, the builders and the local server agree by construction.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from losses import (  # the JAX-free table: losses loads it without importing JAX
    LOSS_SPECS,
    LossSpec,
    check_loss_inputs,
    loss_spec,
    resolve_loss_config,
)

from ..errors import ValidationError

__all__ = ["LOSS_SPECS", "LossSpec", "check_datum_loss_inputs", "validate_loss_config",
           "wire_loss_spec"]


def wire_loss_spec(loss_fn: str) -> LossSpec:
    """The table entry of a ``loss_fn`` name of the wire (``custom`` included).

    Raises:
        ValidationError: an unknown name; the message lists the valid ones.

    Example:
        >>> wire_loss_spec("custom").served, wire_loss_spec("ppo").served
        (False, True)
    """
    try:
        return loss_spec(loss_fn, served=False)
    except ValueError as exc:
        raise ValidationError(str(exc), where="loss_fn") from None


def validate_loss_config(loss_fn: str, config: Mapping[str, float | str] | None
                         ) -> dict[str, float]:
    """Check a built-in loss name and its config; return the config with defaults filled in.

    The same check the local server runs (`losses.resolve_loss_config`).

    Raises:
        ValidationError: unknown or non-built-in loss, unknown config key, a non-finite
            value, or values that break the loss's rule (e.g. clip_low > clip_high).

    Example:
        >>> validate_loss_config("ppo", {"clip_low_threshold": 0.9})
        {'clip_low_threshold': 0.9, 'clip_high_threshold': 1.2}
    """
    try:
        return resolve_loss_config(loss_fn, config, where="loss_fn_config")
    except ValueError as exc:
        raise ValidationError(str(exc), where="loss_fn_config") from None


def check_datum_loss_inputs(loss_fn: str, keys: Collection[str], where: str) -> None:
    """Check one datum's ``loss_fn_inputs`` keys against the table (`losses.check_loss_inputs`).

    Raises:
        ValidationError: a required key is missing; the message names them.

    Example:
        >>> check_datum_loss_inputs("cross_entropy", ["target_tokens", "weights"], "data[0]")
    """
    try:
        check_loss_inputs(loss_fn, keys, where=where)
    except ValueError as exc:
        raise ValidationError(str(exc), where=where) from None
