"""Stateless regularizer terms over Tinker's per-token logprobs.

Each constructor validates its hyperparameters eagerly and returns a pure, jit-able term
``(logprobs, batch) -> (value, metrics)``; see :mod:`regularizers._base` for the shape and
reduction conventions. The value is what the term *adds to the loss* (before its weight), so
a smaller value is always "better" for the optimiser.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax import Array, lax

from losses import (
    KLDirection,
    KLEstimator,
    LossBatch,
    check_choice,
    kl_per_token,
    masked_log_softmax,
)
from regularizers._base import (
    DatumReduction,
    Metrics,
    Reference,
    Regularizer,
    batch_masks,
    check_nonnegative,
    check_reduction,
    is_topk,
    lookup,
    over_datums,
    per_datum,
    resolve_reference,
    transform,
)

__all__ = [
    "consistency",
    "elastic_net",
    "entropy",
    "gradient_penalty",
    "kl",
    "l1",
    "l2",
    "orthogonality",
]

Space = Literal["logprobs", "probs"]
BaseLoss = Callable[[Array, LossBatch], tuple[Array, Any]]


def _penalty(
    fn: str,
    *,
    l1_weight: float,
    l2_weight: float,
    center: Reference,
    clip: float | None,
    on: Space,
    reduction: DatumReduction,
) -> Regularizer:
    check_choice(on, ("logprobs", "probs"), name="on", where=fn)
    check_reduction(reduction, where=fn)
    clip_value = None if clip is None else check_nonnegative(clip, name="clip", where=fn,
                                                             strict=True)

    def term(logprobs: Array, batch: LossBatch) -> tuple[Array, Metrics]:
        lp = jnp.asarray(logprobs)
        tmask, dmask = batch_masks(lp, batch, where=fn)
        x = transform(jnp.where(tmask, lp, 0), on, where=fn)
        c = resolve_reference(center, batch, tuple(lp.shape), lp.dtype, where=fn, name="center")
        d = jnp.where(tmask, x - c, 0)
        if clip_value is not None:
            d = jnp.clip(d, -clip_value, clip_value)
        per_token = l1_weight * jnp.abs(d) + l2_weight * jnp.square(d)
        value = over_datums(per_datum(per_token, tmask, reduction), dmask, reduction)
        return value, {}

    return term


def l1(
    *,
    center: Reference = 0.0,
    clip: float | None = None,
    on: Space = "logprobs",
    reduction: DatumReduction = "mean",
) -> Regularizer:
    r"""L1 penalty on per-token logprobs (or probabilities) around a center.

    .. math:: v = \operatorname{reduce}_{b,i}\ \big|\,\mathrm{clip}(x_{b,i} - c_{b,i},
       -\kappa, \kappa)\big|

    with ``x`` = the logprob (``on="logprobs"``) or ``exp(logprob)`` (``on="probs"``) of each
    target token, ``c`` the center in the same space, ``κ`` = ``clip``. Around ``center=0``
    on logprobs this pushes target tokens towards probability 1 (like a robust NLL); around
    reference logprobs (``center="ref_logprobs"``) it is a robust trust region.

    Args:
      center: a :data:`Reference` (number, key of the batch, array or ``batch -> array``).
      clip: optional κ > 0: deviations are clipped to [-κ, κ] (bounded per-token penalty;
        no gradient beyond κ).
      on: ``"logprobs"`` (default) or ``"probs"``.
      reduction: ``"mean"`` (per-datum token mean, then mean over datums) or ``"sum"``.

    Returns:
      A term ``(logprobs, batch) -> (value, {})``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from losses import LossBatch
      >>> from regularizers import l1
      >>> batch = LossBatch({}, jnp.array([[1.0, 1.0, 0.0]]), jnp.ones(1), {})
      >>> value, _ = l1()(jnp.array([[-1.0, -3.0, -100.0]]), batch)
      >>> float(value)  # mean of |-1| and |-3|; the padded token is ignored
      2.0
    """
    return _penalty(
        "regularizers.l1", l1_weight=1.0, l2_weight=0.0, center=center, clip=clip, on=on,
        reduction=reduction,
    )


def l2(
    *,
    center: Reference = 0.0,
    clip: float | None = None,
    on: Space = "logprobs",
    reduction: DatumReduction = "mean",
) -> Regularizer:
    r"""Squared (L2) penalty on per-token logprobs (or probabilities) around a center.

    .. math:: v = \operatorname{reduce}_{b,i}\ \mathrm{clip}(x_{b,i} - c_{b,i},
       -\kappa, \kappa)^2

    Same arguments as :func:`l1`; ``clip`` bounds each token's penalty by κ².

    Args:
      center: a :data:`Reference` (number, key of the batch, array or ``batch -> array``).
      clip: optional κ > 0 bounding each token's deviation.
      on: ``"logprobs"`` (default) or ``"probs"``.
      reduction: ``"mean"`` or ``"sum"``.

    Returns:
      A term ``(logprobs, batch) -> (value, {})``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from losses import LossBatch
      >>> from regularizers import l2
      >>> batch = LossBatch({}, jnp.ones((1, 2)), jnp.ones(1), {"ref": jnp.array([[-1.0, -1.0]])})
      >>> value, _ = l2(center="ref", clip=1.0)(jnp.array([[-2.0, -4.0]]), batch)
      >>> float(value)  # deviations -1 and -3 (clipped to -1): mean of 1 and 1
      1.0
    """
    return _penalty(
        "regularizers.l2", l1_weight=0.0, l2_weight=1.0, center=center, clip=clip, on=on,
        reduction=reduction,
    )


def elastic_net(
    *,
    l1_ratio: float = 0.5,
    center: Reference = 0.0,
    clip: float | None = None,
    on: Space = "logprobs",
    reduction: DatumReduction = "mean",
) -> Regularizer:
    r"""Elastic net: a convex mix of the :func:`l1` and :func:`l2` penalties.

    .. math:: v = \operatorname{reduce}_{b,i}\ \big(\rho\,|d_{b,i}| + (1-\rho)\,d_{b,i}^2\big),
       \qquad d = \mathrm{clip}(x - c, -\kappa, \kappa)

    Args:
      l1_ratio: ρ in [0, 1] (1 = pure L1, 0 = pure L2), default 0.5.
      center: a :data:`Reference`.
      clip: optional κ > 0.
      on: ``"logprobs"`` (default) or ``"probs"``.
      reduction: ``"mean"`` or ``"sum"``.

    Returns:
      A term ``(logprobs, batch) -> (value, {})``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from losses import LossBatch
      >>> from regularizers import elastic_net
      >>> batch = LossBatch({}, jnp.ones((1, 1)), jnp.ones(1), {})
      >>> float(elastic_net(l1_ratio=0.5)(jnp.array([[-2.0]]), batch)[0])  # 0.5*2 + 0.5*4
      3.0
    """
    fn = "regularizers.elastic_net"
    ratio = check_nonnegative(l1_ratio, name="l1_ratio", where=fn)
    if ratio > 1:
        raise ValueError(f"{fn}: l1_ratio must be in [0, 1]; got {l1_ratio!r}.")
    return _penalty(
        fn, l1_weight=ratio, l2_weight=1.0 - ratio, center=center, clip=clip, on=on,
        reduction=reduction,
    )


def entropy(
    *,
    mode: Literal["maximize", "minimize"] = "maximize",
    temperature: float = 1.0,
    normalize: bool = False,
    vocab_size: int | None = None,
    estimator: Literal["score_function", "plugin"] = "score_function",
    reduction: DatumReduction = "mean",
) -> Regularizer:
    r"""Entropy of the policy, estimated from per-token logprobs; maximised or minimised.

    *Sampled mode* (``logprobs [B, T]``, the tokens sampled from the policy): per token,
    :math:`h_i = -\log p(y_i)/\tau`, a Monte-Carlo estimate of the (temperature-scaled)
    entropy of the next-token distribution. Its naive gradient :math:`-\nabla\log p(y_i)` has
    zero expectation on-policy, so ``estimator="score_function"`` (default) keeps the value
    :math:`h_i` but takes the REINFORCE gradient :math:`-\tfrac{\log p(y_i)}{\tau}\nabla\log
    p(y_i)`, an unbiased estimate of the entropy gradient; ``"plugin"`` differentiates
    :math:`h_i` directly. The true partition function of a tempered distribution is unknown
    here, so ``temperature`` only rescales (it equals dividing the weight by τ). Tokens that
    were *not* sampled from the policy (SFT data) make this a cross-entropy, not an entropy.

    *Top-k mode* (``logprobs [B, T, K]``, e.g. the logprobs of K candidate tokens): the exact
    entropy of :math:`\tilde p = \mathrm{softmax}_K(\log p/\tau)` renormalised on the K
    candidates, :math:`h_i = -\sum_k \tilde p_k \log \tilde p_k` (``estimator`` must be left
    at its default).

    The value is :math:`-H` for ``mode="maximize"`` (an entropy bonus) and :math:`+H` for
    ``"minimize"``, with :math:`H` the per-datum reduced :math:`h`; metric ``entropy`` = H.

    Args:
      mode: ``"maximize"`` (default) or ``"minimize"``.
      temperature: τ > 0, default 1.
      normalize: divide by the maximum entropy: ``log K`` in top-k mode, ``log(vocab_size)``
        in sampled mode (then ``vocab_size`` is required).
      vocab_size: the vocabulary size, for ``normalize`` in sampled mode.
      estimator: ``"score_function"`` (default) or ``"plugin"``; sampled mode only.
      reduction: ``"mean"`` or ``"sum"``.

    Returns:
      A term ``(logprobs, batch) -> (value, {"entropy": H})``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from losses import LossBatch
      >>> from regularizers import entropy
      >>> batch = LossBatch({}, jnp.ones((1, 2)), jnp.ones(1), {})
      >>> value, metrics = entropy()(jnp.array([[-1.0, -3.0]]), batch)
      >>> float(value), float(metrics["entropy"])
      (-2.0, 2.0)
    """
    fn = "regularizers.entropy"
    check_choice(mode, ("maximize", "minimize"), name="mode", where=fn)
    check_choice(estimator, ("score_function", "plugin"), name="estimator", where=fn)
    check_reduction(reduction, where=fn)
    tau = check_nonnegative(temperature, name="temperature", where=fn, strict=True)
    if vocab_size is not None and (
        isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2
    ):
        raise ValueError(f"{fn}: vocab_size must be an integer >= 2; got {vocab_size!r}.")

    def term(logprobs: Array, batch: LossBatch) -> tuple[Array, Metrics]:
        lp = jnp.asarray(logprobs)
        tmask, dmask = batch_masks(lp, batch, where=fn)
        x = jnp.where(tmask, lp, 0)
        if is_topk(lp, batch):
            if estimator != "score_function":
                raise ValueError(
                    f"{fn}: estimator={estimator!r} applies to sampled-token logprobs [B, T]; "
                    f"with [B, T, K] logprobs the entropy is exact. Fix: drop estimator=."
                )
            log_p = masked_log_softmax(x / tau, tmask)
            h = -jnp.sum(jnp.where(tmask, jnp.exp(log_p) * log_p, 0), axis=-1)
            tok = jnp.any(tmask, axis=-1)
            k = lp.shape[-1]
            max_entropy = math.log(k) if k > 1 else 1.0
        else:
            h = -x / tau
            if estimator == "score_function":
                surrogate = -lax.stop_gradient(x / tau) * x
                h = lax.stop_gradient(h) + surrogate - lax.stop_gradient(surrogate)
            tok = tmask
            if normalize and vocab_size is None:
                raise ValueError(
                    f"{fn}: normalize=True with sampled-token logprobs [B, T] needs "
                    f"vocab_size (the maximum entropy is log(vocab_size)). Fix: pass "
                    f"vocab_size=, or use [B, T, K] logprobs."
                )
            max_entropy = math.log(vocab_size) if vocab_size is not None else 1.0
        if normalize:
            h = h / max_entropy
        ent = over_datums(per_datum(h, tok, reduction), dmask, reduction)
        value = -ent if mode == "maximize" else ent
        return value, {"entropy": ent}

    return term


def _topk_kl(log_q: Array, log_p: Array, support: Array, direction: str) -> Array:
    """Exact KL between distributions on the last axis (already log-normalised)."""
    rev = jnp.sum(jnp.where(support, jnp.exp(log_q) * (log_q - log_p), 0), axis=-1)
    fwd = jnp.sum(jnp.where(support, jnp.exp(log_p) * (log_p - log_q), 0), axis=-1)
    if direction == "reverse":
        return rev
    if direction == "forward":
        return fwd
    return rev + fwd


def kl(
    *,
    reference: Reference,
    direction: KLDirection = "reverse",
    estimator: KLEstimator | None = None,
    reduction: DatumReduction = "mean",
) -> Regularizer:
    r"""KL divergence between the policy and a reference, from per-token logprobs.

    *Sampled mode* (``[B, T]``): the per-token estimators of :func:`losses.kl_estimate` with
    :math:`\ell = \log\pi_\theta(y_i) - \log\pi_{ref}(y_i)` (default ``"k3"``:
    :math:`e^{-\ell} - 1 + \ell` for reverse KL(π_θ‖π_ref); forward KL(π_ref‖π_θ) is
    importance-weighted by :math:`e^{-\ell}`; ``"symmetric"`` is their sum). The reference
    logprobs are the reference model's logprobs of the same target tokens.

    *Top-k mode* (``[B, T, K]`` logprobs and reference): the exact KL between the two
    distributions renormalised on the K candidates (``estimator`` must be ``None``).

    The gradient flows through the policy logprobs only (the reference is a constant). It is
    nonzero wherever the policy and the reference differ.

    Args:
      reference: a :data:`Reference`: reference logprobs as an array, as a per-datum
        ``loss_fn_inputs`` field or extra (its key), or ``batch -> array``.
      direction: ``"reverse"`` (default), ``"forward"`` or ``"symmetric"``.
      estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (sampled mode; default ``"k3"``).
      reduction: ``"mean"`` or ``"sum"``.

    Returns:
      A term ``(logprobs, batch) -> (value, {})``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from losses import LossBatch
      >>> from regularizers import kl
      >>> batch = LossBatch({}, jnp.ones((1, 1)), jnp.ones(1), {"ref": jnp.array([[-1.0]])})
      >>> value, _ = kl(reference="ref", estimator="k1")(jnp.array([[-0.5]]), batch)
      >>> float(value)
      0.5
    """
    fn = "regularizers.kl"
    check_choice(direction, ("reverse", "forward", "symmetric"), name="direction", where=fn)
    if estimator is not None:
        check_choice(estimator, ("k1", "k2", "k3"), name="estimator", where=fn)
    check_reduction(reduction, where=fn)

    def term(logprobs: Array, batch: LossBatch) -> tuple[Array, Metrics]:
        lp = jnp.asarray(logprobs)
        tmask, dmask = batch_masks(lp, batch, where=fn)
        ref = resolve_reference(reference, batch, tuple(lp.shape), lp.dtype, where=fn)
        per_token, tok = _kl_per_token(lp, ref, tmask, batch, direction, estimator, where=fn)
        return over_datums(per_datum(per_token, tok, reduction), dmask, reduction), {}

    return term


def _kl_per_token(
    a: Array,
    b: Array,
    tmask: Array,
    batch: LossBatch,
    direction: str,
    estimator: str | None,
    *,
    where: str,
) -> tuple[Array, Array]:
    """KL(a‖b) per token (b the reference); returns ``(values [B, T], token mask [B, T])``."""
    if a.ndim == jnp.ndim(batch.mask) + 1:
        if estimator is not None:
            raise ValueError(
                f"{where}: estimator={estimator!r} applies to sampled-token logprobs [B, T]; "
                f"with [B, T, K] logprobs the KL on the K candidates is exact. Fix: drop "
                f"estimator=."
            )
        log_q = masked_log_softmax(jnp.where(tmask, a, 0), tmask)
        log_p = masked_log_softmax(jnp.where(tmask, b, 0), tmask)
        return _topk_kl(log_q, log_p, tmask, direction), jnp.any(tmask, axis=-1)
    log_ratio = jnp.where(tmask, a - b, 0)
    values = kl_per_token(log_ratio, estimator=estimator or "k3", direction=direction)
    return values, tmask


def _pair_indices(
    pairs: str, batch: LossBatch, dmask: Array, *, where: str
) -> tuple[Array, Array, Array]:
    b = dmask.shape[0]
    if pairs == "interleaved":
        if b % 2:
            raise ValueError(
                f"{where}: pairs='interleaved' needs an even number of (padded) datums; got "
                f"B={b}. Fix: use BucketPolicy(min_datums=2) or pass pair indices."
            )
        ia = jnp.arange(0, b, 2)
        ib = ia + 1
        return ia, ib, dmask[ia] & dmask[ib]
    idx = lookup(batch, pairs, where=where)
    if idx.ndim != 2 or idx.shape[1] != 2 or not jnp.issubdtype(idx.dtype, jnp.integer):
        raise ValueError(
            f"{where}: pair indices {pairs!r} must be an integer [P, 2] array of datum indices "
            f"(negative = padding pair); got dtype {idx.dtype} shape {tuple(idx.shape)}."
        )
    valid = jnp.all((idx >= 0) & (idx < b), axis=1)
    safe = jnp.clip(idx, 0, b - 1)
    ia, ib = safe[:, 0], safe[:, 1]
    return ia, ib, valid & dmask[ia] & dmask[ib]


def consistency(
    *,
    metric: Literal["mse", "l1", "cosine", "kl"] = "mse",
    target: Reference | None = None,
    pairs: str | None = None,
    on: Space = "logprobs",
    reduction: DatumReduction = "mean",
) -> Regularizer:
    r"""Consistency between two views: the logprobs vs a target, or paired datums.

    The two views ``a`` and ``b`` are compared on the tokens real in both:

    * ``target=`` (a :data:`Reference`): ``a`` = each datum's logprobs, ``b`` = the target
      (a constant, e.g. logprobs from an earlier step or another prompt format); rows are
      datums.
    * ``pairs="interleaved"``: datums ``2j`` and ``2j+1`` form pair ``j``; ``pairs="<key>"``:
      an integer ``[P, 2]`` array of datum indices in the batch (negative = padding pair).
      Token positions are compared index by index (align the views, e.g. the same
      completion under two prompts, so that position ``i`` is the same token); rows are
      pairs; the gradient flows into *both* views.

    Metrics per row (``x`` = logprobs or probabilities per ``on``):
    ``"mse"``: reduce :math:`(x_a - x_b)^2`; ``"l1"``: reduce :math:`|x_a - x_b|`;
    ``"cosine"``: :math:`1 - \cos(x_a, x_b)` over the row's token vector;
    ``"kl"``: KL(a‖b), the per-token ``k3`` estimator in sampled mode, exact on the K
    candidates in top-k mode (``on`` must be ``"logprobs"``). Rows are then reduced over real
    rows (``reduction``).

    Args:
      metric: ``"mse"`` (default), ``"l1"``, ``"cosine"`` or ``"kl"``.
      target: the second view as a :data:`Reference` (exclusive with ``pairs``).
      pairs: ``"interleaved"`` or the key of a ``[P, 2]`` pair-index array (exclusive with
        ``target``).
      on: ``"logprobs"`` (default) or ``"probs"``.
      reduction: ``"mean"`` or ``"sum"``.

    Returns:
      A term ``(logprobs, batch) -> (value, {})``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from losses import LossBatch
      >>> from regularizers import consistency
      >>> batch = LossBatch({}, jnp.ones((2, 2)), jnp.ones(2), {})
      >>> lp = jnp.array([[-1.0, -2.0], [-1.0, -4.0]])
      >>> float(consistency(pairs="interleaved")(lp, batch)[0])  # mean of 0 and 4
      2.0
    """
    fn = "regularizers.consistency"
    check_choice(metric, ("mse", "l1", "cosine", "kl"), name="metric", where=fn)
    check_choice(on, ("logprobs", "probs"), name="on", where=fn)
    check_reduction(reduction, where=fn)
    if (target is None) == (pairs is None):
        raise ValueError(
            f"{fn}: pass exactly one of target= (compare with a reference array) and pairs= "
            f"('interleaved' or the key of a [P, 2] index array); got "
            f"target={'set' if target is not None else None}, pairs={pairs!r}."
        )
    if metric == "kl" and on != "logprobs":
        raise ValueError(f"{fn}: metric='kl' compares log-probabilities; use on='logprobs'.")

    def term(logprobs: Array, batch: LossBatch) -> tuple[Array, Metrics]:
        lp = jnp.asarray(logprobs)
        tmask, dmask = batch_masks(lp, batch, where=fn)
        x = jnp.where(tmask, lp, 0)
        if target is not None:
            y = resolve_reference(target, batch, tuple(lp.shape), lp.dtype, where=fn,
                                  name="target")
            a, b, m, rows = x, jnp.where(tmask, y, 0), tmask, dmask
        else:
            assert pairs is not None
            ia, ib, rows = _pair_indices(pairs, batch, dmask, where=fn)
            extra = (1,) * (lp.ndim - 1)
            a, b = x[ia], x[ib]
            m = tmask[ia] & tmask[ib] & rows.reshape(rows.shape + extra)
        if metric == "kl":
            per_token, tok = _kl_per_token(a, b, m, batch, "reverse", None, where=fn)
            per_row = per_datum(per_token, tok, reduction)
        else:
            ta = jnp.where(m, transform(a, on, where=fn), 0)
            tb = jnp.where(m, transform(b, on, where=fn), 0)
            if metric == "cosine":
                axes = tuple(range(1, ta.ndim))
                dot = jnp.sum(ta * tb, axis=axes)
                na = jnp.sqrt(jnp.sum(jnp.square(ta), axis=axes) + 1e-12)
                nb = jnp.sqrt(jnp.sum(jnp.square(tb), axis=axes) + 1e-12)
                per_row = 1.0 - dot / (na * nb)
            else:
                d = ta - tb
                per_row = per_datum(jnp.square(d) if metric == "mse" else jnp.abs(d), m,
                                    reduction)
        return over_datums(per_row, rows, reduction), {}

    return term


def orthogonality(
    *,
    mode: Literal["soft", "hard", "spectral"] = "soft",
    center: bool = True,
    on: Space = "logprobs",
    eps: float = 1e-8,
) -> Regularizer:
    r"""Decorrelates the per-datum logprob vectors of a batch.

    Each real datum ``b`` gives a vector :math:`v_b` of its real tokens' logprobs (or
    probabilities; padded positions 0, all K entries for ``[B, T, K]``), centered on its mean
    when ``center=True`` (then the cosine below is the Pearson correlation of the two
    datums' per-position logprobs), and normalised: :math:`n_b = v_b / \sqrt{\|v_b\|^2 +
    \epsilon}`. With :math:`C_{ab} = n_a \cdot n_b` over distinct real datums ``a ≠ b``:

    * ``"soft"``: mean of :math:`C_{ab}^2` (squared Frobenius norm of the off-diagonal
      Gram matrix, averaged);
    * ``"hard"``: :math:`\max_{a \ne b} |C_{ab}|` (the worst pair only);
    * ``"spectral"``: the spectral norm of the off-diagonal matrix ``C`` (largest absolute
      eigenvalue), i.e. how far the normalised vectors are from an orthonormal set.

    It is 0 with fewer than two real datums. Uncentered logprob vectors are all negative, so
    their cosine is close to 1 for any two datums: keep ``center=True`` unless that is what
    you want to measure.

    Args:
      mode: ``"soft"`` (default), ``"hard"`` or ``"spectral"``.
      center: subtract each datum's mean over its real tokens (default ``True``).
      on: ``"logprobs"`` (default) or ``"probs"``.
      eps: ε > 0 in the normalisation (keeps the gradient finite for constant datums).

    Returns:
      A term ``(logprobs, batch) -> (value, {"mean_abs_cosine": ...})``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from losses import LossBatch
      >>> from regularizers import orthogonality
      >>> batch = LossBatch({}, jnp.ones((2, 2)), jnp.ones(2), {})
      >>> lp = jnp.array([[-1.0, -3.0], [-3.0, -1.0]])  # centered: (1, -1) and (-1, 1)
      >>> round(float(orthogonality()(lp, batch)[0]), 4)
      1.0
    """
    fn = "regularizers.orthogonality"
    check_choice(mode, ("soft", "hard", "spectral"), name="mode", where=fn)
    check_choice(on, ("logprobs", "probs"), name="on", where=fn)
    eps_value = check_nonnegative(eps, name="eps", where=fn, strict=True)

    def term(logprobs: Array, batch: LossBatch) -> tuple[Array, Metrics]:
        lp = jnp.asarray(logprobs)
        tmask, dmask = batch_masks(lp, batch, where=fn)
        b = lp.shape[0]
        x = jnp.where(tmask, transform(jnp.where(tmask, lp, 0), on, where=fn), 0)
        v = x.reshape(b, -1)
        m = tmask.reshape(b, -1)
        if center:
            mean = jnp.sum(v, axis=1, keepdims=True) / jnp.maximum(
                jnp.sum(m.astype(v.dtype), axis=1, keepdims=True), 1
            )
            v = jnp.where(m, v - mean, 0)
        n = v / jnp.sqrt(jnp.sum(jnp.square(v), axis=1, keepdims=True) + eps_value)
        gram = n @ n.T
        off = dmask[:, None] & dmask[None, :] & ~jnp.eye(b, dtype=bool)
        c = jnp.where(off, gram, 0)
        n_pairs = jnp.maximum(jnp.sum(off.astype(c.dtype)), 1)
        if mode == "soft":
            value = jnp.sum(jnp.square(c)) / n_pairs
        elif mode == "hard":
            value = jnp.max(jnp.abs(c))
        else:
            value = jnp.max(jnp.abs(jnp.linalg.eigvalsh(c)))
        return value, {"mean_abs_cosine": jnp.sum(jnp.abs(c)) / n_pairs}

    return term


def _scalar_loss(loss_fn: BaseLoss, x: Array, batch: LossBatch, *, where: str) -> Array:
    out = loss_fn(x, batch)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(
            f"{where}: loss_fn must return (scalar loss, metrics); got {type(out).__name__}. "
            f"Fix: return e.g. (loss, {{}})."
        )
    value = jnp.asarray(out[0])
    if value.shape != ():
        raise ValueError(
            f"{where}: loss_fn must return a scalar loss; got shape {tuple(value.shape)}. Fix: "
            f"reduce it (e.g. reduction='sum')."
        )
    return value


def gradient_penalty(
    loss_fn: BaseLoss,
    *,
    mode: Literal["output", "interpolated"] = "output",
    target_norm: float = 0.0,
    reference: Reference | None = None,
    rng_key: Array | str | None = None,
    reduction: DatumReduction = "mean",
) -> Regularizer:
    r"""Penalises the norm of a loss's gradient with respect to the logprobs.

    With :math:`g_b = \partial L / \partial x_b` the gradient of ``loss_fn`` (the base loss,
    ``(logprobs, batch) -> (scalar, metrics)``) with respect to datum ``b``'s logprobs
    (masked, i.e. exactly the per-token ``-weights`` the custom-loss path would send):

    .. math:: v = \operatorname{reduce}_b\ \big(\|g_b\|_2 - \gamma\big)^2

    (:math:`\|g_b\|^2` when :math:`\gamma` = ``target_norm`` = 0). ``"output"`` evaluates
    ``g`` at the logprobs themselves: it damps the per-token training signal (large
    surrogate weights). ``"interpolated"`` evaluates it at
    :math:`\hat x_b = \alpha_b x_b + (1-\alpha_b) r_b` with :math:`\alpha_b \sim U(0, 1)`
    per datum and ``r`` = ``reference`` (WGAN-GP style; use ``target_norm=1`` for the
    classic form). The penalty needs second derivatives of the base loss: for a loss that is
    linear in the logprobs (e.g. cross-entropy) ``g`` is constant and the penalty's gradient
    is 0.

    Args:
      loss_fn: the base loss ``(logprobs, batch) -> (scalar, metrics)``.
      mode: ``"output"`` (default) or ``"interpolated"``.
      target_norm: γ ≥ 0, default 0.
      reference: a :data:`Reference` (required for ``"interpolated"``).
      rng_key: the explicit PRNG key for ``"interpolated"``: a key array (the same α every
        call) or the key of ``batch.extras`` holding a fresh key per step.
      reduction: ``"mean"`` over real datums (default) or ``"sum"``.

    Returns:
      A term ``(logprobs, batch) -> (value, {"grad_norm": mean ‖g_b‖})``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from losses import LossBatch, cross_entropy
      >>> from regularizers import gradient_penalty
      >>> def base(lp, batch):
      ...     return cross_entropy(lp, batch.inputs["weights"], where=batch.mask,
      ...                          reduction="sum"), {}
      >>> batch = LossBatch({"weights": jnp.array([[3.0, 4.0]])}, jnp.ones((1, 2)),
      ...                   jnp.ones(1), {})
      >>> value, metrics = gradient_penalty(base)(jnp.zeros((1, 2)), batch)
      >>> float(value), round(float(metrics["grad_norm"]), 4)  # ‖(-3, -4)‖² and ‖·‖
      (25.0, 5.0)
    """
    fn = "regularizers.gradient_penalty"
    if not callable(loss_fn):
        raise TypeError(f"{fn}: loss_fn must be callable (logprobs, batch) -> (loss, metrics).")
    check_choice(mode, ("output", "interpolated"), name="mode", where=fn)
    check_reduction(reduction, where=fn)
    gamma = check_nonnegative(target_norm, name="target_norm", where=fn)
    if mode == "interpolated" and (reference is None or rng_key is None):
        raise ValueError(
            f"{fn}: mode='interpolated' needs reference= (the other end of the interpolation) "
            f"and rng_key= (a PRNG key, or the key of batch.extras holding one); got "
            f"reference={'set' if reference is not None else None}, rng_key="
            f"{'set' if rng_key is not None else None}."
        )

    def term(logprobs: Array, batch: LossBatch) -> tuple[Array, Metrics]:
        lp = jnp.asarray(logprobs)
        tmask, dmask = batch_masks(lp, batch, where=fn)
        if mode == "interpolated":
            assert reference is not None and rng_key is not None
            ref = resolve_reference(reference, batch, tuple(lp.shape), lp.dtype, where=fn)
            key = lookup(batch, rng_key, where=fn) if isinstance(rng_key, str) else rng_key
            alpha = jax.random.uniform(
                key, (lp.shape[0],) + (1,) * (lp.ndim - 1), dtype=lp.dtype
            )
            point = jnp.where(tmask, alpha * lp + (1 - alpha) * ref, lp)
        else:
            point = lp
        grad = jax.grad(lambda z: _scalar_loss(loss_fn, z, batch, where=fn))(point)
        grad = jnp.where(tmask, grad, 0)
        sq = jnp.sum(jnp.square(grad), axis=tuple(range(1, grad.ndim)))
        norm = jnp.sqrt(sq + 1e-30)
        per = sq if gamma == 0 else jnp.square(norm - gamma)
        value = over_datums(per, dmask, reduction)
        return value, {"grad_norm": over_datums(norm, dmask, "mean")}

    return term
