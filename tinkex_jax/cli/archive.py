"""Writing files from untrusted names safely: relative-path checks and a tar extraction that
refuses to write outside its target directory.

For: every place ``tinkex`` turns a name it did not choose (an archive member, a link target,
a file name a server listed) into a path on disk. Not for: fetching anything, checking
contents (sizes, checksums: `tinkex_jax.cli.download`), or cleaning up after a refusal (the
caller extracts into a fresh directory and removes it on failure).

Example:
    >>> safe_relative_path("model/./adapter.json")
    PurePosixPath('model/adapter.json')
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from .errors import CLIError

__all__ = ["ARCHIVE_SUFFIXES", "UnsafePathError", "checked_target", "is_archive",
           "safe_extract_tar", "safe_relative_path"]

#: File names the download treats as archives and extracts (safely) after fetching them.
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_CHUNK = 1 << 20


class UnsafePathError(CLIError):
    """A path (archive member, link target, download file name) would land outside its
    target directory, or names something other than a file, directory or safe link."""


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
        tinkex_jax.cli.archive.UnsafePathError: refusing '../evil': it climbs out of the target directory with '..'
    """
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    names: list[str] = []
    links: list[tuple[str, Path]] = []
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            target = checked_target(root, member.name)
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
