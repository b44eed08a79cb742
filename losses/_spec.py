"""The loss table: every ``loss_fn`` name of the wire, as plain data (no JAX import).

:data:`LOSS_SPECS` is the one place that says what a loss takes: the ``loss_fn_inputs`` a
client must (and may) send, its ``loss_fn_config`` keys with their defaults and the checks on
their values, whether this package computes it (``served``), and whether a request needs
provenance spans. Everything else is derived from it and checks through the functions here:

* ``losses.BUILTIN_LOSSES`` (the JAX functions of the served entries);
* the SDK's ``tinkex_jax.types.LossFnType`` literal (a test asserts the same names);
* the client's checks before sending (``tinkex_jax.builders.validate_training_data``);
* the local server's validation of a ``forward_backward`` request.

Every check raises a ``ValueError`` whose message says where the problem is, what was
expected, what was given and how to fix it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Collection, Mapping
from types import MappingProxyType
from typing import NamedTuple

__all__ = [
    "DEFAULT_CLIP_HIGH_THRESHOLD",
    "DEFAULT_CLIP_LOW_THRESHOLD",
    "DEFAULT_DRO_BETA",
    "DEFAULT_SR_KL_COEFF",
    "DEFAULT_SR_RATIO_CAP",
    "DEFAULT_SR_SEQUENCE_RATIO_LIMIT",
    "LOSS_SPECS",
    "LossSpec",
    "check_loss_inputs",
    "check_unknown_config",
    "loss_spec",
    "resolve_loss_config",
    "served_losses",
    "validate_loss_request",
]

DEFAULT_CLIP_LOW_THRESHOLD = 0.8
"""Default lower clip threshold of ``ppo``, ``cispo`` and ``gspo`` (ε_low = 0.2)."""
DEFAULT_CLIP_HIGH_THRESHOLD = 1.2
"""Default upper clip threshold of ``ppo``, ``cispo`` and ``gspo`` (ε_high = 0.2)."""
DEFAULT_DRO_BETA = 0.05
"""Default ``beta`` of ``dro``. Tinker's server default is undocumented; its docs use 0.05."""
DEFAULT_SR_RATIO_CAP = 2.0
"""Default ``ratio_cap`` of ``stable_reinforce``: the largest per-token importance weight."""
DEFAULT_SR_SEQUENCE_RATIO_LIMIT = 2.0
"""Default ``sequence_ratio_limit`` of ``stable_reinforce``: a datum whose geometric-mean
ratio over its sampled tokens leaves ``[1/limit, limit]`` is left out of the update."""
DEFAULT_SR_KL_COEFF = 0.0
"""Default ``kl_coeff`` of ``stable_reinforce``: weight of the penalty
``(log p_train - log p_sampled)^2 / 2`` on sampled tokens (0: off)."""

ConfigCheck = Callable[[str, Mapping[str, float]], None]


class LossSpec(NamedTuple):
    """One ``loss_fn`` of the wire: what it takes and who computes it.

    Attributes:
      name: the ``loss_fn`` string, e.g. ``"ppo"``.
      required_inputs: ``loss_fn_inputs`` keys a client must send besides ``target_tokens``.
      config_defaults: the accepted ``loss_fn_config`` keys and their defaults.
      optional_inputs: keys a client may send that the loss accepts without needing them.
      served: whether this package computes it (``losses.BUILTIN_LOSSES``); ``False`` for a
        name the wire knows but a server must provide itself (``custom``).
      needs_provenance: whether every datum must carry provenance spans
        (``Datum.with_provenance``) naming sampled sequences the server recorded.
      provenance_inputs: per-token inputs the server derives from the provenance and the
        records, and hands to the loss next to the client's inputs.
      check_config: relations between config values (called with the name and the config
        with defaults filled in; raises ``ValueError``).

    Examples:
      >>> from losses import LOSS_SPECS
      >>> spec = LOSS_SPECS["ppo"]
      >>> spec.required_inputs, dict(spec.config_defaults), spec.served
      (('logprobs', 'advantages'), {'clip_low_threshold': 0.8, 'clip_high_threshold': 1.2}, True)
      >>> LOSS_SPECS["stable_reinforce"].loss_inputs
      ('advantages', 'sampled_logprobs', 'sampled_mask')
    """

    name: str
    required_inputs: tuple[str, ...]
    config_defaults: Mapping[str, float]
    optional_inputs: tuple[str, ...] = ()
    served: bool = True
    needs_provenance: bool = False
    provenance_inputs: tuple[str, ...] = ()
    check_config: ConfigCheck | None = None

    @property
    def loss_inputs(self) -> tuple[str, ...]:
        """The inputs the loss function itself receives besides the targets: the required
        client inputs, then the provenance-derived ones."""
        return (*self.required_inputs, *self.provenance_inputs)

    @property
    def accepted_inputs(self) -> tuple[str, ...]:
        """Every ``loss_fn_inputs`` key a client may send (``target_tokens`` first)."""
        return ("target_tokens", *self.required_inputs, *self.optional_inputs)


