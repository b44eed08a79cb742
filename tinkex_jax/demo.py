"""``tinkex demo``: the main job, offline, on the embedded local backend.

Starts the local backend on 127.0.0.1, fine-tunes ``tinkex-jax/tiny`` (rank-8 LoRA) to
reverse short lowercase words (``"hello="`` → ``"olleh"``) with the SDK, and prints:

* greedy samples before and after training, from the base model and the trained weights;
* what it is doing while it waits (starting the backend, compiling the sampler and the
  training step) on a line that keeps ticking, then a progress bar with the loss;
* the loss: a custom jit-compiled JAX loss (per-datum mean NLL of the completion) plus two
  regularizers on the completion's logprobs (L2 and an entropy bonus), whose tracked
  contributions and gradient norms come back from ``forward_backward_custom``;
* the exact-match accuracy on held-out words (never trained on);
* a loss-curve PNG.

Everything here uses the public SDK, exactly as against the hosted service (only
``base_url`` differs). `DemoConfig.quick` is the short variant (``tinkex demo --quick``):
fewer steps and held-out words, for a first taste in under a minute on a small CPU.

Example:
    >>> config = DemoConfig(seed=3, steps=10)
    >>> config.batch_size, config.rank
    (32, 8)
    >>> DemoConfig.quick().steps < DemoConfig().steps
    True
    >>> result = run_demo(config)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

if TYPE_CHECKING:
    from .clients import SamplingClient

__all__ = ["DemoConfig", "DemoResult", "exact_match", "plot_losses", "reversal_datum",
           "run_demo", "split_words"]

BASE_MODEL = "tinkex-jax/tiny"


@dataclass(frozen=True)
class DemoConfig:
    """Hyperparameters of the demo (the defaults are the tested recipe).

    Attributes:
        seed: seeds the words, the LoRA init and the sampling.
        steps: optimizer steps.
        batch_size: datums per step.
        rank: LoRA rank.
        learning_rate: AdamW learning rate (cosine-decayed to 10% over the steps).
        l2_weight: weight of the L2 term on the completion's logprobs.
        entropy_weight: weight of the entropy bonus on the completion's logprobs.
        heldout: number of held-out words for the exact-match accuracy.
        min_length: shortest word; max_length: longest word.
        out_dir: where the loss-curve PNG goes.
        data_dir: the local backend's data directory (default: a temporary one).
    """

    seed: int = 0
    steps: int = 500
    batch_size: int = 32
    rank: int = 8
    learning_rate: float = 1e-3
    l2_weight: float = 0.01
    entropy_weight: float = 0.01
    heldout: int = 256
    min_length: int = 3
    max_length: int = 8
    out_dir: Path = Path("tinkex-demo")
    data_dir: Path | None = None

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """The short run of ``tinkex demo --quick``: 120 steps of 32 words of 3 to 7 letters
        (one padded shape, so the training step compiles once) and 64 held-out words; every
        other field as in the full run, unless overridden.

        Example:
            >>> DemoConfig.quick(seed=4).steps, DemoConfig.quick(steps=50).steps
            (120, 50)
        """
        return dataclasses.replace(cls(steps=120, heldout=64, max_length=7), **overrides)


@dataclass(frozen=True)
class DemoResult:
    """What the demo measured.

    Attributes:
        accuracy_before: held-out exact match of the base model.
        accuracy_after: held-out exact match after training.
        losses: the custom loss per step (per datum).
        contributions: per regularizer, its contribution to the loss at each step.
        samples: ``(prompt, before, after)`` for a few held-out words.
        plot: the loss-curve PNG.
        seconds: wall time of the whole run.
    """

    accuracy_before: float
    accuracy_after: float
    losses: list[float]
    contributions: dict[str, list[float]] = field(default_factory=dict)
    samples: list[tuple[str, str, str]] = field(default_factory=list)
    plot: Path | None = None
    seconds: float = 0.0


# ----------------------------------------------------------------------------- pure pieces


def split_words(seed: int, heldout: int, min_length: int, max_length: int
                ) -> tuple[list[str], Callable[[np.random.Generator], str]]:
    """Held-out words, and a sampler of training words that never returns one of them.

    Example:
        >>> held, draw = split_words(0, 5, 3, 8)
        >>> word = draw(np.random.default_rng(1))
        >>> len(held), word in held, 3 <= len(word) <= 8
        (5, False, True)
    """
    rng = np.random.default_rng([seed, 1])
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz"))

    def word(r: np.random.Generator) -> str:
        return "".join(r.choice(alphabet, int(r.integers(min_length, max_length + 1))))

    held: list[str] = []
    while len(held) < heldout:
        w = word(rng)
        if w not in held:
            held.append(w)
    excluded = frozenset(held)

    def draw(r: np.random.Generator) -> str:
        while True:
            w = word(r)
            if w not in excluded:
                return w

    return held, draw


def reversal_datum(word: str) -> Any:
    """A supervised datum: prompt ``word=``, completion ``reversed word + newline``.

    Example:
        >>> d = reversal_datum("abc")
        >>> bytes(d.model_input.to_ints()).decode(), d.loss_fn_inputs["weights"].tolist()
        ('abc=cba', [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    """
    from .builders import datum_from_prompt_completion

    return datum_from_prompt_completion(list(f"{word}=".encode()),
                                        list(f"{word[::-1]}\n".encode()))


def exact_match(words: Sequence[str], completions: Sequence[str]) -> float:
    """Fraction of completions that are exactly the reversed word.

    Example:
        >>> exact_match(["abc", "xy"], ["cba", "xy"])
        0.5
    """
    hits = sum(c.strip() == w[::-1] for w, c in zip(words, completions, strict=True))
    return hits / max(len(words), 1)


def plot_losses(losses: Sequence[float], contributions: dict[str, list[float]], path: Path
                ) -> Path:
    """Write the loss curve (and each term's contribution) to a PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, label="custom loss (mean NLL + terms)", color="tab:blue")
    for (name, values), color in zip(contributions.items(), ("tab:green", "tab:orange", "tab:red",
                                                               "tab:purple"), strict=False):
        ax.plot(steps, values, label=f"{name} contribution", linewidth=1, color=color)
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("per datum")
    ax.set_title("tinkex demo: LoRA on tinkex-jax/tiny learns to reverse words")
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


class _Ticker:
    """A status line that keeps moving while the program waits on something it cannot
    measure (a compile): on a terminal it is redrawn every `every_tty` seconds with the time
    waited so far; elsewhere (a log, a test) one line is printed at the start and then one
    every `every_log` seconds, so a long wait is never silent."""

    def __init__(self, stream: TextIO, render: Callable[[float], str], *,
                 every_tty: float = 0.5, every_log: float = 10.0) -> None:
        self.stream, self.render = stream, render
        self.tty = stream.isatty()
        self.every = every_tty if self.tty else every_log
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start = time.perf_counter()

    def _draw(self) -> None:
        line = self.render(time.perf_counter() - self.start)
        with self.lock:
            self.stream.write(("\r" + line) if self.tty else (line + "\n"))
            self.stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._draw()

    def __enter__(self) -> _Ticker:
        self.start = time.perf_counter()
        self._draw()
        self._thread = threading.Thread(target=self._run, name="tinkex-demo-ticker",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.tty:
            with self.lock:
                self.stream.write("\r\033[K")  # clear the line for what comes next
                self.stream.flush()


class _Progress:
    """A one-line progress bar (a plain line every 10% when not on a terminal); `waiting`
    keeps it ticking while the first step compiles."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.stream, self.start = total, stream, time.perf_counter()
        self.tty = stream.isatty()
        self.last_decile = -1

    def line(self, done: int, text: str) -> str:
        frac = done / self.total
        elapsed = time.perf_counter() - self.start
        bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
        return f"  [{bar}] {done:4d}/{self.total} {text} {elapsed:5.1f}s"

    def waiting(self, text: str) -> _Ticker:
        """A ticker drawing the bar at 0 with `text` (use as a context manager)."""
        return _Ticker(self.stream, lambda _elapsed: self.line(0, text))

    def update(self, done: int, text: str) -> None:
        frac = done / self.total
        line = self.line(done, text)
        if self.tty:
            self.stream.write("\r" + line + ("\n" if done == self.total else ""))
            self.stream.flush()
        elif int(frac * 10) > self.last_decile:
            self.last_decile = int(frac * 10)
            self.stream.write(line + "\n")
            self.stream.flush()


@contextlib.contextmanager
def _phase(stream: TextIO, text: str) -> Iterator[None]:
    """Say `text` with a ticking elapsed time while the block runs, then how long it took."""
    ticker = _Ticker(stream, lambda elapsed: f"  {text} ... {elapsed:.0f}s")
    with ticker:
        yield
    seconds = time.perf_counter() - ticker.start
    stream.write(f"  {text}: done in {seconds:.1f}s\n")
    stream.flush()


@contextlib.contextmanager
def _quiet_sdk_waits() -> Iterator[None]:
    """The demo says itself what it waits for; keep the SDK's wait notices (INFO on the
    ``tinkex_jax.wait`` logger) out of its output while it runs."""
    waits = logging.getLogger("tinkex_jax.wait")
    level = waits.level
    waits.setLevel(logging.WARNING)
    try:
        yield
    finally:
        waits.setLevel(level)


# ----------------------------------------------------------------------------- the run


def _greedy(sampler: SamplingClient, words: Sequence[str], max_length: int, seed: int
            ) -> list[str]:
    from .types import ModelInput, SamplingParams

    params = SamplingParams(max_tokens=max_length + 2, temperature=0.0, stop=["\n"], seed=seed)
    futures = [sampler.sample(ModelInput.from_ints(list(f"{w}=".encode())), 1, params)
               for w in words]
    out = []
    for future in futures:
        tokens = future.result().sequences[0].tokens
        out.append(bytes(t for t in tokens if t < 256).decode("utf-8", "replace"))
    return out


def run_demo(config: DemoConfig = DemoConfig(), *, stream: TextIO = sys.stdout) -> DemoResult:
    """Run the demo end to end (see the module docstring); returns what it measured."""
    started = time.perf_counter()
    import jax.numpy as jnp
    import optax

    import losses
    from regularizers import entropy, l2, restrict

    from . import ServiceClient
    from .custom_loss import CustomLoss
    from .local import serve
    from .training_loop import adam_params, pipelined

    def say(text: str = "") -> None:
        stream.write(text + "\n")
        stream.flush()

    heldout, draw = split_words(config.seed, config.heldout, config.min_length,
                                config.max_length)
    rng = np.random.default_rng([config.seed, 2])

    def mean_nll(logprobs: Any, batch: Any) -> tuple[Any, dict[str, Any]]:
        """Per-datum mean NLL of the completion, averaged over datums."""
        weights = batch.inputs["weights"] * batch.mask
        per_datum = losses.cross_entropy(logprobs, weights, where=batch.mask, reduction="none")
        tokens = jnp.maximum(jnp.sum(weights, axis=-1), 1.0)
        loss = jnp.sum(jnp.sum(per_datum, axis=-1) / tokens * batch.datum_mask)
        return loss / jnp.maximum(jnp.sum(batch.datum_mask), 1.0), {}

    objective = CustomLoss(mean_nll, [
        ("l2", restrict(l2(), "weights"), config.l2_weight),
        ("entropy", restrict(entropy(estimator="plugin"), "weights"), config.entropy_weight),
    ])
    data_dir = Path(config.data_dir) if config.data_dir else Path(tempfile.mkdtemp("-tinkex"))
    say(f"tinkex demo: LoRA rank {config.rank} on {BASE_MODEL}, {config.steps} steps x "
        f"{config.batch_size} words, seed {config.seed}")
    say(f"  loss: jit-compiled mean NLL + {config.l2_weight} * L2 + {config.entropy_weight} * "
        f"entropy bonus (on the completion's logprobs)")
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_quiet_sdk_waits())
            with _phase(stream, "starting the local backend (loads the model)"):
                server = stack.enter_context(serve(base_models=[BASE_MODEL],
                                                   data_dir=data_dir))
            service = stack.enter_context(ServiceClient(
                base_url=server.base_url, api_key=server.api_key, telemetry=False))
            say(f"  local backend: {server.base_url}")
            show = heldout[:4]
            with _phase(stream, f"sampling {len(heldout)} held-out words from the base model "
                                "(the first call compiles the sampler)"):
                base = service.create_sampling_client(base_model=BASE_MODEL).result()
                before_all = _greedy(base, heldout, config.max_length, config.seed)
            accuracy_before = exact_match(heldout, before_all)
            say(f"  before training: held-out exact match {accuracy_before:.1%}")

            tc = service.create_lora_training_client(BASE_MODEL, rank=config.rank,
                                                     seed=config.seed).result()
            batches = ([reversal_datum(draw(rng)) for _ in range(config.batch_size)]
                       for _ in range(config.steps))
            schedule = optax.cosine_decay_schedule(config.learning_rate, config.steps,
                                                   alpha=0.1)
            progress = _Progress(config.steps, stream)
            step_losses: list[float] = []
            contributions: dict[str, list[float]] = {"l2": [], "entropy": []}
            steps = pipelined(
                tc, batches, depth=2,
                optimizer=lambda i: adam_params(i, schedule, beta2=0.95),
                submit=lambda _, batch: tc.forward_backward_custom(batch, objective))
            # the first step compiles the loss, the forward and the backward pass: say so
            with progress.waiting("compiling the training step (first step only)"):
                first = next(steps, None)
            for step in itertools.chain([] if first is None else [first], steps):
                m = step.forward_backward.metrics
                step_losses.append(m["loss:sum"])
                for name in contributions:
                    contributions[name].append(m[f"reg/{name}/contribution:sum"])
                progress.update(step.step + 1, f"loss {m['loss:sum']:.4f}")
            say("  tracked terms at the last step: "
                + ", ".join(f"{name} value {m[f'reg/{name}/value:mean']:+.4f} x weight "
                            f"{m[f'reg/{name}/weight:mean']:g} = contribution "
                            f"{m[f'reg/{name}/contribution:sum']:+.5f} (grad norm "
                            f"{m[f'reg/{name}/grad_norm:mean']:.4f})" for name in contributions))
            say(f"  base loss {m['loss/base:sum']:.5f} (grad norm "
                f"{m['loss/base/grad_norm:mean']:.4f}); total {m['loss:sum']:.5f}")

            with _phase(stream, f"saving the weights and sampling the {len(heldout)} "
                                "held-out words again"):
                trained = tc.save_weights_and_get_sampling_client("demo-final").result()
                after_all = _greedy(trained, heldout, config.max_length, config.seed)
            accuracy_after = exact_match(heldout, after_all)
            samples = [(f"{w}=", before_all[i].strip(), after_all[i].strip())
                       for i, w in enumerate(show)]
            say("  samples (prompt -> before | after):")
            for prompt, before, after in samples:
                say(f"    {prompt:<10} -> {before!r:<14} | {after!r}")
            say(f"  after training: held-out exact match {accuracy_after:.1%} "
                f"({len(heldout)} words never trained on)")
    finally:
        if config.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    plot = plot_losses(step_losses, contributions, Path(config.out_dir) / "loss_curve.png")
    seconds = time.perf_counter() - started
    say(f"  loss curve: {plot}")
    say(f"  done in {seconds:.0f}s")
    return DemoResult(accuracy_before=accuracy_before, accuracy_after=accuracy_after,
                      losses=step_losses, contributions=contributions, samples=samples,
                      plot=plot, seconds=seconds)

