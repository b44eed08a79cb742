"""Static configuration of the local backend's decoder and of its LoRA adapters.

Both classes are frozen dataclasses, so they are hashable and can be passed to ``jax.jit`` as
static arguments: one compiled function per (config, shape bucket).

Example:
    >>> cfg = ModelConfig(vocab_size=259, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2,
    ...                   d_ff=384)
    >>> cfg.head_size, cfg.group_size
    (32, 2)
    >>> LoraSpec(rank=8).scale
    4.0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tinkex_jax.errors import invalid

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_LORA_ALPHA",
    "Architecture",
    "LoraSpec",
    "ModelConfig",
]

Architecture = Literal["llama", "qwen3", "qwen2", "mistral"]
"""Decoder families (they decide the Hugging Face names on export): ``"llama"`` (Llama 2/3),
``"mistral"`` (Llama-like, optional sliding-window attention), ``"qwen2"`` (Qwen2 / Qwen2.5:
q/k/v projection biases) and ``"qwen3"`` (q/k RMSNorm)."""

ARCHITECTURES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3")
"""Every supported `Architecture`."""

DEFAULT_LORA_ALPHA = 32.0
"""Default LoRA alpha. The Tinker wire carries no alpha; we use a fixed ``alpha = 32`` (the
value SkyRL calls the Tinker default), so the LoRA output is scaled by ``32 / rank``. With
``B = 0`` at init and a fixed alpha, the best learning rate depends little on the rank."""


@dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a Llama / Mistral / Qwen2 / Qwen3-family decoder.

    Attributes:
        vocab_size: Rows of the embedding (and columns of the unembedding).
        d_model: Residual width (``hidden_size`` in Hugging Face configs).
        n_layers: Number of decoder blocks.
        n_heads: Query heads.
        n_kv_heads: Key/value heads (grouped-query attention); must divide `n_heads`.
        d_ff: Width of the SwiGLU MLP (``intermediate_size``).
        head_dim: Size of one head; 0 means ``d_model // n_heads``.
        rope_theta: Rotary embedding base.
        rope_scaling: Optional rope scaling as sorted ``(key, value)`` pairs (``rope_type``
            ``"llama3"``, ``"linear"``, ``"dynamic"`` or ``"yarn"`` and their Hugging Face
            parameters), hashable so the config stays static (see `decoder.rope_inv_freq`).
        rms_norm_eps: Epsilon of every RMSNorm.
        tie_embeddings: Use the embedding matrix as the output projection.
        qk_norm: Qwen3's per-head RMSNorm on queries and keys (before rotary).
        attention_bias: Biases on the q, k and v projections (not on o), as in Qwen2; adds
            ``bq, bk, bv`` to the layer parameters.
        sliding_window: Each query attends to at most this many positions (itself and the
            ``sliding_window - 1`` before it), as Mistral's ``sliding_window``; None: full
            causal attention.
        max_seq_len: Longest sequence (prompt + completion) the model accepts.
        architecture: One of `ARCHITECTURES`; decides the Hugging Face names on export.
        bos_token_id, eos_token_ids, pad_token_id: Special token ids (may be unknown).
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    head_dim: int = 0
    rope_theta: float = 10_000.0
    rope_scaling: tuple[tuple[str, float | str], ...] | None = None
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = True
    qk_norm: bool = False
    attention_bias: bool = False
    sliding_window: int | None = None
    max_seq_len: int = 2048
    architecture: Architecture = "llama"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default=())
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff",
                     "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise invalid(f"ModelConfig.{name}", "a positive int", value,
                              "check the model's config.json")
        if self.head_dim < 0:
            raise invalid("ModelConfig.head_dim", "0 (= d_model // n_heads) or a positive int",
                          self.head_dim)
        if self.n_heads % self.n_kv_heads:
            raise invalid("ModelConfig.n_kv_heads", f"a divisor of n_heads={self.n_heads}",
                          self.n_kv_heads, "grouped-query attention shares each KV head "
                          "between n_heads / n_kv_heads query heads")
        if self.head_dim == 0 and self.d_model % self.n_heads:
            raise invalid("ModelConfig.head_dim", f"set explicitly, because d_model="
                          f"{self.d_model} is not divisible by n_heads={self.n_heads}",
                          self.head_dim)
        if self.head_size % 2:
            raise invalid("ModelConfig.head_dim", "an even head size (rotary embeddings "
                          "rotate pairs)", self.head_size)
        if self.architecture not in ARCHITECTURES:
            raise invalid("ModelConfig.architecture", f"one of {list(ARCHITECTURES)}",
                          self.architecture)
        if self.sliding_window is not None and (
                not isinstance(self.sliding_window, int) or isinstance(self.sliding_window, bool)
                or self.sliding_window <= 0):
            raise invalid("ModelConfig.sliding_window", "None (full attention) or a positive "
                          "int", self.sliding_window)
        if self.rope_theta <= 0:
            raise invalid("ModelConfig.rope_theta", "a positive float", self.rope_theta)

    @property
    def head_size(self) -> int:
        """The resolved head size (``head_dim`` or ``d_model // n_heads``)."""
        return self.head_dim or self.d_model // self.n_heads

    @property
    def group_size(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.n_kv_heads

    @property
    def q_dim(self) -> int:
        """Width of the concatenated query heads."""
        return self.n_heads * self.head_size

    @property
    def kv_dim(self) -> int:
        """Width of the concatenated key (or value) heads."""
        return self.n_kv_heads * self.head_size

    def num_params(self) -> int:
        """Number of base parameters (embeddings counted once when tied).

        Example:
            >>> ModelConfig(vocab_size=259, d_model=128, n_layers=2, n_heads=4,
            ...             n_kv_heads=2, d_ff=384).num_params()
            427008
        """
        d, q, kv, f = self.d_model, self.q_dim, self.kv_dim, self.d_ff
        per_layer = 2 * d + d * q + 2 * d * kv + q * d + 3 * d * f
        if self.qk_norm:
            per_layer += 2 * self.head_size
        if self.attention_bias:
            per_layer += q + 2 * kv
        total = self.n_layers * per_layer + self.vocab_size * d + d
        if not self.tie_embeddings:
            total += self.vocab_size * d
        return total


@dataclass(frozen=True)
class LoraSpec:
    """Which base weights get a LoRA adapter, and how it is initialised and scaled.

    Mirrors the wire's ``LoraConfig`` (rank, seed, train_attn, train_mlp, train_unembed) plus
    an ``alpha`` that the wire does not carry (default `DEFAULT_LORA_ALPHA`).

    Attributes:
        rank: LoRA rank ``r`` (> 0).
        seed: Seed of the deterministic init of the ``A`` matrices.
        alpha: The adapter output is scaled by ``alpha / rank``.
        train_attn: Adapters on ``q, k, v, o`` projections.
        train_mlp: Adapters on ``gate, up, down`` projections.
        train_unembed: An adapter on the output projection (unembedding).
    """

    rank: int
    seed: int = 0
    alpha: float = DEFAULT_LORA_ALPHA
    train_attn: bool = True
    train_mlp: bool = True
    train_unembed: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank <= 0:
            raise invalid("LoraSpec.rank", "a positive int", self.rank, "e.g. rank=8 or 32")
        if not (self.train_attn or self.train_mlp or self.train_unembed):
            raise invalid("LoraSpec", "at least one of train_attn, train_mlp, train_unembed",
                          "<all three False>", "enable at least one group of adapters")
        if not self.alpha > 0:
            raise invalid("LoraSpec.alpha", "a positive float", self.alpha)

    @property
    def scale(self) -> float:
        """The multiplier ``alpha / rank`` of the adapter output."""
        return float(self.alpha) / self.rank
