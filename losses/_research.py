"""Ready-to-use research losses over Tinker's per-token logprobs.

Tinker gives, per datum, the logprob of each *target* token (``[T]``, or ``[T, K]`` for 2-D
targets), never the full next-token distribution. The losses here are designed around that:

* preference losses (:func:`dpo`, :func:`bradley_terry`) work on *sequence* scores, which
  :func:`sequence_logprobs` builds from per-token logprobs and a mask;
* :func:`kl_penalized_policy_gradient` estimates the KL penalty from sampled tokens
  (:func:`losses.kl_estimate`);
* :func:`topk_distillation` uses 2-D targets: the student's logprobs *of the teacher's top-k
  token ids*, and compares distributions on that renormalised k-token support.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from losses._builtin import _clipped_objective
from losses._common import (
    Reduction,
    align,
    as_float,
    check_choice,
    check_reduction,
    masked_log_softmax,
    reduce_tokens,
    token_mask,
)
from losses._kl import KLEstimator, kl_per_token

__all__ = [
    "bradley_terry",
    "dpo",
    "kl_penalized_policy_gradient",
    "sequence_logprobs",
    "topk_distillation",
]


def _is_python_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def sequence_logprobs(
    logprobs: ArrayLike, *, where: ArrayLike | None = None, normalize: bool = False
) -> Array:
    r"""Sums (or averages) per-token logprobs into one score per sequence.

    .. math:: \log \pi(y) = \sum_{i \in \text{mask}} \log \pi(y_i \mid y_{<i})

    The sum runs over the last axis of ``where`` (the token axis) and any axis after it; with
    ``where=None`` over the last axis of ``logprobs``.

    Args:
      logprobs: ``[..., T]`` per-token logprobs.
      where: optional mask (non-zero = token counts, e.g. the completion part).
      normalize: if ``True``, divide by the number of counted tokens (length-normalised
        score; 0 for an empty sequence).

    Returns:
      ``[...]``: one score per sequence.

    Examples:
      >>> import jax.numpy as jnp
      >>> from losses import sequence_logprobs
      >>> lp = jnp.array([[-1.0, -2.0, -4.0], [-1.0, -1.0, -1.0]])
      >>> sequence_logprobs(lp, where=jnp.array([[1, 1, 0], [1, 1, 1]])).tolist()
      [-3.0, -3.0]
    """
    fn = "losses.sequence_logprobs"
    lp = as_float(logprobs, name="logprobs", where=fn)
    if lp.ndim < 1:
        raise ValueError(f"{fn}: logprobs must have a token axis; got a scalar.")
    token_axis = (jnp.ndim(where) if where is not None else lp.ndim) - 1
    if token_axis < 0:
        raise ValueError(f"{fn}: where must have a token axis ([..., T]); got a scalar.")
    m = token_mask(where, tuple(lp.shape), where=fn, like="logprobs")
    axes = tuple(range(token_axis, lp.ndim))
    total = jnp.sum(jnp.where(m, lp, 0), axis=axes)
    if normalize:
        total = total / jnp.maximum(jnp.sum(m.astype(lp.dtype), axis=axes), 1)
    return total


def dpo(
    policy_chosen_logprobs: ArrayLike,
    policy_rejected_logprobs: ArrayLike,
    reference_chosen_logprobs: ArrayLike,
    reference_rejected_logprobs: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduction: Reduction,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    variant: Literal["sigmoid", "ipo"] = "sigmoid",
) -> Array:
    r"""Direct Preference Optimization on sequence logprobs of (chosen, rejected) pairs.

    With :math:`h = (\pi_c - \rho_c) - (\pi_r - \rho_r)` (policy minus reference sequence
    logprobs of the chosen and rejected completions):

    .. math::
       \text{sigmoid:}\quad \ell = -(1-\varepsilon)\log\sigma(\beta h)
                                   - \varepsilon \log\sigma(-\beta h)

       \text{ipo:}\quad \ell = \Big(h - \frac{1}{2\beta}\Big)^2

    ``ε`` (``label_smoothing``) is the conservative-DPO probability that a label is flipped.
    Sequence logprobs come from per-token logprobs with :func:`sequence_logprobs`; with the
    usual interleaved (chosen, rejected) datums, take ``seq[0::2]`` and ``seq[1::2]``.

    Args:
      policy_chosen_logprobs: ``[P]`` (any shape) policy sequence logprobs of chosen answers.
      policy_rejected_logprobs: same shape, of rejected answers.
      reference_chosen_logprobs: same shape, reference model, chosen answers.
      reference_rejected_logprobs: same shape, reference model, rejected answers.
      where: optional pair mask (non-zero = real pair).
      reduction: ``"sum"``, ``"mean"`` over real pairs, or ``"none"`` (per pair).
      beta: inverse temperature of the implicit reward (> 0), default 0.1.
      label_smoothing: ε in [0, 0.5), default 0 (plain DPO). ``"sigmoid"`` only.
      variant: ``"sigmoid"`` (DPO, default) or ``"ipo"`` (Azar et al., 2023).

    Returns:
      A scalar, or the per-pair losses for ``reduction="none"``.

    References:
      Rafailov et al., 2023, https://arxiv.org/abs/2305.18290

    Examples:
      >>> import jax.numpy as jnp
      >>> from losses import dpo
      >>> pc, pr = jnp.array([-10.0]), jnp.array([-12.0])
      >>> rc, rr = jnp.array([-11.0]), jnp.array([-11.0])
      >>> round(float(dpo(pc, pr, rc, rr, reduction="sum", beta=0.5)), 4)  # -log σ(1)
      0.3133
    """
    fn = "losses.dpo"
    check_reduction(reduction, where=fn)
    check_choice(variant, ("sigmoid", "ipo"), name="variant", where=fn)
    if _is_python_number(beta) and not beta > 0:
        raise ValueError(f"{fn}: beta must be > 0; got {beta!r}.")
    if _is_python_number(label_smoothing) and not 0 <= label_smoothing < 0.5:
        raise ValueError(f"{fn}: label_smoothing must be in [0, 0.5); got {label_smoothing!r}.")
    if variant == "ipo" and not (_is_python_number(label_smoothing) and label_smoothing == 0):
        raise ValueError(f"{fn}: label_smoothing applies to variant='sigmoid' only.")
    pc = as_float(policy_chosen_logprobs, name="policy_chosen_logprobs", where=fn)
    shape = tuple(pc.shape)
    others = {
        "policy_rejected_logprobs": policy_rejected_logprobs,
        "reference_chosen_logprobs": reference_chosen_logprobs,
        "reference_rejected_logprobs": reference_rejected_logprobs,
    }
    pr, rc, rr = (
        align(as_float(v, name=k, where=fn), shape, name=k, like="policy_chosen_logprobs",
              where=fn)
        for k, v in others.items()
    )
    m = token_mask(where, shape, where=fn, like="policy_chosen_logprobs")
    h = jnp.where(m, (pc - rc) - (pr - rr), 0)
    if variant == "ipo":
        per = jnp.square(h - 1.0 / (2.0 * beta))
    else:
        per = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * h) - (
            label_smoothing * jax.nn.log_sigmoid(-beta * h)
        )
    return reduce_tokens(jnp.where(m, per, 0), m, reduction)


def bradley_terry(
    chosen_scores: ArrayLike,
    rejected_scores: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduction: Reduction,
    beta: float = 1.0,
    margin: float = 0.0,
) -> Array:
    r"""Bradley–Terry pairwise preference loss on scalar scores.

    .. math:: \ell = -\log\sigma\big(\beta\,(s_c - s_r) - m\big)

    The negative log-likelihood that the chosen item wins under the Bradley–Terry model
    :math:`P(c \succ r) = \sigma(\beta(s_c - s_r))`, with an optional margin ``m``. Scores
    can be any per-sequence quantity, e.g. :func:`sequence_logprobs` (optionally normalised)
    for a reward-model-free preference objective.

    Args:
      chosen_scores: ``[P]`` (any shape) scores of the preferred items.
      rejected_scores: same shape, scores of the other items.
      where: optional pair mask (non-zero = real pair).
      reduction: ``"sum"``, ``"mean"`` over real pairs, or ``"none"`` (per pair).
      beta: scale of the score difference, default 1.
      margin: required margin, default 0.

    Returns:
      A scalar, or the per-pair losses for ``reduction="none"``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from losses import bradley_terry
      >>> round(float(bradley_terry(jnp.array([1.0]), jnp.array([1.0]), reduction="sum")), 4)
      0.6931
    """
    fn = "losses.bradley_terry"
    check_reduction(reduction, where=fn)
    sc = as_float(chosen_scores, name="chosen_scores", where=fn)
    shape = tuple(sc.shape)
    sr = align(
        as_float(rejected_scores, name="rejected_scores", where=fn),
        shape,
        name="rejected_scores",
        like="chosen_scores",
        where=fn,
    )
    m = token_mask(where, shape, where=fn, like="chosen_scores")
    diff = jnp.where(m, sc - sr, 0)
    per = -jax.nn.log_sigmoid(beta * diff - margin)
    return reduce_tokens(jnp.where(m, per, 0), m, reduction)


def kl_penalized_policy_gradient(
    target_logprobs: ArrayLike,
    sampling_logprobs: ArrayLike,
    reference_logprobs: ArrayLike,
    advantages: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduction: Reduction,
    kl_coef: float,
    estimator: KLEstimator = "k3",
    clip_low_threshold: float | None = None,
    clip_high_threshold: float | None = None,
) -> Array:
    r"""Importance-sampled policy gradient with a per-token KL penalty to a reference.

    .. math::
       r_i = e^{t_i - s_i}, \qquad
       \ell_i = \underbrace{-r_i A_i}_{\text{policy gradient}}
                + \beta\, k(t_i - \rho_i)

    where ``k`` is the chosen reverse-KL estimator of :func:`losses.kl_estimate` (``"k1"``:
    ``ℓ``; ``"k2"``: ``ℓ²/2``; ``"k3"``: ``e^{-ℓ} - 1 + ℓ``, with ``ℓ = t - ρ``), ``ρ`` the
    reference logprobs and ``β`` = ``kl_coef``. With both clip thresholds the policy term is
    PPO's clipped objective instead. Unlike folding the KL into the advantages (the cookbook's
    ``incorporate_kl_penalty``), the penalty keeps its own gradient, and with ``"k2"`` that
    gradient is the on-policy reverse-KL gradient. The KL term is not importance-weighted:
    tokens are assumed sampled from (approximately) the current policy.

    Args:
      target_logprobs: ``[..., T]`` current-policy logprobs (differentiable).
      sampling_logprobs: the sampler's logprobs of the same tokens.
      reference_logprobs: the reference model's logprobs of the same tokens.
      advantages: per-token advantages.
      where: optional mask (non-zero = real token).
      reduction: ``"sum"``, ``"mean"`` over unmasked tokens, or ``"none"``.
      kl_coef: β ≥ 0, the KL penalty coefficient (no default: it is task-dependent).
      estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (default).
      clip_low_threshold: with ``clip_high_threshold``, use PPO clipping (e.g. 0.8).
      clip_high_threshold: with ``clip_low_threshold``, use PPO clipping (e.g. 1.2).

    Returns:
      A scalar, or the per-token losses for ``reduction="none"``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from losses import kl_penalized_policy_gradient
      >>> t = jnp.array([-1.0]); s = jnp.array([-1.0]); ref = jnp.array([-1.0])
      >>> a = jnp.array([2.0])
      >>> float(kl_penalized_policy_gradient(t, s, ref, a, reduction="sum", kl_coef=0.1))
      -2.0
    """
    fn = "losses.kl_penalized_policy_gradient"
    check_reduction(reduction, where=fn)
    check_choice(estimator, ("k1", "k2", "k3"), name="estimator", where=fn)
    if _is_python_number(kl_coef) and not kl_coef >= 0:
        raise ValueError(f"{fn}: kl_coef must be >= 0; got {kl_coef!r}.")
    if (clip_low_threshold is None) != (clip_high_threshold is None):
        raise ValueError(
            f"{fn}: pass both clip_low_threshold and clip_high_threshold (PPO clipping) or "
            f"neither (plain importance sampling); got low={clip_low_threshold!r}, "
            f"high={clip_high_threshold!r}."
        )
    t = as_float(target_logprobs, name="target_logprobs", where=fn)
    shape = tuple(t.shape)
    m = token_mask(where, shape, where=fn, like="target_logprobs")
    s, ref, a = (
        jnp.where(
            m,
            align(as_float(v, name=k, where=fn), shape, name=k, like="target_logprobs", where=fn),
            0,
        )
        for k, v in (
            ("sampling_logprobs", sampling_logprobs),
            ("reference_logprobs", reference_logprobs),
            ("advantages", advantages),
        )
    )
    t = jnp.where(m, t, 0)
    ratio = jnp.exp(t - s)
    if clip_low_threshold is None or clip_high_threshold is None:
        pg = -ratio * a
    else:
        pg = _clipped_objective(
            ratio, a, jnp.asarray(clip_low_threshold), jnp.asarray(clip_high_threshold)
        )
    kl = kl_per_token(t - ref, estimator=estimator, direction="reverse")
    per = jnp.where(m, pg + kl_coef * kl, 0)
    return reduce_tokens(per, m, reduction)


def topk_distillation(
    student_logprobs: ArrayLike,
    teacher_logprobs: ArrayLike,
    *,
    where: ArrayLike | None = None,
    support_where: ArrayLike | None = None,
    reduction: Reduction,
    direction: Literal["forward", "reverse"] = "forward",
    temperature: float = 1.0,
    renormalize_student: bool = True,
) -> Array:
    r"""Distillation against a teacher's top-k logprobs, on the renormalised top-k support.

    Inputs are 2-D per datum: for each position the teacher's top-k token ids are sent as
    ``target_tokens [N, K]``, so Tinker returns the *student's* logprobs of exactly those ids,
    ``student_logprobs [N, K]``, aligned with ``teacher_logprobs [N, K]``. Both are turned
    into distributions on the k-token support:

    .. math::
       p_k = \mathrm{softmax}_k(\tau^{-1} T_k), \qquad
       \log q_k = S_k - \log\textstyle\sum_j e^{S_j}

       \text{forward:}\ \ \ell = \sum_k p_k(\log p_k - \log q_k), \qquad
       \text{reverse:}\ \ \ell = \sum_k q_k(\log q_k - \log p_k)

    With ``renormalize_student=False`` (forward only) ``log q_k = S_k`` (the student's true
    logprobs): then ``ℓ = Σ p_k log p_k - Σ p_k S_k`` is still ≥ 0 and is 0 only when the
    student puts all its mass on the top-k exactly as the teacher does, so it also pulls
    probability *into* the support; the renormalised version only matches the shape of the
    distribution on the support. Probability mass outside the top-k is invisible either way.

    Args:
      student_logprobs: ``[..., N, K]`` student logprobs of the teacher's top-k ids.
      teacher_logprobs: ``[..., N, K]`` teacher logprobs of the same ids.
      where: optional position mask ``[..., N]`` (non-zero = real position).
      support_where: optional ``[..., N, K]`` mask of valid top-k entries (e.g. fewer than K
        candidates); positions with an empty support contribute 0.
      reduction: ``"sum"``, ``"mean"`` over real positions, or ``"none"`` (``[..., N]``).
      direction: ``"forward"`` KL(teacher‖student) (default) or ``"reverse"``.
      temperature: τ > 0 applied to the teacher logprobs before renormalising, default 1.
      renormalize_student: see above; must be ``True`` for ``"reverse"``.

    Returns:
      A scalar, or the per-position losses ``[..., N]`` for ``reduction="none"``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from losses import topk_distillation
      >>> teacher = jnp.log(jnp.array([[0.5, 0.25]]))
      >>> student = jnp.log(jnp.array([[0.2, 0.1]]))  # same shape on the support
      >>> round(float(topk_distillation(student, teacher, reduction="sum")), 4)
      0.0
    """
    fn = "losses.topk_distillation"
    check_reduction(reduction, where=fn)
    check_choice(direction, ("forward", "reverse"), name="direction", where=fn)
    if _is_python_number(temperature) and not temperature > 0:
        raise ValueError(f"{fn}: temperature must be > 0; got {temperature!r}.")
    if direction == "reverse" and not renormalize_student:
        raise ValueError(
            f"{fn}: direction='reverse' needs a normalised student distribution; got "
            f"renormalize_student=False. Fix: use renormalize_student=True or direction="
            f"'forward'."
        )
    s = as_float(student_logprobs, name="student_logprobs", where=fn)
    if s.ndim < 1:
        raise ValueError(f"{fn}: student_logprobs must be [..., N, K]; got a scalar.")
    shape = tuple(s.shape)
    tch = align(
        as_float(teacher_logprobs, name="teacher_logprobs", where=fn),
        shape,
        name="teacher_logprobs",
        like="student_logprobs",
        where=fn,
    )
    pos = token_mask(where, shape[:-1], where=fn, like="student_logprobs[..., 0]")
    sup = token_mask(support_where, shape, where=fn, name="support_where",
                     like="student_logprobs")
    sup = sup & pos[..., None]
    log_p = masked_log_softmax(tch / temperature, sup)
    log_q = masked_log_softmax(s, sup) if renormalize_student else jnp.where(sup, s, 0)
    if direction == "forward":
        per_k = jnp.exp(log_p) * (log_p - log_q)
    else:
        per_k = jnp.exp(log_q) * (log_q - log_p)
    per = jnp.sum(jnp.where(sup, per_k, 0), axis=-1)
    real = pos & jnp.any(sup, axis=-1)
    return reduce_tokens(jnp.where(real, per, 0), real, reduction)
