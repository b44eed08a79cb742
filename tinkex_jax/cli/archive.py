"""Writing files from untrusted names safely: relative-path checks and a tar extraction that
refuses to write outside its target directory or more than its limits allow.

For: every place ``tinkex`` turns a name it did not choose (an archive member, a link target,
a file name a server listed) into a path on disk, and the bounds on what an archive may
write (`ExtractionLimits`: total bytes, member count, compression ratio; sparse members are
refused). Not for: fetching anything or checking checksums (`tinkex_jax.cli.download`).

Example:
    >>> safe_relative_path("model/./adapter.json")
    PurePosixPath('model/adapter.json')
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import invalid
from .errors import CLIError

__all__ = ["ARCHIVE_SUFFIXES", "ArchiveLimitError", "ExtractionLimits", "UnsafePathError",
           "checked_target", "is_archive", "parse_size", "safe_extract_tar",
           "safe_relative_path"]

#: File names the download treats as archives and extracts (safely) after fetching them.
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_CHUNK = 1 << 20
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6,
          "mib": 2**20, "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12,
          "tib": 2**40}


class UnsafePathError(CLIError):
    """A path (archive member, link target, download file name) would land outside its
    target directory, or names something other than a file, directory or safe link."""


class ArchiveLimitError(CLIError):
    """A download or an archive would write more than `ExtractionLimits` allow (bytes,
    members, compression ratio), or holds a sparse member."""


@dataclass(frozen=True)
class ExtractionLimits:
    """Bounds on what a checkpoint download may write to disk.

    The defaults fit real checkpoints with a wide margin (a LoRA adapter of a very large
    model is a few GB, a handful of files, and compresses about 1.1 to 3 times) while stopping
    archive bombs early: every member's declared size is checked against the limits before
    a byte of it is written.

    Attributes:
        max_bytes: Most bytes the files may take in all (downloaded plus extracted); 64 GiB.
        max_files: Most archive members (files, directories, links) in all; 10,000.
        max_ratio: Most bytes extracted per byte of archive, checked once the archive has
            written more than `ratio_floor` bytes (small, highly compressible files such as
            JSON configs stay allowed); 100.
        ratio_floor: See `max_ratio`; 16 MiB.

    Example:
        >>> ExtractionLimits().max_files, ExtractionLimits(max_bytes=parse_size("2G")).max_bytes
        (10000, 2147483648)
    """

    max_bytes: int = 64 * 2**30
    max_files: int = 10_000
    max_ratio: float = 100.0
    ratio_floor: int = 16 * 2**20

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_files", "ratio_floor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise invalid(f"ExtractionLimits({name})", "an int >= 0", value)
        if not (isinstance(self.max_ratio, int | float) and self.max_ratio >= 1):
            raise invalid("ExtractionLimits(max_ratio)", "a number >= 1", self.max_ratio)

    def replace(self, **changes: int | float) -> ExtractionLimits:
        """A copy with some limits changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def parse_size(text: str) -> int:
    """A byte count from ``"1024"``, ``"512MiB"``, ``"64G"`` (binary) or ``"5GB"`` (decimal).

    Raises:
        ValueError: not a size.

    Example:
        >>> parse_size("64G"), parse_size("1.5 KiB"), parse_size("2kb")
        (68719476736, 1536, 2000)
    """
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size (expected e.g. 500M, 64G, 5GB or a byte "
                         "count)")
    return int(float(match.group(1)) * _UNITS[unit])


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
        tinkex_jax.cli.archive.UnsafePathError: refusing '../x': it climbs out of the target directory with '..'
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


def is_archive(name: str) -> bool:
    """Whether a file name ends in one of `ARCHIVE_SUFFIXES` (any case).

    Example:
        >>> is_archive("adapter.TAR.GZ"), is_archive("adapter.safetensors")
        (True, False)
    """
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _inside(root: Path, path: Path) -> bool:
    """Whether `path` (resolved, following existing links) is `root` or below it."""
    resolved = path.resolve()
    return resolved == root or root in resolved.parents


def checked_target(root: Path, name: str) -> Path:
    """``root / name`` after checking the name and that its parent really is inside `root`
    (existing symlinks followed) and that the target itself is not a link.

    `root` must be resolved already (``Path.resolve()``).
    """
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


