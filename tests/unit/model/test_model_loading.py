"""Streaming loader: tensor by tensor into the target dtype, host peak bounded.

The host-peak check generates a 120 MB two-shard checkpoint, loads it in a fresh interpreter
and reads the peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` just
before loading). Linux only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from tinkex_jax.errors import ValidationError
from tinkex_jax.local.model import ModelConfig, config_to_hf, load_hf_directory
from tinkex_jax.local.model.hf import SafetensorsSource

REPO = Path(__file__).resolve().parents[3]

MEASURE = textwrap.dedent('''
    import json, sys
    import jax, jax.numpy as jnp
    jax.block_until_ready(jax.jit(lambda x: x + 1)(jnp.ones(4)))
    from tinkex_jax.local.model.hf import load_hf_directory

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set
    before = status("VmRSS")
    model = load_hf_directory(sys.argv[1], dtype=sys.argv[2]).model
    jax.block_until_ready(model.params)
    print(json.dumps({"peak": status("VmHWM") - before,
                      "params": sum(x.nbytes for x in jax.tree.leaves(model.params)),
                      "dtype": str(model.params["embed"].dtype)}))
''')


def _write_checkpoint(root: Path, config: ModelConfig, dtype) -> int:
    """A random Hugging Face checkpoint in two shards; returns its tensor bytes."""
    rng = np.random.default_rng(0)
    hf = config_to_hf(config)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(hf))
    d, q, kv, f, V = config.d_model, config.q_dim, config.kv_dim, config.d_ff, config.vocab_size

    def t(*shape):
        return (rng.standard_normal(shape, np.float32) * 0.02).astype(dtype)

    shards: list[dict[str, np.ndarray]] = [{"model.embed_tokens.weight": t(V, d)},
                                           {"model.norm.weight": np.ones(d, dtype)}]
    if not config.tie_embeddings:
        shards[1]["lm_head.weight"] = t(V, d)
    for i in range(config.n_layers):
        p, s = f"model.layers.{i}.", shards[i * 2 // config.n_layers]
        s[p + "input_layernorm.weight"] = np.ones(d, dtype)
        s[p + "post_attention_layernorm.weight"] = np.ones(d, dtype)
        s[p + "self_attn.q_proj.weight"] = t(q, d)
        s[p + "self_attn.k_proj.weight"] = t(kv, d)
        s[p + "self_attn.v_proj.weight"] = t(kv, d)
        s[p + "self_attn.o_proj.weight"] = t(d, q)
        s[p + "mlp.gate_proj.weight"] = t(f, d)
        s[p + "mlp.up_proj.weight"] = t(f, d)
        s[p + "mlp.down_proj.weight"] = t(d, f)
    weight_map = {}
    for j, shard in enumerate(shards):
        name = f"model-{j + 1:05d}-of-00002.safetensors"
        save_file(shard, str(root / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return sum(a.nbytes for s in shards for a in s.values())


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_host_peak_while_loading_stays_under_one_and_a_half_checkpoints(tmp_path, dtype):
    config = ModelConfig(vocab_size=16000, d_model=512, n_layers=8, n_heads=8, n_kv_heads=4,
                         d_ff=2048, tie_embeddings=False)
    np_dtype = np.float32 if dtype == "float32" else ml_dtypes.bfloat16
    size = _write_checkpoint(tmp_path / "ckpt", config, np_dtype)
    assert size > (60 << 20)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / "ckpt"), dtype],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["dtype"] == dtype and got["params"] == size
    assert got["peak"] <= 1.5 * size, got


def test_reader_reads_row_blocks_and_rejects_broken_files(tmp_path):
    path = tmp_path / "w.safetensors"
    arr = np.arange(24, dtype=np.float32).reshape(6, 4)
    save_file({"w": arr, "b": arr.astype(ml_dtypes.bfloat16)}, str(path))
    with SafetensorsSource([path]) as src:
        np.testing.assert_array_equal(src.read("w"), arr)
        np.testing.assert_array_equal(src.read("w", (slice(2, 5), slice(1, 3))), arr[2:5, 1:3])
        assert src.dtype("b") == np.dtype(ml_dtypes.bfloat16)
        np.testing.assert_array_equal(src.read("b", (slice(4, 6),)).astype(np.float32),
                                      arr[4:6])
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 4)
    with pytest.raises(ValidationError, match=r"readable \.safetensors"):
        SafetensorsSource([broken])


def test_missing_or_misshapen_tensors_are_named(tmp_path):
    config = ModelConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1,
                         d_ff=32)
    _write_checkpoint(tmp_path / "ok", config, np.float32)
    loaded = load_hf_directory(tmp_path / "ok")
    assert loaded.model.params["layers"]["wq"].shape == (2, 16, 16)
    assert isinstance(loaded.model.params["embed"], jax.Array)
    bad = dict(json.loads((tmp_path / "ok" / "config.json").read_text()), intermediate_size=48)
    (tmp_path / "ok" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValidationError, match=r"mlp\.\w+_proj\.weight.: expected shape \[(16, 48|48, 16)\]"):
        load_hf_directory(tmp_path / "ok")
