"""The operations CLI end to end: ``tinkex run / checkpoint / sample`` against the real local
backend (tiny preset) over 127.0.0.1, compared with what the RestClient reports."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

import tinkex_jax
from tinkex_jax.cli import main
from tinkex_jax.local import serve


@dataclass
class World:
    base_url: str
    api_key: str
    service: Any
    rest: Any
    training: Any
    run_id: str
    state_path: str
    sampler_path: str

    def cli(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--base-url", self.base_url, "--api-key", self.api_key])
        out, err = capsys.readouterr()
        return code, out, err

    def cli_json(self, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
        code, out, err = self.cli(capsys, *argv, "--json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with serve(base_models=["tinkex-jax/tiny"],
               data_dir=tmp_path_factory.mktemp("cli-ops-data")) as server:
        service = tinkex_jax.ServiceClient(base_url=server.base_url, api_key=server.api_key,
                                           telemetry=False)
        training = service.create_lora_training_client("tinkex-jax/tiny", rank=4).result()
        state = training.save_state("first").result().path
        sampler = training.save_weights_for_sampler("first-sampler").result().path
        yield World(server.base_url, server.api_key, service, service.create_rest_client(),
                    training, training.model_id, state, sampler)
        service.close().result(timeout=60)


def builtins(value: Any) -> Any:
    return json.loads(json.dumps(msgspec.to_builtins(value)))


PYTHON_ADVICE = ("api_key=", "ServiceClient(", ".result()", "tinker auth login", "What to do:",
                 "RestClient.", "(ttl_seconds)", "..")


def assert_one_line_error(err: str) -> None:
    """One line, what happened then ``Fix:`` what to do, in command-line terms."""
    assert err.count("\n") == 1 and "Traceback" not in err and "Fix:" in err
    assert not [p for p in PYTHON_ADVICE if p in err], err


# ----------------------------------------------------------------------------- runs


def test_run_list_table_and_json(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = world.cli(capsys, "run", "list")
    assert code == 0, err
    header = out.splitlines()[1]
    assert header.split("  ")[0] == "Run ID" and "Base model" in header
    row = next(line for line in out.splitlines() if line.startswith(world.run_id))
    assert "tinkex-jax/tiny" in row and "rank 4" in row

    data = world.cli_json(capsys, "run", "list")
    expected = world.rest.list_training_runs(limit=20).result()
    assert data["training_runs"] == builtins(expected.training_runs)
    assert data["total_count"] == expected.cursor.total_count


def test_run_info_by_id_and_by_path(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    expected = builtins(world.rest.get_training_run(world.run_id).result())
    assert world.cli_json(capsys, "run", "info", world.run_id) == expected
    assert world.cli_json(capsys, "run", "info", world.state_path) == expected
    code, out, _ = world.cli(capsys, "run", "info", world.run_id)
    rows = {line.split("  ")[0]: line.split()[-1] for line in out.splitlines()}
    assert code == 0 and rows["Run ID"] == world.run_id and rows["LoRA"] == "4"
    assert rows["Last sampler checkpoint"] == world.sampler_path
    assert rows["Last training checkpoint"] == world.state_path


def test_run_list_shows_a_sampler_only_save_as_the_last_checkpoint(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    other = world.service.create_lora_training_client("tinkex-jax/tiny", rank=4).result()
    path = other.save_weights_for_sampler("only-sampler").result().path
    data = world.cli_json(capsys, "run", "list")
    run = next(r for r in data["training_runs"] if r["training_run_id"] == other.model_id)
    assert run["last_checkpoint"] is None and run["last_sampler_checkpoint"]["tinker_path"] == path
    code, out, err = world.cli(capsys, "run", "list")
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith(other.model_id))
    assert "sampler_weights/only-sampler" in row
    code, out, _ = world.cli(capsys, "run", "list", "--columns", "id,checkpoint,owner")
    assert out.splitlines()[1].split() == ["Run", "ID", "Last", "checkpoint", "Owner"]
    code, _, err = world.cli(capsys, "run", "info", other.model_id)
    assert code == 0


def test_unknown_run_is_one_clear_line(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = world.cli(capsys, "run", "info", "no-such-run")
    assert code == 1 and out == ""
    assert_one_line_error(err)
    assert err.startswith("tinkex run info: training run 'no-such-run' was not found")
    assert world.api_key not in err


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_list_all_and_per_run(world: World,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = world.cli(capsys, "checkpoint", "list")
    assert code == 0, err
    assert world.state_path in out and world.sampler_path in out
    assert "Checkpoint ID" in out and "training" in out and "sampler" in out

    data = world.cli_json(capsys, "checkpoint", "list")
    assert data["checkpoints"] == builtins(world.rest.list_user_checkpoints().result()
                                           .checkpoints)
    per_run = world.cli_json(capsys, "checkpoint", "list", "--run-id", world.run_id)
    listed = world.rest.list_checkpoints(world.run_id).result().checkpoints
    newest_first = sorted(listed, key=lambda c: c.time, reverse=True)
    assert per_run["checkpoints"] == builtins(newest_first)
    # one order: the run's checkpoints appear in the full list in the same order
    mine = [c["tinker_path"] for c in data["checkpoints"]
            if c["tinker_path"].startswith(f"tinker://{world.run_id}/")]
    assert mine == [c["tinker_path"] for c in per_run["checkpoints"]]
    limited = world.cli_json(capsys, "checkpoint", "list", "--limit", "1")
    assert len(limited["checkpoints"]) == 1 and limited["total_count"] >= 2


def _info(world: World, capsys: pytest.CaptureFixture[str], path: str) -> dict[str, Any]:
    data: dict[str, Any] = world.cli_json(capsys, "checkpoint", "info", path)
    return data


def test_checkpoint_info_matches_the_rest_client(world: World,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    listed = world.rest.list_checkpoints(world.run_id).result().checkpoints
    expected = next(c for c in listed if c.tinker_path == world.sampler_path)
    assert _info(world, capsys, world.sampler_path) == builtins(expected)
    code, out, _ = world.cli(capsys, "checkpoint", "info", world.sampler_path)
    assert code == 0 and "Base model     tinkex-jax/tiny" in out and "Type           sampler" in out

    missing = world.state_path.rsplit("/", 1)[0] + "/missing"
    code, out, err = world.cli(capsys, "checkpoint", "info", missing)
    assert code == 1 and out == "" and f"checkpoint {missing} was not found" in err
    assert_one_line_error(err)
    code, _, err = world.cli(capsys, "checkpoint", "info", "not-a-path")
    assert code == 2
    assert_one_line_error(err)


def test_publish_unpublish_and_ttl_change_what_info_reports(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    path = world.training.save_state("published").result().path
    assert _info(world, capsys, path)["public"] is False
    code, out, _ = world.cli(capsys, "checkpoint", "publish", path)
    assert code == 0 and out.strip() == f"{path} is now public."
    assert _info(world, capsys, path)["public"] is True
    assert world.cli_json(capsys, "checkpoint", "publish", path)["public"] is True  # again: fine
    assert world.cli_json(capsys, "checkpoint", "unpublish", path)["public"] is False
    assert _info(world, capsys, path)["public"] is False

    assert _info(world, capsys, path)["expires_at"] is None
    code, out, _ = world.cli(capsys, "checkpoint", "set-ttl", path, "7200")
    assert code == 0 and "expires: 20" in out
    code, out, err = world.cli(capsys, "checkpoint", "set-ttl", path, "--ttl", "60")
    assert code == 2 and out == ""
    assert_one_line_error(err)
    assert "--ttl 60 is too short" in err and "3600" in err and "ttl_seconds" not in err
    assert world.cli_json(capsys, "checkpoint", "set-ttl", path, "--ttl", "7200")["expires_at"]
    expires = _info(world, capsys, path)["expires_at"]
    ahead = dt.datetime.fromisoformat(expires.replace("Z", "+00:00")) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(seconds=7100) < ahead <= dt.timedelta(seconds=7200)
    listed = world.rest.list_checkpoints(world.run_id).result().checkpoints
    assert builtins(next(c for c in listed if c.tinker_path == path))["expires_at"] == expires
    assert world.cli_json(capsys, "checkpoint", "set-ttl", path, "--remove")["expires_at"] is None
    assert _info(world, capsys, path)["expires_at"] is None


def test_delete_really_deletes(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    doomed = world.training.save_state("doomed").result().path
    also = world.training.save_weights_for_sampler("doomed-sampler").result().path
    code, out, _ = world.cli(capsys, "checkpoint", "list")
    assert doomed in out and also in out

    code, out, err = world.cli(capsys, "checkpoint", "delete", doomed, also, "--yes")
    assert code == 0, err
    assert out.splitlines() == [f"Deleted {doomed}", f"Deleted {also}"]
    code, out, _ = world.cli(capsys, "checkpoint", "list")
    assert doomed not in out and also not in out and world.state_path in out
    remaining = [c.tinker_path for c in world.rest.list_checkpoints(world.run_id).result()
                 .checkpoints]
    assert doomed not in remaining and also not in remaining

    code, out, err = world.cli(capsys, "checkpoint", "delete", doomed, "--yes")
    assert code == 1 and out == "" and f"could not delete {doomed}" in err
    data = json.loads(world.cli(capsys, "checkpoint", "delete", doomed, "--yes", "--json")[1])
    assert data["deleted"] == [] and data["failed"][0]["tinker_path"] == doomed


def test_delete_a_runs_selection(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    training = world.service.create_lora_training_client("tinkex-jax/tiny", rank=4).result()
    kept = training.save_state("kept").result().path
    gone = [training.save_weights_for_sampler(f"s{i}").result().path for i in range(2)]
    run = training.model_id
    data = world.cli_json(capsys, "checkpoint", "delete", "--run-id", run, "--type",
                          "sampler_weights", "--after", "2000-01-01", "--yes")
    assert sorted(data["deleted"]) == sorted(gone) and data["deleted_count"] == 2
    left = [c.tinker_path for c in world.rest.list_checkpoints(run).result().checkpoints]
    assert left == [kept]
    data = world.cli_json(capsys, "checkpoint", "delete", "--run-id", run, "--before",
                          "2000-01-01", "--yes")
    assert data == {"deleted": [], "deleted_count": 0, "failed": []}
    for argv in (["checkpoint", "delete", kept, "--run-id", run, "--yes"],
                 ["checkpoint", "delete", kept, "--type", "weights", "--yes"],
                 ["checkpoint", "delete", "--yes"]):
        code, out, err = world.cli(capsys, *argv)
        assert code == 2 and out == ""
        assert_one_line_error(err)
    assert [c.tinker_path for c in world.rest.list_checkpoints(run).result().checkpoints] == [
        kept]


# ----------------------------------------------------------------------------- download


def _adapter_ok(directory: Path) -> None:
    from safetensors.numpy import load_file

    assert sorted(p.name for p in directory.iterdir()) == ["adapter_config.json",
                                                           "adapter_model.safetensors"]
    config = json.loads((directory / "adapter_config.json").read_text())
    assert config["r"] == 4
    tensors = load_file(str(directory / "adapter_model.safetensors"))
    assert tensors and all("lora_" in name for name in tensors)


def test_download_training_checkpoint(world: World, capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    code, out, err = world.cli(capsys, "checkpoint", "download", world.state_path,
                               "--output", str(tmp_path))
    assert code == 0, err
    (target,) = list(tmp_path.iterdir())  # no staging leftovers
    assert target.name == world.state_path[len("tinker://"):].replace(":", "_").replace("/", "_")
    assert f"to {target}: 2 files" in out and "adapter_model.safetensors" in out
    _adapter_ok(target)
    kinds = {c.checkpoint_type for c in world.rest.list_user_checkpoints(limit=1000).result()
             .checkpoints}
    assert "external" not in kinds  # the temporary export was deleted again

    code, _, err = world.cli(capsys, "checkpoint", "download", world.state_path,
                             "--output", str(tmp_path))
    assert code == 1 and "already exists" in err and "--force" in err
    data = world.cli_json(capsys, "checkpoint", "download", world.state_path,
                          "--output", str(tmp_path), "--force")
    assert data["destination"] == str(target) and data["files"] == [
        "adapter_config.json", "adapter_model.safetensors"]
    assert data["size_bytes"] == sum(p.stat().st_size for p in target.iterdir())
    # the stored size (what `checkpoint info` shows) comes with it, and the table says why
    # the two differ
    assert data["stored_size_bytes"] == _info(world, capsys, world.state_path)["size_bytes"]
    assert data["stored_size_bytes"] != data["size_bytes"]
    assert "as stored on the server" in out and "`tinkex checkpoint info`" in out
    _adapter_ok(target)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_download_external_and_sampler_checkpoints(world: World,
                                                   capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    external = world.training.save_weights_external("exported").result().path
    data = world.cli_json(capsys, "checkpoint", "download", external, "--output",
                          str(tmp_path))
    _adapter_ok(Path(data["destination"]))
    assert external in [c.tinker_path for c in world.rest.list_checkpoints(world.run_id)
                        .result().checkpoints]  # a real export is kept
    data = world.cli_json(capsys, "checkpoint", "download", world.sampler_path, "--output",
                          str(tmp_path))
    _adapter_ok(Path(data["destination"]))

    missing = world.run_id.join(["tinker://", "/weights/missing"])
    code, out, err = world.cli(capsys, "checkpoint", "download", missing, "--output",
                               str(tmp_path / "none"))
    assert code == 1 and out == "" and "Traceback" not in err
    assert not (tmp_path / "none").exists() or not any((tmp_path / "none").iterdir())


# ----------------------------------------------------------------------------- sample


def test_sample_prints_text(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = world.cli(capsys, "sample", "--base-model", "tinkex-jax/tiny", "hello",
                               "--max-tokens", "6", "--num-samples", "2", "--seed", "3",
                               "--temperature", "0.8")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("--- sample 1/2 (") and "stop: " in lines[0]
    assert any(line.startswith("--- sample 2/2 (") for line in lines)

    data = world.cli_json(capsys, "sample", "--model-path", world.sampler_path, "hello",
                          "--max-tokens", "6", "--num-samples", "3", "--seed", "3")
    tokenizer = world.training.get_tokenizer()
    assert data["base_model"] == "tinkex-jax/tiny"
    assert data["prompt_tokens"] == tokenizer.encode("hello")
    assert len(data["samples"]) == 3
    for sample in data["samples"]:
        assert 1 <= len(sample["tokens"]) <= 6
        assert sample["text"] == tokenizer.decode(sample["tokens"], skip_special_tokens=True)
        assert sample["stop_reason"] in ("length", "stop")

    by_ids = world.cli_json(capsys, "sample", "--model-path", world.sampler_path,
                            ",".join(map(str, data["prompt_tokens"])), "--prompt-tokens",
                            "--max-tokens", "6", "--num-samples", "3", "--seed", "3")
    assert by_ids["prompt_tokens"] == data["prompt_tokens"]


def test_sample_errors(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = world.cli(capsys, "sample", "--model-path", "tinker://x/y", "hi")
    assert code == 2
    assert_one_line_error(err)
    code, _, err = world.cli(capsys, "sample", "--base-model", "tinkex-jax/tiny", "hi",
                             "--temperature", "-1")
    assert code == 2 and err.startswith("tinkex sample: --temperature: expected a number >= 0")
    assert_one_line_error(err)
