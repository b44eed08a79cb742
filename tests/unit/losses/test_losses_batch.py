"""LossBatch padding/bucketing: round trips, bucket policy, one compile per bucket."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from losses import (
    DEFAULT_BUCKET_POLICY,
    BucketPolicy,
    LossBatch,
    cross_entropy,
    make_loss_batch,
    pad_to_bucket,
    unpad,
)


def datum(rng, n, k=None):
    shape = (n,) if k is None else (n, k)
    return {
        "target_tokens": rng.integers(0, 1000, shape),
        "weights": rng.uniform(0, 1, shape),
        "advantages": rng.normal(size=n),
    }


ragged = st.lists(st.integers(min_value=1, max_value=70), min_size=1, max_size=9)


@settings(max_examples=40, deadline=None)
@given(lengths=ragged, k=st.sampled_from([None, 1, 3]), seed=st.integers(0, 2**16))
def test_make_loss_batch_round_trip(lengths, k, seed):
    rng = np.random.default_rng(seed)
    datums = [datum(rng, n, k) for n in lengths]
    refs = [{"ref_logprobs": -rng.uniform(0, 3, n), "reward": rng.normal()} for n in lengths]
    batch, got_lengths = make_loss_batch(datums, datum_extras=refs, extras={"beta": np.array(0.1)})
    b, t = batch.mask.shape
    assert got_lengths.tolist() == lengths
    assert b == DEFAULT_BUCKET_POLICY.datum_bucket(len(lengths)) >= len(lengths)
    assert t == DEFAULT_BUCKET_POLICY.length_bucket(max(lengths)) >= max(lengths)
    assert batch.mask.dtype == np.float32 and batch.datum_mask.dtype == np.float32
    assert batch.inputs["target_tokens"].dtype == np.int32
    assert batch.inputs["weights"].dtype == np.float32
    tail = () if k is None else (k,)
    assert batch.inputs["weights"].shape == (b, t, *tail)
    assert batch.inputs["advantages"].shape == (b, t)
    assert batch.extras["reward"].shape == (b,)
    assert float(batch.extras["beta"]) == pytest.approx(0.1)
    np.testing.assert_array_equal(batch.mask.sum(axis=1)[: len(lengths)], lengths)
    assert batch.mask[len(lengths):].sum() == 0
    np.testing.assert_array_equal(batch.datum_mask, np.arange(b) < len(lengths))
    for key in ("target_tokens", "weights", "advantages"):
        back = unpad(batch.inputs[key], got_lengths)
        for orig, rec in zip(datums, back):
            np.testing.assert_allclose(rec, orig[key].astype(rec.dtype), rtol=1e-6)
        padded = np.asarray(batch.inputs[key])
        assert np.all(padded[batch.mask == 0] == 0)  # padding is 0
    for orig, rec in zip(refs, unpad(batch.extras["ref_logprobs"], got_lengths)):
        np.testing.assert_allclose(rec, orig["ref_logprobs"], rtol=1e-6)
    np.testing.assert_allclose(
        batch.extras["reward"][: len(lengths)], [r["reward"] for r in refs], rtol=1e-6
    )


@settings(max_examples=40, deadline=None)
@given(lengths=ragged, pad=st.sampled_from([0.0, -1.0]))
def test_pad_to_bucket_round_trip(lengths, pad):
    arrays = [np.arange(n, dtype=np.float64) + 1 for n in lengths]
    padded, got = pad_to_bucket(arrays, pad_value=pad)
    assert padded.shape == (
        DEFAULT_BUCKET_POLICY.datum_bucket(len(lengths)),
        DEFAULT_BUCKET_POLICY.length_bucket(max(lengths)),
    )
    assert got.tolist() == lengths
    for a, r in zip(arrays, unpad(padded, got)):
        np.testing.assert_array_equal(a, r)
    valid = np.arange(padded.shape[1])[None, :] < np.pad(got, (0, padded.shape[0] - len(got)))[:, None]
    assert np.all(padded[~valid] == pad)


@given(n=st.integers(1, 5000))
def test_bucket_policy_properties(n):
    p = DEFAULT_BUCKET_POLICY
    length = p.length_bucket(n)
    assert length >= max(n, 16)
    if n <= 1024:
        assert length & (length - 1) == 0 and length < 2 * max(n, 16)
    else:
        assert length % 128 == 0 and length - n < 128
    count = p.datum_bucket(n)
    assert count >= n
    assert (count & (count - 1) == 0) if n <= 1024 else (count % 256 == 0 and count - n < 256)
    # monotone: a longer batch never gets a smaller bucket
    assert p.length_bucket(n + 1) >= length


def test_bucket_policy_validation_and_custom():
    p = BucketPolicy(min_length=64, min_datums=2)
    assert p.length_bucket(3) == 64 and p.datum_bucket(1) == 2
    with pytest.raises(ValueError, match="min_length must be an integer >= 1"):
        BucketPolicy(min_length=0)
    with pytest.raises(ValueError, match="must be <= pow2_length_limit"):
        BucketPolicy(min_length=2048)


def test_make_loss_batch_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="no datums"):
        make_loss_batch([])
    a, b = datum(rng, 3), datum(rng, 4)
    del b["advantages"]
    with pytest.raises(ValueError, match="datum 1 has loss_fn_inputs keys"):
        make_loss_batch([a, b])
    bad = datum(rng, 3)
    bad["weights"] = np.ones(4)
    with pytest.raises(ValueError, match="datum 0 has arrays of different lengths"):
        make_loss_batch([bad])
    k1, k2 = datum(rng, 3, 2), datum(rng, 3, 3)
    with pytest.raises(ValueError, match="'target_tokens' has shape"):
        make_loss_batch([k1, k2])
    with pytest.raises(ValueError, match="datum_extras has 1 entries for 2 datums"):
        make_loss_batch([datum(rng, 2), datum(rng, 2)], datum_extras=[{}])
    with pytest.raises(ValueError, match="in both extras and datum_extras"):
        make_loss_batch([datum(rng, 2)], extras={"r": np.zeros(1)},
                        datum_extras=[{"r": np.zeros(2)}])
    with pytest.raises(ValueError, match="do not fit in int32"):
        make_loss_batch([{"target_tokens": np.array([2**40])}])
    with pytest.raises(ValueError, match="shorter than the longest datum"):
        pad_to_bucket([np.ones(5)], length=4)
    with pytest.raises(ValueError, match="lengths must be in"):
        unpad(np.zeros((2, 4)), [1, 5])


def test_loss_compiles_once_per_bucket():
    """Batches of different raw sizes in the same bucket reuse one compiled loss."""
    traces = []

    @jax.jit
    def loss_fn(logprobs, batch: LossBatch):
        traces.append((logprobs.shape, tuple(sorted(batch.inputs))))
        return cross_entropy(logprobs, batch.inputs["weights"], where=batch.mask, reduction="sum")

    rng = np.random.default_rng(1)

    def run(lengths):
        batch, _ = make_loss_batch([datum(rng, n) for n in lengths])
        lp = -np.abs(rng.normal(size=batch.mask.shape)).astype(np.float32)
        value = loss_fn(lp, batch)
        expected = sum(
            float(np.sum(-lp[i, :n] * batch.inputs["weights"][i, :n])) for i, n in enumerate(lengths)
        )
        np.testing.assert_allclose(float(value), expected, rtol=1e-5)

    for lengths in ([5], [16], [3, 9, 2], [1, 1, 1, 1]):  # buckets (1,16), (1,16), (4,16), (4,16)
        run(lengths)
    assert len(traces) == 2
    run([17])  # length bucket 32
    run([30])
    assert len(traces) == 3
    run([1] * 5)  # datum bucket 8
    run([7] * 8)
    assert len(traces) == 4
