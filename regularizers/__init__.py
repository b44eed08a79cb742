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
only: the imports below are the public names, listed once (``__all__`` is derived from them).
"""

from regularizers._base import (
    DatumReduction as DatumReduction,
    Metrics as Metrics,
    Reference as Reference,
    Regularizer as Regularizer,
    StatefulRegularizer as StatefulRegularizer,
    restrict as restrict,
)
from regularizers._compose import (
    METRIC_REDUCTIONS as METRIC_REDUCTIONS,
    ComposedLoss as ComposedLoss,
    ComposedState as ComposedState,
    CompositionReport as CompositionReport,
    TermReport as TermReport,
    TermSpec as TermSpec,
    compose as compose,
    report_metrics as report_metrics,
    validate_metric_key as validate_metric_key,
)
from regularizers._stateful import (
    AdaptiveKLState as AdaptiveKLState,
    EMABaselineState as EMABaselineState,
    adaptive_kl as adaptive_kl,
    ema_baseline as ema_baseline,
)
from regularizers._terms import (
    consistency as consistency,
    elastic_net as elastic_net,
    entropy as entropy,
    gradient_penalty as gradient_penalty,
    kl as kl,
    l1 as l1,
    l2 as l2,
    orthogonality as orthogonality,
)

__all__ = sorted(name for name in dir() if not name.startswith("_"))
