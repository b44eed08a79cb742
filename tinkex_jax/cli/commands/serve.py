"""``tinkex serve``: run the embedded local Tinker backend (an HTTP server) in the foreground.

For: the command line of the server (its options, the start-up banner, the exit status on a
bad configuration). Not for: anything the server does; that is `tinkex_jax.local`, which is
imported only when the command runs.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> configure_serve(parser)
    >>> args = parser.parse_args(["--port", "9000", "--base-model", "tinkex-jax/tiny"])
    >>> args.port, args.base_models, args.host
    (9000, ['tinkex-jax/tiny'], '127.0.0.1')
"""

from __future__ import annotations

import argparse
import os
import sys

from ..command import Command
from ..errors import guarded

__all__ = ["COMMAND", "add_accelerator_options", "cmd_serve", "configure_serve"]


def configure_serve(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex serve``."""
    from ...local import DEFAULT_BASE_MODELS, LOCALHOST

    parser.add_argument("--host", default=LOCALHOST,
                        help="interface to bind (default %(default)s; use 0.0.0.0 only if you "
                             "mean to expose the server to your network)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default %(default)s)")
    parser.add_argument("--data-dir", default=None,
                        help="directory for checkpoints and metadata (default "
                             "$TINKEX_LOCAL_DATA_DIR or ~/.tinkex/local)")
    parser.add_argument("--api-key", action="append", dest="api_keys", default=None,
                        metavar="KEY",
                        help="the key clients must send (must start with 'tml-'); repeat it "
                             "to accept several keys, each owning what it creates. Default: "
                             "$TINKEX_LOCAL_API_KEY, else the data directory's own key (made "
                             "at random once, kept in DATA_DIR/api_key), printed at start")
    parser.add_argument("--no-auth", action="store_true",
                        help="accept any key that starts with 'tml-' (as 'tml-local', the "
                             "SDK's default for 127.0.0.1); loopback hosts only")
    parser.add_argument("--base-model", action="append", dest="base_models", default=None,
                        metavar="NAME_OR_DIR",
                        help="a base model to offer: a preset or a local Hugging Face "
                             f"directory; repeatable (default: {', '.join(DEFAULT_BASE_MODELS)})")
    parser.add_argument("--long-poll-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="how long the server holds a client's request for a result that "
                             "is not ready before telling it to ask again (more than 0, at most "
                             "40; default %(default)s)")
    parser.add_argument("--workers", type=int, default=1,
                        help="compute threads (default %(default)s; XLA already uses every "
                             "core)")
    parser.add_argument("--no-warm-up", action="store_true",
                        help="load base models on first use instead of at start-up")
    parser.add_argument("--max-pending-samples", type=int, default=None,
                        help="answer sampling requests beyond this many in flight with 429 "
                             "backpressure, as a busy hosted service does (default: no limit)")
    parser.add_argument("--pjwt-auth", action="store_true",
                        help="serve JWT auth (docs/protocol.md §1.3): clients exchange their "
                             "key at POST /api/v1/auth/token and send the JWT, as on JWT-mode "
                             "servers; `tinkex auth whoami` then answers")
    limits = parser.add_argument_group(
        "limits", "bounds on what one request may ask (docs/local-backend.md, 'Limits and "
                  "security'); a request over one is refused with a 4xx that names the flag")
    limits.add_argument("--max-body-bytes", type=int, default=64 * 2**20, metavar="N",
                        help="largest request body as sent, answered 413 beyond "
                             "(default %(default)s)")
    limits.add_argument("--max-decompressed-bytes", type=int, default=64 * 2**20, metavar="N",
                        help="largest zstd request body once decompressed (default %(default)s)")
    limits.add_argument("--max-num-samples", type=int, default=256, metavar="N",
                        help="most num_samples of one sample request (default %(default)s)")
    limits.add_argument("--max-request-tokens", type=int, default=2**20, metavar="N",
                        help="most tokens one request may make the server process: input "
                             "tokens of forward_backward, num_samples * (prompt + max_tokens) "
                             "of a sample (default %(default)s)")
    limits.add_argument("--max-lora-rank", type=int, default=256, metavar="N",
                        help="largest LoRA rank of a new training model (default %(default)s)")
    limits.add_argument("--max-logprobs-topk", type=int, default=256, metavar="K",
                        help="largest top-k of prompt / sample logprobs and of 2-D loss "
                             "inputs (also capped by the vocabulary; default %(default)s)")
    add_accelerator_options(parser)
    parser.add_argument("--inject-faults", default=None, metavar="SPEC",
                        help="fault injection for testing clients: answer chosen fractions of "
                             "requests with 5xx, 429, 408, try_again, dropped connections or "
                             "late, deterministically for a seed, e.g. "
                             "'5xx=0.05,429=0.02,drop=0.02,slow=0.05,seed=7' (docs/"
                             "local-backend.md, 'Fault injection'; default: off)")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"],
                        help="how much the server logs to stderr: start-up and notable events "
                             "at info, problems only at warning or above, details at debug "
                             "(default %(default)s)")


def add_accelerator_options(parser: argparse.ArgumentParser) -> None:
    """``--mesh``, ``--dtype``, ``--remat``, ``--attention``, ``--token-budget``,
    ``--sampler-weights`` and ``--compilation-cache`` (docs/local-backend.md, "Accelerators
    and memory")."""
    group = parser.add_argument_group(
        "accelerators and memory", "how the models run on this host's devices "
        "(docs/local-backend.md, 'Accelerators and memory'; `tinkex plan` predicts the "
        "memory a setting needs)")
    group.add_argument("--mesh", default=None, metavar="fsdp=N,tp=M",
                       help="device mesh: the fsdp axis splits batches and parameters, tp "
                            "splits heads, MLP width and vocabulary, e.g. fsdp=4,tp=2 "
                            "(default: every visible device on fsdp; fsdp=1 for one device)")
    group.add_argument("--dtype", default="auto",
                       choices=["auto", "checkpoint", "float32", "bfloat16", "float16"],
                       help="dtype of the base weights; adapters, gradients, optimizer "
                            "state and losses stay float32 (default %(default)s: float32 on "
                            "CPU, the checkpoint's dtype, usually bfloat16, on GPU / TPU)")
    group.add_argument("--remat", default="auto", choices=["auto", "off", "full", "dots"],
                       help="per-layer rematerialisation: recompute each layer in the "
                            "backward pass (full), keep only its matmul outputs (dots), or "
                            "keep everything (off) (default %(default)s: full from 100 M "
                            "base parameters)")
    group.add_argument("--attention", default="auto",
                       choices=["auto", "dense", "chunked", "cudnn"],
                       help="attention kernel: dense scores, query-chunked (memory linear "
                            "in length), or cuDNN flash attention (GPU, bfloat16/float16) "
                            "(default %(default)s: cuDNN on GPU in 16-bit, else chunked from "
                            "1024 tokens)")
    group.add_argument("--token-budget", type=int, default=0, metavar="TOKENS",
                       help="most tokens (rows x padded length) per micro-batch of one "
                            "training call; the micro-batches' gradients are summed in the "
                            "same step (default %(default)s: no splitting)")
    group.add_argument("--sampler-weights", default="auto",
                       choices=["auto", "merged", "shared", "stacked"],
                       help="how samplers hold weights: a merged copy each (fastest), one "
                            "shared copy of the base with LoRA applied on the fly, or the "
                            "trainer's arrays (no copy) (default %(default)s: merged below "
                            "256 MiB of base, shared above)")
    group.add_argument("--compilation-cache", default=None, metavar="DIR|off",
                       help="JAX's persistent compilation cache, so restarts skip "
                            "recompiling: a directory, or 'off' (default: "
                            "$JAX_COMPILATION_CACHE_DIR if set, else "
                            "DATA_DIR/compilation-cache)")


@guarded
def cmd_serve(args: argparse.Namespace) -> int:
    """Start the server and serve until interrupted; 2 for a bad configuration (the message
    names the flag)."""
    from ...local import ServerConfig, run_server
    from ...local._config import API_KEY_FILE, with_api_key
    from ...local._server import exposure_warning

    keys = list(args.api_keys or ())
    if not keys and not args.no_auth and os.environ.get("TINKEX_LOCAL_API_KEY"):
        keys = [os.environ["TINKEX_LOCAL_API_KEY"]]
    config = ServerConfig.create(
        args.data_dir, args.base_models, host=args.host, port=args.port,
        api_key=keys[0] if keys else None, extra_api_keys=tuple(keys[1:]),
        no_auth=args.no_auth, long_poll_timeout_s=args.long_poll_timeout,
        compute_workers=args.workers, warm_up=not args.no_warm_up,
        pjwt_auth_enabled=args.pjwt_auth, max_pending_samples=args.max_pending_samples,
        max_body_bytes=args.max_body_bytes, max_decompressed_bytes=args.max_decompressed_bytes,
        max_num_samples=args.max_num_samples, max_request_tokens=args.max_request_tokens,
        max_lora_rank=args.max_lora_rank, max_logprobs_topk=args.max_logprobs_topk,
        inject_faults=args.inject_faults, mesh=args.mesh, dtype=args.dtype, remat=args.remat,
        attention=args.attention, token_budget=args.token_budget,
        sampler_weights=args.sampler_weights, compilation_cache=args.compilation_cache)
    config = with_api_key(config)
    if config.no_auth:
        key_hint = "tml-local  (--no-auth: any key starting with 'tml-')"
    elif keys:
        key_hint = "<your --api-key>" + (f"  (or one of {len(keys) - 1} more)"
                                         if len(keys) > 1 else "")
    else:
        key_hint = (f"{config.api_key}  (this data directory's key, kept in "
                    f"{config.data_dir / API_KEY_FILE}; --api-key chooses one)")
    print(f"tinkex local backend on http://{config.host}:{config.port} "
          f"(data: {config.data_dir}; models: {', '.join(config.base_models)})\n"
          f"  connect with: TINKER_BASE_URL=http://{config.host}:{config.port} "
          f"TINKER_API_KEY={key_hint}", file=sys.stderr, flush=True)
    warning = exposure_warning(config)
    if warning is not None:
        print(f"  warning: {warning}", file=sys.stderr, flush=True)
    if config.inject_faults is not None:
        print(f"  fault injection: {config.inject_faults} (some requests fail on purpose)",
              file=sys.stderr, flush=True)
    run_server(config, log_level=args.log_level)
    return 0


COMMAND = Command("serve", "run the embedded local Tinker backend (an HTTP server)",
                  configure_serve, cmd_serve)
