"""Sharding over a device mesh: the same losses, logprobs and samples as one device.

JAX fixes its device count when it starts, so the check runs in a fresh interpreter with four
simulated CPU devices (``--xla_force_host_platform_device_count=4``) and reports JSON; the
assertions are made here. Meshes: ``fsdp=4`` (also with micro-batching) and
``fsdp=2, tp=2``. Float32 throughout; tolerances are float32 reduction-order noise
(measured: losses within 1e-7 relative, logprobs within 4e-6). About 2 minutes on 2 cores,
hence ``slow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tinkex_jax.local.model.sharding import make_mesh, mesh_shape, parse_mesh

REPO = Path(__file__).resolve().parents[3]

SCRIPT = textwrap.dedent('''
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    sys.path.insert(0, sys.argv[1])
    from tests.support.model_testlib import CFG, cross_entropy, reversal_datum
    from tinkex_jax.local.model import (LoraSpec, Model, Sampler, forward_backward, init_lora,
        init_optimizer, init_params, make_batch, optim_step, split_outputs)
    from tinkex_jax.local.model.hf import params_from_hf, params_to_hf
    from tinkex_jax.local.model.options import RunOptions
    from tinkex_jax.local.model import sharding as shd

    words = ["cat", "horse", "zebra", "ab", "python", "lizard", "owl"]
    batch, layout = make_batch([reversal_datum(w) for w in words])
    params = init_params(CFG, seed=0)

    def run(model, lora, modes=("merged", "shared")):
        opt = init_optimizer(lora)
        steps = []
        for _ in range(3):
            out, grads = forward_backward(model, lora, batch, cross_entropy)
            lps = [d["logprobs"] for d in split_outputs(out, layout)]
            steps.append((float(out.loss), lps))
            lora, opt, _ = optim_step(lora, opt, grads, {"learning_rate": 1e-2})
        samples = {}
        for mode in modes:
            m = Model(model.params, model.config,
                      RunOptions(mesh=model.options.mesh, sampler_weights=mode))
            res = Sampler(m, lora).sample([5, 6, 7, 8], num_samples=4, max_tokens=12, seed=3,
                                          prompt_logprobs=True)
            samples[mode] = ([s.tokens for s in res.sequences],
                             [s.logprobs for s in res.sequences], res.prompt_logprobs[1:])
        return steps, samples, lora, opt

    ref_steps, ref_samples, _, _ = run(Model(params, CFG), init_lora(CFG, LoraSpec(rank=4)))
    report = {"devices": len(jax.devices())}
    # each sampler-weights mode is checked on one mesh (sampling does not depend on the
    # training step's micro-batching): a sampler compiles once per mode and mesh
    for name, sizes, budget, modes in (("fsdp4", {"fsdp": 4, "tp": 1}, 0, ("merged",)),
                                       ("fsdp4_micro", {"fsdp": 4, "tp": 1}, 4 * 16, ()),
                                       ("fsdp2_tp2", {"fsdp": 2, "tp": 2}, 0, ("shared",))):
        mesh = shd.make_mesh(**sizes)
        loaded = params_from_hf(params_to_hf(params, CFG), CFG, mesh=mesh)
        model = Model(loaded, CFG, RunOptions(mesh=mesh, token_budget=budget))
        lora = init_lora(CFG, LoraSpec(rank=4), mesh=mesh)
        steps, samples, lora_after, opt_after = run(model, lora, modes)
        want_params = shd.param_shardings(params, mesh)
        want_lora = shd.lora_shardings(lora_after.weights, mesh)
        want_opt = shd.optimizer_shardings(opt_after, lora_after.weights, mesh)

        def same(tree, want):
            return all(x.sharding.is_equivalent_to(s, x.ndim)
                       for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(want)))

        report[name] = {
            "params_equal": all(bool(np.array_equal(np.asarray(a), np.asarray(b)))
                                for a, b in zip(jax.tree.leaves(loaded),
                                                jax.tree.leaves(params))),
            "params_on_all_devices": all(len(x.sharding.device_set) == 4
                                         for x in jax.tree.leaves(loaded)),
            "param_shardings": same(loaded, want_params),
            "lora_shardings": same(lora_after.weights, want_lora),
            "opt_shardings": same(opt_after, want_opt),
            "wq_spec": list(loaded["layers"]["wq"].sharding.spec),
            "loss_rel": max(abs(a[0] - b[0]) / abs(b[0]) for a, b in zip(steps, ref_steps)),
            "logprob_abs": max(float(np.max(np.abs(x - y))) for a, b in zip(steps, ref_steps)
                               for x, y in zip(a[1], b[1])),
            "samples": {mode: {
                "tokens_equal": samples[mode][0] == ref_samples[mode][0],
                "logprob_abs": max(float(np.max(np.abs(np.subtract(x, y))))
                                   for x, y in zip(samples[mode][1], ref_samples[mode][1])),
                "prompt_abs": float(np.max(np.abs(np.subtract(samples[mode][2],
                                                               ref_samples[mode][2])))),
            } for mode in samples},
        }
    from tinkex_jax.local.model.plan import plan_memory
    one = plan_memory(CFG, seq_len=64, batch=4, rank=4)
    four = plan_memory(CFG, seq_len=64, batch=4, rank=4, mesh={"fsdp": 4})
    report["plan"] = {"params_ratio": one.params_bytes_per_device / four.params_bytes_per_device,
                      "train_ratio": one.train_peak_bytes_per_device
                      / four.train_peak_bytes_per_device, "mesh": four.mesh}
    print(json.dumps(report))
''')


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fsdp4", "fsdp4_micro", "fsdp2_tp2"])
def test_sharded_training_and_sampling_match_one_device(report, name):
    assert report["devices"] == 4
    got = report[name]
    assert got["params_equal"] and got["params_on_all_devices"]
    assert got["param_shardings"] and got["lora_shardings"] and got["opt_shardings"]
    assert got["loss_rel"] < 1e-5
    assert got["logprob_abs"] < 5e-5
    for mode, sample in got["samples"].items():
        assert sample["tokens_equal"], mode
        assert sample["logprob_abs"] < 1e-4 and sample["prompt_abs"] < 5e-5, mode


@pytest.mark.slow
def test_tensor_parallel_axis_splits_the_output_side(report):
    assert report["fsdp2_tp2"]["wq_spec"] == [None, "fsdp", "tp"]


@pytest.mark.slow
def test_plans_on_a_mesh_are_per_device(report):
    plan = report["plan"]
    assert plan["mesh"] == {"fsdp": 4, "tp": 1}
    assert 3.5 < plan["params_ratio"] <= 4.0   # norms are replicated, matrices split in four
    assert plan["train_ratio"] > 2.0           # activations and weights split over the data axis


def test_mesh_helpers_check_their_input():
    from tinkex_jax.errors import ValidationError

    assert parse_mesh("fsdp=4, tp=2") == {"fsdp": 4, "tp": 2}
    assert mesh_shape(make_mesh()) == {"fsdp": 1, "tp": 1}
    with pytest.raises(ValidationError, match="fsdp=N"):
        parse_mesh("dp=2")
    with pytest.raises(ValidationError, match="fsdp \\* tp"):
        make_mesh(fsdp=3)
