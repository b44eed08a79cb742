"""Per-token KL estimators from logprobs of *sampled* tokens.

Tinker returns the logprob of each target token only, never the full next-token distribution,
so a KL divergence between the policy and a reference can only be *estimated* from the tokens
that were actually sampled. With ``t = log π_θ(x)`` and ``r = log π_ref(x)`` for a token ``x``
drawn from the policy (the sampler, assumed close to π_θ), and ``ℓ = t - r``:

============ ====================== ====================================================
estimator    reverse KL(π_θ‖π_ref)  forward KL(π_ref‖π_θ) (importance weight w = e^{-ℓ})
============ ====================== ====================================================
``"k1"``     ``ℓ``                  ``w·(-ℓ)`` = ``w log w``
``"k2"``     ``ℓ²/2``               ``w·ℓ²/2``
``"k3"``     ``e^{-ℓ} - 1 + ℓ``     ``1 - w + w log w``
============ ====================== ====================================================

``"symmetric"`` is the sum of both directions (Jeffreys divergence).

* k1 is unbiased but has high variance and can be negative per token; as a *loss* on
  on-policy samples its expected gradient is zero (E[∇ log π_θ] = 0), so prefer it as a metric.
* k2 is biased (exact to second order) but its gradient ``ℓ ∇t`` is the on-policy gradient
  of reverse KL; a good choice for a penalty.
* k3 (Schulman's estimator) is unbiased, non-negative per token and low-variance; the usual
  choice for both values and penalties (GRPO).
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from losses._common import (
    Reduction,
    align,
    as_float,
    check_choice,
    check_reduction,
    reduce_tokens,
    token_mask,
)

__all__ = ["KLDirection", "KLEstimator", "kl_estimate", "kl_per_token"]

KLEstimator: TypeAlias = Literal["k1", "k2", "k3"]
KLDirection: TypeAlias = Literal["reverse", "forward", "symmetric"]

_ESTIMATORS = ("k1", "k2", "k3")
_DIRECTIONS = ("reverse", "forward", "symmetric")


def _reverse(log_ratio: Array, estimator: str) -> Array:
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * jnp.square(log_ratio)
    return jnp.expm1(-log_ratio) + log_ratio


def _forward(log_ratio: Array, estimator: str) -> Array:
    w = jnp.exp(-log_ratio)
    if estimator == "k1":
        return -w * log_ratio
    if estimator == "k2":
        return 0.5 * w * jnp.square(log_ratio)
    return 1.0 - w - w * log_ratio


def kl_per_token(log_ratio: Array, *, estimator: str, direction: str) -> Array:
    """Per-token KL estimate from ``log_ratio = log π_θ - log π_ref`` (no masking, no
    reduction): the building block of :func:`kl_estimate` and of the KL regularizers.

    Example:
      >>> import jax.numpy as jnp
      >>> from losses import kl_per_token
      >>> kl_per_token(jnp.array([0.0, 0.5]), estimator="k1", direction="reverse").tolist()
      [0.0, 0.5]
    """
    if direction == "reverse":
        return _reverse(log_ratio, estimator)
    if direction == "forward":
        return _forward(log_ratio, estimator)
    return _reverse(log_ratio, estimator) + _forward(log_ratio, estimator)


def kl_estimate(
    logprobs: ArrayLike,
    reference_logprobs: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduction: Reduction,
    estimator: KLEstimator = "k3",
    direction: KLDirection = "reverse",
) -> Array:
    r"""Estimates the KL divergence between the policy and a reference from sampled tokens.

    With :math:`\ell = t - r` (policy minus reference logprob of each sampled token) and
    :math:`w = e^{-\ell}`, the reverse estimators are :math:`k_1 = \ell`,
    :math:`k_2 = \ell^2/2`, :math:`k_3 = e^{-\ell} - 1 + \ell`; the forward ones are the same
    estimators with the roles swapped, importance-weighted by :math:`w`
    (:math:`k_3 = 1 - w + w\log w`); ``"symmetric"`` adds both. See the module docstring for
    their bias/variance and gradient properties. The tokens are assumed to be sampled from
    (approximately) the policy.

    Args:
      logprobs: ``[..., T]`` policy logprobs of the sampled tokens (differentiable).
      reference_logprobs: the reference model's logprobs of the same tokens.
      where: optional mask (non-zero = real token).
      reduction: ``"sum"``, ``"mean"`` over unmasked tokens, or ``"none"`` (per token).
      estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (default).
      direction: ``"reverse"`` KL(π_θ‖π_ref) (default), ``"forward"`` KL(π_ref‖π_θ) or
        ``"symmetric"`` (their sum).

    Returns:
      A scalar, or the per-token estimates for ``reduction="none"`` (0 where masked).

    Examples:
      >>> import jax.numpy as jnp
      >>> from losses import kl_estimate
      >>> t = jnp.array([-1.0, -2.0]); r = jnp.array([-1.0, -1.0])
      >>> round(float(kl_estimate(t, r, reduction="sum", estimator="k1")), 4)
      -1.0
      >>> round(float(kl_estimate(t, r, reduction="sum")), 4)  # k3: e - 1 - 1
      0.7183
    """
    fn = "losses.kl_estimate"
    check_reduction(reduction, where=fn)
    check_choice(estimator, _ESTIMATORS, name="estimator", where=fn)
    check_choice(direction, _DIRECTIONS, name="direction", where=fn)
    t = as_float(logprobs, name="logprobs", where=fn)
    shape = tuple(t.shape)
    m = token_mask(where, shape, where=fn, like="logprobs")
    r = align(
        as_float(reference_logprobs, name="reference_logprobs", where=fn),
        shape,
        name="reference_logprobs",
        like="logprobs",
        where=fn,
    )
    log_ratio = jnp.where(m, t - r, 0)
    per = jnp.where(m, kl_per_token(log_ratio, estimator=estimator, direction=direction), 0)
    return reduce_tokens(per, m, reduction)
