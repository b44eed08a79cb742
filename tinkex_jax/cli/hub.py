"""``tinkex checkpoint push-hf`` without the command line: turn a checkpoint into a PEFT
adapter repository (adapter files and a model card) and upload it to the Hugging Face Hub.

For: the adapter directory (downloaded with `tinkex_jax.cli.download`: the server exports the
checkpoint in PEFT format, ``adapter_config.json`` and ``adapter_model.safetensors``), the
model card (``README.md`` with YAML front matter: ``base_model``, ``library_name: peft``,
``tags``), the default repository name, and the upload through ``huggingface_hub``
(``create_repo`` then ``upload_folder``). ``huggingface_hub`` is an optional dependency
(``pip install 'tinkex-jax[hf]'``), imported only here and only when a push runs; its
endpoint is ``HF_ENDPOINT`` (the Hub by default) and its token ``HF_TOKEN`` or the one
``hf auth login`` stored. Not for: parsing arguments or printing
(`tinkex_jax.cli.commands.checkpoint`), or talking to the Tinker server beyond the download
and one ``weights_info`` call.

Example:
    >>> print(model_card("tinker://run-1/weights/final", "ada/tinker-tiny-run-1",
    ...                  AdapterFacts("Qwen/Qwen3-8B", 8, 16.0, ["q_proj", "v_proj"])))
    ... # doctest: +ELLIPSIS
    ---
    base_model: Qwen/Qwen3-8B
    library_name: peft
    tags:
    - tinker
    - tinkex-jax
    - peft
    - lora
    - base_model:adapter:Qwen/Qwen3-8B
    tinker_path: tinker://run-1/weights/final
    ---
    <BLANKLINE>
    # ada/tinker-tiny-run-1
    ...
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .arguments import parse_checkpoint_path
from .download import download_checkpoint
from .errors import CLIError, one_line

if TYPE_CHECKING:
    from ..clients import ServiceClient

__all__ = ["AdapterFacts", "HubUpload", "adapter_facts", "default_repo_name", "model_card",
           "push_to_hub"]

_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_INSTALL_FIX = ("Fix: install it with `pip install 'tinkex-jax[hf]'` (or `pip install "
                "huggingface_hub`), then run the command again.")


@dataclass(frozen=True)
class AdapterFacts:
    """What the model card says about an adapter (None: unknown)."""

    base_model: str | None
    rank: int | None
    alpha: float | None
    target_modules: list[str]


@dataclass(frozen=True)
class HubUpload:
    """What ``checkpoint push-hf`` uploaded, and where."""

    tinker_path: str
    repo_id: str
    repo_url: str
    revision: str | None
    public: bool
    files: list[str]
    commit_url: str | None
    pr_url: str | None
    base_model: str | None


def adapter_facts(directory: Path) -> AdapterFacts:
    """Read ``adapter_config.json`` of a PEFT adapter directory.

    Raises:
        CLIError: the directory holds no PEFT adapter (config and weights).

    Example:
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "adapter_config.json").write_text(json.dumps(
        ...     {"base_model_name_or_path": "m", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}))
        >>> _ = (d / "adapter_model.safetensors").write_bytes(b"x")
        >>> adapter_facts(d)
        AdapterFacts(base_model='m', rank=4, alpha=8.0, target_modules=['q_proj'])
    """
    config_path = directory / "adapter_config.json"
    if not config_path.is_file() or not any((directory / w).is_file() for w in _ADAPTER_WEIGHTS):
        present = ", ".join(sorted(p.name for p in directory.iterdir())) or "nothing"
        raise CLIError(f"the checkpoint's download holds no PEFT adapter (it has: {present}; "
                       "expected adapter_config.json and adapter_model.safetensors). Fix: push "
                       "a LoRA checkpoint (`tinkex checkpoint list` shows them), or check it "
                       "with `tinkex checkpoint download`.")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError:
        raise CLIError("the checkpoint's adapter_config.json is not valid JSON. Fix: download "
                       "it with `tinkex checkpoint download` and report the server's "
                       "answer.") from None
    if not isinstance(config, dict):
        config = {}
    base = config.get("base_model_name_or_path")
    rank, alpha = config.get("r"), config.get("lora_alpha")
    modules = config.get("target_modules")
    return AdapterFacts(base if isinstance(base, str) and base else None,
                        rank if isinstance(rank, int) else None,
                        float(alpha) if isinstance(alpha, int | float) else None,
                        [str(m) for m in modules] if isinstance(modules, list) else [])


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text)
    name = re.sub(r"-{2,}", "-", name).strip("-._")
    return name[:96] or "adapter"


def default_repo_name(base_model: str | None, run_id: str) -> str:
    """The repository name used without ``--repo``: ``tinker-<base model>-<run id>``, made
    Hub-safe.

    Example:
        >>> default_repo_name("Qwen/Qwen3-8B", "sess-1:train:0")
        'tinker-Qwen3-8B-sess-1-train-0'
    """
    base = (base_model or "adapter").split("/")[-1]
    return _safe_name(f"tinker-{base}-{run_id}")


def model_card(tinker_path: str, repo_id: str, facts: AdapterFacts) -> str:
    """The ``README.md`` of the repository: YAML front matter the Hub reads (base model,
    ``library_name: peft``, tags), then how to load the adapter and where it came from."""
    base = facts.base_model
    tags = ["tinker", "tinkex-jax", "peft", "lora"]
    if base:
        tags.append(f"base_model:adapter:{base}")
    front = ["---"]
    if base:
        front.append(f"base_model: {base}")
    front += ["library_name: peft", "tags:", *[f"- {t}" for t in tags],
              f"tinker_path: {tinker_path}", "---"]
    details = [f"- Base model: {base or 'unknown'}"]
    if facts.rank is not None:
        details.append(f"- LoRA rank: {facts.rank}")
    if facts.alpha is not None:
        details.append(f"- LoRA alpha: {facts.alpha:g}")
    if facts.target_modules:
        details.append(f"- Adapted modules: {', '.join(facts.target_modules)}")
    body = [
        "", f"# {repo_id}", "",
        "A LoRA adapter in PEFT format, trained with Tinker and uploaded with "
        "`tinkex checkpoint push-hf`.", "",
        "## Use it", "",
        "```python",
        "from peft import AutoPeftModelForCausalLM", "",
        f'model = AutoPeftModelForCausalLM.from_pretrained("{repo_id}")',
        "```", "",
        "## Source", "",
        "```text", tinker_path, "```", "",
        "## Details", "", *details, "",
    ]
    return "\n".join(front + body)


def _hub() -> tuple[Any, Any]:
    """The ``huggingface_hub`` package and its ``utils`` module (imported now, lazily)."""
    try:
        import huggingface_hub
        import huggingface_hub.utils as hub_utils
    except ImportError:
        raise CLIError("`tinkex checkpoint push-hf` needs the huggingface_hub package, which "
                       f"is not installed. {_INSTALL_FIX}") from None
    return huggingface_hub, hub_utils


@contextlib.contextmanager
def _step(what: str, token: str | None) -> Iterator[None]:
    """Turn a failure of one Hub call into a CLI message about `what` (the token redacted)."""
    import httpx

    try:
        yield
    except CLIError:
        raise
    except Exception as exc:  # the Hub library's errors and its HTTP client's
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
        text = one_line(str(exc))
        if token:
            text = text.replace(token, "<redacted>")
        said = f"HTTP {status}: {text}" if status else f"{type(exc).__name__}: {text}"
        if status == 401:
            fix = ("the token is not valid for the Hub. Fix: run `hf auth login` again or set "
                   "HF_TOKEN to a token with write access.")
        elif status == 403:
            fix = ("the token may not write there. Fix: use a token with write access to that "
                   "namespace, or pass --repo with your own namespace.")
        elif status is None and isinstance(exc, httpx.TransportError | OSError):
            fix = ("no answer from the Hub. Fix: check your network (and HF_ENDPOINT, if set), "
                   "then run the command again.")
        elif status is None:
            fix = ("the Hub's answer could not be used. Fix: run the command again; if it keeps "
                   "failing, update huggingface_hub (`pip install -U 'tinkex-jax[hf]'`).")
        else:
            fix = "Fix: check --repo / --revision and run the command again."
        raise CLIError(f"{what} failed ({said[:400]}); {fix}") from None


def _weights_info(service: ServiceClient, tinker_path: str) -> tuple[str | None, int | None]:
    """The checkpoint's base model and LoRA rank from the server (None, None if it cannot
    say; the adapter's own config is read after the download)."""
    try:
        info = service.create_rest_client().get_weights_info_by_tinker_path(
            tinker_path).result()
    except Exception:  # an older server, or one without weights_info: read the config
        return None, None
    return info.base_model, info.lora_rank


