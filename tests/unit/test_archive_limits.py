"""Extraction limits of checkpoint downloads (`tinkex_jax.cli.archive.ExtractionLimits`):
sparse members, compression bombs, too many members and hard-link copies are refused before
they are written, a refusal leaves nothing behind, and the reported size is the extracted one.

Every archive is crafted here and stays small on disk (the largest is a few hundred KB).
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.stubs import ExternalWeightsService
from tinkex_jax.cli import archive, build_parser, download, output
from tinkex_jax.cli.archive import ArchiveLimitError, ExtractionLimits

MiB = 2**20


class _Zeros(io.RawIOBase):
    """`size` zero bytes, read without ever holding them all."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def _tar(path: Path, members: Iterator[tuple[tarfile.TarInfo, Any]], mode: str = "w",
         **kw: Any) -> Path:
    with tarfile.open(path, mode, **kw) as tar:  # type: ignore[call-overload]
        for info, data in members:
            tar.addfile(info, data)
    return path


def _file(name: str, size: int) -> tuple[tarfile.TarInfo, Any]:
    info = tarfile.TarInfo(name)
    info.size = size
    return info, _Zeros(size)


def _sparse_tar(path: Path, apparent: int) -> Path:
    """A PAX tar whose one member holds 10 real bytes but unpacks to `apparent` bytes."""
    info = tarfile.TarInfo("adapter_model.safetensors")
    info.size = 10
    info.pax_headers = {"GNU.sparse.map": "0,10", "GNU.sparse.size": str(apparent)}
    return _tar(path, iter([(info, io.BytesIO(b"x" * 10))]), format=tarfile.PAX_FORMAT)


def _gzip_bomb(path: Path, size: int) -> Path:
    return _tar(path, iter([_file("adapter_model.safetensors", size)]), "w:gz")


