"""``tinkex checkpoint push-hf`` end to end: a checkpoint of the real local backend, exported as
a PEFT adapter with a model card and uploaded by ``huggingface_hub`` to a stand-in of the Hub's
upload API on 127.0.0.1 (``HF_ENDPOINT``), in a separate ``tinkex`` process. No network.

The stand-in answers exactly the calls ``HfApi.whoami``, ``create_repo``, ``create_branch``,
``hf_hub_download`` (the README check) and ``upload_folder`` make: ``GET /api/whoami-v2``,
``POST /api/repos/create``, ``POST /api/models/<repo>/branch/<rev>``, ``HEAD / GET
/<repo>/resolve/<rev>/<file>``, ``POST /api/validate-yaml``, ``POST
/api/models/<repo>/preupload/<rev>`` (every file answered as a regular, non-LFS upload) and
``POST /api/models/<repo>/commit/<rev>`` (the files base64 in an NDJSON body). Anything else is
recorded and answered 404.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

import tinkex_jax
from tinkex_jax.cli import main
from tinkex_jax.local import LocalServer, serve

REPO = Path(__file__).resolve().parents[2]
TOKEN = "hf_standin_write_token_0123456789"


@dataclass
class HubRepo:
    request: dict[str, Any]
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    commits: list[dict[str, Any]] = field(default_factory=list)


class HubStandIn:
    """The Hub's upload API, in memory, on a free 127.0.0.1 port."""

    def __init__(self, user: str = "tester") -> None:
        self.user = user
        self.repos: dict[str, HubRepo] = {}
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def handle_any(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with hub.lock:
                    hub.calls.append((self.command, unquote(url.path)))
                    if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                        status, payload, headers = 401, {"error": "Invalid credentials"}, {}
                    else:
                        status, payload, headers = hub.answer(
                            self.command, unquote(url.path), parse_qs(url.query), body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream"
                                 if isinstance(payload, bytes) else "application/json")
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = handle_any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, method: str, path: str, query: dict[str, list[str]], body: bytes
               ) -> tuple[int, Any, dict[str, str]]:
        if (method, path) == ("GET", "/api/whoami-v2"):
            return 200, {"type": "user", "name": self.user}, {}
        if (method, path) == ("POST", "/api/repos/create"):
            request = json.loads(body)
            repo_id = f"{request.get('organization') or self.user}/{request['name']}"
            if repo_id in self.repos:
                return 409, {"error": "You already created this model repo",
                             "url": f"{self.endpoint}/{repo_id}"}, {}
            self.repos[repo_id] = HubRepo(request)
            return 200, {"url": f"{self.endpoint}/{repo_id}"}, {}
        if (method, path) == ("POST", "/api/validate-yaml"):
            return 200, {"errors": [], "warnings": []}, {}
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit|branch)/(.+)", path)
        if match and method == "POST":
            return self._repo_call(*match.groups(), query, body)
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/discussions(?:/(\d+))?", path)
        if match and match.group(1) in self.repos:
            return self._pull_request(method, match.group(1), match.group(2), body)
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if match and method in ("GET", "HEAD"):
            repo_id, revision, name = match.groups()
            repo = self.repos.get(repo_id)
            files = repo.branches.get(revision) if repo else None
            if files is None or name not in files:
                return 404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}
            etag = hashlib.sha1(files[name]).hexdigest()
            return 200, files[name], {"ETag": f'"{etag}"', "X-Repo-Commit": "0" * 40}
        return 404, {"error": f"stand-in has no {method} {path}"}, {}

    def _pull_request(self, method: str, repo_id: str, number: str | None, body: bytes
                      ) -> tuple[int, Any, dict[str, str]]:
        """Open a pull request (a ``refs/pr/<n>`` branch off main), or describe one."""
        repo = self.repos[repo_id]
        if method == "POST" and number is None:
            assert json.loads(body)["pullRequest"] is True
            num = 1 + sum(name.startswith("refs/pr/") for name in repo.branches)
            repo.branches[f"refs/pr/{num}"] = dict(repo.branches["main"])
            return 200, {"num": num, "url": f"{self.endpoint}/{repo_id}/discussions/{num}"}, {}
        if method == "GET" and number is not None and f"refs/pr/{number}" in repo.branches:
            return 200, {"title": "upload", "num": int(number), "author": {"name": self.user},
                         "createdAt": "2026-01-01T00:00:00.000Z", "status": "draft",
                         "repo": {"name": repo_id, "type": "model"}, "isPullRequest": True,
                         "events": [], "changes": {"base": "refs/heads/main"},
                         "filesWithConflicts": [], "diff": ""}, {}
        return 404, {"error": "Discussion not found"}, {}

    def _repo_call(self, repo_id: str, action: str, revision: str,
                   query: dict[str, list[str]], body: bytes
                   ) -> tuple[int, Any, dict[str, str]]:
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        if action == "branch":
            if revision in repo.branches:
                return 409, {"error": "Reference already exists"}, {}
            repo.branches[revision] = dict(repo.branches["main"])
            return 200, {}, {}
        if revision not in repo.branches:
            return 404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"}
        if action == "preupload":
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                    "shouldIgnore": False, "oid": None}
                                   for f in json.loads(body)["files"]]}, {}
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        assert lines[0]["key"] == "header"
        files = {}
        for item in lines[1:]:
            assert item["key"] == "file" and item["value"]["encoding"] == "base64", item
            files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
        pr = "create_pr" in query or revision.startswith("refs/pr/")
        if "create_pr" in query:  # older huggingface_hub: the commit opens the pull request
            revision = f"refs/pr/{1 + sum(n.startswith('refs/pr/') for n in repo.branches)}"
            repo.branches[revision] = dict(repo.branches["main"])
        repo.branches[revision].update(files)
        repo.commits.append({"revision": revision, "summary": lines[0]["value"]["summary"],
                             "files": files, "pr": pr})
        oid = hashlib.sha1(body).hexdigest()
        return 200, {"commitUrl": f"{self.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid,
                     "pullRequestUrl": f"{self.endpoint}/{repo_id}/discussions/1" if pr
                     else None}, {}


