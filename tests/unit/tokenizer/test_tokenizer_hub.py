"""Hugging Face ids: mapping, the local HF cache, offline mode, and downloads (mocked), with
the retries of the SDK's shared download path paced by a fake clock."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.support.tokenizer_helpers import kimi_files, word_level_hf, write_hf_dir
from tinkex_jax._shell import FakeTime
from tinkex_jax._shell._retry import base_retry_delay
from tinkex_jax.errors import ValidationError
from tinkex_jax.tokenizer import (
    LLAMA3_TOKENIZER_ID,
    TokenizerDownloadError,
    get_tokenizer,
    hf_hub_cache_dir,
    hub_tokenizer_id,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


# -- id mapping -------------------------------------------------------------------------------

@pytest.mark.parametrize("given, expected", [
    ("Qwen/Qwen3-8B", ("Qwen/Qwen3-8B", None)),
    ("Qwen/Qwen3-8B:peft:123", ("Qwen/Qwen3-8B", None)),
    ("meta-llama/Llama-3.1-8B-Instruct", (LLAMA3_TOKENIZER_ID, None)),
    ("meta-llama/Llama-3.2-1B:base", (LLAMA3_TOKENIZER_ID, None)),
    ("meta-llama/Llama-2-7b-hf", ("meta-llama/Llama-2-7b-hf", None)),
    ("Qwen/Qwen3-30B-A3B/fp8", ("Qwen/Qwen3-30B-A3B", None)),
    ("moonshotai/Kimi-K2-Thinking", ("moonshotai/Kimi-K2-Thinking",
                                     "612681931a8c906ddb349f8ad0f582cb552189cd")),
    ("moonshotai/Kimi-K2.5-Text-Only", ("moonshotai/Kimi-K2.5",
                                        "4d01dfe0332d63057c186e0b262165819efb6611")),
    ("gpt2", ("gpt2", None)),
])
def test_hub_tokenizer_id(given, expected):
    assert hub_tokenizer_id(given) == expected


def test_explicit_revision_beats_pinned():
    assert hub_tokenizer_id("moonshotai/Kimi-K2.6", "main") == ("moonshotai/Kimi-K2.6", "main")


def test_model_name_fallback(tmp_path):
    _cache_entry(tmp_path / "hub", LLAMA3_TOKENIZER_ID)
    tok = get_tokenizer(None, model_name="meta-llama/Llama-3.1-8B", cache_dir=tmp_path / "hub",
                        offline=True)
    assert tok.name_or_path == LLAMA3_TOKENIZER_ID


def test_tml_models_are_refused():
    with pytest.raises(ValidationError, match="not on Hugging Face"):
        get_tokenizer("thinkingmachines/some-model", offline=True)


# -- the local cache ------------------------------------------------------------------------

def _cache_entry(root: Path, repo: str, commit: str = COMMIT, ref: str | None = "main",
                 config: dict | None = None) -> Path:
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    snapshot = write_hf_dir(repo_dir / "snapshots" / commit, config=config)
    if ref is not None:
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / ref).write_text(commit)
    return snapshot


def test_cache_dir_resolution(monkeypatch, tmp_path):
    assert hf_hub_cache_dir() == tmp_path / "home" / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hf_hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    assert hf_hub_cache_dir() == tmp_path / "hfhome" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hubcache"))
    assert hf_hub_cache_dir() == tmp_path / "hubcache"
    assert hf_hub_cache_dir(tmp_path / "explicit") == tmp_path / "explicit"


def test_cached_via_hf_home(monkeypatch, tmp_path):
    _cache_entry(tmp_path / "hfhome" / "hub", "org/model", config={"eos_token": "</s>"})
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = get_tokenizer("org/model")
    assert tok.name_or_path == "org/model" and tok.eos_token == "</s>"
    assert get_tokenizer("org/model") is tok
    assert get_tokenizer("org/model:sampler-weights") is tok
    assert get_tokenizer("org/model/variant") is tok


def test_cached_via_hf_hub_cache_and_revisions(monkeypatch, tmp_path):
    root = tmp_path / "hubcache"
    _cache_entry(root, "org/model", COMMIT, ref="main")
    _cache_entry(root, "org/model", OTHER_COMMIT, ref="v2")
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    main = get_tokenizer("org/model", offline=True)
    v2 = get_tokenizer("org/model", revision="v2", offline=True)
    by_commit = get_tokenizer("org/model", revision=OTHER_COMMIT, offline=True)
    assert main is not v2 and v2 is not by_commit  # cached per revision
    assert v2.encode("cat") == by_commit.encode("cat")


def test_offline_not_cached_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = []
    transport = httpx.MockTransport(lambda r: calls.append(r) or httpx.Response(500))
    with pytest.raises(ValidationError) as info:
        get_tokenizer("org/absent", cache_dir=tmp_path / "c", http_transport=transport)
    message = str(info.value)
    assert "'org/absent'" in message and "'main'" in message
    assert str(tmp_path / "c" / "models--org--absent") in message
    assert "HF_HOME" in message and "local" in message and "HF_HUB_OFFLINE" in message
    assert calls == []  # offline means no request at all
    assert not (tmp_path / "c").exists()


def test_offline_argument_beats_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(ValidationError, match="not cached"):
        get_tokenizer("org/absent", cache_dir=tmp_path, offline=True)


# -- downloads ------------------------------------------------------------------------------

def _repo_files(tmp_path: Path) -> dict[str, bytes]:
    d = write_hf_dir(tmp_path / "remote", word_level_hf(),
                     config={"eos_token": "</s>", "chat_template": "<|im_start|>"},
                     special_map={"bos_token": "<s>"})
    return {p.name: p.read_bytes() for p in d.iterdir()}


class _CutStream(httpx.SyncByteStream):
    """Some bytes, then a connection reset in the middle of the body."""

    def __iter__(self):
        yield b'{"trunc'
        raise httpx.ReadError("connection reset by peer")


class FakeHub:
    """A MockTransport handler that serves one repo like huggingface.co (with a CDN hop).

    `fail` / `disconnect` break a file for good; `flaky` gives a file's first answers: an
    HTTP status, ``"drop"`` (no answer) or ``"cut"`` (the body breaks off), then it works.
    """

    def __init__(self, files: dict[str, bytes], *, fail: dict[str, int] | None = None,
                 disconnect: set[str] = frozenset(), commit: str = COMMIT,
                 flaky: dict[str, list[int | str]] | None = None) -> None:
        self.files = files
        self.fail = fail or {}
        self.disconnect = disconnect
        self.commit = commit
        self.flaky = {name: list(outcomes) for name, outcomes in (flaky or {}).items()}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.host == "cdn.example":
            name = request.url.path.rsplit("/", 1)[1]
            return httpx.Response(200, content=self.files[name])
        parts = request.url.path.strip("/").split("/")
        repo, name = "/".join(parts[:2]), parts[-1]
        assert parts[2] == "resolve" and repo == "org/model"
        if name in self.disconnect:
            raise httpx.ConnectError("connection reset", request=request)
        if self.flaky.get(name):
            outcome = self.flaky[name].pop(0)
            if outcome == "drop":
                raise httpx.ConnectError("connection reset", request=request)
            if outcome == "cut":
                return httpx.Response(200, headers={"x-repo-commit": self.commit},
                                      stream=_CutStream())
            return httpx.Response(int(outcome), text="busy")
        if name in self.fail:
            return httpx.Response(self.fail[name], text="nope")
        if name not in self.files:
            return httpx.Response(404, headers={"x-error-code": "EntryNotFound"})
        headers = {"x-repo-commit": self.commit}
        if name == "tokenizer.json":  # big files are redirected to the CDN
            return httpx.Response(302, headers={**headers,
                                  "location": f"https://cdn.example/blobs/{name}"})
        return httpx.Response(200, headers=headers, content=self.files[name])


def _all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_download_into_cache_layout(tmp_path):
    hub = FakeHub(_repo_files(tmp_path))
    cache = tmp_path / "cache"
    tok = get_tokenizer("org/model", cache_dir=cache, http_transport=httpx.MockTransport(hub))
    assert tok.eos_token == "</s>" and tok.bos_token == "<s>" and tok.renderer_name == "chatml"
    repo = "models--org--model"
    assert _all_files(cache) == [
        repo, f"{repo}/refs", f"{repo}/refs/main", f"{repo}/snapshots",
        f"{repo}/snapshots/{COMMIT}",
        f"{repo}/snapshots/{COMMIT}/special_tokens_map.json",
        f"{repo}/snapshots/{COMMIT}/tokenizer.json",
        f"{repo}/snapshots/{COMMIT}/tokenizer_config.json",
    ]
    assert (cache / repo / "refs" / "main").read_text() == COMMIT
    # The first request uses the revision; later ones pin the commit it resolved to.
    hub_paths = [r.url.path for r in hub.requests if r.url.host == "huggingface.co"]
    assert hub_paths[0] == "/org/model/resolve/main/tokenizer.json"
    assert all(f"/resolve/{COMMIT}/" in p for p in hub_paths[1:])
    # Loaded again from the cache in a fresh process state, offline, with no requests.
    from tinkex_jax.tokenizer import clear_tokenizer_cache

    clear_tokenizer_cache()
    n = len(hub.requests)
    again = get_tokenizer("org/model", cache_dir=cache, offline=True)
    assert again.encode("hello cat") == tok.encode("hello cat") and len(hub.requests) == n


def test_token_is_sent_to_the_hub_only(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_env_secret")
    hub = FakeHub(_repo_files(tmp_path))
    get_tokenizer("org/model", cache_dir=tmp_path / "c", http_transport=httpx.MockTransport(hub))
    for request in hub.requests:
        auth = request.headers.get("authorization")
        if request.url.host == "huggingface.co":
            assert auth == "Bearer hf_env_secret"
        else:  # httpx drops credentials on a redirect to another host
            assert auth is None


def test_token_argument_and_token_file(tmp_path, monkeypatch):
    hub = FakeHub(_repo_files(tmp_path))
    get_tokenizer("org/model", cache_dir=tmp_path / "c1", token="hf_arg",
                  http_transport=httpx.MockTransport(hub))
    assert hub.requests[0].headers["authorization"] == "Bearer hf_arg"
    (tmp_path / "hfhome").mkdir()
    (tmp_path / "hfhome" / "token").write_text("hf_from_file\n")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    hub.requests.clear()
    get_tokenizer("org/model", cache_dir=tmp_path / "c2", http_transport=httpx.MockTransport(hub))
    assert hub.requests[0].headers["authorization"] == "Bearer hf_from_file"


def test_hf_endpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example/")
    seen = []

    def handler(request):
        seen.append(str(request.url))
        return httpx.Response(503)

    with pytest.raises(TokenizerDownloadError, match="HTTP 503"):
        get_tokenizer("org/model", cache_dir=tmp_path, http_transport=httpx.MockTransport(handler),
                      _runtime=FakeTime().runtime)
    # A 503 is retried (3 tries in all), always at the mirror.
    assert seen == ["https://mirror.example/org/model/resolve/main/tokenizer.json"] * 3


@pytest.mark.parametrize("failure", [
    {"fail": {"tokenizer_config.json": 500}},
    {"disconnect": {"special_tokens_map.json"}},
    {"fail": {"tokenizer.json": 401}},
    {"disconnect": {"tokenizer.json"}},
])
def test_failed_download_leaves_nothing(tmp_path, monkeypatch, failure):
    monkeypatch.setenv("HF_TOKEN", "hf_do_not_leak")
    hub = FakeHub(_repo_files(tmp_path), **failure)
    cache = tmp_path / "cache"
    with pytest.raises(TokenizerDownloadError) as info:
        get_tokenizer("org/model", cache_dir=cache, http_transport=httpx.MockTransport(hub),
                      _runtime=FakeTime().runtime)
    assert _all_files(cache) == [] and not cache.exists()
    message = str(info.value)
    assert "hf_do_not_leak" not in message and "hf_do_not_leak" not in repr(info.value)
    assert "Fix:" in message and "resolve" in message
    assert isinstance(info.value, OSError)
    # Nothing was cached in memory either: a later working download succeeds.
    ok = FakeHub(_repo_files(tmp_path))
    assert get_tokenizer("org/model", cache_dir=cache,
                         http_transport=httpx.MockTransport(ok)).eos_token == "</s>"


def test_failed_download_keeps_existing_cache_dirs(tmp_path):
    cache = tmp_path / "cache"
    _cache_entry(cache, "other/repo")
    before = _all_files(cache)
    hub = FakeHub(_repo_files(tmp_path), fail={"tokenizer_config.json": 500})
    with pytest.raises(TokenizerDownloadError):
        get_tokenizer("org/model", cache_dir=cache, http_transport=httpx.MockTransport(hub),
                      _runtime=FakeTime().runtime)
    assert _all_files(cache) == before


def test_gated_repo_message(tmp_path):
    hub = FakeHub(_repo_files(tmp_path), fail={"tokenizer.json": 403})
    with pytest.raises(TokenizerDownloadError, match=r"gated.*HF_TOKEN"):
        get_tokenizer("org/model", cache_dir=tmp_path / "c", http_transport=httpx.MockTransport(hub))


def test_repo_not_found(tmp_path):
    def handler(request):
        return httpx.Response(404, headers={"x-error-code": "RepoNotFound"})

    with pytest.raises(TokenizerDownloadError, match="does not exist"):
        get_tokenizer("org/model", cache_dir=tmp_path, http_transport=httpx.MockTransport(handler))


def test_repo_without_tokenizer_files(tmp_path):
    hub = FakeHub({"config.json": b"{}"})
    with pytest.raises(TokenizerDownloadError, match=r"neither tokenizer\.json nor tiktoken\.model"):
        get_tokenizer("org/model", cache_dir=tmp_path / "c", http_transport=httpx.MockTransport(hub))
    assert not (tmp_path / "c").exists()


def test_download_kimi_style_repo(tmp_path):
    files = {p.name: p.read_bytes() for p in kimi_files(tmp_path / "remote").iterdir()}
    hub = FakeHub(files)
    tok = get_tokenizer("org/model", cache_dir=tmp_path / "c",
                        http_transport=httpx.MockTransport(hub))
    assert tok.backend == "tiktoken" and tok.eos_token == "[EOS]"
    snapshot = tmp_path / "c" / "models--org--model" / "snapshots" / COMMIT
    assert sorted(p.name for p in snapshot.iterdir()) == ["tiktoken.model",
                                                           "tokenizer_config.json"]


def test_download_without_commit_header_uses_revision(tmp_path):
    files = _repo_files(tmp_path)

    def handler(request):
        name = request.url.path.rsplit("/", 1)[1]
        return httpx.Response(200, content=files[name]) if name in files else httpx.Response(404)

    cache = tmp_path / "c"
    get_tokenizer("org/model", revision="v1", cache_dir=cache,
                  http_transport=httpx.MockTransport(handler))
    assert (cache / "models--org--model" / "snapshots" / "v1" / "tokenizer.json").is_file()
    from tinkex_jax.tokenizer import clear_tokenizer_cache

    clear_tokenizer_cache()
    assert get_tokenizer("org/model", revision="v1", cache_dir=cache, offline=True)


def test_config_json_is_valid_after_download(tmp_path):
    hub = FakeHub(_repo_files(tmp_path))
    get_tokenizer("org/model", cache_dir=tmp_path / "c", http_transport=httpx.MockTransport(hub))
    snapshot = tmp_path / "c" / "models--org--model" / "snapshots" / COMMIT
    assert json.loads((snapshot / "tokenizer_config.json").read_text())["eos_token"] == "</s>"


def test_garbage_download_is_not_cached(tmp_path):
    files = {"tokenizer.json": b"<html>captive portal</html>"}
    hub = FakeHub(files)
    cache = tmp_path / "cache"
    with pytest.raises(ValidationError, match=r"tokenizer\.json"):
        get_tokenizer("org/model", cache_dir=cache, http_transport=httpx.MockTransport(hub))
    assert not cache.exists()


def test_revision_with_slash_and_bad_revision(tmp_path):
    hub = FakeHub(_repo_files(tmp_path))
    cache = tmp_path / "c"
    get_tokenizer("org/model", revision="refs/pr/1", cache_dir=cache,
                  http_transport=httpx.MockTransport(hub))
    assert (cache / "models--org--model" / "refs" / "refs" / "pr" / "1").read_text() == COMMIT
    assert hub.requests[0].url.raw_path == b"/org/model/resolve/refs%2Fpr%2F1/tokenizer.json"
    with pytest.raises(ValidationError, match="revision"):
        get_tokenizer("org/model", revision="../../etc", cache_dir=cache, offline=True)


# -- retries: the SDK's shared download path ------------------------------------------------

def _hub_paths(hub: FakeHub, name: str) -> list[str]:
    return [r.url.path for r in hub.requests
            if r.url.host == "huggingface.co" and r.url.path.endswith("/" + name)]


@pytest.mark.parametrize("outcomes", [[503], ["drop"], ["cut"], [429, 502]],
                         ids=["5xx", "dropped connection", "body cut off", "429 then 502"])
def test_transient_failures_are_retried_with_the_shared_policy(tmp_path, monkeypatch, caplog,
                                                               outcomes):
    monkeypatch.setenv("HF_TOKEN", "hf_retry_secret")
    fake = FakeTime()
    hub = FakeHub(_repo_files(tmp_path), flaky={"tokenizer_config.json": outcomes})
    cache = tmp_path / "cache"
    tok = get_tokenizer("org/model", cache_dir=cache, http_transport=httpx.MockTransport(hub),
                        _runtime=fake.runtime)
    assert tok.eos_token == "</s>"  # the config that failed at first arrived whole
    assert len(_hub_paths(hub, "tokenizer_config.json")) == len(outcomes) + 1
    # The waits are the base policy's (jittered exponential backoff, FakeTime's u = 0.5).
    assert fake.delays == [base_retry_delay(k, 0.5) for k in range(len(outcomes))]
    snapshot = cache / "models--org--model" / "snapshots" / COMMIT
    assert json.loads((snapshot / "tokenizer_config.json").read_text())["eos_token"] == "</s>"
    assert not list((cache / "models--org--model").glob(".tmp-*"))
    assert "Retrying the download of tokenizer_config.json" in caplog.text
    assert "hf_retry_secret" not in caplog.text


def test_retry_after_is_honoured(tmp_path):
    fake = FakeTime()
    files = _repo_files(tmp_path)
    answers = [httpx.Response(429, headers={"retry-after": "7"})]

    def handler(request):
        if answers:
            return answers.pop(0)
        return FakeHub(files)(request)

    get_tokenizer("org/model", cache_dir=tmp_path / "c", http_transport=httpx.MockTransport(handler),
                  _runtime=fake.runtime)
    assert fake.delays == [7.0]


@pytest.mark.parametrize("answer", [
    httpx.Response(404, headers={"x-error-code": "RepoNotFound"}),
    httpx.Response(404, headers={"x-error-code": "EntryNotFound"}),
    httpx.Response(403)])
def test_404_and_403_are_not_retried(tmp_path, answer):
    fake = FakeTime()
    seen = []

    def handler(request):
        seen.append(request.url.path)
        return answer

    with pytest.raises(TokenizerDownloadError):
        get_tokenizer("org/model", cache_dir=tmp_path / "c",
                      http_transport=httpx.MockTransport(handler), _runtime=fake.runtime)
    assert fake.delays == []
    # One request per file asked for: a 404 of tokenizer.json moves on to tiktoken.model.
    assert len(seen) == len(set(seen))


def test_retries_give_up_with_a_redacted_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_in_messages")
    fake = FakeTime()

    def handler(request):
        raise httpx.ConnectError(f"refused for {request.headers['authorization']}")

    with pytest.raises(TokenizerDownloadError) as info:
        get_tokenizer("org/model", cache_dir=tmp_path / "c",
                      http_transport=httpx.MockTransport(handler), _runtime=fake.runtime)
    message = str(info.value)
    assert "ConnectError: refused for Bearer <redacted>" in message
    assert "hf_not_in_messages" not in message and len(fake.delays) == 2
    assert not (tmp_path / "c").exists()
