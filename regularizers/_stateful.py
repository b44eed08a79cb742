"""Stateful loss terms as optax-style ``(init, update)`` pairs with explicit NamedTuple state.

``init() -> state`` and ``update(logprobs, batch, state) -> (value, metrics, new_state)`` are
pure; the caller threads the state from one training step to the next (and can checkpoint
it: it is a pytree of arrays). The state is never differentiated.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import Array, lax

from losses import KLDirection, KLEstimator, LossBatch
from regularizers._base import (
    DatumReduction,
    Metrics,
    Reference,
    StatefulRegularizer,
    batch_masks,
    check_nonnegative,
    check_reduction,
    over_datums,
    per_datum,
    resolve_reference,
)
from regularizers._terms import kl

__all__ = ["AdaptiveKLState", "EMABaselineState", "adaptive_kl", "ema_baseline"]


class AdaptiveKLState(NamedTuple):
    """State of :func:`adaptive_kl`.

    Attributes:
      coef: the current KL coefficient β (float32 scalar).
      kl: the KL measured by the last update (float32 scalar; 0 before the first).
    """

    coef: Array
    kl: Array


def adaptive_kl(
    *,
    reference: Reference,
    target_kl: float,
    horizon: float = 10_000.0,
    init_coef: float = 0.1,
    max_error: float = 0.2,
    direction: KLDirection = "reverse",
    estimator: KLEstimator | None = None,
    reduction: DatumReduction = "mean",
) -> StatefulRegularizer[AdaptiveKLState]:
    r"""A KL penalty whose coefficient adapts towards a target KL (Ziegler et al., 2019).

    Each update measures :math:`\mathrm{KL}` exactly as :func:`regularizers.kl` does, returns
    the value :math:`\beta\,\mathrm{KL}` (β is a constant for the gradient), and updates

    .. math::
       e = \mathrm{clip}\Big(\frac{\mathrm{KL}}{\mathrm{KL}_{target}} - 1,
           -e_{max}, e_{max}\Big), \qquad
       \beta \leftarrow \beta\,\Big(1 + e\,\frac{n}{H}\Big)

    with ``n`` the number of real datums in the batch and ``H`` = ``horizon``: β grows while
    the KL is above the target and shrinks while it is below.

    Args:
      reference: reference logprobs (a :data:`Reference`), as for :func:`regularizers.kl`.
      target_kl: the KL to hold, > 0.
      horizon: H > 0, in datums (default 10 000).
      init_coef: the initial β ≥ 0 (default 0.1).
      max_error: e_max > 0 (default 0.2).
      direction: ``"reverse"`` (default), ``"forward"`` or ``"symmetric"``.
      estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (sampled mode; default ``"k3"``).
      reduction: ``"mean"`` or ``"sum"``.

    Returns:
      A :class:`StatefulRegularizer` with state :class:`AdaptiveKLState`; metrics ``kl`` and
      ``coef`` (the β used for this value).

    Examples:
      >>> import jax.numpy as jnp
      >>> from losses import LossBatch
      >>> from regularizers import adaptive_kl
      >>> term = adaptive_kl(reference="ref", target_kl=0.01, horizon=10.0, init_coef=1.0)
      >>> batch = LossBatch({}, jnp.ones((2, 1)), jnp.ones(2), {"ref": jnp.zeros((2, 1))})
      >>> value, metrics, state = term.update(jnp.full((2, 1), -0.5), batch, term.init())
      >>> round(float(state.coef), 4)  # KL far above target: β *= 1 + 0.2 * 2 / 10
      1.04
    """
    fn = "regularizers.adaptive_kl"
    target = check_nonnegative(target_kl, name="target_kl", where=fn, strict=True)
    h = check_nonnegative(horizon, name="horizon", where=fn, strict=True)
    beta0 = check_nonnegative(init_coef, name="init_coef", where=fn)
    e_max = check_nonnegative(max_error, name="max_error", where=fn, strict=True)
    kl_term = kl(reference=reference, direction=direction, estimator=estimator,
                 reduction=reduction)

    def init() -> AdaptiveKLState:
        return AdaptiveKLState(
            coef=jnp.asarray(beta0, dtype=jnp.float32), kl=jnp.zeros((), dtype=jnp.float32)
        )

    def update(
        logprobs: Array, batch: LossBatch, state: AdaptiveKLState
    ) -> tuple[Array, Metrics, AdaptiveKLState]:
        kl_value, _ = kl_term(logprobs, batch)
        coef = lax.stop_gradient(jnp.asarray(state.coef))
        value = coef.astype(kl_value.dtype) * kl_value
        measured = lax.stop_gradient(kl_value)
        n = jnp.sum((jnp.asarray(batch.datum_mask) != 0).astype(measured.dtype))
        error = jnp.clip(measured / target - 1.0, -e_max, e_max)
        new_coef = coef * (1.0 + error * n / h)
        new_state = AdaptiveKLState(
            coef=new_coef.astype(jnp.float32), kl=measured.astype(jnp.float32)
        )
        return value, {"kl": kl_value, "coef": coef}, new_state

    return StatefulRegularizer(init=init, update=update)


class EMABaselineState(NamedTuple):
    """State of :func:`ema_baseline`.

    Attributes:
      ema: the (biased) exponential moving average of the batch-mean reward (float32).
      num_updates: the number of updates that saw at least one real datum (int32).
    """

    ema: Array
    num_updates: Array


def ema_baseline(
    *,
    reward: Reference = "rewards",
    decay: float = 0.9,
    reduction: DatumReduction = "mean",
) -> StatefulRegularizer[EMABaselineState]:
    r"""REINFORCE with an exponential-moving-average reward baseline.

    Per datum ``b`` with scalar reward :math:`R_b` and sequence score
    :math:`S_b` = the mean (``reduction="mean"``) or sum (``"sum"``) of its real tokens'
    logprobs:

    .. math::
       \hat b = \frac{m}{1 - d^{c}}, \qquad
       v = -\operatorname{reduce}_b\ (R_b - \hat b)\, S_b

    where ``m`` is the EMA, ``d`` = ``decay`` and ``c`` the update count (:math:`\hat b = 0`
    before the first update: the bias-corrected mean of the *previous* batches, so the
    baseline never depends on the current batch). Then
    :math:`m \leftarrow d\,m + (1-d)\,\bar R` with :math:`\bar R` the mean reward of the real
    datums.

    Args:
      reward: per-datum rewards ``[B]`` as a :data:`Reference` (default: the key
        ``"rewards"``, e.g. a per-datum scalar given to ``make_loss_batch``'s
        ``datum_extras``).
      decay: d in [0, 1) (default 0.9).
      reduction: ``"mean"`` (default) or ``"sum"``.

    Returns:
      A :class:`StatefulRegularizer` with state :class:`EMABaselineState`; metrics
      ``baseline``, ``advantage_mean`` and ``reward_mean``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from losses import LossBatch
      >>> from regularizers import ema_baseline
      >>> term = ema_baseline(decay=0.5)
      >>> batch = LossBatch({}, jnp.ones((2, 1)), jnp.ones(2),
      ...                   {"rewards": jnp.array([1.0, 3.0])})
      >>> _, _, state = term.update(jnp.full((2, 1), -1.0), batch, term.init())
      >>> _, metrics, state = term.update(jnp.full((2, 1), -1.0), batch, state)
      >>> float(metrics["baseline"]), int(state.num_updates)
      (2.0, 2)
    """
    fn = "regularizers.ema_baseline"
    d = check_nonnegative(decay, name="decay", where=fn)
    if d >= 1:
        raise ValueError(f"{fn}: decay must be in [0, 1); got {decay!r}.")
    check_reduction(reduction, where=fn)

    def init() -> EMABaselineState:
        return EMABaselineState(
            ema=jnp.zeros((), dtype=jnp.float32), num_updates=jnp.zeros((), dtype=jnp.int32)
        )

    def update(
        logprobs: Array, batch: LossBatch, state: EMABaselineState
    ) -> tuple[Array, Metrics, EMABaselineState]:
        lp = jnp.asarray(logprobs)
        tmask, dmask = batch_masks(lp, batch, where=fn)
        rewards = resolve_reference(reward, batch, (lp.shape[0],), lp.dtype, where=fn,
                                    name="reward")
        ema = lax.stop_gradient(jnp.asarray(state.ema)).astype(lp.dtype)
        count = jnp.asarray(state.num_updates)
        baseline = jnp.where(count > 0, ema / (1.0 - jnp.power(d, count).astype(lp.dtype)), 0)
        advantage = jnp.where(dmask, rewards - baseline, 0)
        score = per_datum(lp, tmask, reduction)
        value = -over_datums(advantage * score, dmask, reduction)
        n = jnp.sum(dmask.astype(lp.dtype))
        reward_mean = jnp.sum(jnp.where(dmask, rewards, 0)) / jnp.maximum(n, 1)
        seen = n > 0
        new_state = EMABaselineState(
            ema=jnp.where(seen, d * ema + (1.0 - d) * reward_mean, ema).astype(jnp.float32),
            num_updates=(count + seen.astype(count.dtype)).astype(jnp.int32),
        )
        metrics = {
            "baseline": baseline,
            "advantage_mean": over_datums(advantage, dmask, "mean"),
            "reward_mean": reward_mean,
        }
        return value, metrics, new_state

    return StatefulRegularizer(init=init, update=update)
