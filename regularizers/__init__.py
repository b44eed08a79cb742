"""Regularizer terms over Tinker's per-token logprobs, and their composition with a loss.

* Stateless terms, ``(logprobs [B, T], batch) -> (value, metrics)``: :func:`l1`, :func:`l2`,
  :func:`elastic_net`, :func:`entropy`, :func:`kl`, :func:`consistency`,
  :func:`orthogonality`, :func:`gradient_penalty`.
* Stateful terms as optax-style ``(init, update)`` pairs: :func:`adaptive_kl`,
  :func:`ema_baseline`.
* :func:`compose` builds ``base_loss + Σ weight · term`` as one jit-compilable function with
  per-term value / contribution / gradient-norm tracking; :func:`report_metrics` turns its
  report into Tinker metric names.

Every term is per datum (each datum's real tokens reduced, then real datums), pure and
jit-able; see :mod:`regularizers._base` for the conventions. Import from ``regularizers``
only.
"""

from regularizers._base import (
    DatumReduction,
    Metrics,
    Reference,
    Regularizer,
    StatefulRegularizer,
    restrict,
)
from regularizers._compose import (
    METRIC_REDUCTIONS,
    ComposedLoss,
    ComposedState,
    CompositionReport,
    TermReport,
    TermSpec,
    compose,
    report_metrics,
    validate_metric_key,
)
from regularizers._stateful import AdaptiveKLState, EMABaselineState, adaptive_kl, ema_baseline
from regularizers._terms import (
    consistency,
    elastic_net,
    entropy,
    gradient_penalty,
    kl,
    l1,
    l2,
    orthogonality,
)

__all__ = [
    "AdaptiveKLState",
    "ComposedLoss",
    "ComposedState",
    "CompositionReport",
    "DatumReduction",
    "EMABaselineState",
    "METRIC_REDUCTIONS",
    "Metrics",
    "Reference",
    "Regularizer",
    "StatefulRegularizer",
    "TermReport",
    "TermSpec",
    "adaptive_kl",
    "compose",
    "consistency",
    "elastic_net",
    "ema_baseline",
    "entropy",
    "gradient_penalty",
    "kl",
    "l1",
    "l2",
    "orthogonality",
    "report_metrics",
    "restrict",
    "validate_metric_key",
]
