"""The public names of ``losses``, once each: type checkers read this stub, and
``losses/__init__.py`` reads it at import to load each name lazily from its module."""

from losses._batch import (
    DEFAULT_BUCKET_POLICY as DEFAULT_BUCKET_POLICY,
    BatchArray as BatchArray,
    BucketPolicy as BucketPolicy,
    LossBatch as LossBatch,
    make_loss_batch as make_loss_batch,
    pad_to_bucket as pad_to_bucket,
    unpad as unpad,
)
from losses._builtin import (
    BUILTIN_LOSSES as BUILTIN_LOSSES,
    BuiltinLoss as BuiltinLoss,
    cispo as cispo,
    cross_entropy as cross_entropy,
    dro as dro,
    gspo as gspo,
    importance_sampling as importance_sampling,
    ppo as ppo,
    stable_reinforce as stable_reinforce,
)
from losses._common import (
    Reduction as Reduction,
    align as align,
    check_choice as check_choice,
    masked_log_softmax as masked_log_softmax,
)
from losses._kl import (
    KLDirection as KLDirection,
    KLEstimator as KLEstimator,
    kl_estimate as kl_estimate,
    kl_per_token as kl_per_token,
)
from losses._research import (
    bradley_terry as bradley_terry,
    dpo as dpo,
    kl_penalized_policy_gradient as kl_penalized_policy_gradient,
    sequence_logprobs as sequence_logprobs,
    topk_distillation as topk_distillation,
)
from losses._spec import (
    DEFAULT_CLIP_HIGH_THRESHOLD as DEFAULT_CLIP_HIGH_THRESHOLD,
    DEFAULT_CLIP_LOW_THRESHOLD as DEFAULT_CLIP_LOW_THRESHOLD,
    DEFAULT_DRO_BETA as DEFAULT_DRO_BETA,
    DEFAULT_SR_KL_COEFF as DEFAULT_SR_KL_COEFF,
    DEFAULT_SR_RATIO_CAP as DEFAULT_SR_RATIO_CAP,
    DEFAULT_SR_SEQUENCE_RATIO_LIMIT as DEFAULT_SR_SEQUENCE_RATIO_LIMIT,
    LOSS_SPECS as LOSS_SPECS,
    LossSpec as LossSpec,
    check_loss_inputs as check_loss_inputs,
    loss_spec as loss_spec,
    resolve_loss_config as resolve_loss_config,
    served_losses as served_losses,
    validate_loss_request as validate_loss_request,
)
