"""Pure builders: values in, values out, no I/O.

Datum construction with the shift-by-one done for you, RL data from sampled groups
(group-relative advantages, KL penalties folded in without mutation), validation of training data,
chunking (docs/protocol.md §7.3) and merging of chunk results (§7.4), id allocation as explicit
state (§7.1), tinker path parsing, request-size estimates.
"""

from ._chunking import (
    METRIC_REDUCTIONS,
    chunk_data,
    combine_forward_backward_outputs,
    estimate_datum_bytes,
    estimate_sample_bytes,
    merge_metrics,
    split_metric_key,
)
from ._datums import datum_from_prompt_completion, datum_from_tokens, full_sequence, rl_datum
from ._ids import (
    CLONE_SEQ_BLOCK,
    RequestCounter,
    SessionCounters,
    next_model_seq_id,
    next_sampling_session_seq_id,
    reserve_request_ids,
    sampling_seq_id,
    seq_id_of,
)
from ._losses import LOSS_SPECS, LossSpec, validate_loss_config
from ._paths import parse_tinker_path, tinker_path, training_model_id
from ._requests import build_forward_backward_requests, validate_training_data
from ._rl import group_advantages, group_datums, with_kl_penalty
from ._surrogate import (
    SurrogateGradients,
    merge_custom_metrics,
    split_like,
    surrogate_data,
    surrogate_forward_data,
)

__all__ = [
    "CLONE_SEQ_BLOCK",
    "LOSS_SPECS",
    "METRIC_REDUCTIONS",
    "LossSpec",
    "RequestCounter",
    "SessionCounters",
    "SurrogateGradients",
    "build_forward_backward_requests",
    "chunk_data",
    "combine_forward_backward_outputs",
    "datum_from_prompt_completion",
    "datum_from_tokens",
    "estimate_datum_bytes",
    "estimate_sample_bytes",
    "full_sequence",
    "group_advantages",
    "group_datums",
    "merge_custom_metrics",
    "merge_metrics",
    "next_model_seq_id",
    "next_sampling_session_seq_id",
    "parse_tinker_path",
    "reserve_request_ids",
    "rl_datum",
    "sampling_seq_id",
    "seq_id_of",
    "split_like",
    "split_metric_key",
    "surrogate_data",
    "surrogate_forward_data",
    "tinker_path",
    "training_model_id",
    "validate_loss_config",
    "validate_training_data",
    "with_kl_penalty",
]
