"""RL data from sampled groups: group-relative advantages, group datums, KL penalties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from tinkex_jax.builders import group_advantages, group_datums, rl_datum, with_kl_penalty
from tinkex_jax.errors import ValidationError
from tinkex_jax.types import SampledSequence


def sample(tokens: list[int], logprobs: list[float] | None = None) -> SampledSequence:
    lps = None if logprobs is None else np.asarray(logprobs, np.float32)
    return SampledSequence(stop_reason="stop", tokens_np=np.asarray(tokens, np.int32),
                           logprobs_np=lps)


@given(st.lists(st.lists(st.floats(-100, 100), min_size=2, max_size=2), min_size=1,
                max_size=6).map(lambda rows: [row * 2 for row in rows]))
def test_advantages_are_centred_per_group(rows: list[list[float]]) -> None:
    for scale in ("none", "std"):
        adv = group_advantages(rows, scale=scale)  # type: ignore[arg-type]
        assert adv.shape == (len(rows), 4) and adv.dtype == np.float32
        np.testing.assert_allclose(adv.sum(axis=-1), 0.0, atol=1e-3)


def test_constant_groups_get_exact_zeros() -> None:
    adv = group_advantages([[0.3, 0.3, 0.3], [0.0, 1.0, 2.0]], scale="std")
    assert adv[0].tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(adv[1], [-1.2247, 0.0, 1.2247], atol=1e-3)


@pytest.mark.parametrize(("rewards", "scale", "where"), [
    ([1.0, float("nan")], "none", "group_advantages(rewards)"),
    ([], "none", "group_advantages(rewards)"),
    ([[[1.0]]], "none", "group_advantages(rewards)"),
    ([1.0, 2.0], "zscore", "group_advantages(scale)"),
])
def test_bad_rewards(rewards: object, scale: str, where: str) -> None:
    with pytest.raises(ValidationError) as info:
        group_advantages(rewards, scale=scale)  # type: ignore[arg-type]
    assert str(info.value).startswith(where)


def test_group_datums_shift_pad_and_drop_constant_groups() -> None:
    seqs = [sample([7, 8, 9], [-0.5, -0.25, -1.0]), sample([7], [-2.0]),
            sample([9, 9], [-0.1, -0.2])]
    data = group_datums([1, 2, 3], seqs, [1.0, 0.5, 0.0])
    assert len(data) == 2  # the middle sample's advantage is 0
    first = data[0]
    assert first.model_input.to_ints() == [1, 2, 3, 7, 8]
    assert first.loss_fn_inputs["target_tokens"].tolist() == [2, 3, 7, 8, 9]
    assert first.loss_fn_inputs["logprobs"].tolist() == [0.0, 0.0, -0.5, -0.25, -1.0]
    assert first.loss_fn_inputs["advantages"].tolist() == [0.0, 0.0, 0.5, 0.5, 0.5]
    assert data[1].loss_fn_inputs["advantages"].tolist() == [0.0, 0.0, -0.5, -0.5]
    assert len(group_datums([1, 2, 3], seqs, [1.0, 0.5, 0.0], drop_zero=False)) == 3
    assert group_datums([1], seqs, [2.0, 2.0, 2.0]) == []


def test_group_datums_errors() -> None:
    with pytest.raises(ValidationError, match=r"group_datums\(rewards\): expected one reward"):
        group_datums([1], [sample([2], [-1.0])], [1.0, 2.0])
    with pytest.raises(ValidationError, match=r"sequences\[1\]\.logprobs"):
        group_datums([1], [sample([2], [-1.0]), sample([3])], [1.0, 0.0])


def test_kl_penalty_makes_a_new_datum() -> None:
    d = rl_datum([1, 2, 3], [4, 5], [-1.0, -3.0], 2.0)
    before = d.loss_fn_inputs["advantages"].tolist()
    out = with_kl_penalty(d, [-9.0, -9.0, -2.0, -1.0], coef=0.1)
    assert d.loss_fn_inputs["advantages"].tolist() == before  # unchanged
    np.testing.assert_allclose(out.loss_fn_inputs["advantages"].to_numpy(),
                               [0.0, 0.0, 2.0 - 0.1 * 1.0, 2.0 - 0.1 * -2.0], rtol=1e-6)
    assert out.loss_fn_inputs["logprobs"] is d.loss_fn_inputs["logprobs"]
    assert with_kl_penalty(d, [0.0] * 4, coef=0.0).loss_fn_inputs["advantages"].tolist() \
        == before
    with pytest.raises(ValidationError, match="one per datum position"):
        with_kl_penalty(d, [0.0, 0.0], coef=0.1)
    with pytest.raises(ValidationError, match=r"with_kl_penalty\(coef\)"):
        with_kl_penalty(d, [0.0] * 4, coef=-1.0)
    with pytest.raises(ValidationError, match="an RL datum"):
        from tinkex_jax.builders import datum_from_tokens
        with_kl_penalty(datum_from_tokens([1, 2, 3]), [0.0, 0.0], coef=0.1)
