"""What each built-in loss needs (PROTOCOL.md §9), as plain data: no JAX import."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

from ..errors import invalid

__all__ = ["LOSS_SPECS", "LossSpec", "validate_loss_config"]


class LossSpec(NamedTuple):
    """The inputs and hyperparameters of a built-in loss."""

    name: str
    required_inputs: tuple[str, ...]
    config_defaults: Mapping[str, float]


_CLIP = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
_RL_INPUTS = ("target_tokens", "logprobs", "advantages")

#: Built-in losses by name. `losses.BUILTIN_LOSSES` implements exactly these in JAX.
LOSS_SPECS: Mapping[str, LossSpec] = {
    "cross_entropy": LossSpec("cross_entropy", ("target_tokens", "weights"), {}),
    "importance_sampling": LossSpec("importance_sampling", _RL_INPUTS, {}),
    "ppo": LossSpec("ppo", _RL_INPUTS, _CLIP),
    "cispo": LossSpec("cispo", _RL_INPUTS, _CLIP),
    "dro": LossSpec("dro", _RL_INPUTS, {"beta": 0.05}),
    "gspo": LossSpec("gspo", (*_RL_INPUTS, "sequence_ratio_mask"), _CLIP),
}


def validate_loss_config(loss_fn: str, config: Mapping[str, float | str] | None
                         ) -> dict[str, float]:
    """Check a loss name and its config; return the config with defaults filled in.

    Raises:
        ValidationError: unknown loss, unknown config key, or a non-finite value.

    Example:
        >>> validate_loss_config("ppo", {"clip_low_threshold": 0.9})
        {'clip_low_threshold': 0.9, 'clip_high_threshold': 1.2}
    """
    spec = LOSS_SPECS.get(loss_fn)
    if spec is None:
        raise invalid("loss_fn", f"one of {sorted(LOSS_SPECS)}", loss_fn,
                      "use forward_backward_custom for your own loss")
    merged = dict(spec.config_defaults)
    for key, value in (config or {}).items():
        if key not in spec.config_defaults:
            allowed = sorted(spec.config_defaults) or "no keys"
            raise invalid(f"loss_fn_config[{key!r}]", f"a config key of {loss_fn}: {allowed}",
                          key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                value):
            raise invalid(f"loss_fn_config[{key!r}]", "a finite number", value)
        merged[key] = float(value)
    return merged
