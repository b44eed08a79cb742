"""Running the local backend: in a background thread (`serve`, `LocalServer`) or in the
foreground (`run_server`, used by ``tinkex serve``)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ._backend import Backend
from ._config import DEFAULT_BASE_MODELS, LOCALHOST, ServerConfig, is_loopback

__all__ = ["LocalServer", "build_app", "exposure_warning", "run_server", "serve"]

_log = logging.getLogger("tinkex_jax.local")


def build_app(config: ServerConfig, backend: Backend | None = None) -> Any:
    """The ASGI app for `config` (an `Engine` over `backend`, default: the JAX model layer),
    wrapped in fault injection when ``config.inject_faults`` asks for it (`_faults`).

    Example:
        >>> from starlette.testclient import TestClient
        >>> app = build_app(ServerConfig(data_dir=Path(tempfile.mkdtemp()), warm_up=False,
        ...                              base_models=("tinkex-jax/tiny",)))
        >>> with TestClient(app) as client:
        ...     client.get("/api/v1/healthz").json()
        {'status': 'ok', 'devices': 1, 'mesh': {'fsdp': 1, 'tp': 1}, 'platform': 'cpu'}
    """
    from ._app import create_app
    from ._engine import Engine

    if backend is None:
        from ._jax_backend import JaxBackend

        backend = JaxBackend.from_config(config)
    return _with_faults(create_app(Engine(config, backend)), config)


def _with_faults(app: Any, config: ServerConfig) -> Any:
    from ._faults import with_faults

    wrapped = with_faults(app, config.inject_faults, max_body_bytes=config.max_body_bytes)
    if wrapped is not app:
        _log.warning("fault injection is on (%s): some requests will fail on purpose",
                     config.inject_faults)
    return wrapped


def exposure_warning(config: ServerConfig) -> str | None:
    """What to say when `config` binds an interface other machines can reach (None when it
    does not).

    Example:
        >>> exposure_warning(ServerConfig(data_dir=Path("unused"))) is None
        True
        >>> print(exposure_warning(ServerConfig(data_dir=Path("unused"), host="0.0.0.0")))
        the server listens on 0.0.0.0: anyone who can reach this machine can connect. Every request needs the API key; keep it secret, and prefer 127.0.0.1 (an SSH tunnel) unless you mean to share the server.
    """
    if is_loopback(config.host):
        return None
    return (f"the server listens on {config.host}: anyone who can reach this machine can "
            "connect. Every request needs the API key; keep it secret, and prefer 127.0.0.1 "
            "(an SSH tunnel) unless you mean to share the server.")


def _uvicorn_server(app: Any, config: ServerConfig, *, log_level: str,
                    embedded: bool = False) -> Any:
    """A uvicorn server that stops cleanly on SIGINT/SIGTERM (no re-raised signal).

    `embedded` (a server inside someone else's process): leave the process's logging alone;
    uvicorn's own logging setup would first close every handler the process has (a
    notebook's, a test runner's captured stderr).
    """
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit)
                        for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return _Server(uvicorn.Config(app, host=config.host, port=config.port,
                                  log_level=log_level, access_log=False, lifespan="on",
                                  timeout_graceful_shutdown=2, ws="none",
                                  log_config=None if embedded else LOGGING_CONFIG))


class LocalServer:
    """The local backend running in a background thread of this process.

    Use `serve` (a context manager) rather than this class directly.

    Example:
        >>> config = ServerConfig(data_dir=Path(tempfile.mkdtemp()), port=0, warm_up=False,
        ...                       base_models=("tinkex-jax/tiny",))
        >>> with LocalServer(config) as server:
        ...     server.base_url.startswith("http://127.0.0.1:"), server.api_key[:4]
        (True, 'tml-')

    Attributes:
        config: The server settings (``port`` is the real port once started).
        base_url: ``http://host:port``: pass it as ``base_url`` to any Tinker client.
        api_key: A key the server accepts (its configured or generated key; ``"tml-local"``
            on a no-auth server).
        faults: The `tinkex_jax.local._faults.FaultInjector` when ``inject_faults`` is on
            (its ``stats()`` counts the faults injected), else None.
    """

    def __init__(self, config: ServerConfig, backend: Backend | None = None) -> None:
        self.config = config
        self._backend = backend
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.app: Any = None
        self.faults: Any = None

    @property
    def base_url(self) -> str:
        """The URL clients connect to."""
        return f"http://{self.config.host}:{self.config.port}"

    @property
    def api_key(self) -> str:
        """A key this server accepts (never logged)."""
        return self.config.api_key or "tml-local"

    def __repr__(self) -> str:
        return f"LocalServer(base_url={self.base_url!r}, api_key=<redacted>)"

    @property
    def engine(self) -> Any:
        """The `Engine` behind the app (for tests and diagnostics)."""
        return self.app.state.engine if self.app is not None else None

    def corrupt_run(self, run_id: str, reason: str = "corrupted by LocalServer.corrupt_run"
                    ) -> None:
        """Fault injection for testing recovery code: mark a live training run corrupted.

        From then on the server refuses training and saving on it until a checkpoint is
        loaded into it, and ``RestClient.get_training_run`` reports ``corrupted=True``, as the
        hosted service does for a run whose state was lost.

        Raises:
            RuntimeError: the server is not running.
            NotFoundError: no live training model has this id.
        """
        if self.engine is None:
            raise RuntimeError("LocalServer.corrupt_run: the server is not running; call it "
                               "inside `with serve(...) as server:`.")
        self.engine.training.corrupt_run(run_id, reason)

    def start(self, timeout: float = 300.0) -> LocalServer:
        """Bind a socket, start serving in a daemon thread and wait until it is ready.

        Raises:
            RuntimeError: the server failed to start (the cause is chained).
        """
        from ._app import create_app
        from ._engine import Engine

        backend = self._backend
        if backend is None:
            from ._jax_backend import JaxBackend

            backend = JaxBackend.from_config(self.config)
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only
        # when the socket says it is TCP; without it every response waits ~40 ms for a
        # delayed ACK (headers and body are separate writes).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((self.config.host, self.config.port))
        self.config = self.config.replace(port=sock.getsockname()[1])
        warning = exposure_warning(self.config)
        if warning is not None:
            _log.warning("%s", warning)
        engine = Engine(self.config, backend)
        self.config = engine.config  # with its API key
        self.app = create_app(engine)
        self.app.state.engine = engine
        asgi = _with_faults(self.app, self.config)
        self.faults = asgi if asgi is not self.app else None
        self._server = _uvicorn_server(asgi, self.config, log_level="warning", embedded=True)

        def run() -> None:
            try:
                self._server.run(sockets=[sock])
            except BaseException as exc:  # surfaced by start()
                self._error = exc
            finally:
                sock.close()

        self._thread = threading.Thread(target=run, name="tinkex-local-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout  # real time: waits for a real thread to bind
        while not self._server.started:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError("the tinkex local server failed to start") from self._error
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the tinkex local server did not start within {timeout} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop serving and wait for the thread (in-flight long polls are cut short)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> LocalServer:
        return self.start() if self._thread is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@contextlib.contextmanager
def serve(data_dir: str | os.PathLike[str] | None = None, port: int = 0, *,
          base_models: Sequence[str] = DEFAULT_BASE_MODELS, host: str = LOCALHOST,
          api_key: str | None = None, backend: Backend | None = None,
          **settings: Any) -> Iterator[LocalServer]:
    """Run the local Tinker backend in a background thread for the duration of a block.

    Args:
        data_dir: Where checkpoints and metadata live; a temporary directory (deleted on
            exit) when None.
        port: TCP port; 0 picks a free one.
        base_models: Base models to offer (preset names or local Hugging Face directories).
        host: Interface to bind (127.0.0.1 by default; keep it local).
        api_key: The key to accept (must start with ``tml-``); None: the data directory's
            key (made at random once, kept in ``<data_dir>/api_key``). Either way
            ``server.api_key`` gives it to clients. ``no_auth=True`` (loopback
            only) accepts any ``tml-`` key instead, ``extra_api_keys=(...)`` more keys;
            each key owns what it creates (see docs/local-backend.md, "Limits and
            security").
        backend: Model backend (default: the JAX model layer).
        **settings: Other `ServerConfig` fields (e.g. ``long_poll_timeout_s``).

    Yields:
        The running `LocalServer`; use its ``base_url`` and ``api_key``.

    Example:
        >>> import httpx
        >>> with serve(base_models=["tinkex-jax/tiny"], warm_up=False) as server:
        ...     httpx.get(f"{server.base_url}/api/v1/healthz").json()["status"]
        'ok'

        Point any Tinker client at it, e.g.
        ``tinker.ServiceClient(base_url=server.base_url, api_key=server.api_key)``.
    """
    temp = None
    if data_dir is None:
        temp = tempfile.mkdtemp(prefix="tinkex-local-")
        data_dir = temp
    config = ServerConfig(data_dir=Path(data_dir), host=host, port=port, api_key=api_key,
                          base_models=tuple(base_models), **settings)
    server = LocalServer(config, backend)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def run_server(config: ServerConfig, backend: Backend | None = None, *,
               log_level: str = "info") -> None:
    """Serve in the foreground until interrupted (Ctrl-C / SIGTERM). The caller says what
    `exposure_warning` says, if anything (``tinkex serve`` prints it)."""
    app = build_app(config, backend)
    _uvicorn_server(app, config, log_level=log_level).run()