def _check_clip(name: str, config: Mapping[str, float]) -> None:
    low, high = config["clip_low_threshold"], config["clip_high_threshold"]
    if low > high:
        raise ValueError(
            f"loss_fn_config of {name!r}: expected clip_low_threshold <= clip_high_threshold, "
            f"got {low} > {high}. Fix: swap them."
        )


def _check_stable_reinforce(name: str, config: Mapping[str, float]) -> None:
    for key in ("ratio_cap", "sequence_ratio_limit"):
        if config[key] < 1.0:
            raise ValueError(
                f"loss_fn_config[{key!r}] of {name!r}: expected a number >= 1 (so that an "
                f"on-policy token, ratio 1, keeps its full weight), got {config[key]}. Fix: "
                f"use e.g. the default 2.0."
            )
    if config["kl_coeff"] < 0.0:
        raise ValueError(
            f"loss_fn_config['kl_coeff'] of {name!r}: expected a number >= 0, got "
            f"{config['kl_coeff']}. Fix: use 0 (off) or a small positive weight."
        )


def _frozen(mapping: Mapping[str, float]) -> Mapping[str, float]:
    return MappingProxyType(dict(mapping))


_CLIP = _frozen(
    {
        "clip_low_threshold": DEFAULT_CLIP_LOW_THRESHOLD,
        "clip_high_threshold": DEFAULT_CLIP_HIGH_THRESHOLD,
    }
)
_POLICY = ("logprobs", "advantages")

LOSS_SPECS: Mapping[str, LossSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            LossSpec("cross_entropy", ("weights",), _frozen({})),
            LossSpec("importance_sampling", _POLICY, _frozen({})),
            LossSpec("ppo", _POLICY, _CLIP, check_config=_check_clip),
            LossSpec("cispo", _POLICY, _CLIP, check_config=_check_clip),
            LossSpec("dro", _POLICY, _frozen({"beta": DEFAULT_DRO_BETA})),
            LossSpec("gspo", (*_POLICY, "sequence_ratio_mask"), _CLIP, check_config=_check_clip),
            LossSpec(
                "stable_reinforce",
                ("advantages",),
                _frozen(
                    {
                        "ratio_cap": DEFAULT_SR_RATIO_CAP,
                        "sequence_ratio_limit": DEFAULT_SR_SEQUENCE_RATIO_LIMIT,
                        "kl_coeff": DEFAULT_SR_KL_COEFF,
                    }
                ),
                optional_inputs=("logprobs",),
                needs_provenance=True,
                provenance_inputs=("sampled_logprobs", "sampled_mask"),
                check_config=_check_stable_reinforce,
            ),
            LossSpec("custom", (), _frozen({}), served=False),
        )
    }
)
"""Every ``loss_fn`` name of the wire, in the order of Tinker's ``LossFnType``."""


