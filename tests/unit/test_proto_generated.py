"""The committed protobuf module is generated from the committed .proto file, by the protoc
that keeps it loadable on old protobuf runtimes (the command is at the top of the .proto)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PROTO = "tinkex_jax/wire/tinker_public.proto"
GENERATED = REPO / "tinkex_jax" / "wire" / "tinker_public_pb2.py"


def _without_json_names(file: Any) -> bytes:
    """`file` (a FileDescriptorProto) serialized without the fields' json_name, which a
    descriptor set carries and a generated module leaves out."""
    def strip(messages: Any) -> None:
        for message in messages:
            for field in message.field:
                field.ClearField("json_name")
            strip(message.nested_type)

    strip(file.message_type)
    return bytes(file.SerializeToString(deterministic=True))


def test_generated_module_describes_the_committed_proto(tmp_path: Path) -> None:
    """Whatever protoc the test environment has, the schema it compiles from the .proto is
    byte for byte the one the committed module registers."""
    pytest.importorskip("grpc_tools")
    (tmp_path / "tinkex_jax" / "wire").mkdir(parents=True)
    (tmp_path / PROTO).write_bytes((REPO / PROTO).read_bytes())
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", ".",
                    "--descriptor_set_out=schema.pb", PROTO], cwd=tmp_path, check=True)
    from google.protobuf import descriptor_pb2

    fresh = descriptor_pb2.FileDescriptorSet.FromString((tmp_path / "schema.pb").read_bytes())
    from tinkex_jax.wire import tinker_public_pb2

    committed = descriptor_pb2.FileDescriptorProto.FromString(
        tinker_public_pb2.DESCRIPTOR.serialized_pb)
    assert [_without_json_names(f) for f in fresh.file] == [_without_json_names(committed)], (
        f"tinkex_jax/wire/tinker_public_pb2.py is stale: regenerate it with the command at the "
        f"top of {PROTO}")


def test_generated_module_has_no_runtime_version_check() -> None:
    """protoc 26 and newer write a check that refuses any runtime older than the protoc;
    protoc 25.1's module loads on protobuf 4.21 and newer (pyproject's range)."""
    text = GENERATED.read_text()
    assert "# Protobuf Python Version: 4.25.1" in text
    assert "runtime_version" not in text
    pyi = GENERATED.with_suffix(".pyi").read_text()
    from tinkex_jax.wire import tinker_public_pb2

    messages = [m.name for m in tinker_public_pb2.DESCRIPTOR.message_types_by_name.values()]
    assert messages and all(f"class {name}(_message.Message)" in pyi for name in messages)