@dataclass
class World:
    server: LocalServer
    run_id: str
    state_path: str
    sampler_path: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with serve(tmp_path_factory.mktemp("push-hf-data"), base_models=["tinkex-jax/tiny"]
               ) as server:
        service = tinkex_jax.ServiceClient(base_url=server.base_url, api_key=server.api_key,
                                           telemetry=False)
        training = service.create_lora_training_client("tinkex-jax/tiny", rank=4).result()
        state = training.save_state("final").result().path
        sampler = training.save_weights_for_sampler("final-sampler").result().path
        yield World(server, training.model_id, state, sampler)
        service.close().result(timeout=60)


@pytest.fixture
def hub() -> Iterator[HubStandIn]:
    stand_in = HubStandIn()
    yield stand_in
    stand_in.close()


def tinkex(world: World, hub: HubStandIn, tmp_path: Path, *argv: str,
           token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    """Run ``tinkex`` in its own process, its Hub the stand-in and its home empty."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TINKER_"))}
    env.update(PYTHONPATH=str(REPO), HOME=str(tmp_path / "home"), HF_HOME=str(tmp_path / "hf"),
               HF_ENDPOINT=hub.endpoint, HF_HUB_DISABLE_TELEMETRY="1",
               TINKER_BASE_URL=world.server.base_url, TINKER_API_KEY=world.server.api_key)
    if token is not None:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "tinkex_jax.cli", *argv], env=env,
                          capture_output=True, text=True, timeout=300)


def front_matter(readme: str) -> dict[str, Any]:
    """The YAML front matter of a model card (the flat keys and lists it uses)."""
    assert readme.startswith("---\n")
    block = readme.split("---\n")[1]
    data: dict[str, Any] = {}
    key = ""
    for line in block.splitlines():
        if line.startswith("- "):
            data[key].append(line[2:])
        else:
            key, _, value = line.partition(":")
            data[key] = value.strip() or []
    return data


@pytest.mark.slow
def test_push_builds_a_peft_repo_with_a_model_card(world: World, hub: HubStandIn,
                                                   tmp_path: Path) -> None:
    from safetensors.numpy import load

    done = tinkex(world, hub, tmp_path, "checkpoint", "push-hf", world.state_path, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    repo_id = f"tester/tinker-tiny-{world.run_id.replace(':', '-')}"
    assert report["repo_id"] == repo_id and report["base_model"] == "tinkex-jax/tiny"
    assert report["public"] is False and report["revision"] is None
    assert report["files"] == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert report["commit_url"].startswith(f"{hub.endpoint}/{repo_id}/commit/")

    repo = hub.repos[repo_id]
    assert repo.request["visibility"] == "private"
    files = repo.branches["main"]
    assert sorted(files) == report["files"]
    card = front_matter(files["README.md"].decode())
    assert card["base_model"] == "tinkex-jax/tiny" and card["library_name"] == "peft"
    assert {"peft", "lora", "base_model:adapter:tinkex-jax/tiny"} <= set(card["tags"])
    assert card["tinker_path"] == world.state_path
    assert f'from_pretrained("{repo_id}")' in files["README.md"].decode()
    config = json.loads(files["adapter_config.json"])
    assert config["peft_type"] == "LORA" and config["r"] == 4
    assert config["base_model_name_or_path"] == "tinkex-jax/tiny"
    tensors = load(files["adapter_model.safetensors"])
    assert tensors and all(".lora_A." in n or ".lora_B." in n for n in tensors)

    # the same adapter as `checkpoint download` gives
    got = tinkex(world, hub, tmp_path, "checkpoint", "download", world.state_path, "-o",
                 str(tmp_path / "dl"), "--json")
    assert got.returncode == 0, got.stderr
    downloaded = Path(json.loads(got.stdout)["destination"])
    assert (downloaded / "adapter_config.json").read_bytes() == files["adapter_config.json"]
    assert load((downloaded / "adapter_model.safetensors").read_bytes()).keys() == tensors.keys()

    calls = [f"{m} {p}" for m, p in hub.calls]
    for expected in ("GET /api/whoami-v2", "POST /api/repos/create", "POST /api/validate-yaml",
                     f"POST /api/models/{repo_id}/preupload/main",
                     f"POST /api/models/{repo_id}/commit/main"):
        assert expected in calls, calls
    assert TOKEN not in done.stdout + done.stderr

    # another checkpoint never overwrites this repository's card
    refused = tinkex(world, hub, tmp_path, "checkpoint", "push-hf", world.sampler_path,
                     "--repo", repo_id)
    assert refused.returncode == 1 and refused.stdout == ""
    assert "already holds another checkpoint" in refused.stderr and world.state_path in (
        refused.stderr)
    assert refused.stderr.count("\n") == 1 and "Fix:" in refused.stderr
    assert len(repo.commits) == 1
    # the same checkpoint again is fine (a new commit of the same files)
    again = tinkex(world, hub, tmp_path, "checkpoint", "push-hf", world.state_path)
    assert again.returncode == 0, again.stderr
    assert f"Uploaded {world.state_path} to {repo_id} (private)" in again.stdout
    assert len(repo.commits) == 2


@pytest.mark.slow
def test_push_options_reach_the_hub(world: World, hub: HubStandIn, tmp_path: Path) -> None:
    done = tinkex(world, hub, tmp_path, "checkpoint", "push-hf", world.sampler_path, "-r",
                  "acme/adapter", "--public", "--revision", "v1", "--commit-message",
                  "first cut", "--no-model-card", "--allow-pattern", "adapter_*",
                  "--ignore-pattern", "*.json", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["files"] == ["adapter_model.safetensors"] and report["revision"] == "v1"
    repo = hub.repos["acme/adapter"]
    assert repo.request["visibility"] == "public" and repo.request["organization"] == "acme"
    assert repo.branches["main"] == {} and list(repo.branches["v1"]) == [
        "adapter_model.safetensors"]
    assert repo.commits[0]["summary"] == "first cut"

    pr = tinkex(world, hub, tmp_path, "-f", "json", "checkpoint", "push-hf",
                world.sampler_path, "-r", "acme/adapter", "--create-pr")
    assert pr.returncode == 0, pr.stderr
    assert json.loads(pr.stdout)["pr_url"] == f"{hub.endpoint}/acme/adapter/discussions/1"
    assert repo.commits[-1]["pr"] is True and repo.branches["main"] == {}
    assert sorted(repo.branches["refs/pr/1"]) == ["README.md", "adapter_config.json",
                                                  "adapter_model.safetensors"]


def test_push_without_a_valid_hub_token_says_what_to_do(world: World, hub: HubStandIn,
                                                        tmp_path: Path) -> None:
    missing = tinkex(world, hub, tmp_path, "checkpoint", "push-hf", world.state_path,
                     token=None)
    assert missing.returncode == 1 and missing.stdout == ""
    assert "not logged in to the Hugging Face Hub" in missing.stderr
    assert "`hf auth login`" in missing.stderr and "HF_TOKEN" in missing.stderr
    wrong = tinkex(world, hub, tmp_path, "checkpoint", "push-hf", world.state_path,
                   token="hf_wrong_token_value")
    assert wrong.returncode == 1 and "HTTP 401" in wrong.stderr
    assert "hf_wrong_token_value" not in wrong.stderr
    for result in (missing, wrong):
        assert result.stderr.count("\n") == 1 and "Fix:" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert hub.repos == {}


def test_push_names_the_extra_when_huggingface_hub_is_missing(
        world: World, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    code = main(["checkpoint", "push-hf", world.state_path, "--base-url",
                 world.server.base_url, "--api-key", world.server.api_key])
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "needs the huggingface_hub package" in err and "tinkex-jax[hf]" in err


def test_push_refuses_bad_arguments_before_anything_is_sent(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    base = ("--base-url", world.server.base_url, "--api-key", world.server.api_key)
    for argv in (["checkpoint", "push-hf", "not-a-path", *base],
                 ["checkpoint", "push-hf", world.state_path, "--create-pr", "--revision", "x",
                  *base]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Fix:" in err
    missing = world.state_path.rsplit("/", 1)[0] + "/missing"
    assert main(["checkpoint", "push-hf", missing, *base]) == 1
    assert f"checkpoint {missing} was not found" in capsys.readouterr().err