def served_losses() -> tuple[str, ...]:
    """The names this package computes (the keys of ``losses.BUILTIN_LOSSES``), sorted.

    Examples:
      >>> from losses import served_losses
      >>> served_losses()[:3]
      ('cispo', 'cross_entropy', 'dro')
    """
    return tuple(sorted(name for name, spec in LOSS_SPECS.items() if spec.served))


def loss_spec(loss_fn: str, *, served: bool = True, where: str = "loss_fn") -> LossSpec:
    """The table entry of ``loss_fn``.

    Args:
      loss_fn: the requested name.
      served: ``True`` (default): only names this package computes are accepted (what a
        server needs); ``False``: any name of the wire.
      where: where the name came from, for the error message.

    Raises:
      ValueError: an unknown name (the message lists the valid ones), or with ``served``, a
        name of the wire that no built-in loss implements (``custom``).

    Examples:
      >>> from losses import loss_spec
      >>> loss_spec("dro").config_defaults["beta"]
      0.05
      >>> loss_spec("custom", served=False).served
      False
    """
    spec = LOSS_SPECS.get(loss_fn) if isinstance(loss_fn, str) else None
    if spec is None:
        names = served_losses() if served else tuple(LOSS_SPECS)
        raise ValueError(
            f"{where}: unknown loss_fn {loss_fn!r}; expected one of: {', '.join(names)}. Fix: "
            f"pass one of these names (your own loss goes through forward_backward_custom)."
        )
    if served and not spec.served:
        raise ValueError(
            f"{where}: loss_fn {loss_fn!r} is not a built-in loss this server computes; "
            f"expected one of: {', '.join(served_losses())}. Fix: compute your own loss on the "
            f"client with forward_backward_custom."
        )
    return spec


def check_unknown_config(name: str, config: Collection[str], *, where: str) -> None:
    """Raises a ``ValueError`` naming the config keys that loss ``name`` does not accept."""
    defaults = LOSS_SPECS[name].config_defaults
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        accepted = sorted(defaults) or "none"
        raise ValueError(
            f"{where}: loss_fn {name!r} does not accept loss_fn_config keys {unknown} "
            f"(accepted: {accepted}; given: {sorted(config)}). Fix: remove them, or choose a "
            f"loss that takes them."
        )


def check_loss_inputs(
    loss_fn: str,
    input_keys: Collection[str],
    *,
    where: str = "loss_fn_inputs",
    allow_extra_inputs: bool = True,
) -> None:
    """Checks one datum's ``loss_fn_inputs`` keys against loss ``loss_fn``.

    Args:
      loss_fn: a name in :data:`LOSS_SPECS`.
      input_keys: the datum's keys (``target_tokens`` included).
      where: the datum, for the error message (e.g. ``"data[3].loss_fn_inputs"``).
      allow_extra_inputs: when ``False``, keys the loss does not accept are an error too
        (Tinker's hosted service rejects them; the default tolerates them).

    Raises:
      ValueError: a missing required key (or, without ``allow_extra_inputs``, an extra one).

    Examples:
      >>> from losses import check_loss_inputs
      >>> check_loss_inputs("cross_entropy", ["target_tokens", "weights"])
      >>> try:
      ...     check_loss_inputs("ppo", ["target_tokens", "logprobs"], where="data[0]")
      ... except ValueError as e:
      ...     print(str(e).split(";")[0])
      data[0]: loss_fn 'ppo' requires loss_fn_inputs ['advantages', 'logprobs', 'target_tokens']
    """
    spec = LOSS_SPECS[loss_fn]
    keys = input_keys if isinstance(input_keys, Mapping | set | frozenset) else set(input_keys)
    if "target_tokens" in keys and all(k in keys for k in spec.required_inputs) and (
            allow_extra_inputs):
        return  # the common case, without building any message
    given = sorted(keys)
    needed = sorted({"target_tokens", *spec.required_inputs})
    missing = [k for k in needed if k not in keys]
    if missing:
        raise ValueError(
            f"{where}: loss_fn {loss_fn!r} requires loss_fn_inputs {needed}; missing {missing} "
            f"(given: {given}). Fix: add {missing} to every Datum.loss_fn_inputs."
        )
    if not allow_extra_inputs:
        accepted = sorted(spec.accepted_inputs)
        extra = [k for k in given if k not in accepted]
        if extra:
            raise ValueError(
                f"{where}: loss_fn {loss_fn!r} does not use loss_fn_inputs {extra} (it accepts "
                f"{accepted}; given: {given}). Fix: remove {extra} from every "
                f"Datum.loss_fn_inputs before sending."
            )