def _leftovers(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


# ----------------------------------------------------------------------------- refusals


def test_a_sparse_member_is_refused_before_a_byte_is_written(tmp_path: Path) -> None:
    tarball = _sparse_tar(tmp_path / "sparse.tar", 2**30)
    assert tarball.stat().st_size <= 16 * 1024  # 10 KB on disk, 1 GiB once unpacked
    with pytest.raises(ArchiveLimitError, match="sparse member"):
        archive.safe_extract_tar(tarball, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_compression_bomb_is_refused_by_its_ratio(tmp_path: Path) -> None:
    tarball = _gzip_bomb(tmp_path / "bomb.tar.gz", 256 * MiB)
    assert tarball.stat().st_size < MiB
    with pytest.raises(ArchiveLimitError, match=r"expands \d+ times") as caught:
        archive.safe_extract_tar(tarball, tmp_path / "out")
    assert "--max-ratio" in str(caught.value)
    assert not (tmp_path / "out").exists()
    # the same archive passes when the caller trusts it (ratio raised), but not past a size
    with pytest.raises(ArchiveLimitError, match="more than 67108864 bytes"):
        archive.safe_extract_tar(tarball, tmp_path / "out", ExtractionLimits(
            max_ratio=10_000, max_bytes=64 * MiB))
    assert not (tmp_path / "out").exists()


def test_small_compressible_files_stay_allowed_below_the_ratio_floor(tmp_path: Path) -> None:
    # 4 MiB of zeros compress about 1000 times, but stay under the 16 MiB floor
    tarball = _gzip_bomb(tmp_path / "zeros.tar.gz", 4 * MiB)
    assert archive.safe_extract_tar(tarball, tmp_path / "out") == ["adapter_model.safetensors"]
    assert (tmp_path / "out" / "adapter_model.safetensors").stat().st_size == 4 * MiB


def test_too_many_members_are_refused_at_the_default_limit(tmp_path: Path) -> None:
    count = ExtractionLimits().max_files + 1
    tarball = _tar(tmp_path / "many.tar.gz", (_file(f"f{i}", 0) for i in range(count)), "w:gz")
    assert tarball.stat().st_size < MiB
    with pytest.raises(ArchiveLimitError, match=r"more than 10000 members \(at 'f10000'\)"):
        archive.safe_extract_tar(tarball, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_hard_link_copies_count_against_the_size_limit(tmp_path: Path) -> None:
    def members() -> Iterator[tuple[tarfile.TarInfo, Any]]:
        yield _file("weights.bin", MiB)
        for i in range(20):
            info = tarfile.TarInfo(f"copy{i}")
            info.type, info.linkname = tarfile.LNKTYPE, "weights.bin"
            yield info, None

    tarball = _tar(tmp_path / "links.tar", members())
    limits = ExtractionLimits(max_bytes=10 * MiB)
    with pytest.raises(ArchiveLimitError, match=r"more than 10485760 bytes \(at 'copy9'\)"):
        archive.safe_extract_tar(tarball, tmp_path / "out", limits)
    assert not (tmp_path / "out").exists()


def test_a_refusal_removes_what_it_created_and_keeps_what_was_there(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    (dest / "model").mkdir(parents=True)
    (dest / "model" / "mine.json").write_text("keep")

    def members() -> Iterator[tuple[tarfile.TarInfo, Any]]:
        yield _file("model/adapter_config.json", 2)
        yield _file("extra/a/b.bin", 3)
        yield _file("third", 1)

    tarball = _tar(tmp_path / "three.tar", members())
    with pytest.raises(ArchiveLimitError, match="more than 2 members"):
        archive.safe_extract_tar(tarball, dest, ExtractionLimits(max_files=2))
    assert _leftovers(dest) == ["model", "model/mine.json"]
    assert (dest / "model" / "mine.json").read_text() == "keep"
    # and an unsafe member is cleaned up after just the same
    bad = _tar(tmp_path / "bad.tar", iter([_file("ok.bin", 1), _file("../evil", 1)]))
    with pytest.raises(archive.UnsafePathError):
        archive.safe_extract_tar(bad, dest)
    assert _leftovers(dest) == ["model", "model/mine.json"]


def test_limits_and_sizes_are_checked() -> None:
    assert archive.parse_size("100G") == 100 * 2**30
    assert archive.parse_size("5GB") == 5 * 10**9
    assert archive.parse_size(" 12 ") == 12
    for bad in ("", "-1G", "1Q", "1e9"):
        with pytest.raises(ValueError, match="is not a size"):
            archive.parse_size(bad)
    with pytest.raises(Exception, match="max_ratio"):
        ExtractionLimits(max_ratio=0.5)
    with pytest.raises(Exception, match="max_files"):
        ExtractionLimits(max_files=-1)
    args = build_parser().parse_args(["checkpoint", "download", "tinker://r/weights/w",
                                      "--max-size", "2G", "--max-files", "7",
                                      "--max-ratio", "40"])
    assert (args.max_size, args.max_files, args.max_ratio) == (2 * 2**30, 7, 40.0)
    defaults = build_parser().parse_args(["checkpoint", "download", "tinker://r/weights/w"])
    assert (defaults.max_size, defaults.max_files, defaults.max_ratio) == (
        64 * 2**30, 10_000, 100.0)


# ----------------------------------------------------------------------------- downloads


def _client(routes: dict[str, Callable[[], httpx.Response]]) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(lambda r: routes[r.url.path]()))


PATH = "tinker://run-1/external_weights/final"


def test_download_reports_the_extracted_size(tmp_path: Path) -> None:
    bundle = _tar(tmp_path / "b.tar.gz", iter([_file("adapter_model.safetensors", 3 * MiB)]),
                  "w:gz").read_bytes()
    client = _client({"/a": lambda: httpx.Response(200, content=bundle),
                      "/c": lambda: httpx.Response(200, content=b"{}")})
    result = download.download_checkpoint(
        ExternalWeightsService({"adapter.tar.gz": "https://h/a", "adapter_config.json": "https://h/c"}),  # type: ignore[arg-type]
        PATH, tmp_path / "out", http=client)
    assert result.files == ["adapter_config.json", "adapter_model.safetensors"]
    assert result.size_bytes == 3 * MiB + 2 and len(bundle) < MiB


@pytest.mark.parametrize("case", ["sparse", "bomb", "too big in all"])
def test_a_refused_download_leaves_nothing_behind(tmp_path: Path, case: str) -> None:
    if case == "sparse":
        body = _sparse_tar(tmp_path / "s.tar", 2**30).read_bytes()
        limits, match = None, "sparse"
    elif case == "bomb":
        body = _gzip_bomb(tmp_path / "b.tar.gz", 256 * MiB).read_bytes()
        limits, match = None, "expands"
    else:  # each file fits, both together do not
        body = _tar(tmp_path / "t.tar", iter([_file("w.bin", 3 * MiB)])).read_bytes()
        limits, match = ExtractionLimits(max_bytes=4 * MiB), "more than"
    client = _client({"/a": lambda: httpx.Response(200, content=body),
                      "/w": lambda: httpx.Response(200, content=b"w" * (2 * MiB))})
    out = tmp_path / "out"
    with pytest.raises(ArchiveLimitError, match=match):
        download.download_checkpoint(
            ExternalWeightsService({"a.tar": "https://h/a", "b.bin": "https://h/w"}), PATH, out,  # type: ignore[arg-type]
            http=client, limits=limits)
    assert _leftovers(out) == []


def test_a_plain_file_past_the_limit_is_refused_while_streaming(tmp_path: Path) -> None:
    big = b"x" * (3 * MiB)
    announced = _client({"/w": lambda: httpx.Response(200, content=big)})
    with pytest.raises(ArchiveLimitError, match="more than 1048576 bytes"):
        download.fetch_file(announced, "https://h/w", tmp_path / "w", label="w",
                            max_bytes=MiB)
    unannounced = _client({"/w": lambda: httpx.Response(
        200, stream=httpx.ByteStream(big))})  # no Content-Length: caught while streaming
    with pytest.raises(ArchiveLimitError, match="more than 1048576 bytes"):
        download.fetch_file(unannounced, "https://h/w", tmp_path / "w", label="w",
                            max_bytes=MiB, progress=output.Progress(io.StringIO(), False))
    assert _leftovers(tmp_path) == []
