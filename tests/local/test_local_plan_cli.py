"""``tinkex plan``: per-device memory of training and sampling from the compiled programs, for
a preset, a model directory or a ``config.json``, on this host's devices or on more simulated
ones, and whether it fits a named device or a memory size."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest

import tinkex_jax.cli.commands.plan as plan_command
from tinkex_jax.cli import main
from tinkex_jax.local.model.hf import config_from_hf
from tinkex_jax.local.model.plan import DEVICE_MEMORY, plan_memory

QWEN3_FEW_LAYERS = {  # Qwen3-0.6B's shapes with 2 of its 28 layers
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936,
    "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 2,
    "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
    "tie_word_embeddings": True, "max_position_embeddings": 40960, "rope_theta": 1e6,
    "rms_norm_eps": 1e-6, "torch_dtype": "bfloat16",
}


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["plan", *argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_the_module_examples_run() -> None:
    result = doctest.testmod(plan_command, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted >= 5


@pytest.mark.parametrize(("argv", "needle"), [
    ([], "needs one model"),
    (["tinkex-jax/tiny", "--config", "config.json"], "needs one model"),
    (["tinkex-jax/tiny", "--device", "a900"], "h100"),  # the known names are listed
    (["tinkex-jax/tiny", "--devices", "1", "--mesh", "fsdp=2"], "--mesh"),
    (["tinkex-jax/tiny", "--mesh", "gpus=2"], "--mesh"),
    (["no/such-model"], "preset"),
    (["--config", "/no/such/config.json"], "--config"),
])
def test_bad_requests_exit_2_and_say_what_to_do(argv: list[str], needle: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["plan", *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err and "Fix:" in err


def test_a_bad_memory_size_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", "tinkex-jax/tiny", "--memory", "lots"])
    assert exit_info.value.code == 2
    assert "80GiB" in capsys.readouterr().err


def test_plan_of_a_preset_says_whether_it_fits(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "tinkex-jax/tiny", "--seq-len", "64", "--device", "t4"]) == 0
    text = capsys.readouterr().out
    for line in ("Training peak / device", "Sampling peak / device", "On t4", "fits:",
                 "1 cpu (mesh fsdp=1,tp=1)", "Compiled for CPU"):
        assert line in text, (line, text)
    data = run_json(capsys, "tinkex-jax/tiny", "--seq-len", "64", "--memory", "1KiB")
    expected = plan_memory("tinkex-jax/tiny", seq_len=64)
    assert data["train_peak_bytes_per_device"] == expected.train_peak_bytes_per_device
    assert data["sample_peak_bytes_per_device"] == expected.sample_peak_bytes_per_device
    assert data["device"]["bytes_per_device"] == 1024 and data["fits"] is False
    assert data["devices"] == 1 and data["mesh"] == {"fsdp": 1, "tp": 1}
    big = run_json(capsys, "tinkex-jax/tiny", "--seq-len", "64", "--device", "h200")
    assert big["fits"] is True
    assert big["device"] == {"name": "h200", "devices": 1,
                             "bytes_per_device": DEVICE_MEMORY["h200"][1],
                             "usable_fraction": 0.9, "fits": True}


@pytest.mark.slow
def test_plan_of_a_qwen3_config_json_and_its_directory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = tmp_path / "qwen3-2-layers"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(QWEN3_FEW_LAYERS))
    flags = ("--seq-len", "2048", "--dtype", "bfloat16", "--rank", "16")
    by_file = run_json(capsys, "--config", str(model_dir / "config.json"), *flags)
    assert by_file["dtype"] == "bfloat16" and by_file["rank"] == 16
    assert by_file["config"]["hidden_size"] == 1024
    assert by_file["config"]["num_hidden_layers"] == 2
    assert (by_file["remat"], by_file["attention"]) == ("full", "chunked")  # the CPU defaults
    params = by_file["params_bytes_per_device"]
    assert params == 2 * config_from_hf(QWEN3_FEW_LAYERS).num_params()  # bfloat16
    assert by_file["train_peak_bytes_per_device"] > params
    assert by_file["sample_peak_bytes_per_device"] > params
    by_dir = run_json(capsys, str(model_dir), *flags)
    assert by_dir["train_peak_bytes_per_device"] == by_file["train_peak_bytes_per_device"]
    assert main(["plan", str(model_dir), *flags, "--memory", "16GB"]) == 0
    assert "On --memory" in capsys.readouterr().out


@pytest.mark.slow
def test_planning_for_a_tpu_pod_runs_on_eight_simulated_devices(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A TPU v2-8 has 8 devices: on this 1-device CPU host the command re-runs itself with
    8 simulated devices, and the weights split 8 ways."""
    data = run_json(capsys, "tinkex-jax/small", "--seq-len", "256", "--device", "tpu-v2-8",
                    "--mesh", "tp=2")
    assert data["devices"] == 8 and data["mesh"] == {"fsdp": 4, "tp": 2}
    assert data["device"]["name"] == "tpu-v2-8" and data["device"]["devices"] == 8
    one = plan_memory("tinkex-jax/small", seq_len=256)
    assert data["params_bytes_per_device"] < one.params_bytes_per_device / 4
    assert data["batch"] % 4 == 0  # rows padded to a multiple of the data axis