def validate_loss_request(
    loss_fn: str,
    input_keys: Collection[str],
    config_keys: Collection[str] = (),
    *,
    allow_extra_inputs: bool = True,
) -> None:
    """Checks the names of a ``forward_backward`` request against a built-in loss.

    The loss must be one this package computes; a datum's ``loss_fn_inputs`` keys must hold
    its required inputs; the ``loss_fn_config`` keys must be its config keys. Values are
    checked by :func:`resolve_loss_config`.

    Args:
      loss_fn: the requested loss name.
      input_keys: the ``loss_fn_inputs`` keys of a datum (``target_tokens`` included).
      config_keys: the ``loss_fn_config`` keys of the request (empty when absent).
      allow_extra_inputs: see :func:`check_loss_inputs`.

    Raises:
      ValueError: for an unknown loss (the message lists the valid names), missing inputs
        or unknown config keys; the message says what was expected, what was given and how
        to fix it.

    Examples:
      >>> from losses import validate_loss_request
      >>> validate_loss_request("ppo", ["target_tokens", "logprobs", "advantages"], [])
      >>> try:
      ...     validate_loss_request("ppo", ["target_tokens", "logprobs"], ["beta"])
      ... except ValueError as e:
      ...     print(str(e).split(";")[0])
      loss_fn_inputs: loss_fn 'ppo' requires loss_fn_inputs ['advantages', 'logprobs', 'target_tokens']
    """
    loss_spec(loss_fn)
    check_loss_inputs(loss_fn, input_keys, allow_extra_inputs=allow_extra_inputs)
    check_unknown_config(loss_fn, config_keys, where="validate_loss_request")


def resolve_loss_config(
    loss_fn: str, config: Mapping[str, object] | None, *, where: str = "resolve_loss_config"
) -> dict[str, float]:
    """Validates a request's ``loss_fn_config`` and fills in the defaults.

    Args:
      loss_fn: a built-in loss name (:func:`served_losses`).
      config: the request's ``loss_fn_config`` (``None`` = absent).
      where: the caller, for the error message.

    Returns:
      Every config key of the loss mapped to a Python float.

    Raises:
      ValueError: unknown loss or key, a value that is not a finite real number, or values
        that break the loss's own rule (``clip_low_threshold > clip_high_threshold``,
        ``ratio_cap < 1``, ...).

    Examples:
      >>> from losses import resolve_loss_config
      >>> resolve_loss_config("ppo", {"clip_high_threshold": 1.3})
      {'clip_low_threshold': 0.8, 'clip_high_threshold': 1.3}
      >>> resolve_loss_config("cross_entropy", None)
      {}
    """
    spec = loss_spec(loss_fn, where=where)
    given = dict(config or {})
    check_unknown_config(loss_fn, given, where=where)
    out: dict[str, float] = {}
    for key, default in spec.config_defaults.items():
        value = given.get(key, default)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(
                f"{where}: loss_fn_config[{key!r}] of {loss_fn!r} must be a real number; got "
                f"{value!r} ({type(value).__name__}). Fix: pass a float."
            )
        if not math.isfinite(value):
            raise ValueError(
                f"{where}: loss_fn_config[{key!r}] of {loss_fn!r} must be finite; got "
                f"{value!r}. Fix: pass a finite float."
            )
        out[key] = float(value)
    if spec.check_config is not None:
        try:
            spec.check_config(loss_fn, out)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return out
