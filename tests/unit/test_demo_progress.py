"""The demo's waiting lines: a compile is never silent (a line that keeps ticking), and the
quick variant is the full recipe with fewer steps and one padded shape."""

from __future__ import annotations

import io
import threading

from tinkex_jax.demo import DemoConfig, _phase, _Progress, _Ticker, reversal_datum


class _Log(io.StringIO):
    """A non-terminal stream that signals when a number of lines were written."""

    def __init__(self, lines: int) -> None:
        super().__init__()
        self.enough = threading.Event()
        self.lines = lines

    def write(self, text: str) -> int:
        written = super().write(text)
        if self.getvalue().count("\n") >= self.lines:
            self.enough.set()
        return written


def test_a_ticker_keeps_printing_while_the_wait_lasts():
    stream = _Log(lines=3)
    calls: list[float] = []

    def render(elapsed: float) -> str:
        calls.append(elapsed)
        return f"compiling ... {len(calls)}"

    with _Ticker(stream, render, every_log=0.01):
        assert stream.enough.wait(timeout=60)  # the wait itself is what keeps it ticking
    lines = stream.getvalue().splitlines()
    assert lines[:3] == ["compiling ... 1", "compiling ... 2", "compiling ... 3"]
    assert calls == sorted(calls)  # elapsed time only grows


def test_the_progress_bar_says_it_is_compiling_before_the_first_step():
    stream = io.StringIO()
    progress = _Progress(120, stream)
    with progress.waiting("compiling the training step (first step only)"):
        pass
    progress.update(1, "loss 6.0")
    first, second = stream.getvalue().splitlines()[:2]
    assert "0/120 compiling the training step (first step only)" in first
    assert "[------------------------------]    1/120 loss 6.0" in second


def test_a_phase_says_what_it_does_and_how_long_it_took():
    stream = io.StringIO()
    with _phase(stream, "sampling 4 words"):
        pass
    start, done = stream.getvalue().splitlines()
    assert start.startswith("  sampling 4 words ... ")
    assert done.startswith("  sampling 4 words: done in ") and done.endswith("s")


def test_quick_is_the_recipe_with_fewer_steps_and_one_shape():
    quick, full = DemoConfig.quick(), DemoConfig()
    assert quick.steps < full.steps and quick.heldout < full.heldout
    assert (quick.learning_rate, quick.rank, quick.batch_size) == (
        full.learning_rate, full.rank, full.batch_size)
    # the longest word's datum fits the smallest length bucket (16 tokens): no recompiles
    longest = reversal_datum("z" * quick.max_length)
    assert longest.model_input.length <= 16
    assert DemoConfig.quick(steps=7, seed=3).steps == 7
