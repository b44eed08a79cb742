"""The model layer of the local backend: a Llama / Qwen3-family decoder in plain JAX.

* `ModelConfig`, `LoraSpec` (``config``): static shapes and adapter settings.
* `init_params`, `logits`, `target_logprobs` (``decoder``): the decoder over a plain
  parameter pytree.
* `Lora`, `init_lora`, `merge_lora`, ... (``lora``): adapters as a separate pytree.
* `Model`, `make_batch`, `forward`, `forward_backward`, `accumulate`, `init_optimizer`,
  `optim_step` (``runtime``): the jitted, shape-bucketed training functions.
* `Sampler` (``sampler``): fused KV-cache decoding with fixed shapes.
* `load_hf_directory`, `save_hf_directory` (``hf``); `load_preset`, `resolve_base_model`
  (``presets``); `build_byte_tokenizer` (``tokenizer``).
* `RunOptions` (``options``): precision defaults, remat, attention, logits chunking,
  micro-batching, sampler weights and the device mesh of a `Model`.
* `make_mesh`, `shard_params`, `shard_lora`, ... (``sharding``): ``("fsdp", "tp")`` meshes and
  the shardings of weights, adapters, optimizer state and batches.
* `plan_memory`, `MemoryPlan` (``plan``): per-device peak memory from compiled programs,
  without loading weights.

Example:
    >>> from tinkex_jax.local.model import LoraSpec, Sampler, init_lora, load_preset
    >>> base = load_preset("tinkex-jax/tiny")
    >>> lora = init_lora(base.config, LoraSpec(rank=8, seed=0))
    >>> out = Sampler(base.model, lora).sample(list(b"abc="), max_tokens=4, temperature=0.0)
    >>> bytes(out.sequences[0].tokens)
    b'abc\\n'
"""

from .config import DEFAULT_LORA_ALPHA, LoraSpec, ModelConfig
from .decoder import DecodeWeights, Params, init_params, logits, target_logprobs
from .hf import (
    LoadedModel,
    config_from_hf,
    config_to_hf,
    load_hf_directory,
    params_from_hf,
    params_to_hf,
    save_hf_directory,
)
from .lora import (
    Lora,
    init_lora,
    lora_from_arrays,
    lora_num_params,
    lora_to_arrays,
    merge_for_decoding,
    merge_lora,
)
from .options import RunOptions
from .plan import MemoryPlan, plan_memory
from .presets import PRESET_CONFIGS, load_preset, preset_names, resolve_base_model
from .runtime import (
    ADAM_DEFAULTS,
    DEFAULT_BUCKETS,
    Batch,
    BatchLayout,
    Buckets,
    ForwardOutput,
    Model,
    OptState,
    PerTokenLoss,
    accumulate,
    forward,
    forward_backward,
    init_optimizer,
    make_batch,
    micro_batches,
    optim_step,
    optimizer_state_from_arrays,
    optimizer_state_to_arrays,
    split_outputs,
)
from .sampler import SampledSequence, Sampler, SampleResult, StopReason, find_stop_string
from .sharding import make_mesh, parse_mesh, shard_batch, shard_lora, shard_params
from .tokenizer import (
    BOS_ID,
    BYTE_VOCAB_SIZE,
    EOS_ID,
    PAD_ID,
    build_byte_tokenizer,
    save_tokenizer,
)

__all__ = [
    "ADAM_DEFAULTS",
    "BOS_ID",
    "BYTE_VOCAB_SIZE",
    "Batch",
    "BatchLayout",
    "Buckets",
    "DEFAULT_BUCKETS",
    "DEFAULT_LORA_ALPHA",
    "DecodeWeights",
    "EOS_ID",
    "ForwardOutput",
    "LoadedModel",
    "Lora",
    "LoraSpec",
    "MemoryPlan",
    "Model",
    "ModelConfig",
    "OptState",
    "PAD_ID",
    "PRESET_CONFIGS",
    "Params",
    "PerTokenLoss",
    "RunOptions",
    "SampleResult",
    "SampledSequence",
    "Sampler",
    "StopReason",
    "accumulate",
    "build_byte_tokenizer",
    "config_from_hf",
    "config_to_hf",
    "find_stop_string",
    "forward",
    "forward_backward",
    "init_lora",
    "init_optimizer",
    "init_params",
    "load_hf_directory",
    "load_preset",
    "logits",
    "lora_from_arrays",
    "lora_num_params",
    "lora_to_arrays",
    "make_batch",
    "make_mesh",
    "merge_for_decoding",
    "merge_lora",
    "micro_batches",
    "optim_step",
    "optimizer_state_from_arrays",
    "optimizer_state_to_arrays",
    "params_from_hf",
    "params_to_hf",
    "parse_mesh",
    "plan_memory",
    "preset_names",
    "resolve_base_model",
    "save_hf_directory",
    "save_tokenizer",
    "shard_batch",
    "shard_lora",
    "shard_params",
    "split_outputs",
    "target_logprobs",
]
