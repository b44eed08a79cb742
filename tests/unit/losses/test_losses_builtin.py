"""Built-in Tinker losses: NumPy references, registry, masks, gradients, tracing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

import losses
from losses import BUILTIN_LOSSES, resolve_loss_config, validate_loss_request

SEED = 20240611
LOW, HIGH = 0.8, 1.2


# ------------------------------------------------------------------ NumPy references (§9)


def _lead(x: np.ndarray, ndim: int) -> np.ndarray:
    """Left-aligned broadcast helper: append trailing axes."""
    return x.reshape(x.shape + (1,) * (ndim - x.ndim))


def np_per_token(name, t, inputs, mask, cfg):
    """Straightforward per-token losses from docs/protocol.md §9, written with NumPy only."""
    m = np.broadcast_to(_lead(mask != 0, t.ndim), t.shape)
    x = {k: np.broadcast_to(_lead(v, t.ndim), t.shape) for k, v in inputs.items()}
    low = cfg.get("clip_low_threshold", LOW)
    high = cfg.get("clip_high_threshold", HIGH)
    if name == "cross_entropy":
        out = -t * x["weights"]
    elif name == "importance_sampling":
        out = -np.exp(t - x["logprobs"]) * x["advantages"]
    elif name == "ppo":
        r = np.exp(t - x["logprobs"])
        a = x["advantages"]
        out = -np.minimum(r * a, np.clip(r, low, high) * a)
    elif name == "cispo":
        r = np.exp(t - x["logprobs"])
        out = -np.clip(r, low, high) * t * x["advantages"]
    elif name == "dro":
        beta = cfg.get("beta", 0.05)
        out = -(t * x["advantages"] - 0.5 * beta * (t - x["logprobs"]) ** 2)
    elif name == "stable_reinforce":
        cap = cfg.get("ratio_cap", 2.0)
        limit = cfg.get("sequence_ratio_limit", 2.0)
        kl = cfg.get("kl_coeff", 0.0)
        out = np.zeros_like(t)
        for b in range(t.shape[0]):
            use = m[b] & (x["sampled_mask"][b] != 0)
            rho = t[b] - x["sampled_logprobs"][b]
            keep = abs(rho[use].mean() if use.any() else 0.0) <= np.log(limit)
            w = np.minimum(np.exp(rho), cap)
            per = -w * x["advantages"][b] * t[b] + 0.5 * kl * rho**2
            out[b] = np.where(use & keep, per, 0.0)
    elif name == "gspo":
        out = np.zeros_like(t)
        for b in range(t.shape[0]):  # each datum separately, as the formula reads
            use = m[b] & (x["sequence_ratio_mask"][b] != 0)
            diffs = (t[b] - x["logprobs"][b])[use]
            s = np.exp(diffs.mean()) if diffs.size else 1.0
            a = x["advantages"][b]
            out[b] = -np.minimum(s * a, np.clip(s, low, high) * a)
    else:
        raise AssertionError(name)
    return np.where(m, out, 0.0)


def np_grad(name, t, inputs, mask, cfg):
    """Analytic d(sum loss)/d target_logprobs for the stop-gradient losses."""
    m = np.broadcast_to(_lead(mask != 0, t.ndim), t.shape)
    x = {k: np.broadcast_to(_lead(v, t.ndim), t.shape) for k, v in inputs.items()}
    a = x["advantages"]
    if name == "cispo":
        return np.where(m, -np.clip(np.exp(t - x["logprobs"]), LOW, HIGH) * a, 0.0)
    if name == "stable_reinforce":
        g = np.zeros_like(t)
        for b in range(t.shape[0]):
            use = m[b] & (x["sampled_mask"][b] != 0)
            rho = t[b] - x["sampled_logprobs"][b]
            keep = abs(rho[use].mean() if use.any() else 0.0) <= np.log(2.0)
            g[b] = np.where(use & keep, -np.minimum(np.exp(rho), 2.0) * a[b], 0.0)
        return g
    assert name == "gspo"
    g = np.zeros_like(t)
    for b in range(t.shape[0]):
        use = m[b] & (x["sequence_ratio_mask"][b] != 0)
        diffs = (t[b] - x["logprobs"][b])[use]
        s = np.exp(diffs.mean()) if diffs.size else 1.0  # datum 2 has an empty M
        inside = (s > LOW) & (s < HIGH)
        unclipped = s * a[b] < np.clip(s, LOW, HIGH) * a[b]
        g[b] = np.where(inside | unclipped, -a[b] * s, 0.0)
    return np.where(m, g, 0.0)


def make_case(name, *, k=None, seed=SEED, dtype=np.float32):
    rng = np.random.default_rng(seed)
    b, t = 3, 7
    shape = (b, t) if k is None else (b, t, k)
    tl = -np.abs(rng.normal(1.0, 0.7, shape))
    s = tl + rng.normal(0.0, 0.25, shape)  # ratios around 1: some clipped, some not
    mask = np.ones((b, t))
    mask[0, 5:] = 0
    mask[2, 2:] = 0
    inputs = {}
    for key in BUILTIN_LOSSES[name].required_inputs:
        if key == "weights":
            inputs[key] = rng.uniform(0.1, 1.0, shape)
        elif key in ("logprobs", "sampled_logprobs"):
            inputs[key] = s
        elif key == "advantages":
            inputs[key] = rng.normal(0.0, 1.0, (b, t))  # [B,T] even for [B,T,K] targets
        elif key in ("sequence_ratio_mask", "sampled_mask"):
            srm = np.ones((b, t))
            srm[:, :2] = 0  # e.g. the prompt
            inputs[key] = srm
    cast = {k: v.astype(dtype) for k, v in inputs.items()}
    return tl.astype(dtype), cast, mask.astype(dtype)


def call_public(name, t, inputs, *, where, reduction, **cfg):
    fn = getattr(losses, name)
    if name == "cross_entropy":
        return fn(t, inputs["weights"], where=where, reduction=reduction)
    if name == "stable_reinforce":  # where= marks the sampled tokens
        return fn(t, inputs["sampled_logprobs"], inputs["advantages"],
                  where=where * inputs["sampled_mask"], reduction=reduction, **cfg)
    args = [t, inputs["logprobs"], inputs["advantages"]]
    if name == "gspo":
        args.append(inputs["sequence_ratio_mask"])
    return fn(*args, where=where, reduction=reduction, **cfg)


NAMES = sorted(BUILTIN_LOSSES)


def test_registry_contract():
    assert NAMES == ["cispo", "cross_entropy", "dro", "gspo", "importance_sampling", "ppo",
                     "stable_reinforce"]
    assert BUILTIN_LOSSES["stable_reinforce"].required_inputs == (
        "advantages", "sampled_logprobs", "sampled_mask")
    assert dict(BUILTIN_LOSSES["stable_reinforce"].config_defaults) == {
        "ratio_cap": 2.0, "sequence_ratio_limit": 2.0, "kl_coeff": 0.0}
    for n in NAMES:
        assert BUILTIN_LOSSES[n].spec is losses.LOSS_SPECS[n]
    assert BUILTIN_LOSSES["cross_entropy"].required_inputs == ("weights",)
    assert dict(BUILTIN_LOSSES["cross_entropy"].config_defaults) == {}
    for n in ("importance_sampling", "ppo", "cispo", "dro"):
        assert BUILTIN_LOSSES[n].required_inputs == ("logprobs", "advantages")
    assert BUILTIN_LOSSES["gspo"].required_inputs == (
        "logprobs",
        "advantages",
        "sequence_ratio_mask",
    )
    for n in ("ppo", "cispo", "gspo"):
        assert dict(BUILTIN_LOSSES[n].config_defaults) == {
            "clip_low_threshold": 0.8,
            "clip_high_threshold": 1.2,
        }
    assert dict(BUILTIN_LOSSES["dro"].config_defaults) == {"beta": 0.05}
    assert all(BUILTIN_LOSSES[n].name == n for n in NAMES)


@pytest.mark.parametrize("k", [None, 3], ids=["BT", "BTK"])
@pytest.mark.parametrize("name", NAMES)
def test_matches_numpy_reference(name, k):
    t, inputs, mask = make_case(name, k=k)
    expected = np_per_token(name, t.astype(np.float64), inputs, mask, {})
    per = call_public(name, t, inputs, where=mask, reduction="none")
    np.testing.assert_allclose(np.asarray(per), expected, rtol=2e-5, atol=1e-6)
    total = call_public(name, t, inputs, where=mask, reduction="sum")
    np.testing.assert_allclose(float(total), expected.sum(), rtol=2e-5, atol=1e-5)
    counted = mask * inputs["sampled_mask"] if name == "stable_reinforce" else mask
    count = np.broadcast_to(_lead(counted, t.ndim), t.shape).sum()
    mean = call_public(name, t, inputs, where=mask, reduction="mean")
    np.testing.assert_allclose(float(mean), expected.sum() / count, rtol=2e-5, atol=1e-6)
    # the registry's per_token agrees with the public function
    reg = BUILTIN_LOSSES[name].per_token(
        jnp.asarray(t), {kk: jnp.asarray(v) for kk, v in inputs.items()}, jnp.asarray(mask), {}
    )
    np.testing.assert_allclose(np.asarray(reg), np.asarray(per), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["ppo", "cispo", "dro", "gspo", "stable_reinforce"])
def test_config_values_are_used(name):
    t, inputs, mask = make_case(name)
    if name in ("ppo", "gspo"):
        # make clipping bind: positive advantages where the ratio is > 1, negative where < 1
        ratio = np.exp(t - inputs["logprobs"])
        if name == "gspo":
            ratio = np.exp(np.mean(t - inputs["logprobs"], axis=1, keepdims=True)) * np.ones_like(t)
        inputs["advantages"] = (np.sign(ratio - 1) * np.abs(inputs["advantages"])).astype(t.dtype)
    cfg = {"beta": 0.7} if name == "dro" else {"clip_low_threshold": 0.99, "clip_high_threshold": 1.01}
    if name == "stable_reinforce":
        cfg = {"ratio_cap": 1.05, "sequence_ratio_limit": 1.5, "kl_coeff": 0.5}
    reg = BUILTIN_LOSSES[name].per_token(t, inputs, mask, cfg)
    ref = np_per_token(name, t.astype(np.float64), inputs, mask, cfg)
    np.testing.assert_allclose(np.asarray(reg), ref, rtol=2e-5, atol=1e-6)
    default = BUILTIN_LOSSES[name].per_token(t, inputs, mask, {})
    assert not np.allclose(np.asarray(reg), np.asarray(default))
    public = call_public(name, t, inputs, where=mask, reduction="none", **cfg)
    np.testing.assert_allclose(np.asarray(public), np.asarray(reg), rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_masked_positions_are_exactly_zero_even_with_garbage(name):
    t, inputs, mask = make_case(name)
    bad = mask == 0
    t = np.where(bad, -np.inf, t).astype(np.float32)
    inputs = {k: np.where(bad, np.nan, v).astype(np.float32) for k, v in inputs.items()}
    fn = BUILTIN_LOSSES[name].per_token

    def total(tl):
        return jnp.sum(fn(tl, inputs, mask, {}))

    per = np.asarray(jax.jit(fn)(t, inputs, mask, {}))
    assert np.all(per[bad] == 0.0)
    assert np.all(np.isfinite(per))
    grad = np.asarray(jax.jit(jax.grad(total))(jnp.asarray(t)))
    assert np.all(np.isfinite(grad))
    assert np.all(grad[bad] == 0.0)


def test_mask_equals_slicing():
    """optax-style: masking the tail of a datum equals dropping it."""
    t, inputs, _ = make_case("ppo")
    mask = np.ones(t.shape, np.float32)
    mask[:, 4:] = 0
    full = losses.ppo(t, inputs["logprobs"], inputs["advantages"], where=mask, reduction="sum")
    sliced = losses.ppo(
        t[:, :4], inputs["logprobs"][:, :4], inputs["advantages"][:, :4], reduction="sum"
    )
    np.testing.assert_allclose(float(full), float(sliced), rtol=1e-6)


@pytest.mark.parametrize("name", ["cross_entropy", "importance_sampling", "ppo", "dro"])
def test_check_grads_float64_under_jit(name):
    with jax.enable_x64(True):
        t, inputs, mask = make_case(name, dtype=np.float64)
        fn = BUILTIN_LOSSES[name].per_token

        def total(tl):
            return jnp.sum(fn(tl, inputs, mask, {}))

        jitted = jax.jit(total)
        jax.test_util.check_grads(jitted, (jnp.asarray(t),), order=1, modes=("rev",))
        grad = np.asarray(jax.jit(jax.grad(total))(jnp.asarray(t)))
        assert grad.dtype == np.float64
        assert np.all(grad[mask == 0] == 0)
        real = mask != 0
        if name == "ppo":  # tokens inside the clip range carry a gradient
            r = np.exp(t - inputs["logprobs"])
            real = real & (r > LOW) & (r < HIGH)
            assert real.sum() > 3
        assert np.all(grad[real] != 0)


@pytest.mark.parametrize("name", ["cispo", "gspo", "stable_reinforce"])
def test_stop_gradient_losses_match_analytic_gradients(name):
    """cispo and gspo are surrogates with stop-gradients: finite differences of their
    *values* do not equal their gradients by design, so compare with the analytic ones."""
    with jax.enable_x64(True):
        t, inputs, mask = make_case(name, dtype=np.float64)
        fn = BUILTIN_LOSSES[name].per_token

        def total(tl):
            return jnp.sum(fn(tl, inputs, mask, {}))

        grad = np.asarray(jax.jit(jax.grad(total))(jnp.asarray(t)))
        expected = np_grad(name, t, inputs, mask, {})
        np.testing.assert_allclose(grad, expected, rtol=1e-10, atol=1e-12)
        assert np.count_nonzero(grad) > 3
        assert np.all(grad[mask == 0] == 0)


def test_gspo_token_axis_with_2d_targets():
    """[B,T,K] targets with a [B,T] mask: the sequence mean covers T x K of each datum."""
    t, inputs, mask = make_case("gspo", k=2)
    per = BUILTIN_LOSSES["gspo"].per_token(t, inputs, mask, {})
    ref = np_per_token("gspo", t.astype(np.float64), inputs, mask, {})
    np.testing.assert_allclose(np.asarray(per), ref, rtol=2e-5, atol=1e-6)
    # a single datum without a batch axis gives the same row
    one = losses.gspo(
        t[1], inputs["logprobs"][1], inputs["advantages"][1], inputs["sequence_ratio_mask"][1],
        where=mask[1], reduction="none",
    )
    np.testing.assert_allclose(np.asarray(one), np.asarray(per[1]), rtol=1e-6)


def test_config_changes_do_not_retrace():
    traces = []

    def counted(t, inputs, mask, config):
        traces.append(1)
        return BUILTIN_LOSSES["ppo"].per_token(t, inputs, mask, config)

    jitted = jax.jit(counted)
    t, inputs, mask = make_case("ppo")
    a = jitted(t, inputs, mask, {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2})
    b = jitted(t, inputs, mask, {"clip_low_threshold": 0.95, "clip_high_threshold": 1.01})
    c = jitted(t, inputs, mask, {"clip_low_threshold": 0.5, "clip_high_threshold": 2.0})
    assert len(traces) == 1
    assert not np.allclose(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(b), np.asarray(c))


def test_per_token_errors():
    t, inputs, mask = make_case("ppo")
    with pytest.raises(ValueError, match=r"missing loss_fn_inputs \['advantages'\]"):
        BUILTIN_LOSSES["ppo"].per_token(t, {"logprobs": inputs["logprobs"]}, mask, {})
    with pytest.raises(ValueError, match="does not accept loss_fn_config keys"):
        BUILTIN_LOSSES["ppo"].per_token(t, inputs, mask, {"beta": 1.0})
    with pytest.raises(ValueError, match=r"inputs\['advantages'\] has shape \(3, 6\)"):
        BUILTIN_LOSSES["ppo"].per_token(
            t, {**inputs, "advantages": inputs["advantages"][:, :6]}, mask, {}
        )


def test_public_function_errors():
    t, inputs, mask = make_case("ppo")
    with pytest.raises(TypeError):
        losses.ppo(t, inputs["logprobs"], inputs["advantages"])  # reduction is required
    with pytest.raises(ValueError, match="reduction must be one of"):
        losses.ppo(t, inputs["logprobs"], inputs["advantages"], reduction="avg")
    with pytest.raises(ValueError, match="sampling_logprobs has shape"):
        losses.ppo(t, inputs["logprobs"][:2], inputs["advantages"], reduction="sum")
    with pytest.raises(ValueError, match="where has shape"):
        losses.cross_entropy(t, t, where=mask[:, :3], reduction="sum")
    with pytest.raises(TypeError):
        losses.ppo(t, inputs["logprobs"], inputs["advantages"], mask, reduction="sum")


def test_validate_loss_request():
    validate_loss_request("cross_entropy", ["target_tokens", "weights"], [])
    validate_loss_request("gspo", ["target_tokens", "logprobs", "advantages",
                                   "sequence_ratio_mask"], ["clip_low_threshold"])
    with pytest.raises(ValueError) as e:
        validate_loss_request("ppo2", ["target_tokens"], [])
    assert "cispo, cross_entropy, dro, gspo, importance_sampling, ppo, stable_reinforce" in str(
        e.value)
    with pytest.raises(ValueError) as e:
        validate_loss_request("importance_sampling", ["target_tokens", "logprobs"], [])
    assert "missing ['advantages']" in str(e.value) and "Fix" in str(e.value)
    with pytest.raises(ValueError, match=r"missing \['target_tokens'\]"):
        validate_loss_request("cross_entropy", ["weights"], [])
    with pytest.raises(ValueError) as e:
        validate_loss_request("cross_entropy", ["target_tokens", "weights"], ["beta"])
    assert "accepted: none" in str(e.value)
    validate_loss_request("cross_entropy", ["target_tokens", "weights", "mask"], [])
    with pytest.raises(ValueError, match=r"does not use loss_fn_inputs \['mask'\]"):
        validate_loss_request(
            "cross_entropy", ["target_tokens", "weights", "mask"], [], allow_extra_inputs=False
        )


def test_resolve_loss_config():
    assert resolve_loss_config("dro", None) == {"beta": 0.05}
    assert resolve_loss_config("cispo", {"clip_low_threshold": 0.0, "clip_high_threshold": 4}) == {
        "clip_low_threshold": 0.0,
        "clip_high_threshold": 4.0,
    }
    with pytest.raises(ValueError, match="must be finite"):
        resolve_loss_config("dro", {"beta": float("nan")})
    with pytest.raises(ValueError, match="real number"):
        resolve_loss_config("dro", {"beta": "0.1"})
    with pytest.raises(ValueError, match="clip_low_threshold <= clip_high_threshold"):
        resolve_loss_config("ppo", {"clip_low_threshold": 1.5})
    with pytest.raises(ValueError, match="unknown loss_fn 'nope'"):
        resolve_loss_config("nope", {})
    with pytest.raises(ValueError, match="not a built-in loss this server computes"):
        resolve_loss_config("custom", {"loss_id": 3.0})
    assert resolve_loss_config("stable_reinforce", {"kl_coeff": 0.1}) == {
        "ratio_cap": 2.0, "sequence_ratio_limit": 2.0, "kl_coeff": 0.1}
    for bad in ({"ratio_cap": 0.5}, {"sequence_ratio_limit": 0.9}, {"kl_coeff": -0.1}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))}'\\] of 'stable_reinforce'"):
            resolve_loss_config("stable_reinforce", bad)