def _existing_source(api: Any, repo_id: str, revision: str | None) -> str | None:
    """The tinker path the repository's current README names, if it has one."""
    with tempfile.TemporaryDirectory(prefix="tinkex-hub-readme-") as tmp:
        try:
            local = api.hf_hub_download(repo_id=repo_id, filename="README.md",
                                        revision=revision, local_dir=tmp)
            text = Path(local).read_text(encoding="utf-8", errors="replace")
        except Exception:  # no repo, no branch, no README: nothing to protect
            return None
    match = re.search(r"tinker://\S+", text)
    return match.group(0).rstrip("`") if match else None


def push_to_hub(service: ServiceClient, tinker_path: str, *, repo_id: str | None = None,
                public: bool = False, revision: str | None = None,
                commit_message: str | None = None, create_pr: bool = False,
                allow_patterns: Sequence[str] | None = None,
                ignore_patterns: Sequence[str] | None = None, add_model_card: bool = True,
                show_progress: bool = False) -> HubUpload:
    """Download `tinker_path` as a PEFT adapter, add a model card, and upload the directory
    to the Hub repository `repo_id` (default: ``<your Hub user>/tinker-<base>-<run id>``).

    A repository whose README names a different tinker path is refused (so one checkpoint
    never overwrites another's card). Without `revision` the upload goes to ``main``; a
    `revision` that does not exist yet is created as a branch first.

    Example:
        >>> push_to_hub(service, "tinker://run/weights/final", repo_id="me/adapter")  # doctest: +SKIP
        HubUpload(tinker_path='tinker://run/weights/final', repo_id='me/adapter', ...)
    """
    parsed = parse_checkpoint_path(tinker_path)
    hub, hub_utils = _hub()
    if not show_progress:
        hub_utils.disable_progress_bars()
    token = hub.get_token()
    api = hub.HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    if token is None:
        raise CLIError("not logged in to the Hugging Face Hub (no token). Fix: run `hf auth "
                       "login` or set HF_TOKEN to a token with write access, then run the "
                       "command again.")
    with _step("checking the Hugging Face token (whoami)", token):
        user = str(api.whoami()["name"])
    known_base, known_rank = _weights_info(service, tinker_path)

    def repo_for(base: str | None) -> str:
        name = repo_id or f"{user}/{default_repo_name(base, parsed.training_run_id)}"
        existing = _existing_source(api, name, revision)
        if existing is not None and existing != tinker_path:
            raise CLIError(f"the Hub repository {name} already holds another checkpoint "
                           f"({existing}). Fix: pass another --repo (or --revision), or delete "
                           "that repository first.")
        return name

    name = repo_for(known_base) if repo_id or known_base else None  # before the download
    with tempfile.TemporaryDirectory(prefix="tinkex-push-hf-") as tmp:
        download = download_checkpoint(service, tinker_path, Path(tmp),
                                       show_progress=show_progress)
        folder = download.destination
        facts = adapter_facts(folder)
        facts = AdapterFacts(facts.base_model or known_base, facts.rank or known_rank,
                             facts.alpha, facts.target_modules)
        name = name or repo_for(facts.base_model)
        if add_model_card and not (folder / "README.md").exists():
            (folder / "README.md").write_text(model_card(tinker_path, name, facts),
                                              encoding="utf-8")
        with _step(f"creating the Hub repository {name}", token):
            url = api.create_repo(repo_id=name, private=not public, exist_ok=True)
        if revision is not None and not create_pr:
            with _step(f"creating the branch {revision} of {name}", token):
                api.create_branch(repo_id=name, branch=revision, exist_ok=True)
        ignore = list(ignore_patterns or [])
        with _step(f"uploading to the Hub repository {name}", token):
            commit = api.upload_folder(
                folder_path=os.fspath(folder), repo_id=name, path_in_repo="",
                revision=revision, create_pr=create_pr,
                commit_message=commit_message or f"Upload {tinker_path} with tinkex",
                allow_patterns=list(allow_patterns) if allow_patterns else None,
                ignore_patterns=ignore or None)
        every = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        files = list(hub_utils.filter_repo_objects(
            every, allow_patterns=list(allow_patterns) if allow_patterns else None,
            ignore_patterns=ignore or None))
    return HubUpload(tinker_path=tinker_path, repo_id=name, repo_url=str(url),
                     revision=revision, public=public, files=files,
                     commit_url=getattr(commit, "commit_url", None),
                     pr_url=getattr(commit, "pr_url", None), base_model=facts.base_model)
