"""What ``tinkex`` prints: tables, property listings, sizes, times, sample listings, the
download progress bar, and the one printer for results (a table or ``--json``).

For: turning results into text and writing them to stdout (results) or to a terminal on
stderr (progress). Not for: deciding what to fetch or whether a command succeeded, and never
for errors (`tinkex_jax.cli.errors` words and prints those). Everything but `print_json`,
`print_listing` and `Progress` is a pure function of its arguments.

Example:
    >>> print(format_table(["Name", "Size"], [["a", "1 B"], ["bbb", "10 B"]]))
    Name  Size
    a     1 B
    bbb   10 B
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..types import Checkpoint, TrainingRun

__all__ = [
    "CHECKPOINT_COLUMNS",
    "DEFAULT_RUN_COLUMNS",
    "RUN_COLUMNS",
    "Progress",
    "SampleView",
    "checkpoint_properties",
    "checkpoint_rows",
    "format_properties",
    "format_samples",
    "format_size",
    "format_table",
    "format_time",
    "latest_checkpoint",
    "print_json",
    "print_listing",
    "print_properties",
    "progress_line",
    "run_headers",
    "run_properties",
    "run_rows",
]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces, without trailing blanks.

    Example:
        >>> print(format_table(["Run", "Model"], [["r1", "tiny"], ["run-22", "small"]]))
        Run     Model
        r1      tiny
        run-22  small
    """
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
             for line in [list(headers), *[list(r) for r in rows]]]
    return "\n".join(lines)


def format_properties(pairs: Sequence[tuple[str, str]]) -> str:
    """A two-column "property  value" listing for one object.

    Example:
        >>> print(format_properties([("Base model", "tiny"), ("LoRA rank", "4")]))
        Base model  tiny
        LoRA rank   4
    """
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}".rstrip() for k, v in pairs)


def format_size(size_bytes: int | None) -> str:
    """A byte count in binary units; ``-`` when unknown.

    Example:
        >>> format_size(512), format_size(257232), format_size(3 * 2**30), format_size(None)
        ('512 B', '251.2 KiB', '3.0 GiB', '-')
    """
    if size_bytes is None:
        return "-"
    value = float(size_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size_bytes} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_time(when: dt.datetime | None, *, missing: str = "-") -> str:
    """A time in UTC to the minute; `missing` for None.

    Example:
        >>> format_time(dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC))
        '2026-01-02 03:04 UTC'
        >>> format_time(None, missing="never")
        'never'
    """
    if when is None:
        return missing
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return f"{when.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _lora(is_lora: bool, rank: int | None) -> str:
    if not is_lora:
        return "no"
    return f"rank {rank}" if rank is not None else "yes"


def _count_title(noun: str, shown: int, total: int | None, limit_hint: str) -> str:
    if total is not None and total > shown:
        return f"Showing {shown} of {total} {noun} ({limit_hint})"
    return f"{shown} {noun}" if shown != 1 else f"1 {noun.rstrip('s')}"


def latest_checkpoint(run: TrainingRun) -> Checkpoint | None:
    """The run's newest checkpoint of either kind (training state or sampler weights).

    Example:
        >>> from tinkex_jax.types import TrainingRun
        >>> latest_checkpoint(TrainingRun(training_run_id="r", base_model="m", model_owner="o",
        ...     is_lora=True, last_request_time=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))) is None
        True
    """
    saved = [c for c in (run.last_checkpoint, run.last_sampler_checkpoint) if c is not None]
    return max(saved, key=lambda c: c.time) if saved else None


def _latest_id(run: TrainingRun) -> str:
    latest = latest_checkpoint(run)
    return latest.checkpoint_id if latest else "-"


def _latest_time(run: TrainingRun) -> str:
    latest = latest_checkpoint(run)
    return format_time(latest.time) if latest else "-"


RUN_COLUMNS: dict[str, tuple[str, Callable[[TrainingRun], str], str]] = {
    "id": ("Run ID", lambda r: r.training_run_id, "the training run id"),
    "model": ("Base model", lambda r: r.base_model, "the base model"),
    "owner": ("Owner", lambda r: r.model_owner, "who created the run"),
    "lora": ("LoRA", lambda r: _lora(r.is_lora, r.lora_rank), "LoRA rank, or no"),
    "updated": ("Last request", lambda r: format_time(r.last_request_time),
                "time of the run's last request"),
    "status": ("Status", lambda r: "corrupted" if r.corrupted else "ok",
               "ok, or corrupted"),
    "checkpoint": ("Last checkpoint", _latest_id,
                   "the newest checkpoint, training state or sampler weights"),
    "checkpoint_time": ("Checkpoint time", _latest_time, "when the newest checkpoint was saved"),
}
"""The columns ``run list --columns`` can show: key -> (header, cell, description)."""

DEFAULT_RUN_COLUMNS = ("id", "model", "lora", "updated", "checkpoint", "status")
"""The columns ``run list`` shows without ``--columns``."""

CHECKPOINT_COLUMNS = ("Checkpoint ID", "Type", "Size", "Public", "Created", "Expires", "Path")


def run_rows(runs: Sequence[TrainingRun],
             columns: Sequence[str] = DEFAULT_RUN_COLUMNS) -> list[list[str]]:
    """Table rows for training runs, one cell per key of `columns` (see `RUN_COLUMNS`)."""
    return [[RUN_COLUMNS[key][1](r) for key in columns] for r in runs]


def run_headers(columns: Sequence[str] = DEFAULT_RUN_COLUMNS) -> list[str]:
    """The table headers of `columns` (keys of `RUN_COLUMNS`)."""
    return [RUN_COLUMNS[key][0] for key in columns]


