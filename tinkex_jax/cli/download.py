"""``tinkex checkpoint download`` without the command line: fetch a checkpoint's files,
check them, and move them into place only when all arrived.

For: the download itself (a temporary export when the checkpoint is not in Hugging Face
format, the file fetches with their size and checksum checks, safe extraction of archives
within `ExtractionLimits`, the atomic install) and the integrity checks it applies. Not for: parsing arguments or
printing results (`tinkex_jax.cli.commands.checkpoint`), or deciding whether a name is safe
(`tinkex_jax.cli.archive`). A failure never leaves a partial file or a half-replaced target.

Example:
    >>> from tinkex_jax.builders import parse_tinker_path
    >>> download_dir_name(parse_tinker_path("tinker://r1/sampler_weights/final"))
    'r1_sampler_weights_final'
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import re
import shutil
import sys
import tempfile
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .archive import (
    ArchiveLimitError,
    ExtractionLimits,
    checked_target,
    is_archive,
    safe_extract_tar,
)
from .arguments import parse_checkpoint_path
from .errors import CLIError, one_line
from .output import Progress

if TYPE_CHECKING:
    import httpx

    from .._shell import Runtime
    from ..clients import RestClient, ServiceClient
    from ..types import ParsedCheckpointTinkerPath

__all__ = [
    "EXPORT_TTL_SECONDS",
    "Download",
    "ExtractionLimits",
    "check_download",
    "download_checkpoint",
    "download_dir_name",
    "expected_digests",
    "fetch_all",
    "fetch_file",
]

#: How long the temporary export behind a ``checkpoint download`` lives if it cannot be
#: deleted afterwards (seconds).
EXPORT_TTL_SECONDS = 3600


def download_dir_name(parsed: ParsedCheckpointTinkerPath) -> str:
    """The directory a download lands in: run id and checkpoint id, made filename-safe.

    Example:
        >>> from tinkex_jax.builders import parse_tinker_path
        >>> download_dir_name(parse_tinker_path("tinker://s-1:train:0/weights/final"))
        's-1_train_0_weights_final'
    """
    raw = f"{parsed.training_run_id}_{parsed.checkpoint_id}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", raw).strip(".") or "checkpoint"


# ----------------------------------------------------------------------------- integrity

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
        tinkex_jax.cli.errors.CLIError: a.bin: got 4 of 10 bytes (the download was cut short). Fix: run the command again.
    """
    if expected_size is not None and size != expected_size:
        raise CLIError(f"{label}: got {size} of {expected_size} bytes (the download was cut "
                       "short). Fix: run the command again.")
    for name, digest in expected.items():
        if actual.get(name) != digest:
            raise CLIError(f"{label}: the {name} checksum does not match what the server "
                           "announced (the file is corrupted). Fix: run the command again.")


# ----------------------------------------------------------------------------- fetching


@dataclass(frozen=True)
class Download:
    """What ``checkpoint download`` produced.

    Attributes:
        tinker_path: The checkpoint downloaded.
        destination: The directory holding its files.
        files: The files, relative to `destination`, sorted.
        size_bytes: What the files take on disk (archives counted as extracted).
    """

    tinker_path: str
    destination: Path
    files: list[str]
    size_bytes: int


def _content_length(headers: Mapping[str, str]) -> int | None:
    value = headers.get("content-length")
    return int(value) if value is not None and value.strip().isdigit() else None


def fetch_file(http: httpx.Client, url: str, dest: Path, *, label: str,
               progress: Progress | None = None, runtime: Runtime | None = None,
               max_bytes: int | None = None) -> int:
    """Stream `url` into the new file `dest`, checking size and any announced checksum.

    With `max_bytes`, a file announced or streamed larger than that is refused
    (`ArchiveLimitError`) before, or as soon as, it passes the limit.

    The GET goes through the SDK's file download (`tinkex_jax._shell.get_file`): what its
    base retry policy retries (no answer, a connection dropped mid-file, 408 / 429 / 5xx) is
    retried with its backoff, 3 tries in all; any other status fails at once. A partial
    file never survives. `runtime` paces the retries (tests pass ``FakeTime().runtime``).

    Example:
        >>> import httpx, tempfile
        >>> http = httpx.Client(transport=httpx.MockTransport(
        ...     lambda request: httpx.Response(200, content=b"weights")))
        >>> fetch_file(http, "https://x/a", Path(tempfile.mkdtemp()) / "a", label="a")
        7
    """
    import httpx

    from .._shell import REAL_RUNTIME, describe_error, get_file, write_body

    shown = progress or Progress(sys.stderr, False)

    def consume(response: httpx.Response) -> int:
        try:
            if response.status_code != 200:
                raise CLIError(f"{label}: the download URL answered HTTP "
                               f"{response.status_code}. Fix: run the command again (download "
                               "URLs expire).")
            expected_size = _content_length(response.headers)
            if max_bytes is not None and expected_size is not None and expected_size > max_bytes:
                raise _too_big(label, max_bytes)
            digests = expected_digests(response.headers)
            hashers = {name: hashlib.new(name) for name in digests}
            done = 0

            def on_chunk(chunk: bytes) -> None:
                nonlocal done
                done += len(chunk)
                if max_bytes is not None and done > max_bytes:
                    raise _too_big(label, max_bytes)
                for h in hashers.values():
                    h.update(chunk)
                shown.update(label, done, expected_size)

            written = write_body(response, dest, on_chunk)
            # A server that compressed anyway announced the compressed length.
            raw_size = written if "content-encoding" not in response.headers else (
                response.num_bytes_downloaded)
            check_download(label, expected_size, raw_size, digests,
                           {name: h.digest() for name, h in hashers.items()})
            return written
        finally:
            shown.done()

    try:
        return get_file(http, url, consume, dest=dest, headers={"Accept-Encoding": "identity"},
                        runtime=runtime or REAL_RUNTIME, what=label)
    except httpx.TransportError as exc:
        signature = [urllib.parse.urlsplit(url).query]  # presigned URLs carry it there
        raise CLIError(f"{label}: the download failed ({describe_error(exc, signature)}). "
                       "Fix: check your connection and run the command again.") from exc


