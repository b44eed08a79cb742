"""Pretraining of the built-in presets (run by ``scripts/pretrain_presets.py``).

Full-parameter training from a seeded random init on the offline mixture of
`tinkex_jax.local.model.tasks` (synthetic string tasks without reversal, plus Python
standard-library text), with AdamW, linear warm-up then cosine decay, and global-norm
clipping at 1. The result is written as flat preset files (see `presets`) together with a
``<name>.pretrain.json`` record: recipe, wall time, and held-out loss of the trained model
and of its random init on the same held-out batches.

Everything is deterministic for a given recipe and seed on a given machine (data from
``numpy.random.default_rng(seed)``, init from ``jax.random.key(seed)``); XLA's CPU kernels may
differ in the last bits across CPUs.

Example:
    >>> RECIPES["tiny"].seed, RECIPES["tiny"].seq
    (0, 64)
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .config import ModelConfig
from .decoder import Params, _init_params_impl, target_logprobs
from .hf import config_to_hf, params_to_hf
from .presets import PRESET_CONFIGS, PRESETS_DIR
from .tasks import mixture_batch, random_word
from .tokenizer import build_byte_tokenizer, save_tokenizer

__all__ = ["RECIPES", "PretrainRecipe", "copy_exact_match", "heldout_loss", "main", "pretrain"]


class PretrainRecipe(NamedTuple):
    """Hyperparameters of one preset's pretraining run."""

    steps: int
    batch: int
    seq: int
    lr: float
    warmup: int
    seed: int = 0
    weight_decay: float = 0.01
    text_fraction: float = 0.15
    dtype: str = "float32"
    eval_batches: int = 8


RECIPES: dict[str, PretrainRecipe] = {
    "tiny": PretrainRecipe(steps=2400, batch=24, seq=64, lr=3e-3, warmup=100, seed=0),
    "small": PretrainRecipe(steps=2000, batch=16, seq=64, lr=2e-3, warmup=100, seed=0,
                            dtype="float16"),
}
"""The recipes the shipped presets were built with."""

HELDOUT_SEED = 10_000


def _loss(params: Params, tokens: jax.Array, targets: jax.Array,
          config: ModelConfig) -> jax.Array:
    lp = target_logprobs(params, None, tokens, targets, config)
    return -jnp.mean(lp)


_loss_jit = jax.jit(_loss, static_argnames=("config",))


def heldout_loss(params: Params, config: ModelConfig, *, batches: int = 8, batch: int = 16,
                 seq: int = 128, seed: int = HELDOUT_SEED) -> float:
    """Mean per-token NLL (nats) on held-out batches of the mixture (held-out text split).

    Example:
        >>> from tinkex_jax.local.model.presets import load_preset
        >>> m = load_preset("tinkex-jax/tiny")
        >>> heldout_loss(m.model.params, m.config, batches=1, batch=4, seq=32) < 3.0
        True
    """
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(batches):
        x, y = mixture_batch(rng, batch, seq, split="heldout")
        total += float(_loss_jit(params, x, y, config=config))
    return total / batches


def copy_exact_match(params: Params, config: ModelConfig, *, n: int = 64,
                     seed: int = HELDOUT_SEED) -> float:
    """Greedy exact-match rate of the copy task ``"w="`` → ``"w\\n"`` (3–8 letter words).

    Example:
        >>> from tinkex_jax.local.model.presets import load_preset
        >>> m = load_preset("tinkex-jax/tiny")
        >>> copy_exact_match(m.model.params, m.config, n=8) >= 0.5
        True
    """
    from .runtime import Model
    from .sampler import Sampler

    sampler = Sampler(Model(params, config))
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n):
        w = random_word(rng, 3, 8)
        out = sampler.sample(list(f"{w}=".encode()), max_tokens=len(w) + 1, temperature=0.0)
        hits += out.sequences[0].tokens == list(f"{w}\n".encode())
    return hits / n


