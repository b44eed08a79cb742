"""KV-cache sampling with fixed shapes: one compile per bucket, never per token or request.

How a request runs (`Sampler.sample`):

1. **Buckets.** ``num_samples`` is rounded up to a power of two (``B``); the cache length ``S``
   is the sequence bucket (``16, 24, 32, 48, ...``) of ``len(prompt) + max_tokens``; the
   prefill length is the bucket of ``len(prompt) - 1``. Requests in the same buckets reuse
   the compiled functions; sampling parameters (temperature, top-k, top-p, max_tokens, stop
   tokens, prompt length, seed) are traced values.
2. **Prefill** (batch 1, shared by all samples): runs ``prompt[:-1]`` through the per-layer
   weights, filling positions ``0..P-2`` of every layer's cache ``[1, KV, S, head]``; its
   hidden states give the prompt logprobs (and top-k prompt logprobs) on request. The cache
   is then broadcast to ``B`` rows.
3. **Decode**: one jitted ``lax.while_loop`` feeds the token at position ``pos`` (starting
   with the last prompt token), writes its keys/values into each layer's cache in place
   (``dynamic_update_slice`` on a donated cache), samples the token of ``pos + 1`` and stops
   early once every row is done. Rows stop on a stop token (inside the loop; the stop token
   is kept as the last token) or after ``max_tokens`` tokens.
4. **Stop strings** are checked on the host between fixed-size decode chunks (``chunk_size``
   tokens, default 32; the loop state and cache carry over, so chunking never changes the
   result). A row whose decoded completion contains a stop string is truncated right after
   the token that completes the first occurrence (the smallest ``k`` such that
   ``decode(tokens[:k])`` contains it) and ends with ``stop_reason = "stop"``.

Sampling semantics:

* ``temperature == 0`` is greedy (argmax); otherwise logits are divided by the temperature.
* ``top_k > 0`` keeps the ``k`` largest logits (``-1``/``0``: off); ``top_p < 1`` then keeps
  the smallest set of tokens whose temperature-scaled probability mass reaches ``top_p``
  (ties at the threshold are kept).
* Randomness: row ``r`` at position ``p`` draws with ``fold_in(fold_in(key(seed), r), p)``,
  where ``key(seed)`` uses all 64 bits of the seed. The same seed gives the same samples
  whatever the batch bucket or chunking; ``seed=None`` draws a random seed.
* **Reported logprobs** of sampled tokens are the model's log-softmax **at temperature 1,
  before top-k/top-p filtering**, i.e. the same quantity `forward` returns as target
  logprobs, so importance-sampling ratios are 1 for unchanged weights.
* Prompt logprobs: ``NaN`` at position 0, then ``log p(prompt[i] | prompt[:i])``.

Example:
    >>> from tinkex_jax.local.model.config import ModelConfig
    >>> from tinkex_jax.local.model.decoder import init_params
    >>> from tinkex_jax.local.model.runtime import Model
    >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1,
    ...                   d_ff=16)
    >>> sampler = Sampler(Model(init_params(cfg), cfg))
    >>> res = sampler.sample([1, 2, 3], num_samples=2, max_tokens=4, seed=0)
    >>> [len(s.tokens) for s in res.sequences], res.sequences[0].stop_reason
    ([4, 4], 'length')
"""

from __future__ import annotations

import math
import secrets
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tinkex_jax.errors import invalid

from .config import ModelConfig
from .decoder import (
    DecodeSource,
    KVCache,
    Params,
    SharedWeights,
    decode_logits,
    decode_step,
    logits_chunk_rows,
    map_row_chunks,
    prefill,
    unstack_layers,
)
from .lora import Lora, _seed_key_data, merge_for_decoding
from .options import RunOptions, resolve_sampler_weights
from .runtime import DEFAULT_BUCKETS, Buckets, Model

__all__ = [
    "SampleResult",
    "SampledSequence",
    "Sampler",
    "StopReason",
    "find_stop_string",
    "shared_decode_base",
]

StopReason = Literal["stop", "length"]

_REASON = {1: "stop", 2: "length"}


