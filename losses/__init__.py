"""Pure, jit-compiled JAX losses over Tinker's per-token logprobs.

* The loss table :data:`LOSS_SPECS`: every ``loss_fn`` name of the wire, what it takes and
  whether it is served; :func:`validate_loss_request`, :func:`check_loss_inputs` and
  :func:`resolve_loss_config` check a request against it (the SDK and the local server
  call them too).
* The built-in Tinker losses (``cross_entropy``, ``importance_sampling``, ``ppo``, ``cispo``,
  ``dro``, ``gspo``, ``stable_reinforce``) with the exact server math, and the
  :data:`BUILTIN_LOSSES` registry the local backend and the client dispatch through.
* Research losses: :func:`dpo`, :func:`bradley_terry`, :func:`kl_penalized_policy_gradient`,
  :func:`topk_distillation`, and the helpers :func:`sequence_logprobs`, :func:`kl_estimate`.
* The batch a custom loss sees (:class:`LossBatch`) and the host-side padding into length
  buckets (:func:`make_loss_batch`, :func:`pad_to_bucket`, :func:`unpad`,
  :class:`BucketPolicy`).

Every loss takes an explicit mask (``where=``), an explicit keyword-only ``reduction``
(``"sum"``: the server's token sum; ``"mean"``; ``"none"``) and keyword-only
hyperparameters. Implementation lives in private modules; import from ``losses`` only.

Names are loaded on first use: request validation (:func:`validate_loss_request`,
:data:`LOSS_SPECS`, ...) and the NumPy padding helpers never import JAX, so an HTTP-only
client can use them and stay fast to import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from losses._batch import (
        DEFAULT_BUCKET_POLICY,
        BatchArray,
        BucketPolicy,
        LossBatch,
        make_loss_batch,
        pad_to_bucket,
        unpad,
    )
    from losses._builtin import (
        BUILTIN_LOSSES,
        BuiltinLoss,
        cispo,
        cross_entropy,
        dro,
        gspo,
        importance_sampling,
        ppo,
        stable_reinforce,
    )
    from losses._common import Reduction
    from losses._kl import KLDirection, KLEstimator, kl_estimate
    from losses._research import (
        bradley_terry,
        dpo,
        kl_penalized_policy_gradient,
        sequence_logprobs,
        topk_distillation,
    )
    from losses._spec import (
        DEFAULT_CLIP_HIGH_THRESHOLD,
        DEFAULT_CLIP_LOW_THRESHOLD,
        DEFAULT_DRO_BETA,
        DEFAULT_SR_KL_COEFF,
        DEFAULT_SR_RATIO_CAP,
        DEFAULT_SR_SEQUENCE_RATIO_LIMIT,
        LOSS_SPECS,
        LossSpec,
        check_loss_inputs,
        loss_spec,
        resolve_loss_config,
        served_losses,
        validate_loss_request,
    )

__all__ = [
    "BUILTIN_LOSSES",
    "BatchArray",
    "BucketPolicy",
    "BuiltinLoss",
    "DEFAULT_BUCKET_POLICY",
    "DEFAULT_CLIP_HIGH_THRESHOLD",
    "DEFAULT_CLIP_LOW_THRESHOLD",
    "DEFAULT_DRO_BETA",
    "DEFAULT_SR_KL_COEFF",
    "DEFAULT_SR_RATIO_CAP",
    "DEFAULT_SR_SEQUENCE_RATIO_LIMIT",
    "KLDirection",
    "KLEstimator",
    "LOSS_SPECS",
    "LossBatch",
    "LossSpec",
    "Reduction",
    "bradley_terry",
    "check_loss_inputs",
    "cispo",
    "cross_entropy",
    "dpo",
    "dro",
    "gspo",
    "importance_sampling",
    "kl_estimate",
    "kl_penalized_policy_gradient",
    "loss_spec",
    "make_loss_batch",
    "pad_to_bucket",
    "ppo",
    "resolve_loss_config",
    "sequence_logprobs",
    "served_losses",
    "stable_reinforce",
    "topk_distillation",
    "unpad",
    "validate_loss_request",
]

_MODULE_OF: dict[str, str] = {
    **dict.fromkeys(
        [
            "DEFAULT_BUCKET_POLICY",
            "BatchArray",
            "BucketPolicy",
            "LossBatch",
            "make_loss_batch",
            "pad_to_bucket",
            "unpad",
        ],
        "losses._batch",
    ),
    **dict.fromkeys(
        [
            "BUILTIN_LOSSES",
            "BuiltinLoss",
            "cispo",
            "cross_entropy",
            "dro",
            "gspo",
            "importance_sampling",
            "ppo",
            "stable_reinforce",
        ],
        "losses._builtin",
    ),
    "Reduction": "losses._common",
    **dict.fromkeys(["KLDirection", "KLEstimator", "kl_estimate"], "losses._kl"),
    **dict.fromkeys(
        [
            "bradley_terry",
            "dpo",
            "kl_penalized_policy_gradient",
            "sequence_logprobs",
            "topk_distillation",
        ],
        "losses._research",
    ),
    **dict.fromkeys(
        [
            "DEFAULT_CLIP_HIGH_THRESHOLD",
            "DEFAULT_CLIP_LOW_THRESHOLD",
            "DEFAULT_DRO_BETA",
            "DEFAULT_SR_KL_COEFF",
            "DEFAULT_SR_RATIO_CAP",
            "DEFAULT_SR_SEQUENCE_RATIO_LIMIT",
            "LOSS_SPECS",
            "LossSpec",
            "check_loss_inputs",
            "loss_spec",
            "resolve_loss_config",
            "served_losses",
            "validate_loss_request",
        ],
        "losses._spec",
    ),
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'losses' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