class _Budget:
    """The limits of one extraction, and what it has used of them."""

    def __init__(self, limits: ExtractionLimits, archive: Path) -> None:
        self.limits = limits
        self.archive_bytes = max(archive.stat().st_size, 1)
        self.bytes = 0
        self.members = 0

    def _refuse(self, what: str, fix: str) -> ArchiveLimitError:
        return ArchiveLimitError(f"refusing the archive: {what}. Nothing of it was kept. Fix: "
                                 f"{fix}")

    def count_member(self, name: str) -> None:
        self.members += 1
        if self.members > self.limits.max_files:
            raise self._refuse(
                f"it has more than {self.limits.max_files} members (at {name!r})",
                "if you trust it, raise the limit (tinkex checkpoint download --max-files, "
                "or ExtractionLimits(max_files=...))")

    def add_bytes(self, name: str, size: int) -> None:
        """Account for `size` more bytes before they are written."""
        self.bytes += size
        if self.bytes > self.limits.max_bytes:
            raise self._refuse(
                f"its files would take more than {self.limits.max_bytes} bytes (at {name!r})",
                "if you trust it and have the space, raise the limit (tinkex checkpoint "
                "download --max-size, or ExtractionLimits(max_bytes=...))")
        ratio = self.bytes / self.archive_bytes
        if self.bytes > self.limits.ratio_floor and ratio > self.limits.max_ratio:
            raise self._refuse(
                f"it expands {ratio:.0f} times ({self.archive_bytes} bytes of archive would "
                f"write {self.bytes} bytes, at {name!r}; the limit is {self.limits.max_ratio:g} "
                "times), which is what an archive bomb does",
                "if you trust it, raise the limit (tinkex checkpoint download --max-ratio, or "
                "ExtractionLimits(max_ratio=...))")


def _first_new(root: Path, target: Path) -> Path | None:
    """The outermost path from `root` down to `target` that does not exist yet."""
    path = root
    for part in target.relative_to(root).parts:
        path = path / part
        if not path.exists() and not path.is_symlink():
            return path
    return None


def _remove(paths: list[Path]) -> None:
    for path in reversed(paths):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)


def safe_extract_tar(archive: Path, dest: Path, limits: ExtractionLimits | None = None
                     ) -> list[str]:
    """Extract a tar archive (any compression) into `dest`, refusing anything unsafe or too
    big.

    Regular files and directories are extracted (no owners, no special mode bits); symbolic
    links only when they resolve inside `dest`; hard links become copies of a file already
    extracted inside `dest` (and count against the size limit). Absolute names, ``..``,
    writes through links, device files and FIFOs raise `UnsafePathError`; sparse members,
    more members or bytes than `limits` allow, or a compression ratio above it raise
    `ArchiveLimitError`, each before the member is written. A final pass re-checks every
    link, because later members can change where an earlier relative link points. On any
    error, everything the extraction created is removed again (`dest` too, if it created
    it); what was there before is left alone.

    Args:
        archive: The tar file.
        dest: Where to extract (created if missing).
        limits: Bounds on bytes, members and ratio (default `ExtractionLimits()`).

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
        tinkex_jax.cli.archive.UnsafePathError: refusing '../evil': it climbs out of the target directory with '..'
        >>> (d / "out").exists()
        False
    """
    budget = _Budget(limits if limits is not None else ExtractionLimits(), archive)
    created: list[Path] = []
    if not dest.exists():
        created.append(dest.absolute())
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        return _extract_members(archive, root, budget, created)
    except BaseException:
        _remove(created)
        raise


def _extract_members(archive: Path, root: Path, budget: _Budget, created: list[Path]
                     ) -> list[str]:
    names: list[str] = []
    links: list[tuple[str, Path]] = []
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            budget.count_member(member.name)
            target = checked_target(root, member.name)
            if member.issparse():
                raise ArchiveLimitError(
                    f"refusing {member.name!r}: a sparse member (its holes would be written "
                    "out as zeros, far larger than the archive). Nothing of the archive was "
                    "kept. Fix: ask for the files without sparse archiving (tar --sparse).")
            new = _first_new(root, target)
            if new is not None:
                created.append(new)
            if member.isdir():
                if target.exists() and not target.is_dir():
                    raise UnsafePathError(f"refusing directory {member.name!r}: a file of "
                                          "that name was already extracted")
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile() or member.issym() or member.islnk():
                if target.exists() or target.is_symlink():
                    raise UnsafePathError(f"refusing {member.name!r}: it appears twice in "
                                          "the archive")
                target.parent.mkdir(parents=True, exist_ok=True)
                if member.issym():
                    _extract_symlink(root, target, member)
                    links.append((member.name, target))
                elif member.islnk():
                    budget.add_bytes(member.name, _hardlink_size(root, member))
                    _extract_hardlink(root, target, member)
                else:
                    budget.add_bytes(member.name, member.size)
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


def _hardlink_size(root: Path, member: tarfile.TarInfo) -> int:
    """The size of the file a hard link copies (0 when it is no file: refused right after)."""
    try:
        source = root.joinpath(*safe_relative_path(member.linkname).parts)
    except UnsafePathError:
        return 0
    return source.stat().st_size if _inside(root, source) and source.is_file() else 0
