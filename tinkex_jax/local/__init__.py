"""The embedded local backend: a Tinker-compatible server inside tinkex_jax.

It serves the Tinker HTTP protocol (docs/protocol.md) from this machine, so the README demo runs
offline, tests hit a real server, and the unmodified official ``tinker`` SDK works against
it. Models are small JAX Llama / Qwen3 decoders with LoRA adapters (presets
``tinkex-jax/tiny`` and ``tinkex-jax/small``, or local Hugging Face directories).

* `serve` — a context manager running the server in a background thread on a free port.
* `create_app` / `build_app` — the ASGI app, for running under your own uvicorn.
* ``tinkex serve --port 8000 --data-dir DIR`` — the command line.

Example:
    >>> from tinkex_jax.local import serve
    >>> with serve(base_models=["tinkex-jax/tiny"]) as server:  # doctest: +SKIP
    ...     import tinker
    ...     sc = tinker.ServiceClient(base_url=server.base_url, api_key=server.api_key)

``import tinkex_jax.local`` is cheap: JAX is imported when a server starts.

Inside: `_app` (HTTP routes, the only module that speaks HTTP) over `_engine.Engine`, which
wires the services: `_core` (request dedup, futures, per-model lanes), `_sessions`,
`_training`, `_weights` (checkpoints), `_sampling` and `_catalog` (the REST read side),
with `_storage` (SQLite and checkpoint files) and `_effects` (clocks, ids, seeds) beneath
them and a `_backend.Backend` (the JAX model layer in `model`) doing the array work. The
model layer never imports the server; code outside this package uses only the names below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._config import DEFAULT_BASE_MODELS, LOCALHOST, ServerConfig, default_data_dir
from ._server import LocalServer, build_app, run_server, serve

if TYPE_CHECKING:
    from ._app import create_app
    from ._engine import Engine

__all__ = [
    "DEFAULT_BASE_MODELS",
    "Engine",
    "LOCALHOST",
    "LocalServer",
    "ServerConfig",
    "build_app",
    "create_app",
    "default_data_dir",
    "run_server",
    "serve",
]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from ._app import create_app

        return create_app
    if name == "Engine":
        from ._engine import Engine

        return Engine
    raise AttributeError(f"module 'tinkex_jax.local' has no attribute {name!r}")
