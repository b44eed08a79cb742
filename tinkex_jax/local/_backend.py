"""The seam between the server engine and the model: what the engine asks a backend to do.

The engine's services (`tinkex_jax.local._engine`) speak wire types and numpy arrays; a
`Backend` does the array work: adapters over frozen base models, forward / forward_backward with a
built-in loss, the AdamW step, logprob tables and sampling, and (de)serialising adapter
and optimizer state. `tinkex_jax.local._jax_backend.JaxBackend` implements it with the
JAX model layer (`tinkex_jax.local.model`); tests may plug in a small fake.

Adapter, optimizer and gradient values are opaque to the engine: it stores what the backend
returns and hands it back. Every method is a function of its arguments (no hidden mutation
of those values), so a request that fails half-way changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..types import AdamParams

__all__ = [
    "AdapterSpec",
    "Backend",
    "BaseModelInfo",
    "SampleJob",
    "SampleOutcome",
    "SampledRow",
    "TrainItem",
    "TrainResult",
]


@dataclass(frozen=True)
class BaseModelInfo:
    """What the server tells clients about a base model.

    Attributes:
        name: The name clients use (a preset such as ``tinkex-jax/tiny`` or a path).
        vocab_size: Token ids must be below this.
        max_context_length: Longest prompt + completion.
        tokenizer_id: What ``get_info`` reports as ``tokenizer_id``.
        arch: Architecture name (``llama`` / ``qwen3``).
        eos_token_ids: Tokens that end a sample when ``stop`` is None.
        num_params: Base parameter count.
    """

    name: str
    vocab_size: int
    max_context_length: int
    tokenizer_id: str
    arch: str = "llama"
    eos_token_ids: tuple[int, ...] = ()
    num_params: int = 0


@dataclass(frozen=True)
class AdapterSpec:
    """LoRA settings of a training model (the wire's LoraConfig plus the seed used)."""

    rank: int
    seed: int
    alpha: float = 32.0
    train_attn: bool = True
    train_mlp: bool = True
    train_unembed: bool = True


@dataclass(frozen=True)
class TrainItem:
    """One datum on the host.

    Attributes:
        tokens: Input token ids, int32 ``[T]``.
        targets: Target ids aligned with the input, int64 ``[T]`` or ``[T, K]``.
        inputs: The loss's other inputs (float32, first dim ``T``), e.g. ``weights``.
    """

    tokens: np.ndarray
    targets: np.ndarray
    inputs: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainResult:
    """Per-datum outputs of forward / forward_backward.

    Attributes:
        logprobs: Per datum, float32 with the shape of its targets.
        losses: Per datum, the per-token loss (same shapes).
        grads: The adapter gradient of the summed loss (None for forward only).
    """

    logprobs: Sequence[np.ndarray]
    losses: Sequence[np.ndarray]
    grads: Any = None


@dataclass(frozen=True)
class SampleJob:
    """One sampling request, decoded and validated.

    ``stop_tokens`` / ``stop_strings`` are already resolved (EOS when the request's ``stop``
    was None, nothing for ``[]``). ``seed`` is always set (random when the client gave none).
    """

    prompt: np.ndarray
    num_samples: int
    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int
    stop_tokens: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()


@dataclass(frozen=True)
class SampledRow:
    """One generated sequence: its tokens, their logprobs and why it stopped."""

    tokens: np.ndarray
    logprobs: np.ndarray
    stop_reason: str  # "stop" | "length"


@dataclass(frozen=True)
class SampleOutcome:
    """What sampling returns: the sequences and, when asked for, prompt scores.

    Attributes:
        rows: The generated sequences.
        prompt_logprobs: float32 ``[P]``, ``log p(prompt[i] | prompt[:i])`` (NaN at 0).
        topk_prompt: ``(ids int32 [P, k], logprobs float32 [P, k])`` best first; row 0 is
            unused.
    """

    rows: Sequence[SampledRow]
    prompt_logprobs: np.ndarray | None = None
    topk_prompt: tuple[np.ndarray, np.ndarray] | None = None


class Backend(Protocol):
    """Array work for the local server (see the module docstring)."""

    def base_models(self) -> Sequence[BaseModelInfo]:
        """The base models this backend offers."""
        ...

    def base_model(self, name: str) -> BaseModelInfo:
        """Info about one base model; raises KeyError if it is not offered."""
        ...

    def warm_up(self, name: str) -> None:
        """Load a base model (and compile what can be compiled ahead)."""
        ...

    def init_adapter(self, base: str, spec: AdapterSpec) -> Any:
        """A fresh adapter (B = 0, so the model equals its base)."""
        ...

    def init_optimizer(self, base: str, adapter: Any) -> Any:
        """Fresh AdamW state for an adapter."""
        ...

    def forward_backward(self, base: str, adapter: Any, items: Sequence[TrainItem],
                         loss_fn: str, config: Mapping[str, float], *,
                         forward_only: bool) -> TrainResult:
        """Run the model and the loss on a batch; gradients unless `forward_only`."""
        ...

    def accumulate(self, total: Any, grads: Any) -> Any:
        """``total + grads`` (``total`` may be None)."""
        ...

    def optim_step(self, base: str, adapter: Any, opt_state: Any, grads: Any,
                   params: AdamParams) -> tuple[Any, Any, dict[str, float]]:
        """One AdamW step; `grads` None means a zero gradient. Returns the new adapter,
        the new optimizer state and metrics (``name:reduction`` keys). A step whose metrics
        are not all finite must leave the adapter and optimizer state unchanged (the
        returned ones equal the given ones); the engine then fails the request."""
        ...

    def sampling_handle(self, base: str, adapter: Any) -> Any:
        """Prepare weights for sampling (a snapshot: later adapter updates do not leak in);
        `adapter` None samples the base model."""
        ...

    def sample(self, handle: Any, job: SampleJob, *, prompt_logprobs: bool,
               topk_prompt: int) -> SampleOutcome:
        """Generate ``job.num_samples`` sequences (and score the prompt when asked)."""
        ...

    def logprob_table(self, handle: Any, tokens: np.ndarray) -> np.ndarray:
        """``log_softmax`` of the next-token logits after each position: ``[T, V]``."""
        ...

    def adapter_to_arrays(self, adapter: Any) -> dict[str, np.ndarray]:
        """Flat host arrays of an adapter."""
        ...

    def adapter_from_arrays(self, base: str, spec: AdapterSpec,
                            arrays: Mapping[str, np.ndarray]) -> Any:
        """Inverse of `adapter_to_arrays` (validates shapes against the base)."""
        ...

    def optimizer_to_arrays(self, opt_state: Any) -> dict[str, np.ndarray]:
        """Flat host arrays of an optimizer state."""
        ...

    def optimizer_from_arrays(self, base: str, adapter: Any,
                              arrays: Mapping[str, np.ndarray]) -> Any:
        """Inverse of `optimizer_to_arrays`."""
        ...

    def export_hf(self, base: str, spec: AdapterSpec, adapter: Any, out_dir: Path) -> None:
        """Write the adapter in Hugging Face (PEFT) format into `out_dir`."""
        ...
