"""The local backend in a child process, for tests that kill it (SIGKILL) or measure it
(RSS, open files) from outside.

Run as ``python subprocess_server.py SETTINGS_JSON``; the settings are `ServerConfig` fields
plus ``backend`` (``"fake"``: the numpy bigram model of `local_fake_backend`; ``"jax"``: the
real model layer). `ChildServer` starts it, waits until it answers and kills it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
API_KEY = "tml-child-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ChildServer:
    """A local server in a child process on a fixed port (so that clients reconnect to a
    restarted one).

    Args:
        data_dir: Its data directory (kept across restarts).
        port: Its port (default: a free one, kept across restarts).
        env: Extra environment of the next start (e.g. ``TINKEX_LOCAL_PAUSE_AT``).
        **settings: `ServerConfig` fields and ``backend``.
    """

    def __init__(self, data_dir: Path, port: int | None = None, **settings: Any) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.settings = {"backend": "fake", "api_key": API_KEY, "long_poll_timeout_s": 1.0,
                         "warm_up": False, **settings}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"server-{self.port}.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_key(self) -> str:
        return str(self.settings["api_key"])

    def start(self, env: dict[str, str] | None = None, timeout: float = 120.0) -> ChildServer:
        """Start and wait until ``healthz`` answers (raises if the child dies first)."""
        settings = {**self.settings, "data_dir": str(self.data_dir), "port": self.port}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / "subprocess_server.py"), json.dumps(settings)],
                stdout=log, stderr=log, env={**os.environ, "TINKER_TELEMETRY": "0",
                                             **(env or {})})
        deadline = time.monotonic() + timeout  # a bound on start-up, not a measurement
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the child server exited ({self.proc.returncode}): "
                                   f"{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.base_url}/api/v1/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the child server did not start: {self.log.read_text()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL (no clean-up of any kind) and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        """SIGTERM (a clean stop) and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        self.proc = None

    def wait_for_file(self, name: str, timeout: float = 60.0) -> Path:
        """Wait until the child creates `data_dir/name` (a test hook's marker)."""
        path = self.data_dir / name
        deadline = time.monotonic() + timeout  # a bound, not a measurement
        while not path.exists():
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"the child server exited: {self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} never appeared: {self.log.read_text()[-3000:]}")
            time.sleep(0.02)
        return path


def main() -> None:
    sys.path.insert(0, str(HERE.parents[1]))  # run as a script: the repo, for tests.support
    from tinkex_jax.local import ServerConfig, run_server

    settings = json.loads(sys.argv[1])
    kind = settings.pop("backend")
    backend: Any
    if kind == "fake":
        from tests.support.local_fake_backend import FakeBackend
        from tests.support.local_support import FAKE

        backend = FakeBackend()
        settings.setdefault("base_models", [FAKE])
    else:
        from tests.support.local_support import TINY, make_backend

        backend = make_backend()
        settings.setdefault("base_models", [TINY])
    settings["base_models"] = tuple(settings["base_models"])
    settings["data_dir"] = Path(settings["data_dir"])
    run_server(ServerConfig(**settings), backend, log_level="warning")


if __name__ == "__main__":
    main()
