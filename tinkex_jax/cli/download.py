"""The operations subcommands of ``tinkex``: ``version``, ``run``, ``checkpoint``, ``sample``.

Everything here goes through the public SDK (`ServiceClient`, `RestClient`). The module has
three layers, top to bottom:

1. pure formatting: tables, sizes, times, progress lines, sample listings;
2. safety and integrity checks: relative paths, tar extraction that refuses to write outside
   its target, size and checksum checks of downloads;
3. the effectful commands: each ``configure_*`` adds arguments to an ``argparse`` parser and
   each ``cmd_*`` runs one command and returns its exit status.

Only the standard library is imported at module level; httpx, msgspec and the clients are
imported inside the functions that need them, so ``tinkex --help`` stays fast.

Example:
    >>> print(format_table(["Name", "Size"], [["a", "1 B"], ["bbb", "10 B"]]))
    Name  Size
    a     1 B
    bbb   10 B
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import datetime as dt
import functools
import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import httpx

    from .clients import RestClient, SamplingClient, ServiceClient
    from .errors import APIError
    from .types import Checkpoint, ParsedCheckpointTinkerPath, TrainingRun

__all__ = [
    "CLIError",
    "Download",
    "UnsafePathError",
    "check_download",
    "collect_pages",
    "expected_digests",
    "format_properties",
    "format_samples",
    "format_size",
    "format_table",
    "format_time",
    "progress_line",
    "safe_extract_tar",
    "safe_relative_path",
]

T = TypeVar("T")

#: How long the temporary export behind a ``checkpoint download`` lives if it cannot be
#: deleted afterwards (seconds).
EXPORT_TTL_SECONDS = 3600
#: File names the download treats as archives and extracts (safely) after fetching them.
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_CHUNK = 1 << 20
_DOWNLOAD_ATTEMPTS = 3


class CLIError(Exception):
    """An expected failure: printed as one line on stderr, exit status `exit_code`.

    Example:
        >>> CLIError("no such run. Fix: run `tinkex run list`", exit_code=1).exit_code
        1
    """

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UnsafePathError(CLIError):
    """A path (archive member, link target, download file name) would land outside its
    target directory, or names something other than a file, directory or safe link."""


# =============================================================================================
# 1. Pure formatting
# =============================================================================================


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


RUN_COLUMNS = ("Run ID", "Base model", "LoRA", "Last request", "Last checkpoint", "Corrupted")
CHECKPOINT_COLUMNS = ("Checkpoint ID", "Type", "Size", "Public", "Created", "Expires", "Path")


def run_rows(runs: Sequence[TrainingRun]) -> list[list[str]]:
    """Table rows (`RUN_COLUMNS`) for training runs."""
    return [[r.training_run_id, r.base_model, _lora(r.is_lora, r.lora_rank),
             format_time(r.last_request_time),
             r.last_checkpoint.checkpoint_id if r.last_checkpoint else "-",
             _yes_no(r.corrupted)] for r in runs]


def run_properties(run: TrainingRun) -> list[tuple[str, str]]:
    """The property rows of ``run info``."""
    last = run.last_checkpoint.tinker_path if run.last_checkpoint else "-"
    last_sampler = (run.last_sampler_checkpoint.tinker_path
                    if run.last_sampler_checkpoint else "-")
    pairs = [("Run ID", run.training_run_id), ("Base model", run.base_model),
             ("Owner", run.model_owner), ("LoRA", _lora(run.is_lora, run.lora_rank)),
             ("Corrupted", _yes_no(run.corrupted)),
             ("Last request", format_time(run.last_request_time)),
             ("Last checkpoint", last), ("Last sampler checkpoint", last_sampler)]
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
             ("Type", ckpt.checkpoint_type), ("Size", format_size(ckpt.size_bytes)),
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


def download_dir_name(parsed: ParsedCheckpointTinkerPath) -> str:
    """The directory a download lands in: run id and checkpoint id, made filename-safe.

    Example:
        >>> from tinkex_jax.builders import parse_tinker_path
        >>> download_dir_name(parse_tinker_path("tinker://s-1:train:0/weights/final"))
        's-1_train_0_weights_final'
    """
    raw = f"{parsed.training_run_id}_{parsed.checkpoint_id}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", raw).strip(".") or "checkpoint"


def collect_pages(fetch: Callable[[int, int], tuple[list[T], int | None]], limit: int,
                  page_size: int = 100) -> tuple[list[T], int | None]:
    """Fetch pages ``fetch(offset, n) -> (items, total_count)`` until `limit` items (0: all)
    or the end; returns the items and the server's total (None if it gave none).

    Example:
        >>> data = list(range(7))
        >>> collect_pages(lambda off, n: (data[off:off + n], len(data)), 5, page_size=2)
        ([0, 1, 2, 3, 4], 7)
        >>> collect_pages(lambda off, n: (data[off:off + n], None), 0, page_size=3)[0]
        [0, 1, 2, 3, 4, 5, 6]
    """
    items: list[T] = []
    total: int | None = None
    while limit == 0 or len(items) < limit:
        want = page_size if limit == 0 else min(page_size, limit - len(items))
        page, total = fetch(len(items), want)
        items.extend(page)
        if len(page) < want or (total is not None and len(items) >= total):
            break
    return items, total


# =============================================================================================
# 2. Safety and integrity
# =============================================================================================


def safe_relative_path(name: str) -> PurePosixPath:
    """Check that `name` is a relative path that stays inside its directory; normalise it.

    Raises:
        UnsafePathError: empty, absolute (``/x``, ``C:\\x``, ``\\\\host``), containing a
            ``..`` component or a NUL byte.

    Example:
        >>> safe_relative_path("./a//b.json")
        PurePosixPath('a/b.json')
        >>> safe_relative_path("../x")
        Traceback (most recent call last):
        ...
        tinkex_jax._cli_ops.UnsafePathError: refusing '../x': it climbs out of the target directory with '..'
    """
    if not name or "\x00" in name:
        raise UnsafePathError(f"refusing {name!r}: an empty or NUL-containing path")
    text = name.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        raise UnsafePathError(f"refusing {name!r}: an absolute path")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePathError(f"refusing {name!r}: it climbs out of the target directory "
                              "with '..'")
    if not parts:
        raise UnsafePathError(f"refusing {name!r}: it names the target directory itself")
    return PurePosixPath(*parts)


def _inside(root: Path, path: Path) -> bool:
    """Whether `path` (resolved, following existing links) is `root` or below it."""
    resolved = path.resolve()
    return resolved == root or root in resolved.parents


def _checked_target(root: Path, name: str) -> Path:
    """``root / name`` after checking the name and that its parent really is inside `root`
    (existing symlinks followed) and that the target itself is not a link."""
    target = root.joinpath(*safe_relative_path(name).parts)
    if not _inside(root, target.parent):
        raise UnsafePathError(f"refusing {name!r}: a link on its way leads outside the "
                              "target directory")
    if target.is_symlink():
        raise UnsafePathError(f"refusing {name!r}: it would write through a link")
    return target


def _extract_symlink(root: Path, target: Path, member: tarfile.TarInfo) -> None:
    link = member.linkname
    if not link or link.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", link):
        raise UnsafePathError(f"refusing link {member.name!r} -> {link!r}: an absolute target")
    if not _inside(root, target.parent / link):
        raise UnsafePathError(f"refusing link {member.name!r} -> {link!r}: it points outside "
                              "the target directory")
    os.symlink(link, target)


def _extract_hardlink(root: Path, target: Path, member: tarfile.TarInfo) -> None:
    try:
        source = root.joinpath(*safe_relative_path(member.linkname).parts)
    except UnsafePathError as exc:
        raise UnsafePathError(f"refusing hard link {member.name!r}: {exc}") from None
    if not _inside(root, source) or not source.resolve().is_file():
        raise UnsafePathError(f"refusing hard link {member.name!r} -> {member.linkname!r}: "
                              "its source is not a file extracted inside the target directory")
    shutil.copyfile(source.resolve(), target)  # a copy: never a real link to anything


def _extract_file(tar: tarfile.TarFile, target: Path, member: tarfile.TarInfo) -> None:
    source = tar.extractfile(member)
    if source is None:
        raise UnsafePathError(f"refusing {member.name!r}: unreadable archive member")
    with source, open(target, "xb") as out:
        shutil.copyfileobj(source, out, _CHUNK)
    target.chmod(0o755 if member.mode & 0o111 else 0o644)


def safe_extract_tar(archive: Path, dest: Path) -> list[str]:
    """Extract a tar archive (any compression) into `dest`, refusing anything unsafe.

    Regular files and directories are extracted (no owners, no special mode bits); symbolic
    links only when they resolve inside `dest`; hard links become copies of a file already
    extracted inside `dest`. Absolute names, ``..``, writes through links, device files and
    FIFOs raise `UnsafePathError`. A final pass re-checks every link, because later members
    can change where an earlier relative link points. On an error, what was extracted stays
    in `dest`: extract into a fresh directory and remove it on failure.

    Returns:
        The normalised member names, in archive order.

    Example:
        >>> import io, tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> with tarfile.open(d / "a.tar", "w") as t:
        ...     info = tarfile.TarInfo("../evil"); info.size = 1
        ...     t.addfile(info, io.BytesIO(b"x"))
        >>> safe_extract_tar(d / "a.tar", d / "out")
        Traceback (most recent call last):
        ...
        tinkex_jax._cli_ops.UnsafePathError: refusing '../evil': it climbs out of the target directory with '..'
    """
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    names: list[str] = []
    links: list[tuple[str, Path]] = []
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            target = _checked_target(root, member.name)
            if member.isdir():
                if target.exists() and not target.is_dir():
                    raise UnsafePathError(f"refusing directory {member.name!r}: a file of "
                                          "that name was already extracted")
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile() or member.issym() or member.islnk():
                if target.exists():
                    raise UnsafePathError(f"refusing {member.name!r}: it appears twice in "
                                          "the archive")
                target.parent.mkdir(parents=True, exist_ok=True)
                if member.issym():
                    _extract_symlink(root, target, member)
                    links.append((member.name, target))
                elif member.islnk():
                    _extract_hardlink(root, target, member)
                else:
                    _extract_file(tar, target, member)
            else:
                raise UnsafePathError(f"refusing {member.name!r}: device files, FIFOs and "
                                      "other special members are not extracted")
            names.append(str(safe_relative_path(member.name)))
    for name, link in links:
        if not _inside(root, link):
            raise UnsafePathError(f"refusing link {name!r}: after extraction it points "
                                  "outside the target directory")
    return names


_DIGEST_NAMES = {"sha-256": "sha256", "sha256": "sha256", "sha-512": "sha512",
                 "sha512": "sha512", "md5": "md5"}


def _b64_or_hex(value: str) -> bytes | None:
    value = value.strip().strip(":")
    if re.fullmatch(r"[0-9a-fA-F]{32}|[0-9a-fA-F]{64}|[0-9a-fA-F]{128}", value):
        return bytes.fromhex(value)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def expected_digests(headers: Mapping[str, str]) -> dict[str, bytes]:
    """Checksums a download response announces, as ``{hashlib name: digest}``.

    Reads ``Repr-Digest`` / ``Content-Digest`` (RFC 9530), ``Digest`` (RFC 3230),
    ``Content-MD5``, ``x-goog-hash`` (md5) and ``x-amz-checksum-sha256``. Unknown algorithms
    (e.g. crc32c) are ignored. ETags are not checksums and are ignored too.

    Example:
        >>> import hashlib
        >>> b64 = base64.b64encode(hashlib.sha256(b"abc").digest()).decode()
        >>> expected_digests({"repr-digest": f"sha-256=:{b64}:"}) == {
        ...     "sha256": hashlib.sha256(b"abc").digest()}
        True
        >>> expected_digests({"etag": '"abc"'})
        {}
    """
    lower = {k.lower(): v for k, v in headers.items()}
    found: dict[str, bytes] = {}

    def add(algorithm: str, value: str) -> None:
        name = _DIGEST_NAMES.get(algorithm.strip().lower())
        digest = _b64_or_hex(value) if name else None
        if name and digest and len(digest) == hashlib.new(name).digest_size:
            found[name] = digest

    for header in ("repr-digest", "content-digest", "digest", "x-goog-hash"):
        for item in lower.get(header, "").split(","):
            if "=" in item:
                algorithm, value = item.split("=", 1)
                add(algorithm, value)
    if "content-md5" in lower:
        add("md5", lower["content-md5"])
    if "x-amz-checksum-sha256" in lower:
        add("sha256", lower["x-amz-checksum-sha256"])
    return found


def check_download(label: str, expected_size: int | None, size: int,
                   expected: Mapping[str, bytes], actual: Mapping[str, bytes]) -> None:
    """Raise `CLIError` when a fetched file's size or checksum differs from the announced one.

    Example:
        >>> check_download("a.bin", 10, 10, {}, {})
        >>> check_download("a.bin", 10, 4, {}, {})
        Traceback (most recent call last):
        ...
        tinkex_jax._cli_ops.CLIError: a.bin: got 4 of 10 bytes (the download was cut short). Fix: run the command again.
    """
    if expected_size is not None and size != expected_size:
        raise CLIError(f"{label}: got {size} of {expected_size} bytes (the download was cut "
                       "short). Fix: run the command again.")
    for name, digest in expected.items():
        if actual.get(name) != digest:
            raise CLIError(f"{label}: the {name} checksum does not match what the server "
                           "announced (the file is corrupted). Fix: run the command again.")


# =============================================================================================
# 3. Downloads (effectful)
# =============================================================================================


@dataclass(frozen=True)
class Download:
    """What ``checkpoint download`` produced."""

    tinker_path: str
    destination: Path
    files: list[str]
    size_bytes: int


class _Progress:
    """A one-line progress bar on a terminal stream; silent when `enabled` is false."""

    def __init__(self, stream: IO[str], enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self._width = 0

    def update(self, label: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        line = progress_line(label, done, total)
        self.stream.write("\r" + line.ljust(self._width))
        self._width = max(self._width, len(line))
        self.stream.flush()

    def done(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


def _content_length(headers: Mapping[str, str]) -> int | None:
    value = headers.get("content-length")
    return int(value) if value is not None and value.strip().isdigit() else None


def _fetch_once(http: httpx.Client, url: str, dest: Path, label: str,
                progress: _Progress) -> int:
    with http.stream("GET", url, headers={"Accept-Encoding": "identity"}) as response:
        if response.status_code != 200:
            raise CLIError(f"{label}: the download URL answered HTTP {response.status_code}. "
                           "Fix: run the command again (download URLs expire).")
        expected_size = _content_length(response.headers)
        digests = expected_digests(response.headers)
        hashers = {name: hashlib.new(name) for name in digests}
        written = 0
        with open(dest, "xb") as out:
            for chunk in response.iter_bytes(_CHUNK):
                out.write(chunk)
                written += len(chunk)
                for h in hashers.values():
                    h.update(chunk)
                progress.update(label, written, expected_size)
        # A server that compressed anyway announced the compressed length.
        raw_size = written if "content-encoding" not in response.headers else (
            response.num_bytes_downloaded)
        check_download(label, expected_size, raw_size, digests,
                       {name: h.digest() for name, h in hashers.items()})
        return written


def fetch_file(http: httpx.Client, url: str, dest: Path, *, label: str,
               progress: _Progress | None = None) -> int:
    """Stream `url` into the new file `dest`, checking size and any announced checksum.

    Connection failures are retried (3 attempts in all); a partial file never survives.

    Example:
        >>> import httpx, tempfile
        >>> http = httpx.Client(transport=httpx.MockTransport(
        ...     lambda request: httpx.Response(200, content=b"weights")))
        >>> fetch_file(http, "https://x/a", Path(tempfile.mkdtemp()) / "a", label="a")
        7
    """
    import httpx

    progress = progress or _Progress(sys.stderr, False)
    for attempt in range(_DOWNLOAD_ATTEMPTS):
        try:
            return _fetch_once(http, url, dest, label, progress)
        except httpx.TransportError as exc:
            dest.unlink(missing_ok=True)
            if attempt + 1 == _DOWNLOAD_ATTEMPTS:
                raise CLIError(f"{label}: the download failed ({type(exc).__name__}: {exc}). "
                               "Fix: check your connection and run the command again.") from exc
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        finally:
            progress.done()
    raise AssertionError("unreachable")


def _is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def fetch_all(http: httpx.Client, urls: Mapping[str, str], staging: Path,
              progress: _Progress) -> tuple[list[str], int]:
    """Fetch every ``relative name -> URL`` into `staging`; extract archives safely.

    Returns:
        The files now in `staging` (relative, sorted) and the bytes fetched.
    """
    if not urls:
        raise CLIError("the server listed no files to download. Fix: check the checkpoint "
                       "with `tinkex checkpoint info`.")
    root = staging.resolve()
    total = 0
    for name, url in sorted(urls.items()):
        dest = _checked_target(root, name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        total += fetch_file(http, url, dest, label=name, progress=progress)
        if _is_archive(name):
            safe_extract_tar(dest, dest.parent)
            dest.unlink()
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                   if p.is_file() or p.is_symlink())
    return files, total


def _install(staging: Path, target: Path, force: bool) -> None:
    """Move the finished download into place; an old target is replaced only now."""
    if not target.exists() and not target.is_symlink():
        staging.rename(target)
        return
    if not force:
        raise CLIError(f"{target} already exists. Fix: pass --force to replace it, or choose "
                       "another --output directory.")
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    target.rename(old)
    staging.rename(target)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


@contextlib.contextmanager
def _exported(service: ServiceClient, rest: RestClient, tinker_path: str,
              parsed: ParsedCheckpointTinkerPath) -> Iterator[str]:
    """The ``external_weights`` path to download: the checkpoint itself, or a temporary
    export of it (loaded into a training client, saved with ``save_weights_external`` and
    deleted again afterwards), as the official CLI of SDK 0.38 does."""
    if parsed.checkpoint_type == "external":
        yield tinker_path
        return
    print(f"Exporting {tinker_path} in Hugging Face format (starts a training session on its "
          "base model)...", file=sys.stderr)
    training = service.create_training_client_from_state(tinker_path).result()
    name = f"tinkex-download-{uuid.uuid4().hex[:8]}"
    export = training.save_weights_external(name, ttl_seconds=EXPORT_TTL_SECONDS).result()
    try:
        yield export.path
    finally:
        try:
            rest.delete_checkpoint_from_tinker_path(export.path).result(timeout=60)
        except Exception as exc:  # the export expires by itself; say so and go on
            print(f"warning: could not delete the temporary export {export.path} "
                  f"({_one_line(str(exc))}); it expires in {EXPORT_TTL_SECONDS // 60} min.",
                  file=sys.stderr)


def download_checkpoint(service: ServiceClient, tinker_path: str, output_dir: Path, *,
                        force: bool = False, show_progress: bool = False,
                        http: httpx.Client | None = None) -> Download:
    """Download a checkpoint's files into ``output_dir/<run>_<kind>_<name>``.

    The files are fetched into a hidden staging directory under `output_dir`, checked, and
    moved into place only when all arrived; on any failure (including Ctrl-C) the staging
    directory is removed and an existing target is left untouched.

    Example:
        >>> download_checkpoint(service, "tinker://run/weights/final", Path("."))  # doctest: +SKIP
        Download(tinker_path='tinker://run/weights/final', destination=..., ...)
    """
    import httpx

    parsed = parse_checkpoint_path(tinker_path)
    target = output_dir / download_dir_name(parsed)
    if (target.exists() or target.is_symlink()) and not force:
        raise CLIError(f"{target} already exists. Fix: pass --force to replace it, or choose "
                       "another --output directory.")
    rest = service.create_rest_client()
    with _exported(service, rest, tinker_path, parsed) as export_path:
        urls = rest.get_external_weights_urls(export_path).result().urls
        output_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tinkex-download-", dir=output_dir))
        client = http or httpx.Client(follow_redirects=True,
                                      timeout=httpx.Timeout(60.0, connect=10.0))
        try:
            files, size = fetch_all(client, urls, staging,
                                    _Progress(sys.stderr, show_progress))
            _install(staging, target, force)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            if http is None:
                client.close()
    return Download(tinker_path=tinker_path, destination=target, files=files, size_bytes=size)


# =============================================================================================
# 4. Commands (effectful)
# =============================================================================================


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _server_detail(error: APIError) -> str:
    body = error.body
    if isinstance(body, dict):
        for key in ("detail", "message", "error"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return _one_line(value)
    return ""


@contextlib.contextmanager
def _not_found(what: str, fix: str) -> Iterator[None]:
    """Turn the SDK's `NotFoundError` into a short CLI message about `what`."""
    from .errors import NotFoundError

    try:
        yield
    except NotFoundError as exc:
        detail = _server_detail(exc).split(" Fix:")[0].rstrip(". ")
        said = f" (server: {detail})" if detail else ""
        raise CLIError(f"{what} was not found{said}. Fix: {fix}") from None


