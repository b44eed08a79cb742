"""Settings of the embedded local backend (one frozen value, passed to every part)."""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import invalid

if TYPE_CHECKING:
    from ._faults import FaultSpec

__all__ = ["API_KEY_FILE", "DEFAULT_BASE_MODELS", "LOCALHOST", "ServerConfig",
           "default_data_dir", "is_loopback", "with_api_key"]

LOCALHOST = "127.0.0.1"
#: Where a server without a configured key keeps the key it made (in its data directory).
API_KEY_FILE = "api_key"
#: Base models served when none are named: the two presets shipped with the model layer.
DEFAULT_BASE_MODELS: tuple[str, ...] = ("tinkex-jax/tiny", "tinkex-jax/small")


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback interface (only this machine can connect).

    Example:
        >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
        (True, True, False)
    """
    return host in ("localhost", "::1") or host.startswith("127.")


def default_data_dir() -> Path:
    """Where `tinkex serve` keeps its data when no directory is given.

    ``$TINKEX_LOCAL_DATA_DIR`` if set, else ``~/.tinkex/local``.

    Example:
        >>> default_data_dir().name in ("local", os.environ.get("TINKEX_LOCAL_DATA_DIR", "local"))
        True
    """
    env = os.environ.get("TINKEX_LOCAL_DATA_DIR")
    return Path(env) if env else Path.home() / ".tinkex" / "local"


#: The size limits of `ServerConfig` (each an int >= 1).
_LIMITS = ("max_body_bytes", "max_decompressed_bytes", "max_num_samples", "max_request_tokens",
           "max_lora_rank", "max_logprobs_topk", "max_string_length", "max_list_length",
           "max_metadata_bytes")


@dataclass(frozen=True)
class ServerConfig:
    """Everything the local server needs to know; immutable.

    Attributes:
        data_dir: Directory for the SQLite database and checkpoint files (created if missing).
        host: Interface to bind; 127.0.0.1 unless you really mean to expose the server.
        port: TCP port; 0 picks a free one.
        api_key: The accepted ``X-API-Key`` (with `extra_api_keys`). None (unless
            `no_auth`): the key stored in ``<data_dir>/api_key``, made at random (and stored,
            readable only by its user) the first time a server uses the directory; see
            `with_api_key`. Never logged or shown in reprs.
        extra_api_keys: More accepted keys. Every key (or JWT subject) owns what it creates:
            sessions, training runs, samplers, checkpoints and futures; another key gets 404
            for them (published checkpoints are readable by every key).
        no_auth: Accept any key that starts with ``tml-`` (each still owns what it creates);
            loopback hosts only, since anyone who can connect could then act as anyone.
        base_models: Names (presets such as ``tinkex-jax/tiny``) or local Hugging Face
            directories the server offers for training and sampling.
        long_poll_timeout_s: How long ``retrieve_future`` holds a request before answering
            ``try_again`` (must stay below the SDK's 45 s read timeout).
        compute_workers: Threads that run model computations (1 is best on a small CPU:
            XLA already uses every core for one computation).
        result_retention_s: How long a retrieved result stays re-fetchable.
        max_retained_results: Upper bound on finished results kept in memory.
        reap_interval_s: How often expired checkpoints are deleted in the background.
        finished_sampler_retention_s: The sampler rows of a finished session are deleted
            this long after it finished (by the reaper, every ``reap_interval_s``).
        finished_session_retention_s: A finished session is deleted this long after it
            finished, with its training runs that hold no checkpoint (runs that hold one
            stay, as do their checkpoints until deleted or expired). None: kept forever.
        inject_faults: Fault injection for testing clients, off (None) by default: a spec
            such as ``"5xx=0.05,429=0.02,drop=0.02,seed=7"`` makes the server answer chosen
            fractions of requests with errors, drop connections or answer late,
            deterministically for a seed (see `tinkex_jax.local._faults`; a ``FaultSpec``
            is accepted too and kept as its text).
        max_tokens_default: ``max_tokens`` of a sample request that sets none.
        proto_compress_fwdbwd: Ask clients to zstd-compress forward_backward bodies.
        fwdbwd_max_chunk_len: Most datums per forward_backward request (clients split
            larger calls into chunks).
        use_pyqwest_transport: What ``client/config`` tells the official SDK about its
            transport (both work against this plain HTTP/1.1 server).
        warm_up: Load the base models at start-up (so the first request does not pay for it).
        max_live_samplers: Sampling sessions kept in memory (least recently used beyond this
            are dropped; those over saved weights reload on use).
        max_sampler_handles: Samplers whose merged weights stay prepared for decoding.
        pjwt_auth_enabled: Serve JWT auth (docs/protocol.md §1.3), to test SDKs' JWT mode:
            ``client/config`` reports it, ``POST /api/v1/auth/token`` trades an accepted
            ``tml-`` key for an HS256 JWT signed with a random per-process secret, and every
            other authenticated route then accepts only such a JWT (see
            `tinkex_jax.local._jwt`). Off by default, as docs/protocol.md recommends.
        jwt_lifetime_s: Lifetime (``exp - iat``) of those JWTs.
        session_idle_timeout_s: A session without a heartbeat for this long is finished as
            ``interrupted`` by the background reaper, which frees its training models (their
            checkpoints stay); its heartbeats then get 410. Tinker SDKs heartbeat every
            10 s, so only dead clients are reaped. None: never.
        max_pending_samples: Admission control for sampling, as a busy hosted service does:
            with this many ``asample`` requests queued or running, the next one is answered
            429 with ``X-Tinker-Sampling-Backpressure: 1`` and ``Retry-After: 1``, which
            Tinker SDKs wait out and resubmit with the same seq_id. None (default): no
            limit.
        stability_record_ttl_s: How long the server keeps a sampled sequence's stability
            record (sampled with ``record_stability_info``, used by ``stable_reinforce``)
            without use: a day, as the hosted service documents. Using a record renews it.
        stability_max_tokens: Memory bound of those records, in stored tokens (prompt plus
            sampled); beyond it the least recently used records are dropped.
        sampler_logprob_noise: A testing aid, 0 (off) by default: the standard deviation of
            Gaussian noise added to the logprob of every sampled token as the sampler
            reports (and records) it, simulating a sampler whose numerics differ from
            training's. The tokens are sampled as before.
        max_body_bytes: Largest request body as sent; a larger one is answered 413 without
            reading it whole.
        max_decompressed_bytes: Largest body once zstd-decompressed (413 beyond).
        max_num_samples: Most ``num_samples`` of one sample request.
        max_request_tokens: Most tokens one request may make the server process: the input
            tokens of a forward / forward_backward request, ``num_samples * (prompt +
            max_tokens)`` of a sample request.
        max_lora_rank: Largest LoRA rank of a new training model.
        max_logprobs_topk: Largest ``topk_prompt_logprobs``, ``topk_sample_logprobs``,
            ``prompt_alt_tokens_k``, ``target_prompt_logprobs`` width and 2-D loss-input
            width (each is also capped by the model's vocabulary).
        max_string_length: Longest client-given string (tags, project and display names,
            SDK version, finish detail, stop strings), in characters.
        max_list_length: Most items of a client-given list or mapping (tags, stop
            sequences, ``user_metadata`` entries).
        max_metadata_bytes: Largest ``user_metadata`` as JSON.
        download_url_lifetime_s: How long the signed download URLs of exported weights
            (``external_weights_urls``) stay valid.
        dtype: Base-parameter dtype: ``"auto"`` (float32 on CPU, the checkpoint's, usually
            bfloat16, on GPU and TPU), ``"checkpoint"``, ``"float32"``, ``"bfloat16"`` or
            ``"float16"``. Adapters, gradients, optimizer state, logprobs and losses stay
            float32 (docs/local-backend.md, "Accelerators and memory").
        mesh: Device mesh as ``"fsdp=N,tp=M"`` (the ``fsdp`` axis splits batches and
            parameters, ``tp`` splits heads, MLP width and vocabulary); None: every visible
            device on ``fsdp`` when there are several, one device otherwise.
        remat: Per-layer rematerialisation: ``"auto"`` (on from 100 M base parameters),
            ``"off"``, ``"full"``, ``"dots"``.
        attention: ``"auto"``, ``"dense"``, ``"chunked"`` or ``"cudnn"`` (GPU, bf16/fp16).
        token_budget: Most tokens per micro-batch of one training call (gradients of the
            micro-batches are summed in the same step); 0: no splitting.
        sampler_weights: How samplers hold weights: ``"auto"``, ``"merged"`` (a copy per
            sampler), ``"shared"`` (one copy of the base, LoRA on the fly), ``"stacked"``.
        compilation_cache: JAX's persistent compilation cache: None for
            ``$JAX_COMPILATION_CACHE_DIR`` if set, else ``<data_dir>/compilation-cache``; a
            directory; or ``"off"``.

    Example:
        >>> cfg = ServerConfig(data_dir=Path("/tmp/x"), port=0)
        >>> cfg.host, cfg.long_poll_timeout_s
        ('127.0.0.1', 30.0)
    """

    data_dir: Path
    host: str = LOCALHOST
    port: int = 8000
    api_key: str | None = field(default=None, repr=False)
    base_models: tuple[str, ...] = DEFAULT_BASE_MODELS
    long_poll_timeout_s: float = 30.0
    compute_workers: int = 1
    result_retention_s: float = 600.0
    max_retained_results: int = 10_000
    reap_interval_s: float = 60.0
    finished_sampler_retention_s: float = 3600.0
    finished_session_retention_s: float | None = 30 * 86_400.0
    inject_faults: str | FaultSpec | None = None
    max_tokens_default: int = 64
    proto_compress_fwdbwd: bool = False
    fwdbwd_max_chunk_len: int = 1024
    use_pyqwest_transport: bool = False
    warm_up: bool = True
    max_live_samplers: int = 256
    max_sampler_handles: int = 8
    pjwt_auth_enabled: bool = False
    jwt_lifetime_s: float = 3600.0
    max_pending_samples: int | None = None
    session_idle_timeout_s: float | None = 900.0
    stability_record_ttl_s: float = 86_400.0
    stability_max_tokens: int = 16_000_000
    sampler_logprob_noise: float = 0.0
    extra_api_keys: tuple[str, ...] = field(default=(), repr=False)
    no_auth: bool = False
    max_body_bytes: int = 64 * 2**20
    max_decompressed_bytes: int = 64 * 2**20
    max_num_samples: int = 256
    max_request_tokens: int = 2**20
    max_lora_rank: int = 256
    max_logprobs_topk: int = 256
    max_string_length: int = 4096
    max_list_length: int = 1024
    max_metadata_bytes: int = 65_536
    download_url_lifetime_s: float = 3600.0
    dtype: str = "auto"
    mesh: str | None = None
    remat: str = "auto"
    attention: str = "auto"
    token_budget: int = 0
    sampler_weights: str = "auto"
    compilation_cache: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        object.__setattr__(self, "base_models", tuple(self.base_models))
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise invalid("ServerConfig.port", "an int in [0, 65535] (0 = any free port)",
                          self.port)
        self._check_auth()
        self._check_accelerator_settings()
        for name in _LIMITS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise invalid(f"ServerConfig.{name}", "an int >= 1", value)
        if not (isinstance(self.download_url_lifetime_s, int | float)
                and 1 <= self.download_url_lifetime_s <= 7 * 86_400):
            raise invalid("ServerConfig.download_url_lifetime_s", "seconds in [1, 7 days]",
                          self.download_url_lifetime_s)
        if not 0 < self.long_poll_timeout_s <= 40:
            raise invalid("ServerConfig.long_poll_timeout_s", "seconds in (0, 40]",
                          self.long_poll_timeout_s,
                          "the SDK gives up on a poll after 45 s, so stay below that")
        if not self.jwt_lifetime_s >= 1:
            raise invalid("ServerConfig.jwt_lifetime_s", "seconds >= 1", self.jwt_lifetime_s)
        if self.max_pending_samples is not None and (
                isinstance(self.max_pending_samples, bool)
                or not isinstance(self.max_pending_samples, int) or self.max_pending_samples < 1):
            raise invalid("ServerConfig.max_pending_samples", "None or an int >= 1",
                          self.max_pending_samples)
        if self.session_idle_timeout_s is not None and not self.session_idle_timeout_s >= 30:
            raise invalid("ServerConfig.session_idle_timeout_s", "None or seconds >= 30",
                          self.session_idle_timeout_s,
                          "SDKs heartbeat every 10 s; a shorter timeout would end live sessions")
        if not (isinstance(self.stability_record_ttl_s, int | float)
                and 0 < self.stability_record_ttl_s < float("inf")):
            raise invalid("ServerConfig.stability_record_ttl_s", "seconds > 0",
                          self.stability_record_ttl_s)
        if (isinstance(self.stability_max_tokens, bool)
                or not isinstance(self.stability_max_tokens, int)
                or self.stability_max_tokens < 1):
            raise invalid("ServerConfig.stability_max_tokens", "an int >= 1",
                          self.stability_max_tokens)
        if not (isinstance(self.sampler_logprob_noise, int | float)
                and 0 <= self.sampler_logprob_noise < float("inf")):
            raise invalid("ServerConfig.sampler_logprob_noise", "a finite number >= 0 (0: off)",
                          self.sampler_logprob_noise)
        if not (isinstance(self.finished_sampler_retention_s, int | float)
                and 0 <= self.finished_sampler_retention_s < float("inf")):
            raise invalid("ServerConfig.finished_sampler_retention_s", "seconds >= 0",
                          self.finished_sampler_retention_s)
        if self.finished_session_retention_s is not None and not (
                isinstance(self.finished_session_retention_s, int | float)
                and 0 <= self.finished_session_retention_s < float("inf")):
            raise invalid("ServerConfig.finished_session_retention_s", "None or seconds >= 0",
                          self.finished_session_retention_s)
        if self.inject_faults is not None:
            from ._faults import FaultSpec

            spec = self.inject_faults
            parsed = spec if isinstance(spec, FaultSpec) else FaultSpec.parse(str(spec))
            object.__setattr__(self, "inject_faults", str(parsed))
        if self.compute_workers < 1:
            raise invalid("ServerConfig.compute_workers", "an int >= 1", self.compute_workers)
        if not self.base_models:
            raise invalid("ServerConfig.base_models", "at least one base model", [],
                          f"e.g. {list(DEFAULT_BASE_MODELS)}")

    def _check_auth(self) -> None:
        object.__setattr__(self, "extra_api_keys", tuple(self.extra_api_keys))
        keys = ([self.api_key] if self.api_key is not None else []) + list(self.extra_api_keys)
        if any(not isinstance(k, str) or not k.startswith("tml-") or len(k) < 8
               or not k.isprintable() or " " in k for k in keys):
            raise invalid("ServerConfig.api_key", "keys that start with 'tml-' (8 or more "
                          "printable characters, no spaces)", "<redacted>",
                          "the official SDK only sends keys that start with 'tml-'")
        if len(set(keys)) != len(keys):
            raise invalid("ServerConfig.extra_api_keys", "keys different from each other and "
                          "from api_key", "<redacted>")
        if self.no_auth:
            if keys:
                raise invalid("ServerConfig.no_auth", "no api_key / extra_api_keys with it",
                              "<keys given>", "drop either the keys or no_auth")
            if not is_loopback(self.host):
                raise invalid("ServerConfig.no_auth", "a loopback host (127.0.0.1)", self.host,
                              "a server reachable from other machines needs a key: drop "
                              "no_auth (a random key is made) or pass api_key")
        elif self.api_key is None and self.extra_api_keys:
            raise invalid("ServerConfig.api_key", "a key when extra_api_keys are given",
                          None, "pass the first key as api_key")

    def _check_accelerator_settings(self) -> None:
        dtypes = ("auto", "checkpoint", "float32", "bfloat16", "float16")
        if self.dtype not in dtypes:
            raise invalid("ServerConfig.dtype", f"one of {dtypes}", self.dtype,
                          "'auto' is float32 on CPU and the checkpoint's dtype on GPU / TPU")
        if self.compilation_cache is not None and (
                not isinstance(self.compilation_cache, str) or not self.compilation_cache):
            raise invalid("ServerConfig.compilation_cache", "None, a directory or 'off'",
                          self.compilation_cache)
        if self.mesh is not None:
            if not isinstance(self.mesh, str):
                raise invalid("ServerConfig.mesh", "None or a string like 'fsdp=4,tp=2'",
                              self.mesh)
            from .model.sharding import parse_mesh

            parse_mesh(self.mesh)
        if (self.remat, self.attention, self.sampler_weights, self.token_budget) != (
                "auto", "auto", "auto", 0):
            from .model.options import RunOptions

            RunOptions(remat=self.remat, attention=self.attention,  # type: ignore[arg-type]
                       sampler_weights=self.sampler_weights,  # type: ignore[arg-type]
                       token_budget=self.token_budget)

    @property
    def api_keys(self) -> tuple[str, ...]:
        """Every accepted key (empty with `no_auth`: any ``tml-`` key is accepted)."""
        return ((self.api_key,) if self.api_key is not None else ()) + self.extra_api_keys

    def replace(self, **changes: object) -> ServerConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def create(cls, data_dir: str | os.PathLike[str] | None = None,
               base_models: Sequence[str] | None = None, **kwargs: object) -> ServerConfig:
        """Build a config, defaulting the data directory and the base models.

        Example:
            >>> ServerConfig.create("/tmp/d", ["tinkex-jax/tiny"]).base_models
            ('tinkex-jax/tiny',)
        """
        path = Path(data_dir) if data_dir is not None else default_data_dir()
        models = tuple(base_models) if base_models is not None else DEFAULT_BASE_MODELS
        return cls(data_dir=path, base_models=models, **kwargs)  # type: ignore[arg-type]


def with_api_key(config: ServerConfig) -> ServerConfig:
    """`config` with its ``api_key`` resolved: unchanged when it has one (or is `no_auth`),
    else the key stored in ``<data_dir>/api_key``, which is made first if missing: a random
    ``tml-`` key, in a file only its user may read. A data directory thus keeps one key
    across restarts, so clients and what they own survive a restart.

    Raises:
        ValidationError: the stored key is not a ``tml-`` key.

    Example:
        >>> import tempfile
        >>> config = ServerConfig(data_dir=Path(tempfile.mkdtemp()))
        >>> first = with_api_key(config).api_key
        >>> first.startswith("tml-"), with_api_key(config).api_key == first
        (True, True)
    """
    if config.no_auth or config.api_key is not None:
        return config
    path = config.data_dir / API_KEY_FILE
    config.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        # truly random on purpose (never from Effects): the key is the credential
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text(encoding="utf-8").strip()
    else:
        key = "tml-" + secrets.token_hex(20)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(key + "\n")
    if not key.startswith("tml-"):
        raise invalid(str(path), "a key starting with 'tml-'", "<redacted>",
                      "delete the file to have a new key made, or pass api_key")
    return config.replace(api_key=key)
