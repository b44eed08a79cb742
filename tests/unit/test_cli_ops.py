"""The pure parts of the operations CLI (`tinkex_jax.cli`): formatting, safe tar extraction,
integrity checks, downloads over an `httpx.MockTransport`, and the parser."""

from __future__ import annotations

import base64
import datetime as dt
import doctest
import hashlib
import importlib
import io
import os
import pkgutil
import socket
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

import tinkex_jax.cli
from tests.support.stubs import ExternalWeightsService
from tinkex_jax._shell import FakeTime
from tinkex_jax._shell._retry import base_retry_delay
from tinkex_jax.cli import Command, archive, build_parser, connection, download, main, output
from tinkex_jax.cli.arguments import parse_checkpoint_path
from tinkex_jax.cli.errors import CLIError

# ----------------------------------------------------------------------------- doctests


CLI_MODULES = sorted(info.name for info in pkgutil.walk_packages(
    tinkex_jax.cli.__path__, "tinkex_jax.cli.") if not info.name.endswith("__main__"))


@pytest.mark.parametrize("name", CLI_MODULES)
def test_module_doctests(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


def test_every_cli_module_says_what_it_is_for() -> None:
    assert len(CLI_MODULES) >= 14
    for name in ["tinkex_jax.cli", *CLI_MODULES]:
        doc = importlib.import_module(name).__doc__ or ""
        assert "For:" in doc and "Not for:" in doc, name


# ----------------------------------------------------------------------------- formatting


def test_table_is_aligned_without_trailing_blanks() -> None:
    text = output.format_table(["A", "Long header", "C"], [["xxxx", "y", ""], ["z", "", "w"]])
    lines = text.splitlines()
    assert lines == ["A     Long header  C", "xxxx  y", "z                  w"]
    assert all(line == line.rstrip() for line in lines)
    assert lines[0].index("Long") == lines[1].index("y") == 6


def test_properties_and_sizes_and_times() -> None:
    assert output.format_properties([("a", "1"), ("long key", "")]) == "a         1\nlong key"
    assert [output.format_size(n) for n in (0, 1023, 1024, 1536, 5 * 2**20)] == [
        "0 B", "1023 B", "1.0 KiB", "1.5 KiB", "5.0 MiB"]
    naive = dt.datetime(2026, 5, 1, 12, 30)
    plus2 = dt.datetime(2026, 5, 1, 14, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert output.format_time(naive) == output.format_time(plus2) == "2026-05-01 12:30 UTC"


def test_rows_of_runs_and_checkpoints() -> None:
    from tinkex_jax.types import Checkpoint, TrainingRun

    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    ckpt = Checkpoint(checkpoint_id="weights/a", checkpoint_type="training", time=when,
                      tinker_path="tinker://r/weights/a", size_bytes=2048, public=True,
                      expires_at=None)
    run = TrainingRun(training_run_id="r", base_model="m", model_owner="me", is_lora=True,
                      lora_rank=8, last_request_time=when, last_checkpoint=ckpt)
    assert output.run_rows([run]) == [["r", "m", "rank 8", "2026-01-01 00:00 UTC", "weights/a",
                                    "ok"]]
    later = Checkpoint(checkpoint_id="sampler_weights/b", checkpoint_type="sampler",
                       time=when + dt.timedelta(minutes=1), tinker_path="tinker://r/sampler_weights/b")
    both = TrainingRun(training_run_id="r", base_model="m", model_owner="me", is_lora=True,
                       lora_rank=8, last_request_time=when, last_checkpoint=ckpt,
                       last_sampler_checkpoint=later)
    sampler_only = TrainingRun(training_run_id="s", base_model="m", model_owner="me",
                               is_lora=False, last_request_time=when,
                               last_sampler_checkpoint=later)
    assert output.run_rows([both, sampler_only], ["id", "checkpoint", "checkpoint_time"]) == [
        ["r", "sampler_weights/b", "2026-01-01 00:01 UTC"],
        ["s", "sampler_weights/b", "2026-01-01 00:01 UTC"]]
    assert output.checkpoint_rows([ckpt]) == [["weights/a", "training", "2.0 KiB", "yes",
                                            "2026-01-01 00:00 UTC", "never",
                                            "tinker://r/weights/a"]]
    props = dict(output.checkpoint_properties(ckpt, run))
    assert props["Base model"] == "m" and props["LoRA"] == "rank 8"
    assert dict(output.run_properties(run))["Last sampler checkpoint"] == "-"


def test_progress_line_clamps() -> None:
    assert "100%" in output.progress_line("f", 20, 10, width=4)
    assert output.progress_line("f", 0, 10, width=4) == "f  [....]   0%  0 B / 10 B"


def test_collect_pages_stops_at_a_short_page() -> None:
    calls: list[tuple[int, int]] = []

    def fetch(offset: int, n: int) -> tuple[list[int], int | None]:
        calls.append((offset, n))
        return list(range(offset, min(offset + n, 5))), None

    assert connection.collect_pages(fetch, 0, page_size=2) == ([0, 1, 2, 3, 4], None)
    assert calls == [(0, 2), (2, 2), (4, 2)]


def test_download_dir_name_is_filename_safe() -> None:
    parsed = parse_checkpoint_path("tinker://s-1:train:0/sampler_weights/a b")
    assert download.download_dir_name(parsed) == "s-1_train_0_sampler_weights_a_b"


# ----------------------------------------------------------------------------- paths


@pytest.mark.parametrize("name", ["../x", "a/../../x", "a/..", "/etc/passwd", "\\\\host\\x",
                                  "C:\\Windows\\x", "c:/x", "", ".", "./", "a\x00b"])
def test_unsafe_relative_paths_are_refused(name: str) -> None:
    with pytest.raises(archive.UnsafePathError):
        archive.safe_relative_path(name)


def test_safe_relative_paths_are_normalised() -> None:
    assert str(archive.safe_relative_path("a/./b//c.txt")) == "a/b/c.txt"
    assert str(archive.safe_relative_path("a\\b")) == "a/b"
    assert str(archive.safe_relative_path("..a/b..")) == "..a/b.."


# ----------------------------------------------------------------------------- tar extraction


def _file(name: str, data: bytes = b"data", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _dir(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info, None


def _special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info, None


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]],
         mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:  # type: ignore[call-overload]
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


@pytest.fixture
def sandbox(tmp_path: Path) -> SimpleNamespace:
    """A target directory next to an 'outside' directory that must stay untouched."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("keep")
    return SimpleNamespace(root=tmp_path, dest=tmp_path / "dest", outside=outside)


def _untouched(sandbox: SimpleNamespace) -> bool:
    names = sorted(p.name for p in sandbox.outside.iterdir())
    return names == ["secret"] and (sandbox.outside / "secret").read_text() == "keep"


def test_benign_archive_extracts_files_dirs_and_inside_links(sandbox: SimpleNamespace) -> None:
    tarball = _tar(sandbox.root / "ok.tar.gz", [
        _dir("model"), _file("model/adapter_config.json", b"{}"),
        _file("model/run.sh", b"#!/bin/sh\n", mode=0o4755),
        _link("model/latest.json", "adapter_config.json"),
        _link("copy.json", "model/adapter_config.json", tarfile.LNKTYPE),
        _file("./top.txt", b"t")], mode="w:gz")
    names = archive.safe_extract_tar(tarball, sandbox.dest)
    assert names == ["model", "model/adapter_config.json", "model/run.sh",
                     "model/latest.json", "copy.json", "top.txt"]
    assert (sandbox.dest / "model" / "latest.json").read_text() == "{}"
    assert os.readlink(sandbox.dest / "model" / "latest.json") == "adapter_config.json"
    copy = sandbox.dest / "copy.json"
    assert copy.read_text() == "{}" and not copy.is_symlink()
    assert copy.stat().st_ino != (sandbox.dest / "model/adapter_config.json").stat().st_ino
    assert (sandbox.dest / "model" / "run.sh").stat().st_mode & 0o7777 == 0o755


MALICIOUS: dict[str, Callable[[Path], list[tuple[tarfile.TarInfo, bytes | None]]]] = {
    "dotdot": lambda root: [_file("../outside/evil")],
    "nested dotdot": lambda root: [_file("a/b/../../../outside/evil")],
    "absolute": lambda root: [_file(str(root / "outside" / "evil"))],
    "absolute symlink": lambda root: [_link("l", str(root / "outside"))],
    "escaping symlink": lambda root: [_link("l", "../outside")],
    "symlink then write through": lambda root: [
        _link("l", "../outside"), _file("l/evil")],
    "deep escaping symlink": lambda root: [_dir("a"), _link("a/l", "../../outside/secret")],
    "hardlink escaping": lambda root: [_link("h", "../outside/secret", tarfile.LNKTYPE)],
    "absolute hardlink": lambda root: [_link("h", str(root / "outside" / "secret"),
                                             tarfile.LNKTYPE)],
    "hardlink to missing": lambda root: [_link("h", "nothing", tarfile.LNKTYPE)],
    "chained links escape later": lambda root: [_link("l", "p/.."), _link("p", ".")],
    "write through chained links": lambda root: [_link("l", "p/.."), _link("p", "."),
                                                 _file("l/evil")],
    "write through a link": lambda root: [_file("real"), _link("l", "real"),
                                          _file("l", b"overwrite")],
    "duplicate file": lambda root: [_file("a"), _file("a", b"again")],
    "fifo": lambda root: [_special("pipe", tarfile.FIFOTYPE)],
    "device": lambda root: [_special("dev", tarfile.CHRTYPE)],
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_archives_are_refused(sandbox: SimpleNamespace, case: str) -> None:
    tarball = _tar(sandbox.root / "bad.tar", MALICIOUS[case](sandbox.root))
    with pytest.raises(archive.UnsafePathError):
        archive.safe_extract_tar(tarball, sandbox.dest)
    assert _untouched(sandbox)


# ----------------------------------------------------------------------------- integrity


def test_expected_digests_reads_the_usual_headers() -> None:
    data = b"adapter"
    sha = hashlib.sha256(data).digest()
    md5 = hashlib.md5(data).digest()
    b64 = base64.b64encode
    assert download.expected_digests({"Repr-Digest": f"sha-256=:{b64(sha).decode()}:"}) == {
        "sha256": sha}
    assert download.expected_digests({"Digest": f"SHA-256={b64(sha).decode()}"}) == {"sha256": sha}
    assert download.expected_digests({"x-goog-hash": f"crc32c=AAAAAA==,md5={b64(md5).decode()}"}) \
        == {"md5": md5}
    assert download.expected_digests({"Content-MD5": b64(md5).decode()}) == {"md5": md5}
    assert download.expected_digests({"x-amz-checksum-sha256": b64(sha).decode()}) == {
        "sha256": sha}
    assert download.expected_digests({"digest": "sha-256=:bm90LWEtZGlnZXN0:"}) == {}  # wrong size


def test_check_download_rejects_size_and_checksum_mismatches() -> None:
    download.check_download("f", None, 3, {}, {})
    with pytest.raises(CLIError, match="got 3 of 4 bytes"):
        download.check_download("f", 4, 3, {}, {})
    with pytest.raises(CLIError, match="sha256 checksum"):
        download.check_download("f", 3, 3, {"sha256": b"a"}, {"sha256": b"b"})


class _BrokenStream(httpx.SyncByteStream):
    """Yields some bytes, then fails as a reset connection would."""

    def __init__(self, head: bytes) -> None:
        self.head = head

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        raise httpx.ReadError("connection reset by peer")


def _client(routes: dict[str, Callable[[], httpx.Response]]) -> httpx.Client:
    def handle(request: httpx.Request) -> httpx.Response:
        return routes[request.url.path]()

    return httpx.Client(transport=httpx.MockTransport(handle))


def _leftovers(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def test_fetch_all_checks_checksums_and_extracts_archives(tmp_path: Path) -> None:
    weights = b"\x00" * 3000
    digest = base64.b64encode(hashlib.sha256(weights).digest()).decode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info, data = _file("extra/readme.md", b"hi")
        tar.addfile(info, io.BytesIO(data))
    client = _client({
        "/w": lambda: httpx.Response(200, content=weights,
                                     headers={"Repr-Digest": f"sha-256=:{digest}:"}),
        "/a": lambda: httpx.Response(200, content=buf.getvalue())})
    files, size = download.fetch_all(client, {"sub/adapter_model.safetensors": "https://h/w",
                                         "bundle.tar": "https://h/a"}, tmp_path,
                                output.Progress(io.StringIO(), False))
    assert files == ["extra/readme.md", "sub/adapter_model.safetensors"]
    assert size == len(weights) + len(b"hi")  # on disk: the archive counts as extracted
    assert (tmp_path / "sub/adapter_model.safetensors").read_bytes() == weights


def test_fetch_refuses_a_wrong_checksum_and_leaves_no_file(tmp_path: Path) -> None:
    bad = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    client = _client({"/w": lambda: httpx.Response(200, content=b"weights",
                                                   headers={"Digest": f"sha-256={bad}"})})
    with pytest.raises(CLIError, match="checksum"):
        download.fetch_file(client, "https://h/w", tmp_path / "w", label="w")
    assert _leftovers(tmp_path) == []


def test_fetch_refuses_a_truncated_body_and_leaves_no_file(tmp_path: Path) -> None:
    client = _client({"/w": lambda: httpx.Response(
        200, headers={"Content-Length": "100"}, stream=httpx.ByteStream(b"x" * 40))})
    with pytest.raises(CLIError, match="got 40 of 100 bytes"):
        download.fetch_file(client, "https://h/w", tmp_path / "w", label="w")
    assert _leftovers(tmp_path) == []


def test_fetch_retries_a_reset_connection_then_gives_up_cleanly(tmp_path: Path) -> None:
    attempts: list[int] = []
    fake = FakeTime()

    def broken() -> httpx.Response:
        attempts.append(1)
        return httpx.Response(200, headers={"Content-Length": "100"},
                              stream=_BrokenStream(b"x" * 10))

    with pytest.raises(CLIError, match="ReadError"):
        download.fetch_file(_client({"/w": broken}), "https://h/w", tmp_path / "w", label="w",
                            runtime=fake.runtime)
    assert len(attempts) == 3 and _leftovers(tmp_path) == []
    assert fake.delays == [base_retry_delay(0, 0.5), base_retry_delay(1, 0.5)]


def test_fetch_reports_http_errors(tmp_path: Path) -> None:
    client = _client({"/w": lambda: httpx.Response(403, content=b"expired")})
    with pytest.raises(CLIError, match="HTTP 403"):
        download.fetch_file(client, "https://h/w", tmp_path / "w", label="w")
    assert _leftovers(tmp_path) == []


def test_fetch_all_refuses_unsafe_file_names(tmp_path: Path) -> None:
    client = _client({"/w": lambda: httpx.Response(200, content=b"x")})
    for name in ("../evil", "/etc/evil", "a/../../evil"):
        with pytest.raises(archive.UnsafePathError):
            download.fetch_all(client, {name: "https://h/w"}, tmp_path / "staging",
                          output.Progress(io.StringIO(), False))
    assert not (tmp_path / "evil").exists()


PATH = "tinker://run-1/external_weights/final"


def test_download_cleans_up_after_a_truncated_file(tmp_path: Path) -> None:
    client = _client({
        "/ok": lambda: httpx.Response(200, content=b"{}"),
        "/cut": lambda: httpx.Response(200, headers={"Content-Length": "50"},
                                       stream=httpx.ByteStream(b"x" * 7))})
    service = ExternalWeightsService({"a.json": "https://h/ok", "b.safetensors": "https://h/cut"})
    with pytest.raises(CLIError, match="cut short"):
        download.download_checkpoint(service, PATH, tmp_path / "out", http=client)  # type: ignore[arg-type]
    assert _leftovers(tmp_path / "out") == []


def _sequence(*answers: Callable[[], httpx.Response]) -> Callable[[], httpx.Response]:
    """A route that gives `answers` in turn, then repeats the last one."""
    queue = list(answers)

    def answer() -> httpx.Response:
        return (queue.pop(0) if len(queue) > 1 else queue[0])()

    return answer


WEIGHTS = b"w" * 64


def _whole() -> httpx.Response:
    digest = base64.b64encode(hashlib.sha256(WEIGHTS).digest()).decode()
    return httpx.Response(200, content=WEIGHTS, headers={"Repr-Digest": f"sha-256=:{digest}:"})


def _cut() -> httpx.Response:
    return httpx.Response(200, headers={"Content-Length": "64"}, stream=_BrokenStream(b"w" * 10))


@pytest.mark.parametrize("first, delays", [
    ([lambda: httpx.Response(503), _cut], [base_retry_delay(0, 0.5), base_retry_delay(1, 0.5)]),
    ([lambda: httpx.Response(502)], [base_retry_delay(0, 0.5)]),
    ([lambda: httpx.Response(429, headers={"retry-after": "4"})], [4.0]),
], ids=["5xx then a dropped connection", "502", "429 with Retry-After"])
def test_download_retries_transient_failures_with_the_shared_policy(
        tmp_path: Path, first: list[Callable[[], httpx.Response]], delays: list[float]) -> None:
    calls: list[int] = []
    route = _sequence(*first, _whole)

    def counted() -> httpx.Response:
        calls.append(1)
        return route()

    fake = FakeTime()
    service = ExternalWeightsService({"adapter_model.safetensors": "https://h/w"})
    result = download.download_checkpoint(  # type: ignore[arg-type]
        service, PATH, tmp_path / "out", http=_client({"/w": counted}), runtime=fake.runtime)
    assert (result.destination / "adapter_model.safetensors").read_bytes() == WEIGHTS
    assert len(calls) == len(first) + 1
    # The waits of the SDK's base policy: jittered backoff, or the server's Retry-After.
    assert fake.delays == delays
    assert _leftovers(tmp_path / "out") == [
        "run-1_external_weights_final", "run-1_external_weights_final/adapter_model.safetensors"]


@pytest.mark.parametrize("status", [404, 403])
def test_download_does_not_retry_a_404_or_403(tmp_path: Path, status: int) -> None:
    calls: list[int] = []

    def gone() -> httpx.Response:
        calls.append(status)
        return httpx.Response(status)

    fake = FakeTime()
    service = ExternalWeightsService({"a.json": "https://h/gone"})
    with pytest.raises(CLIError, match=f"HTTP {status}"):
        download.download_checkpoint(service, PATH, tmp_path / "out",  # type: ignore[arg-type]
                                     http=_client({"/gone": gone}), runtime=fake.runtime)
    assert calls == [status] and fake.delays == []
    assert _leftovers(tmp_path / "out") == []


def test_download_errors_hide_the_url_signature(tmp_path: Path) -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused {request.url}")

    client = httpx.Client(transport=httpx.MockTransport(refused))
    with pytest.raises(CLIError) as info:
        download.fetch_file(client, "https://h/w?X-Amz-Signature=abcdef0123456789", tmp_path / "w",
                            label="w", runtime=FakeTime().runtime)
    assert "abcdef0123456789" not in str(info.value) and "<redacted>" in str(info.value)


def test_download_force_replaces_only_after_success(tmp_path: Path) -> None:
    out = tmp_path / "out"
    target = out / "run-1_external_weights_final"
    target.mkdir(parents=True)
    (target / "old.txt").write_text("old")
    good = ExternalWeightsService({"a.json": "https://h/ok"})
    bad = ExternalWeightsService({"a.json": "https://h/gone"})
    client = _client({"/ok": lambda: httpx.Response(200, content=b"{}"),
                      "/gone": lambda: httpx.Response(404)})
    with pytest.raises(CLIError, match="already exists"):
        download.download_checkpoint(good, PATH, out, http=client)  # type: ignore[arg-type]
    with pytest.raises(CLIError, match="HTTP 404"):
        download.download_checkpoint(bad, PATH, out, force=True, http=client)  # type: ignore[arg-type]
    assert _leftovers(out) == ["run-1_external_weights_final",
                               "run-1_external_weights_final/old.txt"]
    result = download.download_checkpoint(good, PATH, out, force=True, http=client)  # type: ignore[arg-type]
    assert result.files == ["a.json"] and result.destination == target
    assert _leftovers(out) == ["run-1_external_weights_final",
                               "run-1_external_weights_final/a.json"]


# ----------------------------------------------------------------------------- parser, errors


def test_nested_commands_parse() -> None:
    parser = build_parser()
    args = parser.parse_args(["checkpoint", "delete", "tinker://r/weights/a",
                              "tinker://r/weights/b", "--yes", "--json"])
    assert args.tinker_paths == ["tinker://r/weights/a", "tinker://r/weights/b"]
    assert args.yes and args.json and args._prog == "tinkex checkpoint delete"
    args = parser.parse_args(["run", "list", "--limit", "0", "--base-url", "http://x"])
    assert (args.limit, args.base_url, args.api_key) == (0, "http://x", None)
    args = parser.parse_args(["sample", "--base-model", "m", "hi", "--stop", "a", "--stop",
                              "b"])
    assert args.stop == ["a", "b"] and args.model_path is None


@pytest.mark.parametrize("argv", [["checkpoint"], ["run", "nope"], ["run", "list", "--limit",
                                                                      "-1"],
                                  ["sample", "hi"], ["sample", "--base-model", "m",
                                                     "--model-path", "p", "hi"]])
def test_bad_command_lines_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage: tinkex" in capsys.readouterr().err


def test_a_command_is_a_leaf_or_a_group() -> None:
    with pytest.raises(ValueError, match="not both or neither"):
        Command("x", "help")
    with pytest.raises(ValueError, match="not both or neither"):
        Command("x", "help", run=lambda a: 0, subcommands=(Command("y", "h", run=lambda a: 0),))


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from tinkex_jax._shell._constants import PACKAGE_VERSION

    assert main(["version"]) == 0
    assert PACKAGE_VERSION in capsys.readouterr().out
    assert main(["version", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tinkex_jax"] == PACKAGE_VERSION


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_server_is_one_line_and_hides_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    assert main(["run", "list", "--base-url", url, "--api-key", "tml-very-secret"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("tinkex run list: cannot reach the Tinker server at " + url)
    assert "tinkex serve" in err and "tml-very-secret" not in err


def test_missing_key_and_bad_paths_are_usage_errors(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    assert main(["run", "list", "--base-url", "https://tinker.invalid"]) == 2
    assert "TINKER_API_KEY" in capsys.readouterr().err
    for argv in (["checkpoint", "info", "weights/a"], ["checkpoint", "download", "tinker://r/x"],
                 ["checkpoint", "delete", "tinker://r/weights/a", "oops", "--yes"],
                 ["checkpoint", "set-ttl", "tinker://r/weights/a"],
                 ["checkpoint", "set-ttl", "tinker://r/weights/a", "5", "--remove"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Fix:" in err and "Traceback" not in err


def test_delete_without_yes_on_a_pipe_refuses(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert main(["checkpoint", "delete", "tinker://r/weights/a"]) == 2
    assert "--yes" in capsys.readouterr().err


def test_progress_bar_draws_on_one_line_only_when_enabled() -> None:
    stream = io.StringIO()
    bar = output.Progress(stream, True)
    bar.update("w", 5, 10)
    bar.update("w", 10, 10)
    bar.done()
    text = stream.getvalue()
    assert text.count("\r") == 2 and text.endswith("100%  10 B / 10 B\n")
    quiet = io.StringIO()
    silent = output.Progress(quiet, False)
    silent.update("w", 5, 10)
    silent.done()
    assert quiet.getvalue() == ""
