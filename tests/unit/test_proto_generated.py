"""The committed protobuf module is generated from the committed .proto file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROTO = "tinkex_jax/wire/tinker_public.proto"


def test_generated_module_is_up_to_date(tmp_path):
    pytest.importorskip("grpc_tools")
    (tmp_path / "tinkex_jax" / "wire").mkdir(parents=True)
    (tmp_path / PROTO).write_bytes((REPO / PROTO).read_bytes())
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", ".", "--python_out=.", "--pyi_out=.",
         PROTO],
        cwd=tmp_path, check=True,
    )
    for name in ("tinker_public_pb2.py", "tinker_public_pb2.pyi"):
        fresh = (tmp_path / "tinkex_jax" / "wire" / name).read_text()
        committed = (REPO / "tinkex_jax" / "wire" / name).read_text()
        assert fresh == committed, (
            f"tinkex_jax/wire/{name} is stale: regenerate it with the command at the top of "
            f"{PROTO}")
