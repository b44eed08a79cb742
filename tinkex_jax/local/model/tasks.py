"""Offline synthetic data: the pretraining mixture of the presets, and the reversal task.

The pretraining mixture (`mixture_batch`) packs lines of byte-level string tasks into
fixed-length sequences, mixed with windows of Python standard-library source text:

============  =====================  ==========================================
task          example line           what it teaches
============  =====================  ==========================================
copy          ``abc=abc\\n``          copying after ``=`` (induction heads)
sort          ``cab:abc\\n``          sorting the letters
upper         ``abc^ABC\\n``          copying with a per-token map
double        ``abc*aabbcc\\n``       position arithmetic
rotate        ``abcd@bcda\\n``        offset copying
add           ``12+7=19\\n``          small arithmetic
text          Python source           generic byte-level language modelling
============  =====================  ==========================================

String **reversal is deliberately absent**: the README demo teaches it with LoRA
(``"abc="`` → ``"cba\\n"``, `reversal_example`).

Everything is generated from a seed with ``numpy.random.Generator``; the text comes from a
fixed list of standard-library files (the first 90 % of each file for training, the last
10 % held out).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> line = task_line(rng, "sort")
    >>> line.endswith("\\n") and ":" in line
    True
    >>> reversal_example("abc")
    ('abc=', 'cba\\n')
"""

from __future__ import annotations

import string
import sysconfig
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = [
    "STDLIB_FILES",
    "TASKS",
    "mixture_batch",
    "random_word",
    "reversal_example",
    "stdlib_text",
    "task_line",
    "words_for",
]

TASKS = ("copy", "sort", "upper", "double", "rotate", "add")
"""The synthetic string tasks of the pretraining mixture (no reversal)."""

STDLIB_FILES = (
    "textwrap.py", "string.py", "heapq.py", "bisect.py", "fractions.py", "queue.py",
    "shlex.py", "glob.py", "fnmatch.py", "json/encoder.py", "json/decoder.py", "functools.py",
    "statistics.py", "calendar.py", "colorsys.py", "contextlib.py", "copy.py", "csv.py",
    "graphlib.py", "numbers.py", "operator.py", "random.py", "reprlib.py", "abc.py",
)
"""Standard-library sources used as the text part of the mixture (missing ones are skipped)."""

_TASK_WEIGHTS = np.array([0.4, 0.1, 0.15, 0.1, 0.15, 0.1])


def random_word(rng: np.random.Generator, lo: int = 1, hi: int = 10) -> str:
    """A random lowercase string with length uniform in ``[lo, hi]``.

    Example:
        >>> import numpy as np
        >>> len(random_word(np.random.default_rng(1), 4, 4))
        4
    """
    n = int(rng.integers(lo, hi + 1))
    return "".join(rng.choice(list(string.ascii_lowercase), size=n))


def task_line(rng: np.random.Generator, task: str) -> str:
    """One line of a synthetic task (see the module table), ending with ``"\\n"``.

    Example:
        >>> import numpy as np
        >>> task_line(np.random.default_rng(0), "upper").split("^")[0].islower()
        True
    """
    if task == "add":
        a, b = int(rng.integers(0, 100)), int(rng.integers(0, 100))
        return f"{a}+{b}={a + b}\n"
    w = random_word(rng, 1, 10)
    if task == "copy":
        return f"{w}={w}\n"
    if task == "sort":
        return f"{w}:{''.join(sorted(w))}\n"
    if task == "upper":
        return f"{w}^{w.upper()}\n"
    if task == "double":
        w = w[:6]
        return f"{w}*{''.join(c + c for c in w)}\n"
    if task == "rotate":
        return f"{w}@{w[1:] + w[:1]}\n"
    raise ValueError(f"task_line: unknown task {task!r}; expected one of {TASKS}.")


def reversal_example(word: str) -> tuple[str, str]:
    """The demo's reversal task: prompt ``word + "="``, completion ``reversed + "\\n"``.

    Example:
        >>> reversal_example("hello")
        ('hello=', 'olleh\\n')
    """
    return f"{word}=", f"{word[::-1]}\n"


@lru_cache(maxsize=2)
def stdlib_text(split: str = "train") -> bytes:
    """The concatenated standard-library text: ``"train"`` (first 90 % of each file) or
    ``"heldout"`` (last 10 %).

    Example:
        >>> len(stdlib_text("heldout")) < len(stdlib_text("train"))
        True
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"stdlib_text: split must be 'train' or 'heldout', got {split!r}.")
    root = Path(sysconfig.get_paths()["stdlib"])
    parts = []
    for name in STDLIB_FILES:
        path = root / name
        if not path.exists():
            continue
        data = path.read_bytes()
        cut = int(len(data) * 0.9)
        parts.append(data[:cut] if split == "train" else data[cut:])
    text = b"\n".join(parts)
    if not text:  # no stdlib sources on this machine: fall back to a fixed text
        text = (string.ascii_letters + string.digits + " =:^*@+\n").encode() * 100
    return text


def _task_sequence(rng: np.random.Generator, length: int) -> list[int]:
    out: list[int] = []
    while len(out) < length + 1:
        task = TASKS[int(rng.choice(len(TASKS), p=_TASK_WEIGHTS))]
        out.extend(task_line(rng, task).encode())
    return out[:length + 1]


def mixture_batch(rng: np.random.Generator, batch: int, seq: int, *, split: str = "train",
                  text_fraction: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """A packed language-modelling batch of the pretraining mixture.

    Each row is either task lines (starting at a line boundary, so position 0 starts a
    task) or a window of standard-library text.

    Args:
        rng: The random generator (the seed decides the batch).
        batch, seq: Output shape.
        split: ``"train"`` or ``"heldout"`` text.
        text_fraction: Probability that a row is text.

    Returns:
        ``(tokens, targets)`` int32 ``[batch, seq]`` (targets are tokens shifted by one).

    Example:
        >>> import numpy as np
        >>> x, y = mixture_batch(np.random.default_rng(0), 2, 16)
        >>> x.shape, bool((x[:, 1:] == y[:, :-1]).all())
        ((2, 16), True)
    """
    text = stdlib_text(split)
    rows = np.zeros((batch, seq + 1), np.int32)
    for i in range(batch):
        if rng.random() < text_fraction:
            start = int(rng.integers(0, len(text) - seq - 1))
            rows[i] = np.frombuffer(text[start:start + seq + 1], np.uint8)
        else:
            rows[i] = _task_sequence(rng, seq)
    return rows[:, :-1], rows[:, 1:]


def words_for(rng: np.random.Generator, n: int, lo: int, hi: int,
              exclude: Sequence[str] = ()) -> list[str]:
    """``n`` distinct random lowercase words not in `exclude` (for held-out splits).

    Example:
        >>> import numpy as np
        >>> len(set(words_for(np.random.default_rng(0), 5, 3, 3)))
        5
    """
    seen = set(exclude)
    out: list[str] = []
    while len(out) < n:
        w = random_word(rng, lo, hi)
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out