def pretrain(name: str, recipe: PretrainRecipe, out_dir: str | Path | None = None, *,
             log: Callable[..., None] = print) -> dict[str, Any]:
    """Pretrains preset `name` with `recipe` and writes its files into `out_dir`.

    Args:
        name: ``"tiny"`` or ``"small"`` (its shape comes from `PRESET_CONFIGS`).
        recipe: Steps, batch, lr, seed, ...
        out_dir: Target directory (default: the package's presets directory).
        log: Progress printer.

    Returns:
        The record also written to ``<name>.pretrain.json``.

    Example:
        >>> import tempfile
        >>> rec = RECIPES["tiny"]._replace(steps=2, batch=2, seq=16, eval_batches=1)
        >>> out = tempfile.mkdtemp()
        >>> pretrain("tiny", rec, out, log=lambda *_: None)["tokens_seen"]  # doctest: +SKIP
        64
    """
    config = PRESET_CONFIGS[name]
    out = Path(out_dir) if out_dir is not None else PRESETS_DIR
    out.mkdir(parents=True, exist_ok=True)
    # Op-by-op init, as when the shipped presets were built (the jitted `init_params` fuses
    # the scaling into the sampler and differs in the last bit, which training amplifies).
    params = _init_params_impl(config, recipe.seed, np.dtype(np.float32))
    random_loss = heldout_loss(params, config, batches=recipe.eval_batches)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, recipe.lr, recipe.warmup, max(recipe.steps, recipe.warmup + 1), recipe.lr * 0.1)
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=recipe.weight_decay))
    opt_state = tx.init(params)

    def step(params: Params, opt_state: Any, x: jax.Array,
             y: jax.Array) -> tuple[Params, Any, jax.Array]:
        loss, grads = jax.value_and_grad(_loss)(params, x, y, config)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step_jit = jax.jit(step, donate_argnums=(0, 1))
    rng = np.random.default_rng(recipe.seed)
    log(f"[{name}] {config.num_params():,} params; random-init held-out loss {random_loss:.3f}")
    t0 = time.perf_counter()
    losses: list[float] = []
    pending = None
    for i in range(recipe.steps):
        x, y = mixture_batch(rng, recipe.batch, recipe.seq, text_fraction=recipe.text_fraction)
        params, opt_state, loss = step_jit(params, opt_state, x, y)
        if pending is not None:
            losses.append(float(pending))
        pending = loss
        if (i + 1) % 100 == 0 or i + 1 == recipe.steps:
            recent = np.mean(losses[-50:]) if losses else float(loss)
            log(f"[{name}] step {i + 1}/{recipe.steps} train loss {recent:.3f} "
                f"({time.perf_counter() - t0:.0f} s)")
    jax.block_until_ready(params)
    train_s = time.perf_counter() - t0
    final = heldout_loss(params, config, batches=recipe.eval_batches)
    copy_em = copy_exact_match(params, config, n=32 if recipe.steps < 100 else 128)
    log(f"[{name}] done in {train_s:.0f} s; held-out loss {final:.3f} (random init "
        f"{random_loss:.3f}); copy exact match {copy_em:.0%}")

    (out / f"{name}.config.json").write_text(
        json.dumps(config_to_hf(config, dtype=recipe.dtype), indent=2) + "\n",
        encoding="utf-8")
    from safetensors.numpy import save_file

    save_file(params_to_hf(params, config, dtype=recipe.dtype),
              str(out / f"{name}.safetensors"), metadata={"format": "pt"})
    (out / f"{name}.safetensors").chmod(0o644)
    save_tokenizer(build_byte_tokenizer(), out / f"{name}.tokenizer.json")
    record = {
        "preset": f"tinkex-jax/{name}",
        "params": config.num_params(),
        **recipe._asdict(),
        "tokens_seen": recipe.steps * recipe.batch * recipe.seq,
        "train_seconds": round(train_s, 1),
        "final_train_loss": round(float(np.mean(losses[-50:])) if losses else float("nan"), 4),
        "heldout_loss": round(final, 4),
        "random_init_heldout_loss": round(random_loss, 4),
        "copy_exact_match": copy_em,
        "jax_version": jax.__version__,
        "data": "tinkex_jax.local.model.tasks.mixture_batch (no string reversal)",
    }
    (out / f"{name}.pretrain.json").write_text(json.dumps(record, indent=2) + "\n",
                                               encoding="utf-8")
    return record


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python scripts/pretrain_presets.py [--only tiny] [--steps N] [--out DIR]``.

    Example:
        >>> import tempfile
        >>> main(["--only", "tiny", "--steps", "1", "--out", tempfile.mkdtemp()])  # doctest: +SKIP
        0
    """
    parser = argparse.ArgumentParser(description="Pretrain the built-in presets.")
    parser.add_argument("--only", choices=sorted(RECIPES), action="append",
                        help="preset(s) to build (default: all)")
    parser.add_argument("--steps", type=int, help="override the number of steps")
    parser.add_argument("--out", type=Path, default=PRESETS_DIR, help="output directory")
    args = parser.parse_args(argv)
    for name in args.only or sorted(RECIPES, key=lambda n: n != "tiny"):
        recipe = RECIPES[name]
        if args.steps:
            recipe = recipe._replace(steps=args.steps)
        pretrain(name, recipe, args.out)
    return 0
