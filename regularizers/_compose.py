"""Composition: a base loss plus weighted regularizer terms, as ONE jit-able function.

``compose(base_loss, terms)`` returns a :class:`ComposedLoss`; calling it gives the total
loss and a :class:`CompositionReport` with, per term, its value, weight, contribution
(weight × value) and the norm of its gradient with respect to the logprobs, plus the base
loss value and the total gradient norm, all as JAX scalars. :func:`report_metrics` flattens
the report into Tinker metric names (``"name:reduction"``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, overload

import jax
import jax.numpy as jnp
from jax import Array

from losses import LossBatch
from regularizers._base import Metrics, Regularizer, StatefulRegularizer

__all__ = [
    "METRIC_REDUCTIONS",
    "ComposedLoss",
    "ComposedState",
    "CompositionReport",
    "TermReport",
    "TermSpec",
    "compose",
    "report_metrics",
    "validate_metric_key",
]

BaseLoss = Callable[[Array, LossBatch], tuple[Array, Mapping[str, Any]]]

METRIC_REDUCTIONS: tuple[str, ...] = ("sum", "mean", "min", "max")
"""Reductions allowed in the metric keys this module produces or accepts."""

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class TermSpec(NamedTuple):
    """A named, weighted term of a composition.

    Attributes:
      name: unique name, used in metric keys (letters, digits, ``_``, ``.``, ``-``).
      term: a stateless term ``(logprobs, batch) -> (value, metrics)`` or a
        :class:`StatefulRegularizer`.
      weight: a finite Python number ≥ 0 (to reward a quantity instead of penalising it, use
        the term's own option, e.g. ``entropy(mode="maximize")``).
    """

    name: str
    term: Regularizer | StatefulRegularizer[Any]
    weight: float = 1.0


class TermReport(NamedTuple):
    """Per-term entries of a :class:`CompositionReport` (JAX scalars).

    Attributes:
      value: the term's value.
      weight: its weight.
      contribution: ``weight * value``, what it adds to the total.
      grad_norm: the global L2 norm of ``d value / d logprobs`` (unweighted).
      metrics: the term's own metrics.
    """

    value: Array
    weight: Array
    contribution: Array
    grad_norm: Array
    metrics: Metrics


class CompositionReport(NamedTuple):
    """What a :class:`ComposedLoss` reports (a pytree of JAX scalars, usable as metrics).

    Attributes:
      total: ``base + Σ contribution``.
      total_grad_norm: L2 norm of ``d total / d logprobs``.
      base: the base loss value.
      base_grad_norm: L2 norm of ``d base / d logprobs``.
      base_metrics: the base loss's own metrics.
      terms: a :class:`TermReport` per term name (a dict: after ``jax.jit`` its keys come
        back sorted, like any pytree dict).
    """

    total: Array
    total_grad_norm: Array
    base: Array
    base_grad_norm: Array
    base_metrics: Mapping[str, Array]
    terms: Mapping[str, TermReport]


class ComposedState(NamedTuple):
    """The states of a composition's stateful terms, keyed by term name."""

    terms: Mapping[str, Any]


def _norm(x: Array) -> Array:
    return jnp.sqrt(jnp.sum(jnp.square(x)))


def _check_scalar(value: Any, *, where: str) -> Array:
    arr = jnp.asarray(value)
    if arr.shape != ():
        raise ValueError(
            f"{where} must be a scalar; got shape {tuple(arr.shape)}. Fix: reduce it (e.g. "
            f"reduction='sum' or 'mean')."
        )
    return arr


class ComposedLoss:
    """``base_loss + Σ weight · term`` as one pure, jit-compilable function.

    Call it as ``(logprobs, batch) -> (total, report)`` when no term is stateful, or
    ``(logprobs, batch, state) -> (total, report, new_state)`` with ``state = .init()``
    (required when a term is stateful). ``jax.value_and_grad(..., has_aux=True)`` of it gives
    the gradient to send as ``weights = -grad``; :meth:`value_and_grad` returns the same
    gradient assembled from the per-term gradients the report already needs (no second
    backward pass).
    """

    def __init__(self, base_loss: BaseLoss, specs: Sequence[TermSpec]) -> None:
        self.base_loss = base_loss
        self.specs: tuple[TermSpec, ...] = tuple(specs)
        self.stateful: bool = any(isinstance(s.term, StatefulRegularizer) for s in self.specs)

    def __repr__(self) -> str:
        terms = ", ".join(f"{s.name}×{s.weight:g}" for s in self.specs)
        return f"ComposedLoss(base={getattr(self.base_loss, '__name__', 'loss')}, [{terms}])"

    def init(self) -> ComposedState:
        """The initial state: ``init()`` of every stateful term, keyed by name."""
        return ComposedState(
            terms={
                s.name: s.term.init() for s in self.specs if isinstance(s.term, StatefulRegularizer)
            }
        )

    def _evaluate(
        self, logprobs: Array, batch: LossBatch, state: ComposedState | None
    ) -> tuple[Array, CompositionReport, ComposedState, Array]:
        where = "ComposedLoss"
        if self.stateful and state is None:
            names = [s.name for s in self.specs if isinstance(s.term, StatefulRegularizer)]
            raise ValueError(
                f"{where}: terms {names} are stateful; call it as (logprobs, batch, state) "
                f"with state = composed.init() (then thread the returned new_state)."
            )
        lp = jnp.asarray(logprobs)
        if not jnp.issubdtype(lp.dtype, jnp.floating):
            raise TypeError(f"{where}: logprobs must be floating; got dtype {lp.dtype}.")
        base_loss = self.base_loss

        def base_fn(x: Array) -> tuple[Array, Mapping[str, Any]]:
            out = base_loss(x, batch)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(
                    f"{where}: base_loss must return (scalar loss, metrics dict); got "
                    f"{type(out).__name__}. Fix: return (loss, {{}})."
                )
            return _check_scalar(out[0], where=f"{where}: base loss value"), out[1]

        (base_value, base_metrics), base_grad = jax.value_and_grad(base_fn, has_aux=True)(lp)
        total = base_value
        total_grad = base_grad
        reports: dict[str, TermReport] = {}
        new_states: dict[str, Any] = {}
        for spec in self.specs:
            term = spec.term
            if isinstance(term, StatefulRegularizer):
                assert state is not None
                if spec.name not in state.terms:
                    raise ValueError(
                        f"{where}: the state has no entry for stateful term {spec.name!r} "
                        f"(entries: {sorted(state.terms)}). Fix: build it with .init()."
                    )
                term_state = state.terms[spec.name]

                def fn(
                    x: Array, update: Any = term.update, st: Any = term_state
                ) -> tuple[Array, tuple[Metrics, Any]]:
                    value, metrics, new_st = update(x, batch, st)
                    return value, (metrics, new_st)

                (value, (metrics, new_state)), grad = jax.value_and_grad(fn, has_aux=True)(lp)
                new_states[spec.name] = new_state
            else:

                def fn2(x: Array, call: Any = term) -> tuple[Array, Metrics]:
                    return call(x, batch)

                (value, metrics), grad = jax.value_and_grad(fn2, has_aux=True)(lp)
            value = _check_scalar(value, where=f"{where}: value of term {spec.name!r}")
            weight = jnp.asarray(spec.weight, dtype=value.dtype)
            contribution = weight * value
            total = total + contribution
            total_grad = total_grad + weight.astype(grad.dtype) * grad
            reports[spec.name] = TermReport(
                value=value,
                weight=weight,
                contribution=contribution,
                grad_norm=_norm(grad),
                metrics=dict(metrics),
            )
        report = CompositionReport(
            total=total,
            total_grad_norm=_norm(total_grad),
            base=base_value,
            base_grad_norm=_norm(base_grad),
            base_metrics=dict(base_metrics),
            terms=reports,
        )
        return total, report, ComposedState(terms=new_states), total_grad

    @overload
    def __call__(
        self, logprobs: Array, batch: LossBatch
    ) -> tuple[Array, CompositionReport]: ...

    @overload
    def __call__(
        self, logprobs: Array, batch: LossBatch, state: ComposedState
    ) -> tuple[Array, CompositionReport, ComposedState]: ...

    def __call__(
        self, logprobs: Array, batch: LossBatch, state: ComposedState | None = None
    ) -> tuple[Array, CompositionReport] | tuple[Array, CompositionReport, ComposedState]:
        """Returns ``(total, report)``, or ``(total, report, new_state)`` given a state."""
        total, report, new_state, _ = self._evaluate(logprobs, batch, state)
        if state is None:
            return total, report
        return total, report, new_state

    @overload
    def value_and_grad(
        self, logprobs: Array, batch: LossBatch
    ) -> tuple[tuple[Array, CompositionReport], Array]: ...

    @overload
    def value_and_grad(
        self, logprobs: Array, batch: LossBatch, state: ComposedState
    ) -> tuple[tuple[Array, CompositionReport, ComposedState], Array]: ...

    def value_and_grad(
        self, logprobs: Array, batch: LossBatch, state: ComposedState | None = None
    ) -> (
        tuple[tuple[Array, CompositionReport], Array]
        | tuple[tuple[Array, CompositionReport, ComposedState], Array]
    ):
        """Like calling it, plus ``d total / d logprobs`` (0 at masked positions).

        The gradient is the weighted sum of the base and per-term gradients that the report
        needs anyway, so no second backward pass runs; with stateful terms this is also the
        simplest way to get ``(total, report, new_state)`` and the gradient together.

        Examples:
          >>> import jax, jax.numpy as jnp
          >>> from losses import LossBatch
          >>> from regularizers import compose, l2
          >>> loss = compose(lambda lp, b: (-jnp.sum(lp * b.mask), {}), [("l2", l2(), 1.0)])
          >>> batch = LossBatch({}, jnp.ones((1, 2)), jnp.ones(1), {})
          >>> (total, report), grad = jax.jit(loss.value_and_grad)(jnp.array([[-1.0, -2.0]]), batch)
          >>> grad.tolist()  # -1 from the base loss, + d/dx mean(x^2) = x
          [[-2.0, -3.0]]
        """
        total, report, new_state, grad = self._evaluate(logprobs, batch, state)
        if state is None:
            return (total, report), grad
        return (total, report, new_state), grad


def _as_spec(item: Any, index: int) -> TermSpec:
    if isinstance(item, TermSpec):
        return item
    if isinstance(item, tuple) and len(item) in (2, 3):
        return TermSpec(*item)
    raise TypeError(
        f"compose: terms[{index}] must be a TermSpec(name, term, weight) or a (name, term[, "
        f"weight]) tuple; got {type(item).__name__}."
    )


def compose(
    base_loss: BaseLoss,
    terms: Sequence[TermSpec | tuple[Any, ...]],
) -> ComposedLoss:
    """Composes a base loss with named, weighted regularizer terms.

    Args:
      base_loss: ``(logprobs, batch) -> (scalar loss, metrics)``, e.g. a custom loss.
      terms: :class:`TermSpec` (or ``(name, term[, weight])`` tuples), evaluated in order.

    Returns:
      A :class:`ComposedLoss`: ``(logprobs, batch[, state]) -> (total, report[, state])``.

    Raises:
      ValueError: duplicate or malformed names, or a weight that is not a finite number ≥ 0.
      TypeError: a term that is neither callable nor a :class:`StatefulRegularizer`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from losses import LossBatch, cross_entropy
      >>> from regularizers import TermSpec, compose, l2, report_metrics
      >>> def nll(lp, batch):
      ...     return cross_entropy(lp, batch.inputs["weights"], where=batch.mask,
      ...                          reduction="sum"), {}
      >>> loss = compose(nll, [TermSpec("l2", l2(), weight=0.5)])
      >>> batch = LossBatch({"weights": jnp.ones((1, 2))}, jnp.ones((1, 2)), jnp.ones(1), {})
      >>> total, report = jax.jit(loss)(jnp.array([[-1.0, -3.0]]), batch)
      >>> float(total), float(report.terms["l2"].contribution)  # 4 + 0.5 * (1 + 9) / 2
      (6.5, 2.5)
      >>> sorted(report_metrics(report))[:3]
      ['loss/base/grad_norm:mean', 'loss/base:sum', 'loss/total/grad_norm:mean']
    """
    if not callable(base_loss):
        raise TypeError("compose: base_loss must be callable (logprobs, batch) -> (loss, metrics).")
    specs = [_as_spec(item, i) for i, item in enumerate(terms)]
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        where = f"compose: terms[{i}]"
        if not isinstance(spec.name, str) or not _NAME_RE.match(spec.name):
            raise ValueError(
                f"{where}: name {spec.name!r} is not a valid term name; use letters, digits, "
                f"'_', '.' or '-' (no ':' or '/': names become metric keys)."
            )
        if spec.name in seen:
            raise ValueError(f"{where}: duplicate term name {spec.name!r}; names must be unique.")
        seen.add(spec.name)
        w = spec.weight
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
            raise ValueError(
                f"{where}: weight of term {spec.name!r} must be a finite Python number >= 0; "
                f"got {w!r}. Fix: use a non-negative weight (to reward a quantity, use the "
                f"term's own option, e.g. entropy(mode='maximize'))."
            )
        if not (isinstance(spec.term, StatefulRegularizer) or callable(spec.term)):
            raise TypeError(
                f"{where}: term {spec.name!r} must be a function (logprobs, batch) -> (value, "
                f"metrics) or a StatefulRegularizer; got {type(spec.term).__name__}."
            )
    return ComposedLoss(base_loss, specs)


def validate_metric_key(key: str) -> None:
    """Raises unless ``key`` is ``"<name>:<reduction>"`` with exactly one colon.

    Examples:
      >>> from regularizers import validate_metric_key
      >>> validate_metric_key("reg/kl/value:mean")
      >>> try:
      ...     validate_metric_key("a:b:mean")
      ... except ValueError as e:
      ...     print("rejected")
      rejected
    """
    parts = key.split(":")
    if len(parts) != 2 or not parts[0] or parts[1] not in METRIC_REDUCTIONS:
        raise ValueError(
            f"metric key {key!r} must be '<name>:<reduction>' with exactly one ':' and a "
            f"reduction in {list(METRIC_REDUCTIONS)} (Tinker drops or rejects anything else)."
        )


def _add(out: dict[str, Array], key: str, value: Any) -> None:
    validate_metric_key(key)
    if key in out:
        raise ValueError(f"report_metrics: metric key {key!r} is produced twice; rename a term.")
    out[key] = _check_scalar(value, where=f"report_metrics: metric {key!r}")


def _metric_key(prefix: str, name: str) -> str:
    return f"{prefix}{name}" if ":" in name else f"{prefix}{name}:mean"


def report_metrics(report: CompositionReport) -> dict[str, Array]:
    """Flattens a :class:`CompositionReport` into Tinker metric names.

    Keys (each ``name:reduction`` with exactly one colon):

    * ``loss/total:sum``, ``loss/base:sum``, ``loss/total/grad_norm:mean``,
      ``loss/base/grad_norm:mean``;
    * per term ``<n>``: ``reg/<n>/value:mean``, ``reg/<n>/weight:mean``,
      ``reg/<n>/contribution:sum`` (a part of the loss, summed like ``loss:sum``),
      ``reg/<n>/grad_norm:mean``, and each term metric ``m`` as ``reg/<n>/<m>:mean``;
    * the base loss's metrics unchanged when they already carry a reduction
      (``"custom/acc:mean"``), else with ``:mean`` appended.

    Args:
      report: the report of a :class:`ComposedLoss` call.

    Returns:
      ``{key: scalar JAX array}``; convert to host floats once, after the step.

    Raises:
      ValueError: a malformed or duplicate key, or a non-scalar metric.

    Examples:
      >>> import jax.numpy as jnp
      >>> from losses import LossBatch
      >>> from regularizers import compose, entropy, report_metrics
      >>> loss = compose(lambda lp, b: (-jnp.sum(lp * b.mask), {"tokens": jnp.sum(b.mask)}),
      ...                [("ent", entropy(), 0.1)])
      >>> batch = LossBatch({}, jnp.ones((1, 2)), jnp.ones(1), {})
      >>> metrics = report_metrics(loss(jnp.array([[-1.0, -2.0]]), batch)[1])
      >>> [k for k in sorted(metrics) if k.startswith(("reg/", "tokens"))]  # doctest: +NORMALIZE_WHITESPACE
      ['reg/ent/contribution:sum', 'reg/ent/entropy:mean', 'reg/ent/grad_norm:mean',
       'reg/ent/value:mean', 'reg/ent/weight:mean', 'tokens:mean']
      >>> float(metrics["loss/base:sum"]), float(metrics["reg/ent/entropy:mean"])
      (3.0, 1.5)
    """
    out: dict[str, Array] = {}
    _add(out, "loss/total:sum", report.total)
    _add(out, "loss/base:sum", report.base)
    _add(out, "loss/total/grad_norm:mean", report.total_grad_norm)
    _add(out, "loss/base/grad_norm:mean", report.base_grad_norm)
    for name, value in report.base_metrics.items():
        _add(out, _metric_key("", name), value)
    for name, tr in report.terms.items():
        prefix = f"reg/{name}/"
        _add(out, f"{prefix}value:mean", tr.value)
        _add(out, f"{prefix}weight:mean", tr.weight)
        _add(out, f"{prefix}contribution:sum", tr.contribution)
        _add(out, f"{prefix}grad_norm:mean", tr.grad_norm)
        for metric, value in tr.metrics.items():
            _add(out, _metric_key(prefix, metric), value)
    return out