class SampledSequence(NamedTuple):
    """One completion.

    Attributes:
        tokens: Generated token ids (a stop token is included; text after a stop string is
            cut off).
        logprobs: Log-probability of each token at temperature 1 (see module docstring).
        stop_reason: ``"stop"`` (stop token or stop string) or ``"length"`` (max_tokens).
    """

    tokens: list[int]
    logprobs: list[float]
    stop_reason: StopReason


@dataclass(frozen=True)
class SampleResult:
    """Completions plus optional prompt scoring.

    Attributes:
        sequences: ``num_samples`` completions.
        prompt_logprobs: One float per prompt token (``NaN`` at position 0), or None.
        topk_prompt_logprobs: Per prompt position, the ``k`` most likely ``(token, logprob)``
            pairs in descending order (None at position 0), or None when not requested.
    """

    sequences: list[SampledSequence]
    prompt_logprobs: list[float] | None = None
    topk_prompt_logprobs: list[list[tuple[int, float]] | None] | None = None


# --------------------------------------------------------------------------------------------
# Jitted pieces
# --------------------------------------------------------------------------------------------


def _prefill_impl(weights: DecodeSource, tokens: jax.Array, cache_len: int,
                  config: ModelConfig, options: RunOptions) -> tuple[jax.Array, KVCache]:
    return prefill(weights, tokens, cache_len, config, options)


_prefill_jit = jax.jit(_prefill_impl, static_argnames=("cache_len", "config", "options"))