def parse_checkpoint_path(text: str) -> ParsedCheckpointTinkerPath:
    """Parse a ``tinker://RUN/KIND/NAME`` argument, with a CLI-worded error.

    Example:
        >>> parse_checkpoint_path("tinker://r1/sampler_weights/s").checkpoint_id
        'sampler_weights/s'
    """
    from .builders import parse_tinker_path
    from .errors import ValidationError

    try:
        return parse_tinker_path(text)
    except ValidationError:
        raise CLIError(f"{text!r} is not a checkpoint path. Fix: pass "
                       "tinker://<run-id>/<weights|sampler_weights|external_weights>/<name>, "
                       "as `tinkex checkpoint list` shows.", exit_code=2) from None


def _probe(base_url: str) -> None:
    """Fail fast when nothing answers at `base_url` (the SDK would retry for minutes)."""
    import httpx

    try:
        httpx.get(base_url.rstrip("/") + "/api/v1/healthz", timeout=10.0)
    except httpx.TransportError as exc:
        raise CLIError(f"cannot reach the Tinker server at {base_url} ({type(exc).__name__}). "
                       "Fix: check --base-url / TINKER_BASE_URL, or start a local backend "
                       "with `tinkex serve`.") from None


@contextlib.contextmanager
def _service(args: argparse.Namespace) -> Iterator[ServiceClient]:
    """A ServiceClient from ``--base-url`` / ``--api-key`` (else the environment)."""
    from .clients import ServiceClient
    from .errors import TinkerError

    try:
        service = ServiceClient(base_url=args.base_url, api_key=args.api_key)
    except TinkerError as exc:
        raise CLIError(f"{_one_line(str(exc))} (command line: --api-key, --base-url)",
                       exit_code=2) from None
    try:
        _probe(service.base_url)
        yield service
    finally:
        with contextlib.suppress(Exception):
            service.close().result(timeout=30)


