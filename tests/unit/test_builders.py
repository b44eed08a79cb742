"""Pure builders: datum helpers, validation, chunking, metric merging, ids, paths."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinkex_jax.builders import (
    LOSS_SPECS,
    RequestCounter,
    SessionCounters,
    build_forward_backward_requests,
    chunk_data,
    combine_forward_backward_outputs,
    datum_from_prompt_completion,
    datum_from_tokens,
    estimate_datum_bytes,
    full_sequence,
    merge_metrics,
    next_model_seq_id,
    next_sampling_session_seq_id,
    parse_tinker_path,
    reserve_request_ids,
    rl_datum,
    sampling_seq_id,
    tinker_path,
    validate_loss_config,
    validate_training_data,
)
from tinkex_jax.errors import ValidationError
from tinkex_jax.types import Datum, ForwardBackwardOutput, ModelInput, TensorData

# ----------------------------------------------------------------------------- datum helpers


@given(st.lists(st.integers(0, 1000), min_size=1, max_size=20),
       st.lists(st.integers(0, 1000), min_size=1, max_size=20))
def test_prompt_completion_shift_by_one(prompt, completion):
    d = datum_from_prompt_completion(prompt, completion)
    seq = prompt + completion
    assert d.model_input.to_ints() == seq[:-1]
    assert d.loss_fn_inputs["target_tokens"].tolist() == seq[1:]
    weights = d.loss_fn_inputs["weights"].tolist()
    # the weight of position i is the weight of predicting seq[i + 1]
    assert weights == [0.0] * (len(prompt) - 1) + [1.0] * len(completion)
    assert full_sequence(d).to_ints() == seq


def test_rl_datum_aligns_logprobs_and_advantages():
    d = rl_datum([1, 2, 3], [4, 5], [-0.1, -0.2], [1.0, 2.0])
    assert d.loss_fn_inputs["target_tokens"].tolist() == [2, 3, 4, 5]
    assert d.loss_fn_inputs["logprobs"].tolist() == pytest.approx([0, 0, -0.1, -0.2])
    assert d.loss_fn_inputs["advantages"].tolist() == [0, 0, 1.0, 2.0]
    validate_training_data([d], "ppo")
    with pytest.raises(ValidationError, match="one logprob per completion token"):
        rl_datum([1], [2, 3], -0.5, 1.0)  # type: ignore[arg-type]


def test_datum_helpers_reject_bad_input():
    with pytest.raises(ValidationError, match="at least 2 tokens"):
        datum_from_tokens([1])
    with pytest.raises(ValidationError, match="3 weights"):
        datum_from_tokens([1, 2, 3], [1, 1])
    with pytest.raises(ValidationError, match="non-empty"):
        datum_from_prompt_completion([], [1])


# ----------------------------------------------------------------------------- validation


def _datum(n: int, **inputs: object) -> Datum:
    return Datum(model_input=ModelInput.from_ints(list(range(n))), loss_fn_inputs=inputs)


@pytest.mark.parametrize(
    ("data", "loss", "fragment"),
    [
        ([], "cross_entropy", "at least one Datum"),
        ([_datum(3, target_tokens=[1, 2, 3])], "cross_entropy", "missing ['weights']"),
        ([_datum(3, target_tokens=[1, 2], weights=[1, 1])], "cross_entropy",
         "3 rows, one per input position"),
        ([_datum(2, target_tokens=[1, 2], weights=[1, 1, 1])], "cross_entropy", "2 rows"),
        ([_datum(2, target_tokens=[1, 2], weights=[1, 1])], "nope", "expected one of: "),
        ([_datum(2, target_tokens=[1, 2], advantages=[1, 1])], "stable_reinforce",
         "expected provenance spans"),
        ([_datum(2, target_tokens=[[1, 2], [3, 4]], weights=[1, 1])], "cross_entropy",
         "the shape of target_tokens"),
        (["not a datum"], "cross_entropy", "a Datum"),
    ],
)
def test_validate_training_data_names_the_problem(data, loss, fragment):
    with pytest.raises(ValidationError) as info:
        validate_training_data(data, loss)
    assert fragment in str(info.value)


def test_validate_loss_config():
    assert validate_loss_config("dro", None) == {"beta": 0.05}
    with pytest.raises(ValidationError, match="'cross_entropy' does not accept loss_fn_config"):
        validate_loss_config("cross_entropy", {"beta": 1.0})
    with pytest.raises(ValidationError, match="finite"):
        validate_loss_config("ppo", {"clip_low_threshold": math.inf})
    with pytest.raises(ValidationError, match="clip_low_threshold <= clip_high_threshold"):
        validate_loss_config("cispo", {"clip_low_threshold": 1.3})
    assert set(LOSS_SPECS) == {"cross_entropy", "importance_sampling", "ppo", "cispo", "dro",
                               "gspo", "stable_reinforce", "custom"}


# ----------------------------------------------------------------------------- chunking


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(2, 60), min_size=1, max_size=30), st.integers(1, 8),
       st.integers(1, 2000))
def test_chunking_preserves_order_and_respects_limits(lengths, max_len, max_bytes):
    data = [datum_from_tokens(list(range(n))) for n in lengths]
    chunks = chunk_data(data, max_chunk_len=max_len, max_chunk_bytes=max_bytes)
    assert [d for c in chunks for d in c] == data
    for chunk in chunks:
        assert 1 <= len(chunk) <= max_len
        total = sum(estimate_datum_bytes(d) for d in chunk)
        assert total <= max_bytes or len(chunk) == 1  # only a lone oversize datum exceeds it
    # greedy: the next chunk's first datum would not have fit into the previous chunk
    for prev, nxt in itertools.pairwise(chunks):
        prev_bytes = sum(estimate_datum_bytes(d) for d in prev)
        assert len(prev) == max_len or prev_bytes + estimate_datum_bytes(nxt[0]) > max_bytes


def test_chunking_boundaries_exact():
    d = datum_from_tokens([1, 2, 3])  # 32 bytes
    assert [len(c) for c in chunk_data([d] * 4, max_chunk_bytes=64)] == [2, 2]
    assert [len(c) for c in chunk_data([d] * 4, max_chunk_bytes=63)] == [1, 1, 1, 1]
    assert [len(c) for c in chunk_data([d] * 3, max_chunk_len=3)] == [3]


# ----------------------------------------------------------------------------- metric merging


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e3, 1e3), st.integers(1, 9)), min_size=1, max_size=6))
def test_merge_metrics_reductions(values_and_weights):
    values = [v for v, _ in values_and_weights]
    weights = [w for _, w in values_and_weights]
    chunks = [{"a:sum": v, "b:mean": v, "c:min": v, "d:max": v, "e:slack": v} for v in values]
    merged = merge_metrics(chunks, weights)
    mean = sum(v * w for v, w in zip(values, weights)) / sum(weights)
    assert merged["a:sum"] == pytest.approx(sum(values))
    assert merged["b:mean"] == pytest.approx(mean)
    assert merged["c:min"] == min(values) and merged["d:max"] == max(values)
    assert merged["e:slack"] == pytest.approx(max(values) - mean)


def test_merge_metrics_special_cases():
    merged = merge_metrics([{"h:hash2": 2**62, "u:unique": 1.0, "x:sum": 1.0, "z:median": 3.0},
                            {"h:hash2": 2**62, "u:unique": 2.0, "z:median": 3.0}], [1, 1])
    assert "x:sum" not in merged  # not present in every chunk
    assert merged["z:median"] == 3.0  # a reduction this SDK does not know: the first value
    assert merged["u:unique"] == 1.0 and merged["u:unique_1"] == 2.0
    assert merged["h:hash2"] == float(np.array(2**63, dtype=np.uint64).view(np.int64))
    # keys servers should not send are read, not refused: the first chunk's value
    assert merge_metrics([{"loss": 1.0, "a:b:sum": 2.0}, {"loss": 5.0, "a:b:sum": 3.0}],
                         [1, 1]) == {"loss": 1.0, "a:b:sum": 2.0}
    with pytest.raises(ZeroDivisionError):
        merge_metrics([{"m:mean": 1.0}], [0])


def test_combine_outputs_concatenates_in_order():
    def out(vals: list[float]) -> ForwardBackwardOutput:
        return ForwardBackwardOutput(
            loss_fn_outputs=[{"logprobs": TensorData(data=[v], dtype="float32")} for v in vals],
            metrics={"loss:sum": sum(vals)})

    merged = combine_forward_backward_outputs([out([1, 2]), out([3])])
    assert [o["logprobs"].tolist()[0] for o in merged.loss_fn_outputs] == [1, 2, 3]
    assert merged.metrics == {"loss:sum": 6.0}


# ----------------------------------------------------------------------------- ids and paths


def test_id_allocation_is_explicit_state():
    c = SessionCounters()
    a, c = next_model_seq_id(c)
    s, c = next_sampling_session_seq_id(c)
    b, c = next_model_seq_id(c)
    assert (a, b, s) == (0, 1, 0) and c == SessionCounters(2, 1, 0)
    ids1, r = reserve_request_ids(RequestCounter(), 2)
    ids2, r = reserve_request_ids(r, 3)
    assert list(ids1) + list(ids2) == [0, 1, 2, 3, 4]
    assert sampling_seq_id(1, 0) == 1_000_000_000
    reqs = build_forward_backward_requests("m", ids2, [[datum_from_tokens([1, 2])]] * 3,
                                           "cross_entropy", None, forward_only=True)
    assert [r.seq_id for r in reqs] == [3, 4, 5] and all(r.forward_only for r in reqs)


def test_paths_round_trip():
    path = tinker_path("sess:train:0", "sampler_weights", "final")
    parsed = parse_tinker_path(path)
    assert parsed.training_run_id == "sess:train:0" and parsed.name == "final"
    with pytest.raises(ValidationError):
        tinker_path("a/b", "weights", "x")