def run_properties(run: TrainingRun) -> list[tuple[str, str]]:
    """The property rows of ``run info``."""
    last = run.last_checkpoint.tinker_path if run.last_checkpoint else "-"
    last_sampler = (run.last_sampler_checkpoint.tinker_path
                    if run.last_sampler_checkpoint else "-")
    pairs = [("Run ID", run.training_run_id), ("Base model", run.base_model),
             ("Owner", run.model_owner), ("LoRA", _lora(run.is_lora, run.lora_rank)),
             ("Status", "corrupted" if run.corrupted else "ok"),
             ("Last request", format_time(run.last_request_time)),
             ("Last training checkpoint", last), ("Last sampler checkpoint", last_sampler)]
    pairs += [(f"Metadata {k}", v) for k, v in sorted((run.user_metadata or {}).items())]
    return pairs


def checkpoint_rows(checkpoints: Sequence[Checkpoint]) -> list[list[str]]:
    """Table rows (`CHECKPOINT_COLUMNS`) for checkpoints."""
    return [[c.checkpoint_id, c.checkpoint_type, format_size(c.size_bytes), _yes_no(c.public),
             format_time(c.time), format_time(c.expires_at, missing="never"), c.tinker_path]
            for c in checkpoints]


def checkpoint_properties(ckpt: Checkpoint, run: TrainingRun | None) -> list[tuple[str, str]]:
    """The property rows of ``checkpoint info`` (with its run's model when known)."""
    pairs = [("Tinker path", ckpt.tinker_path), ("Checkpoint ID", ckpt.checkpoint_id),
             ("Type", ckpt.checkpoint_type), ("Stored size", format_size(ckpt.size_bytes)),
             ("Public", _yes_no(ckpt.public)), ("Created", format_time(ckpt.time)),
             ("Expires", format_time(ckpt.expires_at, missing="never"))]
    if run is not None:
        pairs += [("Training run", run.training_run_id), ("Base model", run.base_model),
                  ("LoRA", _lora(run.is_lora, run.lora_rank))]
    pairs += [(f"Metadata {k}", v) for k, v in sorted((ckpt.user_metadata or {}).items())]
    return pairs


@dataclass(frozen=True)
class SampleView:
    """One sampled completion as the CLI shows it (text is None without a tokenizer)."""

    tokens: list[int]
    text: str | None
    stop_reason: str


def format_samples(samples: Sequence[SampleView]) -> str:
    """Completions under one header line each; token ids when there is no text.

    Example:
        >>> print(format_samples([SampleView([5, 6], "hi", "stop"),
        ...                       SampleView([7], None, "length")]))
        --- sample 1/2 (2 tokens, stop: stop)
        hi
        --- sample 2/2 (1 token, stop: length)
        tokens: 7
    """
    out: list[str] = []
    for i, s in enumerate(samples, 1):
        n = len(s.tokens)
        out.append(f"--- sample {i}/{len(samples)} ({n} token{'s' * (n != 1)}, "
                   f"stop: {s.stop_reason})")
        out.append(s.text if s.text is not None else
                   "tokens: " + " ".join(str(t) for t in s.tokens))
    return "\n".join(out)


def progress_line(label: str, done: int, total: int | None, width: int = 24) -> str:
    """One line of a download progress bar (a spinner-free count without a total).

    Example:
        >>> progress_line("model.safetensors", 512, 1024, width=10)
        'model.safetensors  [#####.....]  50%  512 B / 1.0 KiB'
        >>> progress_line("x", 2048, None)
        'x  2.0 KiB'
    """
    if not total:
        return f"{label}  {format_size(done)}"
    fraction = min(max(done / total, 0.0), 1.0)
    filled = round(fraction * width)
    bar = "#" * filled + "." * (width - filled)
    return (f"{label}  [{bar}] {fraction * 100:3.0f}%  "
            f"{format_size(done)} / {format_size(total)}")


class Progress:
    """A one-line progress bar on a terminal stream; silent when `enabled` is false.

    Example:
        >>> import io
        >>> stream = io.StringIO()
        >>> bar = Progress(stream, True)
        >>> bar.update("w", 5, 10); bar.done()
        >>> stream.getvalue().endswith("50%  5 B / 10 B\\n")
        True
    """

    def __init__(self, stream: IO[str], enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self._width = 0

    def update(self, label: str, done: int, total: int | None) -> None:
        """Redraw the line for `label`: `done` of `total` bytes (None: unknown)."""
        if not self.enabled:
            return
        line = progress_line(label, done, total)
        self.stream.write("\r" + line.ljust(self._width))
        self._width = max(self._width, len(line))
        self.stream.flush()

    def done(self) -> None:
        """End the line (if one was drawn), so the next output starts on its own."""
        if self.enabled and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


def print_json(data: Any) -> None:
    """Print `data` (msgspec structs, lists, dicts) as indented JSON on stdout."""
    import msgspec

    print(json.dumps(msgspec.to_builtins(data), indent=2, ensure_ascii=False))


def print_listing(as_json: bool, key: str, items: Sequence[Any], total: int | None,
                  columns: Sequence[str], rows: Sequence[Sequence[str]]) -> int:
    """Print a list command's result: JSON, a "none" line, or a titled table; returns 0."""
    noun = key.replace("_", " ")
    if as_json:
        print_json({key: list(items), "total_count": total})
    elif not items:
        print(f"No {noun}.")
    else:
        print(_count_title(noun, len(items), total, "--limit 0 shows all"))
        print(format_table(columns, rows))
    return 0


def print_properties(as_json: bool, data: Any, pairs: Sequence[tuple[str, str]],
                     title: str | None = None) -> int:
    """Print one object: `data` as JSON, or `pairs` as a property listing (under `title`
    when given); returns 0."""
    if as_json:
        print_json(data)
    else:
        if title:
            print(title)
        print(format_properties(pairs))
    return 0