def _print_json(data: Any) -> None:
    import msgspec

    print(json.dumps(msgspec.to_builtins(data), indent=2, ensure_ascii=False))


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    prog = getattr(args, "_prog", "tinkex")
    print(f"{prog}: {_one_line(message)}", file=sys.stderr)
    return code


def _guarded(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Expected errors become one line on stderr and an exit status, never a traceback."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        from .errors import TinkerError, ValidationError

        try:
            return fn(args)
        except CLIError as exc:
            return _fail(args, str(exc), exc.exit_code)
        except ValidationError as exc:
            return _fail(args, str(exc), 2)
        except TinkerError as exc:
            return _fail(args, str(exc), 1)
        except OSError as exc:
            return _fail(args, f"{exc}. Fix: check the path and its permissions.", 1)
        except KeyboardInterrupt:
            return _fail(args, "interrupted", 130)

    return run


def _add_output_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", default=None,
                        help="server URL (default $TINKER_BASE_URL, else the hosted service)")
    parser.add_argument("--api-key", default=None,
                        help="API key (default $TINKER_API_KEY; prefer the variable: "
                             "arguments are visible to other local users)")
    _add_output_option(parser)


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value}")
    return value


# ----------------------------------------------------------------------------- version


def configure_version(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex version``."""
    _add_output_option(parser)


@_guarded
def cmd_version(args: argparse.Namespace) -> int:
    """Print the package and protocol versions."""
    import platform

    from ._shell._constants import PACKAGE_VERSION, PROTOCOL_VERSION

    info = {"tinkex_jax": PACKAGE_VERSION, "protocol": PROTOCOL_VERSION,
            "python": platform.python_version()}
    if args.json:
        _print_json(info)
    else:
        print(f"tinkex_jax {PACKAGE_VERSION} (Tinker protocol {PROTOCOL_VERSION}, "
              f"Python {info['python']})")
    return 0


def _print_listing(args: argparse.Namespace, key: str, items: Sequence[Any],
                   total: int | None, columns: Sequence[str], rows: Sequence[Sequence[str]]
                   ) -> int:
    """Print a list command's result: JSON, a "none" line, or a titled table."""
    noun = key.replace("_", " ")
    if args.json:
        _print_json({key: list(items), "total_count": total})
    elif not items:
        print(f"No {noun}.")
    else:
        print(_count_title(noun, len(items), total, "--limit 0 shows all"))
        print(format_table(columns, rows))
    return 0


# ----------------------------------------------------------------------------- run


def configure_run_list(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex run list``."""
    parser.add_argument("--limit", type=_non_negative, default=20,
                        help="show at most N runs (default %(default)s; 0 shows all)")
    _add_connection_options(parser)


@_guarded
def cmd_run_list(args: argparse.Namespace) -> int:
    """List training runs, newest first."""
    with _service(args) as service:
        rest = service.create_rest_client()

        def fetch(offset: int, n: int) -> tuple[list[TrainingRun], int | None]:
            page = rest.list_training_runs(limit=n, offset=offset).result()
            return page.training_runs, page.cursor.total_count if page.cursor else None

        runs, total = collect_pages(fetch, args.limit)
    return _print_listing(args, "training_runs", runs, total, RUN_COLUMNS, run_rows(runs))


def configure_run_info(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex run info``."""
    parser.add_argument("run", metavar="RUN_ID_OR_TINKER_PATH",
                        help="a training run id, or a tinker:// path of one of its checkpoints")
    _add_connection_options(parser)


@_guarded
def cmd_run_info(args: argparse.Namespace) -> int:
    """Show one training run."""
    run_id = args.run
    if run_id.startswith("tinker://"):
        run_id = parse_checkpoint_path(run_id).training_run_id
    with _service(args) as service, _not_found(
            f"training run {run_id!r}", "`tinkex run list` shows your runs."):
        run = service.create_rest_client().get_training_run(run_id).result()
    if args.json:
        _print_json(run)
    else:
        print(format_properties(run_properties(run)))
    return 0


# ----------------------------------------------------------------------------- checkpoint


def configure_checkpoint_list(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex checkpoint list``."""
    parser.add_argument("--run-id", default=None,
                        help="only this training run's checkpoints (default: all of yours)")
    parser.add_argument("--limit", type=_non_negative, default=100,
                        help="show at most N checkpoints (default %(default)s; 0 shows all)")
    _add_connection_options(parser)


@_guarded
def cmd_checkpoint_list(args: argparse.Namespace) -> int:
    """List checkpoints of one run, or all of the user's (newest first)."""
    with _service(args) as service:
        rest = service.create_rest_client()
        total: int | None
        if args.run_id:
            with _not_found(f"training run {args.run_id!r}",
                            "`tinkex run list` shows your runs."):
                listed = rest.list_checkpoints(args.run_id).result()
            every = listed.checkpoints
            limit = args.limit or len(every)
            checkpoints, total = every[:limit], len(every)
        else:
            def fetch(offset: int, n: int) -> tuple[list[Checkpoint], int | None]:
                page = rest.list_user_checkpoints(limit=n, offset=offset).result()
                return page.checkpoints, page.cursor.total_count if page.cursor else None

            checkpoints, total = collect_pages(fetch, args.limit)
    return _print_listing(args, "checkpoints", checkpoints, total, CHECKPOINT_COLUMNS,
                          checkpoint_rows(checkpoints))


def _find_checkpoint(rest: RestClient, tinker_path: str) -> Checkpoint:
    """The checkpoint at `tinker_path` (there is no single-checkpoint endpoint)."""
    parsed = parse_checkpoint_path(tinker_path)
    with _not_found(f"training run {parsed.training_run_id!r}",
                    "`tinkex run list` shows your runs."):
        listed = rest.list_checkpoints(parsed.training_run_id).result()
    for ckpt in listed.checkpoints:
        if ckpt.checkpoint_id == parsed.checkpoint_id:
            return ckpt
    raise CLIError(f"checkpoint {tinker_path} was not found. Fix: `tinkex checkpoint list "
                   f"--run-id {parsed.training_run_id}` shows the run's checkpoints.")


def _configure_one_path(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tinker_path", metavar="TINKER_PATH",
                        help="tinker://<run-id>/<kind>/<name>")
    _add_connection_options(parser)


def configure_checkpoint_info(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex checkpoint info``."""
    _configure_one_path(parser)


@_guarded
def cmd_checkpoint_info(args: argparse.Namespace) -> int:
    """Show one checkpoint and its run's model."""
    parse_checkpoint_path(args.tinker_path)
    with _service(args) as service:
        rest = service.create_rest_client()
        ckpt = _find_checkpoint(rest, args.tinker_path)
        run = None
        if not args.json:
            with contextlib.suppress(Exception):
                run = rest.get_training_run_by_tinker_path(args.tinker_path).result()
    if args.json:
        _print_json(ckpt)
    else:
        print(format_properties(checkpoint_properties(ckpt, run)))
    return 0


def configure_checkpoint_delete(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex checkpoint delete``."""
    parser.add_argument("tinker_paths", metavar="TINKER_PATH", nargs="+",
                        help="checkpoints to delete")
    parser.add_argument("--yes", "-y", action="store_true",
                        help="do not ask for confirmation (needed when stdin is no terminal)")
    _add_connection_options(parser)


def _confirm(question: str) -> bool:
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


@_guarded
def cmd_checkpoint_delete(args: argparse.Namespace) -> int:
    """Delete checkpoints; every path is checked before anything is deleted."""
    from .errors import APIError

    paths = list(dict.fromkeys(args.tinker_paths))
    for path in paths:
        parse_checkpoint_path(path)
    if not args.yes:
        if not sys.stdin.isatty():
            raise CLIError(f"refusing to delete {len(paths)} checkpoint(s) without "
                           "confirmation. Fix: pass --yes.", exit_code=2)
        if not _confirm(f"Delete {len(paths)} checkpoint(s)? This cannot be undone."):
            print("Nothing deleted.", file=sys.stderr)
            return 1
    deleted: list[str] = []
    failed: list[dict[str, str]] = []
    with _service(args) as service:
        rest = service.create_rest_client()
        for path in paths:
            try:
                rest.delete_checkpoint_from_tinker_path(path).result()
                deleted.append(path)
            except APIError as exc:
                failed.append({"tinker_path": path,
                               "error": _server_detail(exc) or _one_line(str(exc))})
    if args.json:
        _print_json({"deleted": deleted, "failed": failed})
    else:
        for path in deleted:
            print(f"Deleted {path}")
        for item in failed:
            print(f"{args._prog}: could not delete {item['tinker_path']}: {item['error']}",
                  file=sys.stderr)
    return 1 if failed else 0


def configure_checkpoint_publish(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex checkpoint publish`` / ``unpublish``."""
    _configure_one_path(parser)


def _set_public(args: argparse.Namespace, public: bool) -> int:
    parse_checkpoint_path(args.tinker_path)
    with _service(args) as service:
        rest = service.create_rest_client()
        ckpt = _find_checkpoint(rest, args.tinker_path)
        if ckpt.public != public:  # a second publish would be a 409, retried for minutes
            call = (rest.publish_checkpoint_from_tinker_path if public
                    else rest.unpublish_checkpoint_from_tinker_path)
            call(args.tinker_path).result()
            ckpt = _find_checkpoint(rest, args.tinker_path)
    if args.json:
        _print_json(ckpt)
    else:
        state = "public" if ckpt.public else "private"
        print(f"{args.tinker_path} is now {state}.")
    return 0


@_guarded
def cmd_checkpoint_publish(args: argparse.Namespace) -> int:
    """Make a checkpoint public."""
    return _set_public(args, True)


@_guarded
def cmd_checkpoint_unpublish(args: argparse.Namespace) -> int:
    """Make a checkpoint private."""
    return _set_public(args, False)


def configure_checkpoint_set_ttl(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex checkpoint set-ttl``."""
    parser.add_argument("tinker_path", metavar="TINKER_PATH",
                        help="tinker://<run-id>/<kind>/<name>")
    parser.add_argument("seconds", metavar="SECONDS", nargs="?", type=_positive, default=None,
                        help="expire this many seconds from now (the API accepts 3600 s to 10 years)")
    parser.add_argument("--remove", action="store_true", help="never expire")
    _add_connection_options(parser)


@_guarded
def cmd_checkpoint_set_ttl(args: argparse.Namespace) -> int:
    """Set or remove a checkpoint's expiry."""
    if (args.seconds is None) == (not args.remove):
        raise CLIError("give either SECONDS or --remove. Fix: e.g. `tinkex checkpoint set-ttl "
                       "tinker://RUN/weights/NAME 86400`.", exit_code=2)
    parse_checkpoint_path(args.tinker_path)
    with _service(args) as service:
        rest = service.create_rest_client()
        with _not_found(f"checkpoint {args.tinker_path}", "`tinkex checkpoint list` shows "
                        "your checkpoints."):
            rest.set_checkpoint_ttl_from_tinker_path(args.tinker_path, args.seconds).result()
        ckpt = _find_checkpoint(rest, args.tinker_path)
    if args.json:
        _print_json(ckpt)
    else:
        print(f"{args.tinker_path} expires: {format_time(ckpt.expires_at, missing='never')}")
    return 0


def configure_checkpoint_download(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex checkpoint download``."""
    parser.add_argument("tinker_path", metavar="TINKER_PATH",
                        help="tinker://<run-id>/<weights|sampler_weights|external_weights>/"
                             "<name>")
    parser.add_argument("--output", "-o", type=Path, default=Path("."),
                        help="parent directory of the download (default: the current one)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing download (only once the new one is complete)")
    _add_connection_options(parser)


@_guarded
def cmd_checkpoint_download(args: argparse.Namespace) -> int:
    """Download a checkpoint's adapter files (Hugging Face PEFT format)."""
    parse_checkpoint_path(args.tinker_path)
    with _service(args) as service, _not_found(
            f"checkpoint {args.tinker_path}", "`tinkex checkpoint list` shows your "
            "checkpoints."):
        result = download_checkpoint(service, args.tinker_path, args.output, force=args.force,
                                     show_progress=sys.stderr.isatty() and not args.json)
    if args.json:
        _print_json({"tinker_path": result.tinker_path,
                     "destination": str(result.destination), "files": result.files,
                     "size_bytes": result.size_bytes})
    else:
        print(f"Downloaded {result.tinker_path} to {result.destination} "
              f"({len(result.files)} files, {format_size(result.size_bytes)})")
        sizes = [format_size((result.destination / f).stat().st_size) for f in result.files]
        print(format_table(["File", "Size"], [[f, s] for f, s in zip(result.files, sizes)]))
    return 0


# ----------------------------------------------------------------------------- sample


def configure_sample(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex sample``."""
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--base-model", default=None, help="sample from this base model")
    model.add_argument("--model-path", default=None, metavar="TINKER_PATH",
                       help="sample from these saved weights (tinker://.../sampler_weights/...)")
    parser.add_argument("prompt", metavar="PROMPT", help="the prompt text")
    parser.add_argument("--prompt-tokens", action="store_true",
                        help="PROMPT is token ids (e.g. '1 2 3' or '1,2,3'), not text")
    parser.add_argument("--max-tokens", type=_positive, default=32,
                        help="tokens to generate per sample (default %(default)s)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="softmax temperature, 0 = greedy (default %(default)s)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (default 1.0)")
    parser.add_argument("--top-k", type=int, default=-1, help="top-k, -1 = all (default -1)")
    parser.add_argument("--num-samples", type=_positive, default=1,
                        help="completions to draw (default %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible samples")
    parser.add_argument("--stop", action="append", default=None, metavar="STR",
                        help="stop at this string (repeatable)")
    _add_connection_options(parser)


def parse_token_ids(text: str) -> list[int]:
    """Token ids from ``"1 2 3"`` or ``"1,2,3"``.

    Example:
        >>> parse_token_ids("1, 2 3")
        [1, 2, 3]
    """
    parts = [p for p in re.split(r"[\s,]+", text.strip()) if p]
    if not parts or not all(p.isdigit() for p in parts):
        raise CLIError(f"--prompt-tokens: expected token ids such as '1 2 3', got {text!r}",
                       exit_code=2)
    return [int(p) for p in parts]


def _tokenizer(sampler: SamplingClient) -> tuple[Any | None, str]:
    """The base model's tokenizer, or None and why not."""
    try:
        return sampler.get_tokenizer(), ""
    except Exception as exc:  # missing files, offline, no such repo: fall back to token ids
        return None, _one_line(str(exc))


@_guarded
def cmd_sample(args: argparse.Namespace) -> int:
    """Sample completions of a prompt and print them."""
    from .types import ModelInput, SamplingParams

    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                            top_p=args.top_p, top_k=args.top_k, seed=args.seed, stop=args.stop)
    if args.model_path:
        parse_checkpoint_path(args.model_path)
    with _service(args) as service:
        with _not_found(f"model {args.model_path or args.base_model!r}",
                        "check the name with `tinkex checkpoint list`."):
            sampler = service.create_sampling_client(model_path=args.model_path,
                                                      base_model=args.base_model).result()
        tokenizer, why = _tokenizer(sampler)
        if args.prompt_tokens:
            prompt = parse_token_ids(args.prompt)
        elif tokenizer is None:
            raise CLIError(f"cannot encode the prompt: no tokenizer for "
                           f"{sampler.get_base_model()} ({why}). Fix: pass the prompt as "
                           "token ids with --prompt-tokens.", exit_code=2)
        else:
            prompt = tokenizer.encode(args.prompt)
        response = sampler.sample(ModelInput.from_ints(prompt), args.num_samples,
                                  params).result()
    if tokenizer is None and not args.json:
        print(f"note: no tokenizer for {sampler.get_base_model()} ({why}); showing token ids",
              file=sys.stderr)
    views = [SampleView(tokens=s.tokens, stop_reason=s.stop_reason,
                        text=tokenizer.decode(s.tokens, skip_special_tokens=True)
                        if tokenizer is not None else None) for s in response.sequences]
    if args.json:
        _print_json({"model": args.model_path or args.base_model,
                     "base_model": sampler.get_base_model(), "prompt_tokens": prompt,
                     "samples": [{"text": v.text, "tokens": v.tokens,
                                  "stop_reason": v.stop_reason} for v in views]})
    else:
        print(format_samples(views))
    return 0
