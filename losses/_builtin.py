"""The built-in Tinker losses (docs/protocol.md §9) as pure, jit-able JAX functions.

Every loss is defined per token and summed by the server (no length normalisation). The same
code runs server-side in the local backend (through :data:`BUILTIN_LOSSES`) and client-side
(through the public functions, for reference values and custom losses).

Notation: ``t`` = ``target_logprobs`` (log p_θ of the target tokens, differentiable), ``s`` =
``sampling_logprobs`` (the ``logprobs`` input: the sampler's logprobs), ``A`` = ``advantages``,
``r = exp(t - s)`` the per-token importance ratio, ``sg`` = stop-gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import NamedTuple

import jax.numpy as jnp
from jax import Array, lax
from jax.typing import ArrayLike

from losses._common import Reduction, align, as_float, check_reduction, reduce_tokens, token_mask
from losses._spec import (
    DEFAULT_CLIP_HIGH_THRESHOLD,
    DEFAULT_CLIP_LOW_THRESHOLD,
    DEFAULT_DRO_BETA,
    DEFAULT_SR_KL_COEFF,
    DEFAULT_SR_RATIO_CAP,
    DEFAULT_SR_SEQUENCE_RATIO_LIMIT,
    LOSS_SPECS,
    LossSpec,
    check_unknown_config,
)

__all__ = [
    "BUILTIN_LOSSES",
    "BuiltinLoss",
    "cispo",
    "cross_entropy",
    "dro",
    "gspo",
    "importance_sampling",
    "ppo",
    "stable_reinforce",
]


class BuiltinLoss(NamedTuple):
    """One entry of :data:`BUILTIN_LOSSES`: a served entry of ``LOSS_SPECS`` and its JAX code.

    Attributes:
      spec: the loss's entry in ``losses.LOSS_SPECS`` (names, defaults, checks).
      per_token: ``per_token(target_logprobs, inputs, mask, config) -> loss`` where
        ``target_logprobs`` is ``[B, T]`` (or ``[B, T, K]`` for 2-D targets; any leading shape
        works, the last axis of ``mask`` is the token axis), ``inputs`` maps each key of
        :attr:`required_inputs` to a float array of the target's shape or a prefix of it,
        ``mask`` is ``[B, T]`` (1 = real token, 0 = padding), and ``config`` maps config keys
        to scalars (Python numbers or traced arrays; missing keys take their defaults).
        Returns the per-token loss with the target's shape, exactly 0 where ``mask == 0``.
        Jit-able with config values traced.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from losses import BUILTIN_LOSSES
      >>> spec = BUILTIN_LOSSES["ppo"]
      >>> spec.required_inputs, dict(spec.config_defaults)
      (('logprobs', 'advantages'), {'clip_low_threshold': 0.8, 'clip_high_threshold': 1.2})
      >>> t = jnp.log(jnp.array([[1.5, 1.0, 1.0]]))
      >>> inputs = {"logprobs": jnp.zeros((1, 3)), "advantages": jnp.ones((1, 3))}
      >>> mask = jnp.array([[1.0, 1.0, 0.0]])
      >>> per_token = jax.jit(spec.per_token)(t, inputs, mask, {"clip_high_threshold": 1.3})
      >>> [round(x, 4) for x in per_token[0].tolist()]  # the loss the server sums (loss:sum)
      [-1.3, -1.0, 0.0]
    """

    spec: LossSpec
    per_token: Callable[[Array, Mapping[str, Array], Array, Mapping[str, Array]], Array]

    @property
    def name(self) -> str:
        """The ``loss_fn`` string on the wire, e.g. ``"ppo"``."""
        return self.spec.name

    @property
    def required_inputs(self) -> tuple[str, ...]:
        """The inputs ``per_token`` needs besides the targets (``spec.loss_inputs``: the
        client's required inputs, then those a server derives from provenance)."""
        return self.spec.loss_inputs

    @property
    def config_defaults(self) -> Mapping[str, float]:
        """The accepted config keys and their defaults (``{}`` when the loss takes none)."""
        return self.spec.config_defaults


# --------------------------------------------------------------------------------------------
# Per-token cores. Inputs are aligned to the target's shape and already zeroed at masked
# positions (so that padding can never produce inf/NaN values or gradients); the caller masks
# the result.

_Core = Callable[[Array, Mapping[str, Array], Array, Mapping[str, Array], int], Array]


def _core_cross_entropy(
    t: Array, x: Mapping[str, Array], mask: Array, cfg: Mapping[str, Array], token_axis: int
) -> Array:
    del mask, cfg, token_axis
    return -t * x["weights"]


def _core_importance_sampling(
    t: Array, x: Mapping[str, Array], mask: Array, cfg: Mapping[str, Array], token_axis: int
) -> Array:
    del mask, cfg, token_axis
    return -jnp.exp(t - x["logprobs"]) * x["advantages"]


def _clipped_objective(ratio: Array, adv: Array, low: Array, high: Array) -> Array:
    return -jnp.minimum(ratio * adv, jnp.clip(ratio, low, high) * adv)


def _core_ppo(
    t: Array, x: Mapping[str, Array], mask: Array, cfg: Mapping[str, Array], token_axis: int
) -> Array:
    del mask, token_axis
    ratio = jnp.exp(t - x["logprobs"])
    return _clipped_objective(
        ratio, x["advantages"], cfg["clip_low_threshold"], cfg["clip_high_threshold"]
    )


def _core_cispo(
    t: Array, x: Mapping[str, Array], mask: Array, cfg: Mapping[str, Array], token_axis: int
) -> Array:
    del mask, token_axis
    ratio = jnp.exp(t - x["logprobs"])
    clipped = lax.stop_gradient(
        jnp.clip(ratio, cfg["clip_low_threshold"], cfg["clip_high_threshold"])
    )
    return -clipped * t * x["advantages"]


def _core_dro(
    t: Array, x: Mapping[str, Array], mask: Array, cfg: Mapping[str, Array], token_axis: int
) -> Array:
    del mask, token_axis
    return -(t * x["advantages"] - 0.5 * cfg["beta"] * jnp.square(t - x["logprobs"]))


def _core_gspo(
    t: Array, x: Mapping[str, Array], mask: Array, cfg: Mapping[str, Array], token_axis: int
) -> Array:
    axes = tuple(range(token_axis, t.ndim))
    use = mask & (x["sequence_ratio_mask"] != 0)
    t_const = lax.stop_gradient(t)
    diff = jnp.where(use, t_const - x["logprobs"], 0)
    count = jnp.sum(use.astype(t.dtype), axis=axes, keepdims=True)
    log_seq_ratio = jnp.sum(diff, axis=axes, keepdims=True) / jnp.maximum(count, 1)
    ratio = jnp.exp(log_seq_ratio + t - t_const)
    return _clipped_objective(
        ratio, x["advantages"], cfg["clip_low_threshold"], cfg["clip_high_threshold"]
    )


def _core_stable_reinforce(
    t: Array, x: Mapping[str, Array], mask: Array, cfg: Mapping[str, Array], token_axis: int
) -> Array:
    axes = tuple(range(token_axis, t.ndim))
    use = mask & (x["sampled_mask"] != 0)
    t_const = lax.stop_gradient(t)
    log_ratio = jnp.where(use, t_const - x["sampled_logprobs"], 0)
    count = jnp.sum(use.astype(t.dtype), axis=axes, keepdims=True)
    mean_log_ratio = jnp.sum(log_ratio, axis=axes, keepdims=True) / jnp.maximum(count, 1)
    keep = jnp.abs(mean_log_ratio) <= jnp.log(cfg["sequence_ratio_limit"])
    weight = jnp.minimum(jnp.exp(log_ratio), cfg["ratio_cap"])  # constant: no gradient
    penalty = 0.5 * cfg["kl_coeff"] * jnp.square(t - x["sampled_logprobs"])
    return jnp.where(use & keep, -weight * x["advantages"] * t + penalty, 0)


_CORES: Mapping[str, _Core] = MappingProxyType(
    {
        "cispo": _core_cispo,
        "cross_entropy": _core_cross_entropy,
        "dro": _core_dro,
        "gspo": _core_gspo,
        "importance_sampling": _core_importance_sampling,
        "ppo": _core_ppo,
        "stable_reinforce": _core_stable_reinforce,
    }
)


def _evaluate(
    name: str,
    *,
    fn: str,
    target_logprobs: ArrayLike,
    inputs: Mapping[str, tuple[str, ArrayLike]],
    mask: ArrayLike | None,
    mask_name: str,
    config: Mapping[str, ArrayLike],
    token_axis: int,
) -> tuple[Array, Array]:
    """Runs loss ``name`` and returns ``(per_token, bool mask)`` with masked positions at 0.

    ``inputs`` maps each loss input key to ``(name used in error messages, value)``.
    """
    defaults, core = LOSS_SPECS[name].config_defaults, _CORES[name]
    t = as_float(target_logprobs, name="target_logprobs", where=fn)
    shape = tuple(t.shape)
    m = token_mask(mask, shape, where=fn, name=mask_name, like="target_logprobs")
    t = jnp.where(m, t, 0)
    x: dict[str, Array] = {}
    for key, (label, value) in inputs.items():
        arr = align(
            as_float(value, name=label, where=fn), shape, name=label, like="target_logprobs",
            where=fn,
        )
        x[key] = jnp.where(m, arr, 0)
    cfg = {k: jnp.asarray(config.get(k, v), dtype=t.dtype) for k, v in defaults.items()}
    per_token = jnp.where(m, core(t, x, m, cfg, token_axis), 0)
    return per_token, m


def _reduced(
    name: str,
    target_logprobs: ArrayLike,
    inputs: Mapping[str, tuple[str, ArrayLike]],
    *,
    where: ArrayLike | None,
    reduction: Reduction,
    config: Mapping[str, ArrayLike],
    token_axis: int = -1,
) -> Array:
    """The public form of loss ``name``: check the reduction, evaluate, reduce the tokens."""
    fn = f"losses.{name}"
    check_reduction(reduction, where=fn)
    per, m = _evaluate(name, fn=fn, target_logprobs=target_logprobs, inputs=inputs, mask=where,
                       mask_name="where", config=config, token_axis=token_axis)
    return reduce_tokens(per, m, reduction)


def _policy_inputs(sampling_logprobs: ArrayLike, advantages: ArrayLike
                   ) -> dict[str, tuple[str, ArrayLike]]:
    return {"logprobs": ("sampling_logprobs", sampling_logprobs),
            "advantages": ("advantages", advantages)}


def _make_per_token(
    name: str,
) -> Callable[[Array, Mapping[str, Array], Array, Mapping[str, Array]], Array]:
    required = LOSS_SPECS[name].loss_inputs
    where = f"BUILTIN_LOSSES[{name!r}].per_token"

    def per_token(
        target_logprobs: Array,
        inputs: Mapping[str, Array],
        mask: Array,
        config: Mapping[str, Array],
    ) -> Array:
        missing = [k for k in required if k not in inputs]
        if missing:
            raise ValueError(
                f"{where}: missing loss_fn_inputs {missing} (required: {list(required)}; "
                f"given: {sorted(inputs)}). Fix: add them to every Datum.loss_fn_inputs."
            )
        check_unknown_config(name, config, where=where)
        mask_arr = jnp.asarray(mask)
        if mask_arr.ndim < 1:
            raise ValueError(
                f"{where}: mask must have a token axis ([B, T] or [T]); got shape "
                f"{tuple(mask_arr.shape)}."
            )
        per, _ = _evaluate(
            name,
            fn=where,
            target_logprobs=target_logprobs,
            inputs={k: (f"inputs[{k!r}]", inputs[k]) for k in required},
            mask=mask_arr,
            mask_name="mask",
            config=config,
            token_axis=mask_arr.ndim - 1,
        )
        return per

    per_token.__name__ = f"{name}_per_token"
    per_token.__qualname__ = per_token.__name__
    return per_token


if set(_CORES) != {name for name, spec in LOSS_SPECS.items() if spec.served}:
    raise RuntimeError("losses: every served entry of LOSS_SPECS needs a core in _CORES")

BUILTIN_LOSSES: Mapping[str, BuiltinLoss] = MappingProxyType(
    {
        name: BuiltinLoss(spec=LOSS_SPECS[name], per_token=_make_per_token(name))
        for name in sorted(LOSS_SPECS)
        if LOSS_SPECS[name].served
    }
)
"""The built-in losses by ``loss_fn`` name; the server engine and the client dispatch here."""


# --------------------------------------------------------------------------------------------
# Public functions.


def cross_entropy(
    target_logprobs: ArrayLike,
    weights: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduction: Reduction,
) -> Array:
    r"""Tinker's ``cross_entropy``: weighted negative log-likelihood of the target tokens.

    .. math:: \ell_i = -t_i \, w_i

    ``weights`` are per-token multipliers (0 drops a token, e.g. the prompt); no length
    normalisation is applied.

    Args:
      target_logprobs: ``[..., T]`` or ``[..., T, K]`` log-probabilities of the targets.
      weights: per-token weights, the target's shape or a prefix of it.
      where: optional mask (non-zero = real token), the target's shape or a prefix of it.
      reduction: ``"sum"`` (the server's value), ``"mean"`` over unmasked elements, or
        ``"none"`` (per-token, 0 where masked).

    Returns:
      A scalar, or the per-token losses for ``reduction="none"``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from losses import cross_entropy
      >>> lp = jnp.array([[-1.0, -2.0, -0.5]])
      >>> float(cross_entropy(lp, jnp.array([[0.0, 1.0, 1.0]]), reduction="sum"))
      2.5
    """
    return _reduced("cross_entropy", target_logprobs, {"weights": ("weights", weights)},
                    where=where, reduction=reduction, config={})


def importance_sampling(
    target_logprobs: ArrayLike,
    sampling_logprobs: ArrayLike,
    advantages: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduction: Reduction,
) -> Array:
    r"""Tinker's ``importance_sampling`` policy-gradient loss.

    .. math:: \ell_i = -\exp(t_i - s_i)\, A_i

    Args:
      target_logprobs: ``[..., T]`` (or ``[..., T, K]``) current-policy logprobs.
      sampling_logprobs: the sampler's logprobs (the ``logprobs`` input).
      advantages: per-token advantages.
      where: optional mask (non-zero = real token).
      reduction: ``"sum"``, ``"mean"`` or ``"none"`` (see :func:`cross_entropy`).

    Returns:
      A scalar, or the per-token losses for ``reduction="none"``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from losses import importance_sampling
      >>> t = jnp.array([-1.0, -1.0]); s = jnp.array([-1.0, -1.0]); a = jnp.array([1.0, -2.0])
      >>> float(importance_sampling(t, s, a, reduction="sum"))
      1.0
    """
    return _reduced("importance_sampling", target_logprobs,
                    _policy_inputs(sampling_logprobs, advantages), where=where,
                    reduction=reduction, config={})


def ppo(
    target_logprobs: ArrayLike,
    sampling_logprobs: ArrayLike,
    advantages: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduction: Reduction,
    clip_low_threshold: ArrayLike = DEFAULT_CLIP_LOW_THRESHOLD,
    clip_high_threshold: ArrayLike = DEFAULT_CLIP_HIGH_THRESHOLD,
) -> Array:
    r"""Tinker's ``ppo`` clipped surrogate loss.

    .. math::
       r_i = \exp(t_i - s_i), \qquad
       \ell_i = -\min\big(r_i A_i,\ \mathrm{clip}(r_i, \text{low}, \text{high})\, A_i\big)

    Args:
      target_logprobs: ``[..., T]`` (or ``[..., T, K]``) current-policy logprobs.
      sampling_logprobs: the sampler's logprobs (the ``logprobs`` input).
      advantages: per-token advantages.
      where: optional mask (non-zero = real token).
      reduction: ``"sum"``, ``"mean"`` or ``"none"`` (see :func:`cross_entropy`).
      clip_low_threshold: lower ratio bound (default 0.8); may be a traced scalar.
      clip_high_threshold: upper ratio bound (default 1.2); may be a traced scalar.

    Returns:
      A scalar, or the per-token losses for ``reduction="none"``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from losses import ppo
      >>> t = jnp.log(jnp.array([1.5])); s = jnp.zeros(1); a = jnp.ones(1)
      >>> round(float(ppo(t, s, a, reduction="sum")), 4)  # ratio 1.5 clipped to 1.2
      -1.2
    """
    return _reduced("ppo", target_logprobs, _policy_inputs(sampling_logprobs, advantages),
                    where=where, reduction=reduction,
                    config={"clip_low_threshold": clip_low_threshold,
                            "clip_high_threshold": clip_high_threshold})


def cispo(
    target_logprobs: ArrayLike,
    sampling_logprobs: ArrayLike,
    advantages: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduction: Reduction,
    clip_low_threshold: ArrayLike = DEFAULT_CLIP_LOW_THRESHOLD,
    clip_high_threshold: ArrayLike = DEFAULT_CLIP_HIGH_THRESHOLD,
) -> Array:
    r"""Tinker's ``cispo`` loss: a clipped, stop-gradient importance weight times log-likelihood.

    .. math::
       \ell_i = -\,\mathrm{sg}\big(\mathrm{clip}(r_i, \text{low}, \text{high})\big)\, t_i\, A_i,
       \qquad r_i = \exp(t_i - s_i)

    The gradient with respect to ``t_i`` is ``-clip(r_i, low, high) * A_i``: the clipped
    weight never blocks the gradient (unlike PPO), it only bounds its size.

    Args:
      target_logprobs: ``[..., T]`` (or ``[..., T, K]``) current-policy logprobs.
      sampling_logprobs: the sampler's logprobs (the ``logprobs`` input).
      advantages: per-token advantages.
      where: optional mask (non-zero = real token).
      reduction: ``"sum"``, ``"mean"`` or ``"none"`` (see :func:`cross_entropy`).
      clip_low_threshold: lower ratio bound (default 0.8).
      clip_high_threshold: upper ratio bound (default 1.2).

    Returns:
      A scalar, or the per-token losses for ``reduction="none"``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from losses import cispo
      >>> t = jnp.array([-2.0]); s = jnp.array([-2.0]); a = jnp.array([0.5])
      >>> float(cispo(t, s, a, reduction="sum"))  # -1 * (-2) * 0.5
      1.0
    """
    return _reduced("cispo", target_logprobs, _policy_inputs(sampling_logprobs, advantages),
                    where=where, reduction=reduction,
                    config={"clip_low_threshold": clip_low_threshold,
                            "clip_high_threshold": clip_high_threshold})


def dro(
    target_logprobs: ArrayLike,
    sampling_logprobs: ArrayLike,
    advantages: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduction: Reduction,
    beta: ArrayLike = DEFAULT_DRO_BETA,
) -> Array:
    r"""Tinker's ``dro`` loss: advantage-weighted log-likelihood with a quadratic penalty.

    .. math:: \ell_i = -\big(t_i A_i - \tfrac{1}{2}\beta\,(t_i - s_i)^2\big)

    Args:
      target_logprobs: ``[..., T]`` (or ``[..., T, K]``) current-policy logprobs.
      sampling_logprobs: the sampler's logprobs (the ``logprobs`` input).
      advantages: per-token advantages.
      where: optional mask (non-zero = real token).
      reduction: ``"sum"``, ``"mean"`` or ``"none"`` (see :func:`cross_entropy`).
      beta: strength of the quadratic penalty. Default 0.05 (:data:`DEFAULT_DRO_BETA`): the
        value of Tinker's documentation example; the hosted server's default is unpublished.

    Returns:
      A scalar, or the per-token losses for ``reduction="none"``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from losses import dro
      >>> t = jnp.array([-1.0]); s = jnp.array([-3.0]); a = jnp.array([1.0])
      >>> float(dro(t, s, a, reduction="sum", beta=0.5))  # -(-1 - 0.25 * 4)
      2.0
    """
    return _reduced("dro", target_logprobs, _policy_inputs(sampling_logprobs, advantages),
                    where=where, reduction=reduction, config={"beta": beta})


def gspo(
    target_logprobs: ArrayLike,
    sampling_logprobs: ArrayLike,
    advantages: ArrayLike,
    sequence_ratio_mask: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduction: Reduction,
    clip_low_threshold: ArrayLike = DEFAULT_CLIP_LOW_THRESHOLD,
    clip_high_threshold: ArrayLike = DEFAULT_CLIP_HIGH_THRESHOLD,
) -> Array:
    r"""Tinker's ``gspo`` loss (GSPO-token): a sequence-level ratio with per-token gradients.

    .. math::
       \log s = \frac{1}{|M|}\sum_{j \in M} \big(\mathrm{sg}(t_j) - s_j\big), \qquad
       s_i = \exp\big(\log s + t_i - \mathrm{sg}(t_i)\big), \qquad
       \ell_i = -\min\big(s_i A_i,\ \mathrm{clip}(s_i, \text{low}, \text{high})\, A_i\big)

    ``M`` is the set of a datum's real tokens whose ``sequence_ratio_mask`` is non-zero (the
    mean is 0 when ``M`` is empty). Every ``s_i`` has the value of the sequence ratio ``s``;
    its gradient is ``s * d t_i``. The loss itself applies to every real token.

    The per-sequence mean runs over the *token axis and every axis after it*. The token axis
    is the last axis of ``where`` when given, else the last axis of ``sequence_ratio_mask``:
    with ``[B, T]`` arrays each row is a datum; with ``[B, T, K]`` targets and a ``[B, T]``
    mask the mean covers the ``T x K`` entries of each datum.

    Args:
      target_logprobs: ``[..., T]`` (or ``[..., T, K]``) current-policy logprobs.
      sampling_logprobs: the sampler's logprobs (the ``logprobs`` input).
      advantages: per-token advantages.
      sequence_ratio_mask: which tokens enter the sequence ratio (non-zero = included).
      where: optional padding mask (non-zero = real token).
      reduction: ``"sum"``, ``"mean"`` or ``"none"`` (see :func:`cross_entropy`).
      clip_low_threshold: lower ratio bound (default 0.8).
      clip_high_threshold: upper ratio bound (default 1.2).

    Returns:
      A scalar, or the per-token losses for ``reduction="none"``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from losses import gspo
      >>> t = jnp.array([[-1.0, -1.0]]); s = jnp.array([[-1.0, -1.0]])
      >>> a = jnp.array([[1.0, 1.0]]); srm = jnp.array([[1.0, 1.0]])
      >>> float(gspo(t, s, a, srm, reduction="sum"))  # s = 1 for both tokens
      -2.0
    """
    fn = "losses.gspo"
    check_reduction(reduction, where=fn)
    ref_ndim = jnp.ndim(where) if where is not None else jnp.ndim(sequence_ratio_mask)
    if ref_ndim < 1:
        raise ValueError(
            f"{fn}: cannot find the token axis: "
            f"{'where' if where is not None else 'sequence_ratio_mask'} is a scalar. Fix: pass "
            f"a per-token where= mask of shape [..., T]."
        )
    inputs = {**_policy_inputs(sampling_logprobs, advantages),
              "sequence_ratio_mask": ("sequence_ratio_mask", sequence_ratio_mask)}
    return _reduced("gspo", target_logprobs, inputs, where=where, reduction=reduction,
                    config={"clip_low_threshold": clip_low_threshold,
                            "clip_high_threshold": clip_high_threshold},
                    token_axis=ref_ndim - 1)


def stable_reinforce(
    target_logprobs: ArrayLike,
    sampling_logprobs: ArrayLike,
    advantages: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduction: Reduction,
    ratio_cap: ArrayLike = DEFAULT_SR_RATIO_CAP,
    sequence_ratio_limit: ArrayLike = DEFAULT_SR_SEQUENCE_RATIO_LIMIT,
    kl_coeff: ArrayLike = DEFAULT_SR_KL_COEFF,
) -> Array:
    r"""``stable_reinforce``: truncated importance-weighted REINFORCE with a sequence trust band.

    .. math::
       \rho_i = t_i - s_i, \qquad
       w_i = \mathrm{sg}\big(\min(e^{\rho_i}, C)\big), \qquad
       k = \Big[\,\Big|\tfrac{1}{|M|}\textstyle\sum_{j \in M} \mathrm{sg}(\rho_j)\Big|
           \le \log L\,\Big]

       \ell_i = k \,\big(-w_i\, A_i\, t_i + \tfrac{\kappa}{2}\,\rho_i^2\big)
       \quad (i \in M), \qquad \ell_i = 0 \text{ elsewhere}

    ``s`` are the sampler's logprobs of the sampled tokens *as the sampler computed them*
    (the local backend takes them from its own records, never from the client), ``M`` the
    sampled tokens of one datum (``where``), ``C`` = ``ratio_cap``, ``L`` =
    ``sequence_ratio_limit`` and ``κ`` = ``kl_coeff``.

    * The gradient of a kept token is ``-(w_i A_i - κ ρ_i) ∇t_i``: REINFORCE (``-A_i ∇t_i``)
      when sampling and training agree (``ρ = 0``), importance-corrected when they do not,
      and never weighted by more than ``C`` (truncated importance sampling: a token whose
      training probability is far above its sampling probability cannot dominate a step).
    * A datum whose geometric-mean ratio ``exp(mean ρ)`` over its sampled tokens leaves
      ``[1/L, L]`` contributes nothing (its samples came from a policy too far from the one
      being trained: stale, or computed with broken numerics).
    * ``κ > 0`` adds a proximal penalty pulling the trained logprobs of sampled tokens
      towards the sampler's (the k2 estimate of their KL divergence).

    The per-datum mean runs over the token axis and every axis after it; the token axis is
    the last axis of ``where`` when given, else the last axis of ``advantages``.

    Args:
      target_logprobs: ``[..., T]`` current-policy logprobs of the sampled tokens.
      sampling_logprobs: the sampler's logprobs of the same tokens.
      advantages: per-token advantages.
      where: the sampled tokens (non-zero); prompt positions and padding are 0 and get no
        loss and no gradient. ``None``: every position was sampled.
      reduction: ``"sum"``, ``"mean"`` or ``"none"`` (see :func:`cross_entropy`).
      ratio_cap: largest importance weight ``C`` (>= 1; default 2).
      sequence_ratio_limit: trust band ``L`` of a datum's geometric-mean ratio (>= 1;
        default 2).
      kl_coeff: weight ``κ`` of the proximal penalty (>= 0; default 0, off).

    Returns:
      A scalar, or the per-token losses for ``reduction="none"``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from losses import stable_reinforce
      >>> s = jnp.array([[-1.0, -2.0, -0.5]]); a = jnp.array([[1.0, 1.0, 1.0]])
      >>> g = jax.grad(lambda t: stable_reinforce(t, s, a, reduction="sum"))(s)
      >>> g.tolist()  # on-policy: the REINFORCE gradient -A
      [[-1.0, -1.0, -1.0]]
      >>> t = s + jnp.array([[1.0, 0.0, 0.0]])  # token 0 is e times likelier now
      >>> g = jax.grad(lambda t: stable_reinforce(t, s, a, reduction="sum"))(t)
      >>> g.tolist()  # its weight is capped at 2
      [[-2.0, -1.0, -1.0]]
      >>> t = s + 1.0  # every token: geometric-mean ratio e > 2, the datum is left out
      >>> float(stable_reinforce(t, s, a, reduction="sum"))
      0.0
    """
    fn = "losses.stable_reinforce"
    check_reduction(reduction, where=fn)
    ref_ndim = jnp.ndim(where) if where is not None else jnp.ndim(advantages)
    if ref_ndim < 1:
        raise ValueError(
            f"{fn}: cannot find the token axis: "
            f"{'where' if where is not None else 'advantages'} is a scalar. Fix: pass "
            f"per-token advantages (or a where= mask) of shape [..., T]."
        )
    inputs = {"advantages": ("advantages", advantages),
              "sampled_logprobs": ("sampling_logprobs", sampling_logprobs),
              "sampled_mask": ("where", jnp.ones(()) if where is None else where)}
    return _reduced("stable_reinforce", target_logprobs, inputs, where=where,
                    reduction=reduction,
                    config={"ratio_cap": ratio_cap, "sequence_ratio_limit": sequence_ratio_limit,
                            "kl_coeff": kl_coeff},
                    token_axis=ref_ndim - 1)
