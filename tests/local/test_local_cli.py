"""``tinkex serve``: argument parsing, bad settings, and a real server process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tinkex_jax.cli import COMMANDS, build_parser, main

REPO = Path(__file__).resolve().parents[2]


def test_serve_arguments() -> None:
    args = build_parser().parse_args(["serve", "--port", "9001", "--data-dir", "/tmp/x",
                                      "--base-model", "a", "--base-model", "b"])
    assert (args.port, args.data_dir, args.base_models) == (9001, "/tmp/x", ["a", "b"])
    assert args.host == "127.0.0.1" and args.api_keys is None and args.pjwt_auth is False
    assert args.no_auth is False and args.max_lora_rank == 256
    assert build_parser().parse_args(["serve", "--pjwt-auth"]).pjwt_auth is True
    assert "serve" in [c.name for c in COMMANDS]


def test_bad_settings_exit_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--api-key", "secret", "--data-dir", "/tmp/unused"]) == 2
    assert "tml-" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--port", "not-a-number"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_serve_process_answers_and_stops_cleanly(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinkex_jax.cli", "serve", "--port", str(port), "--data-dir",
         str(tmp_path), "--base-model", "tinkex-jax/tiny", "--no-warm-up",
         "--log-level", "warning"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/api/v1"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                    health = json.loads(r.read())
                    assert health["status"] == "ok"
                    assert health["devices"] >= 1 and health["platform"] == "cpu"
                    break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        key = (tmp_path / "api_key").read_text().strip()  # made at start: printed below
        assert (tmp_path / "api_key").stat().st_mode & 0o077 == 0  # readable only by its user
        refused = urllib.request.Request(f"{url}/get_server_capabilities",
                                         headers={"X-API-Key": "tml-guessed"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(refused, timeout=10)
        assert info.value.code == 401
        req = urllib.request.Request(f"{url}/get_server_capabilities",
                                     headers={"X-API-Key": key})
        with urllib.request.urlopen(req, timeout=10) as r:
            models = json.loads(r.read())["supported_models"]
        assert [m["model_name"] for m in models] == ["tinkex-jax/tiny"]
        assert (tmp_path / "tinkex.sqlite3").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
        err = proc.stderr.read() if proc.stderr else ""
    assert code == 0, err
    assert "Traceback" not in err
    assert f"http://127.0.0.1:{port}" in err
    assert f"TINKER_API_KEY={key}" in err  # the connect line gives the key it made