def _prompt_scores_impl(weights: DecodeSource, hidden: jax.Array, targets: jax.Array,
                        k: int, chunk: int) -> tuple[jax.Array, jax.Array, jax.Array]:

    def scores(h: jax.Array, tgt: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        logp = jax.nn.log_softmax(decode_logits(weights, h), axis=-1)
        picked = jnp.take_along_axis(logp, tgt[:, None], axis=-1)[:, 0]
        if k == 0:
            return picked, jnp.zeros((h.shape[0], 0), jnp.float32), jnp.zeros(
                (h.shape[0], 0), jnp.int32)
        top_lp, top_ids = jax.lax.top_k(logp, k)
        return picked, top_lp, top_ids.astype(jnp.int32)

    result: tuple[jax.Array, jax.Array, jax.Array] = map_row_chunks(
        scores, [hidden, targets], chunk)
    return result


_prompt_scores_jit = jax.jit(_prompt_scores_impl, static_argnames=("k", "chunk"))


def _table_impl(weights: DecodeSource, tokens: jax.Array, config: ModelConfig,
                options: RunOptions) -> jax.Array:
    length = tokens.shape[1]
    hidden, _ = prefill(weights, tokens, length, config, options)
    return jax.nn.log_softmax(decode_logits(weights, hidden), axis=-1)


_table_jit = jax.jit(_table_impl, static_argnames=("config", "options"))


def _start_impl(cache1: KVCache, prompt_row: jax.Array, key_data: jax.Array,
                batch: int) -> tuple[KVCache, dict[str, jax.Array]]:
    cache = [(jnp.broadcast_to(k, (batch, *k.shape[1:])),
              jnp.broadcast_to(v, (batch, *v.shape[1:]))) for k, v in cache1]
    base = jax.random.wrap_key_data(key_data)
    rows = jax.vmap(lambda r: jax.random.key_data(jax.random.fold_in(base, r)))(
        jnp.arange(batch, dtype=jnp.uint32))
    S = prompt_row.shape[0]
    state = {
        "tokens": jnp.broadcast_to(prompt_row, (batch, S)).astype(jnp.int32),
        "logprobs": jnp.zeros((batch, S), jnp.float32),
        "done": jnp.zeros((batch,), jnp.bool_),
        "reason": jnp.zeros((batch,), jnp.int32),
        "n_gen": jnp.zeros((batch,), jnp.int32),
        "keys": rows,
    }
    return cache, state


_start_jit = jax.jit(_start_impl, static_argnames=("batch",))


def _filter_logits(logits: jax.Array, temperature: jax.Array, top_k: jax.Array,
                   top_p: jax.Array) -> jax.Array:
    """Masks logits outside top-k, then outside top-p of the temperature-scaled rest."""
    V = logits.shape[-1]
    srt = -jnp.sort(-logits, axis=-1)  # descending
    k = jnp.where((top_k > 0) & (top_k < V), top_k, V)
    kth = jax.lax.dynamic_index_in_dim(srt, k - 1, axis=1)  # [B, 1]
    ranks = jnp.arange(V)
    scaled = jnp.where(ranks < k, srt / temperature, -jnp.inf)
    probs = jax.nn.softmax(scaled, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    keep = (before < top_p) & (ranks < k)
    n_keep = jnp.maximum(jnp.sum(keep, axis=-1, keepdims=True), 1)
    pth = jnp.take_along_axis(srt, n_keep - 1, axis=-1)
    threshold = jnp.maximum(kth, pth)
    return jnp.where(logits < threshold, -jnp.inf, logits)


def _choose(logits: jax.Array, keys: jax.Array, pos: jax.Array,
            params: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Next token per row and its temperature-1 logprob."""
    temperature = params["temperature"]
    greedy = temperature <= 0
    safe_t = jnp.where(greedy, 1.0, temperature)
    need_filter = ((params["top_k"] > 0) | (params["top_p"] < 1.0)) & ~greedy
    filtered = jax.lax.cond(
        need_filter,
        lambda x: _filter_logits(x, safe_t, params["top_k"], params["top_p"]),
        lambda x: x,
        logits,
    )

    def draw(key_data: jax.Array, row: jax.Array) -> jax.Array:
        key = jax.random.fold_in(jax.random.wrap_key_data(key_data), pos)
        return jax.random.categorical(key, row / safe_t)

    sampled = jax.vmap(draw)(keys, filtered)
    token = jnp.where(greedy, jnp.argmax(logits, axis=-1), sampled).astype(jnp.int32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return token, jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]


def _decode_impl(weights: DecodeSource, cache: KVCache, state: dict[str, jax.Array],
                 pos: jax.Array, n_steps: jax.Array, params: dict[str, jax.Array],
                 config: ModelConfig) -> tuple[KVCache, dict[str, jax.Array], jax.Array]:
    S = state["tokens"].shape[1]

    def cond(carry: tuple[Any, ...]) -> jax.Array:
        i, p, _, st = carry
        return (i < n_steps) & (p < S - 1) & ~jnp.all(st["done"])

    def body(carry: tuple[Any, ...]) -> tuple[Any, ...]:
        i, p, kv, st = carry
        token = jax.lax.dynamic_index_in_dim(st["tokens"], p, axis=1, keepdims=False)
        logits, kv = decode_step(weights, kv, token, p, config)
        new, lp = _choose(logits, st["keys"], p, params)
        running = ~st["done"]
        new = jnp.where(running, new, 0)
        tokens = jax.lax.dynamic_update_slice(st["tokens"], new[:, None], (0, p + 1))
        logprobs = jax.lax.dynamic_update_slice(
            st["logprobs"], jnp.where(running, lp, 0.0)[:, None], (0, p + 1))
        n_gen = st["n_gen"] + running.astype(jnp.int32)
        hit = running & jnp.any(new[:, None] == params["stop_ids"][None, :], axis=-1)
        full = running & ~hit & ((n_gen >= params["max_tokens"]) | (p + 1 >= S - 1))
        reason = jnp.where(hit, 1, jnp.where(full, 2, st["reason"]))
        st = {**st, "tokens": tokens, "logprobs": logprobs, "n_gen": n_gen,
              "done": st["done"] | hit | full, "reason": reason}
        return i + 1, p + 1, kv, st

    _, pos, cache, state = jax.lax.while_loop(cond, body, (jnp.int32(0), pos, cache, state))
    return cache, state, pos


_decode_jit = jax.jit(_decode_impl, static_argnames=("config",), donate_argnums=(1, 2))


# --------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------


def find_stop_string(tokens: Sequence[int], stops: Sequence[str],
                     decode: Callable[[list[int]], str]) -> int | None:
    """Length of the shortest prefix of `tokens` whose text contains one of `stops`.

    Returns None when no stop string occurs in ``decode(tokens)``.

    Example:
        >>> find_stop_string([104, 105, 10, 120], ["\\n"], lambda t: bytes(t).decode())
        3
        >>> find_stop_string([104, 105], ["\\n"], lambda t: bytes(t).decode()) is None
        True
    """
    toks = list(tokens)
    stops = [s for s in stops if s]
    if not stops or not any(s in decode(toks) for s in stops):
        return None
    lo, hi = 1, len(toks)  # invariant: the prefix of length hi contains a stop string
    while lo < hi:
        mid = (lo + hi) // 2
        if any(s in decode(toks[:mid]) for s in stops):
            hi = mid
        else:
            lo = mid + 1
    return hi


_SHARED_BASES: dict[int, tuple[weakref.ref[Any], dict[str, Any]]] = {}
_SHARED_LOCK = threading.Lock()


def _forget(key: int, cache: dict[int, Any], _ref: Any) -> None:
    cache.pop(key, None)


def shared_decode_base(params: Params) -> dict[str, Any]:
    """The per-layer form of a base that every ``"shared"`` sampler of it reads.

    Built once per base parameter tree (`decoder.unstack_layers`) and kept while the base's
    embedding array is alive; embedding, final norm and unembedding are the base's own
    arrays (not copied).

    Example:
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> from tinkex_jax.local.model.decoder import init_params
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=2, n_heads=2,
        ...                   n_kv_heads=1, d_ff=16)
        >>> params = init_params(cfg)
        >>> view = shared_decode_base(params)
        >>> view is shared_decode_base(params), view["embed"] is params["embed"]
        (True, True)
    """
    embed = params["embed"]
    key = id(embed)
    with _SHARED_LOCK:
        entry = _SHARED_BASES.get(key)
        if entry is not None and entry[0]() is embed:
            return entry[1]
    view: dict[str, Any] = {"embed": embed, "layers": unstack_layers(params["layers"]),
                            "final_norm": params["final_norm"]}
    if "unembed" in params:
        view["unembed"] = params["unembed"]
    with _SHARED_LOCK:
        entry = _SHARED_BASES.get(key)
        if entry is not None and entry[0]() is embed:
            return entry[1]
        _SHARED_BASES[key] = (weakref.ref(embed, partial(_forget, key, _SHARED_BASES)), view)
    return view


def _pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


class Sampler:
    """Samples from one frozen set of weights (a base model, optionally with an adapter).

    The sampler holds a snapshot of the adapter (later updates of the training adapter do not
    affect it); keep one `Sampler` per sampling session. How it holds the weights follows
    ``model.options.sampler_weights``: ``"merged"`` folds the adapter into a per-layer copy
    of the base once (fastest per token; one full copy per sampler); ``"shared"`` reads one
    per-layer copy of the base shared by every sampler of that base (`shared_decode_base`)
    and applies the adapter on the fly; ``"stacked"`` reads the trainer's stacked arrays
    directly (no copy at all; slower per token). ``"auto"`` merges for bases under 256 MiB
    and shares larger ones. Weights and KV cache are in the base's dtype; logits and
    logprobs in float32.

    Args:
        model: The base model.
        lora: An adapter to merge in, or None for the base model.
        buckets: Shape buckets (sequence lengths; batch sizes are powers of two).
        tokenizer: Optional ``tokenizers.Tokenizer``; when given, stop strings work without
            an explicit ``decode`` (``tokenizer.decode(ids, skip_special_tokens=False)``).

    Example:
        >>> from tinkex_jax.local.model.config import ModelConfig
        >>> from tinkex_jax.local.model.decoder import init_params
        >>> from tinkex_jax.local.model.runtime import Model
        >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2,
        ...                   n_kv_heads=1, d_ff=16)
        >>> s = Sampler(Model(init_params(cfg), cfg))
        >>> s.sample([1, 2], max_tokens=3, temperature=0.0).sequences[0].stop_reason
        'length'
    """

    def __init__(self, model: Model, lora: Lora | None = None, *,
                 buckets: Buckets = DEFAULT_BUCKETS, tokenizer: Any = None) -> None:
        self.config = model.config
        self.options = model.options
        self.buckets = buckets
        self.tokenizer = tokenizer
        base_bytes = sum(int(x.nbytes) for x in jax.tree.leaves(model.params))
        self.mode = resolve_sampler_weights(model.options, base_bytes)
        self.weights: DecodeSource
        if self.mode == "merged":
            self.weights = merge_for_decoding(model.params, lora)
        else:
            base = model.params if self.mode == "stacked" else shared_decode_base(model.params)
            self.weights = SharedWeights(base, None if lora is None else lora.weights,
                                         1.0 if lora is None else lora.scale)
        self.dtype = model.params["embed"].dtype

    def logprob_table(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """Next-token log-softmax after every position of `tokens`: ``[T, V]`` float32.

        Example:
            >>> from tinkex_jax.local.model.config import ModelConfig
            >>> from tinkex_jax.local.model.decoder import init_params
            >>> from tinkex_jax.local.model.runtime import Model
            >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2,
            ...                   n_kv_heads=1, d_ff=16)
            >>> Sampler(Model(init_params(cfg), cfg)).logprob_table([1, 2, 3]).shape
            (3, 16)
        """
        toks = np.asarray(tokens, np.int32).reshape(-1)
        n = int(toks.size)
        padded = np.zeros((1, self.buckets.seq(n)), np.int32)
        padded[0, :n] = toks
        table = _table_jit(self.weights, padded, config=self.config, options=self.options)
        return np.asarray(table)[:n]

    def prompt_scores(self, prompt: Sequence[int], *, topk: int = 0,
                      ) -> tuple[list[float], list[list[tuple[int, float]] | None] | None]:
        """Prompt logprobs (NaN at 0) and, when ``topk > 0``, top-k prompt logprobs.

        Example:
            >>> from tinkex_jax.local.model.config import ModelConfig
            >>> from tinkex_jax.local.model.decoder import init_params
            >>> from tinkex_jax.local.model.runtime import Model
            >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2,
            ...                   n_kv_heads=1, d_ff=16)
            >>> lp, top = Sampler(Model(init_params(cfg), cfg)).prompt_scores([1, 2, 3],
            ...                                                             topk=2)
            >>> len(lp), top[0], len(top[1])
            (3, None, 2)
        """
        prompt = self._check_prompt(prompt, 0)
        res = self.sample(prompt, max_tokens=0, prompt_logprobs=True,
                          topk_prompt_logprobs=topk)
        assert res.prompt_logprobs is not None
        return res.prompt_logprobs, res.topk_prompt_logprobs

    def _check_prompt(self, prompt: Sequence[int], max_tokens: int) -> list[int]:
        toks = [int(t) for t in prompt]
        if not toks:
            raise invalid("sample prompt", "at least one token", "<empty prompt>")
        V = self.config.vocab_size
        bad = [t for t in toks if not 0 <= t < V]
        if bad:
            raise invalid("sample prompt", f"token ids in [0, {V})", bad[:5])
        if len(toks) + max_tokens > self.config.max_seq_len:
            raise invalid("sample prompt + max_tokens", f"at most max_seq_len="
                          f"{self.config.max_seq_len} tokens", len(toks) + max_tokens,
                          "shorten the prompt or lower max_tokens")
        return toks

    def sample(
        self,
        prompt: Sequence[int],
        *,
        num_samples: int = 1,
        max_tokens: int = 16,
        temperature: float = 1.0,
        top_k: int = -1,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_token_ids: Sequence[int] = (),
        stop_strings: Sequence[str] = (),
        decode: Callable[[list[int]], str] | None = None,
        prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
        chunk_size: int = 32,
    ) -> SampleResult:
        """Generates ``num_samples`` completions of one prompt.

        Args:
            prompt: Prompt token ids (at least one).
            num_samples: Completions to draw (the prompt is repeated in the batch).
            max_tokens: Maximum new tokens per completion (0: only score the prompt).
            temperature: 0 for greedy decoding, else the softmax temperature.
            top_k: Keep the k most likely tokens (-1 or 0: no limit).
            top_p: Nucleus sampling mass in (0, 1].
            seed: 64-bit seed (None: random). Same seed, same result.
            stop_token_ids: Tokens that end a completion (kept as its last token).
                Tinker's ``stop=None`` means the model's EOS ids; the caller passes them.
            stop_strings: Strings that end a completion (needs `decode` or a tokenizer).
            decode: Token ids to text for stop strings (default: the sampler's tokenizer).
            prompt_logprobs: Also return the prompt's logprobs.
            topk_prompt_logprobs: Also return the top-k logprobs at each prompt position.
            chunk_size: Tokens per decode call when checking stop strings on the host.

        Returns:
            A `SampleResult`.

        Raises:
            ValidationError: Bad arguments (each message says what was expected).

        Example:
            >>> from tinkex_jax.local.model.config import ModelConfig
            >>> from tinkex_jax.local.model.decoder import init_params
            >>> from tinkex_jax.local.model.runtime import Model
            >>> cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2,
            ...                   n_kv_heads=1, d_ff=16)
            >>> s = Sampler(Model(init_params(cfg), cfg))
            >>> a = s.sample([3, 4], num_samples=3, max_tokens=5, seed=7)
            >>> b = s.sample([3, 4], num_samples=3, max_tokens=5, seed=7)
            >>> a.sequences == b.sequences
            True
        """
        if stop_strings and decode is None and self.tokenizer is not None:
            tok = self.tokenizer

            def decode(ids: list[int]) -> str:
                return str(tok.decode(ids, skip_special_tokens=False))

        self._validate(num_samples, max_tokens, temperature, top_k, top_p, stop_strings,
                       decode, topk_prompt_logprobs, chunk_size)
        toks = self._check_prompt(prompt, max_tokens)
        P = len(toks)
        S = self.buckets.seq(P + max(max_tokens, 1))
        B = _pow2(num_samples)
        cfg = self.config

        # 1. prefill prompt[:-1] at batch 1
        hidden = None
        if P > 1:
            pb = self.buckets.seq(P - 1)
            ptoks = np.zeros((1, pb), np.int32)
            ptoks[0, :P - 1] = toks[:-1]
            hidden, cache1 = _prefill_jit(self.weights, ptoks, cache_len=S, config=cfg,
                                          options=self.options)
        else:
            shape = (1, cfg.n_kv_heads, S, cfg.head_size)
            cache1 = [(jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype))
                      for _ in range(cfg.n_layers)]

        plp: list[float] | None = None
        topk_out: list[list[tuple[int, float]] | None] | None = None
        if prompt_logprobs or topk_prompt_logprobs:
            plp, topk_out = self._score(toks, hidden, topk_prompt_logprobs)
            if not prompt_logprobs:
                plp = None

        if max_tokens == 0:
            return SampleResult([SampledSequence([], [], "length")] * num_samples, plp,
                                topk_out)

        # 2. broadcast the cache to B rows and start the loop state
        row = np.zeros((S,), np.int32)
        row[:P] = toks
        seed_value = secrets.randbits(64) if seed is None else int(seed)
        key_data = _seed_key_data(seed_value)
        cache, state = _start_jit(cache1, row, key_data, batch=B)
        stop_ids = np.full((max(8, _pow2(len(stop_token_ids))),), -1, np.int32)
        stop_ids[:len(stop_token_ids)] = list(stop_token_ids)
        params = {
            "temperature": np.float32(temperature), "top_k": np.int32(top_k),
            "top_p": np.float32(top_p), "max_tokens": np.int32(max_tokens),
            "stop_ids": stop_ids,
        }
        pos = np.int32(P - 1)

        # 3. decode (in chunks when stop strings need host checks)
        if not stop_strings:
            cache, state, pos = _decode_jit(self.weights, cache, state, pos,
                                            np.int32(max_tokens), params, config=cfg)
            host = jax.device_get(state)
            return SampleResult(
                [self._row(host, r, P, None) for r in range(num_samples)], plp, topk_out)

        assert decode is not None
        final: dict[int, SampledSequence] = {}
        while len(final) < num_samples:
            cache, state, pos = _decode_jit(self.weights, cache, state, pos,
                                            np.int32(chunk_size), params, config=cfg)
            host = jax.device_get(state)
            newly_done = []
            for r in range(num_samples):
                if r in final:
                    continue
                n = int(host["n_gen"][r])
                cut = find_stop_string(host["tokens"][r, P:P + n].tolist(), stop_strings,
                                       decode)
                if cut is not None:
                    final[r] = self._row(host, r, P, cut)
                    newly_done.append(r)
                elif bool(host["done"][r]):
                    final[r] = self._row(host, r, P, None)
            if newly_done:
                state = {**state, "done": state["done"].at[np.array(newly_done)].set(True)}
            if len(final) < num_samples and bool(np.all(host["done"][:num_samples])):
                break  # defensive: every row finished on the device
        return SampleResult([final[r] if r in final else self._row(host, r, P, None)
                             for r in range(num_samples)], plp, topk_out)

    @staticmethod
    def _row(host: dict[str, np.ndarray], r: int, P: int, cut: int | None) -> SampledSequence:
        n = int(host["n_gen"][r])
        if cut is not None:
            return SampledSequence(host["tokens"][r, P:P + cut].tolist(),
                                   host["logprobs"][r, P:P + cut].tolist(), "stop")
        reason = _REASON.get(int(host["reason"][r]), "length")
        return SampledSequence(host["tokens"][r, P:P + n].tolist(),
                               host["logprobs"][r, P:P + n].tolist(),
                               reason)  # type: ignore[arg-type]

    def _score(self, toks: list[int], hidden: jax.Array | None, topk: int,
               ) -> tuple[list[float], list[list[tuple[int, float]] | None] | None]:
        P = len(toks)
        lp = [math.nan]
        top: list[list[tuple[int, float]] | None] | None = [None] if topk else None
        if P == 1 or hidden is None:
            return lp, top
        pb = hidden.shape[0]
        targets = np.zeros((pb,), np.int32)
        targets[:P - 1] = toks[1:]
        k = min(_pow2(topk), self.config.vocab_size) if topk else 0
        chunk = logits_chunk_rows(self.config.vocab_size, self.options)
        picked, top_lp, top_ids = jax.device_get(
            _prompt_scores_jit(self.weights, hidden, targets, k=k, chunk=chunk))
        lp += [float(x) for x in picked[:P - 1]]
        if top is not None:
            kk = min(topk, self.config.vocab_size)
            for i in range(P - 1):
                top.append([(int(t), float(v)) for t, v in zip(top_ids[i, :kk],
                                                                 top_lp[i, :kk])])
        return lp, top

    def _validate(self, num_samples: int, max_tokens: int, temperature: float, top_k: int,
                  top_p: float, stop_strings: Sequence[str],
                  decode: Callable[[list[int]], str] | None, topk: int,
                  chunk_size: int) -> None:
        if not isinstance(num_samples, int) or num_samples < 1:
            raise invalid("num_samples", "an int >= 1", num_samples)
        if not isinstance(max_tokens, int) or max_tokens < 0:
            raise invalid("SamplingParams.max_tokens", "an int >= 0", max_tokens)
        if not temperature >= 0 or not math.isfinite(temperature):
            raise invalid("SamplingParams.temperature", "a finite float >= 0 (0 = greedy)",
                          temperature)
        if not isinstance(top_k, int) or top_k < -1:
            raise invalid("SamplingParams.top_k", "-1 (no limit) or an int >= 0", top_k)
        if not 0 < top_p <= 1:
            raise invalid("SamplingParams.top_p", "a float in (0, 1]", top_p)
        if stop_strings and decode is None:
            raise invalid("Sampler.sample(decode=...)", "a token-ids-to-text function when "
                          "stop strings are given", None,
                          "pass decode=tokenizer.decode or build the Sampler with a tokenizer")
        if not isinstance(topk, int) or topk < 0:
            raise invalid("topk_prompt_logprobs", "an int >= 0", topk)
        if chunk_size < 1:
            raise invalid("chunk_size", "an int >= 1", chunk_size)