def _too_big(label: str, max_bytes: int) -> ArchiveLimitError:
    return ArchiveLimitError(
        f"{label}: the download would take more than {max_bytes} bytes, the rest of the "
        "limit on its size. Fix: if that is expected, raise the limit (tinkex checkpoint "
        "download --max-size, or limits=ExtractionLimits(max_bytes=...)).")


def _disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def fetch_all(http: httpx.Client, urls: Mapping[str, str], staging: Path,
              progress: Progress, *, runtime: Runtime | None = None,
              limits: ExtractionLimits | None = None) -> tuple[list[str], int]:
    """Fetch every ``relative name -> URL`` into `staging` (`fetch_file`); extract archives
    safely. `limits` bounds everything written together (downloads and what archives
    extract: bytes and members; each archive's ratio); default `ExtractionLimits()`.

    Returns:
        The files now in `staging` (relative, sorted) and the bytes they take (archives
        counted as extracted, not as downloaded).
    """
    if not urls:
        raise CLIError("the server listed no files to download. Fix: check the checkpoint "
                       "with `tinkex checkpoint info`.")
    limits = limits if limits is not None else ExtractionLimits()
    root = staging.resolve()
    total = members = 0
    for name, url in sorted(urls.items()):
        dest = checked_target(root, name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        size = fetch_file(http, url, dest, label=name, progress=progress, runtime=runtime,
                          max_bytes=limits.max_bytes - total)
        if is_archive(name):
            extracted = safe_extract_tar(dest, dest.parent, limits.replace(
                max_bytes=limits.max_bytes - total, max_files=limits.max_files - members))
            members += len(extracted)
            dest.unlink()
            total = _disk_bytes(root)
        else:
            total += size
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                   if p.is_file() or p.is_symlink())
    return files, _disk_bytes(root)


# ----------------------------------------------------------------------------- the download


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
                  f"({one_line(str(exc))}); it expires in {EXPORT_TTL_SECONDS // 60} min.",
                  file=sys.stderr)


def download_checkpoint(service: ServiceClient, tinker_path: str, output_dir: Path, *,
                        force: bool = False, show_progress: bool = False,
                        http: httpx.Client | None = None,
                        runtime: Runtime | None = None,
                        limits: ExtractionLimits | None = None) -> Download:
    """Download a checkpoint's files into ``output_dir/<run>_<kind>_<name>``.

    The files are fetched into a hidden staging directory under `output_dir`, checked, and
    moved into place only when all arrived; on any failure (including Ctrl-C, a refused
    archive or a download past `limits`) the staging directory is removed and an existing
    target is left untouched. `http` defaults to the SDK's download client
    (`tinkex_jax._shell.build_download_client`: the network options of the SDK's own client,
    no Tinker credential); `runtime` paces retries; `limits` bounds what is written
    (default `ExtractionLimits()`). The returned ``size_bytes`` is what the files take on
    disk.

    Example:
        >>> download_checkpoint(service, "tinker://run/weights/final", Path("."))  # doctest: +SKIP
        Download(tinker_path='tinker://run/weights/final', destination=..., ...)
    """
    from .._shell import build_download_client

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
        client = http or build_download_client()
        try:
            files, size = fetch_all(client, urls, staging,
                                    Progress(sys.stderr, show_progress), runtime=runtime,
                                    limits=limits)
            _install(staging, target, force)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            if http is None:
                client.close()
    return Download(tinker_path=tinker_path, destination=target, files=files, size_bytes=size)
