"""Policy-gradient data from sampled groups (pure; no I/O).

The loop shape of GRPO-style fine-tuning: sample a group of completions per prompt, score
them, turn rewards into group-relative advantages, build datums. Groups whose rewards are
all equal carry no signal and produce no datums (instead of zero-advantage datums that cost
a forward pass and dilute per-datum means); a KL penalty folds into the advantages as a new
datum, never by mutating one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ..errors import invalid
from ..types import Datum, SampledSequence, TensorData
from ._datums import _tokens, rl_datum

__all__ = ["group_advantages", "group_datums", "with_kl_penalty"]

AdvantageScale = Literal["none", "std"]


def group_advantages(rewards: Sequence[float] | npt.NDArray[Any], *,
                     scale: AdvantageScale = "none", eps: float = 1e-6) -> np.ndarray:
    r"""Group-relative advantages: each reward minus the group mean, optionally over its std.

    .. math:: A_i = r_i - \bar r \quad (\texttt{"none"}), \qquad
              A_i = (r_i - \bar r) / (\sigma_r + \varepsilon) \quad (\texttt{"std"})

    A group whose rewards are all equal gets exact zeros (never ``0 / eps`` noise).

    Args:
        rewards: ``[G]`` rewards of one group, or ``[P, G]`` for P groups of G.
        scale: ``"none"`` (centre only, Tinker cookbook's default) or ``"std"`` (GRPO).
        eps: Added to the std for ``"std"``.

    Returns:
        float32 advantages of the shape of `rewards`.

    Raises:
        ValidationError: non-finite rewards, an empty group, or a bad `scale`.

    Example:
        >>> group_advantages([1.0, 0.0, 0.0, 1.0]).tolist()
        [0.5, -0.5, -0.5, 0.5]
        >>> group_advantages([[2.0, 2.0], [0.0, 1.0]], scale="std").tolist()
        [[0.0, 0.0], [-0.9999979734420776, 0.9999979734420776]]
    """
    where = "group_advantages"
    if scale not in ("none", "std"):
        raise invalid(f"{where}(scale)", "'none' or 'std'", scale)
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim not in (1, 2) or r.shape[-1] == 0:
        raise invalid(f"{where}(rewards)", "a non-empty [G] or [P, G] array of rewards",
                      f"<shape {r.shape}>")
    if not np.all(np.isfinite(r)):
        raise invalid(f"{where}(rewards)", "finite rewards", f"<{r.tolist()!r}>",
                      "check the reward function for NaN / inf")
    centred = r - r.mean(axis=-1, keepdims=True)
    constant = np.all(r == r[..., :1], axis=-1, keepdims=True)
    if scale == "std":
        centred = centred / (r.std(axis=-1, keepdims=True) + eps)
    return np.where(constant, 0.0, centred).astype(np.float32)


def group_datums(prompt_tokens: Sequence[int] | npt.NDArray[Any],
                 sequences: Sequence[SampledSequence], rewards: Sequence[float], *,
                 scale: AdvantageScale = "none", drop_zero: bool = True) -> list[Datum]:
    """Datums for ``importance_sampling`` / ``ppo`` / ... from one sampled group.

    Args:
        prompt_tokens: The prompt the group was sampled from.
        sequences: The group's samples (``SampleResponse.sequences``), with logprobs.
        rewards: One reward per sample.
        scale: See `group_advantages`.
        drop_zero: Leave out samples whose advantage is 0 (all of a constant group).

    Returns:
        One `rl_datum` per kept sample, in order (empty for a constant group).

    Raises:
        ValidationError: lengths differ, a sample has no tokens or no logprobs.

    Example:
        >>> import numpy as np
        >>> from tinkex_jax.types import SampledSequence
        >>> seqs = [SampledSequence(stop_reason="stop", tokens_np=np.array([5, 6]),
        ...                         logprobs_np=np.array([-0.1, -0.2], np.float32))
        ...         for _ in range(3)]
        >>> data = group_datums([1, 2], seqs, [1.0, 0.0, 0.5])
        >>> [round(float(d.loss_fn_inputs["advantages"].to_numpy()[-1]), 3) for d in data]
        [0.5, -0.5]
        >>> group_datums([1, 2], seqs, [1.0, 1.0, 1.0])
        []
    """
    where = "group_datums"
    if len(sequences) != len(rewards):
        raise invalid(f"{where}(rewards)", f"one reward per sample ({len(sequences)})",
                      f"<{len(rewards)} rewards>")
    prompt = _tokens(f"{where}(prompt_tokens)", prompt_tokens)
    advantages = group_advantages(rewards, scale=scale)
    out = []
    for i, (seq, advantage) in enumerate(zip(sequences, advantages, strict=True)):
        if drop_zero and advantage == 0.0:
            continue
        if seq.logprobs_np is None:
            raise invalid(f"{where}(sequences[{i}].logprobs)", "the sampler's logprobs",
                          None, "sample with a client that returns logprobs (Tinker does)")
        out.append(rl_datum(prompt, seq.tokens_np, seq.logprobs_np, float(advantage)))
    return out


def with_kl_penalty(datum: Datum, reference_logprobs: Sequence[float] | npt.NDArray[Any],
                    coef: float) -> Datum:
    r"""A copy of an RL datum with a per-token KL penalty folded into its advantages.

    .. math:: A'_i = A_i - \beta\,(\log\pi_{\text{sample}}(y_i) - \log\pi_{\text{ref}}(y_i))

    on every position with a nonzero sampling logprob or advantage (the completion); prompt
    positions stay 0. The sampled-token log ratio is the usual single-sample estimate of
    KL(π_sample ‖ π_ref).

    Args:
        datum: An RL datum (``logprobs`` and ``advantages`` inputs, e.g. from `rl_datum`).
        reference_logprobs: The reference model's logprob of each target token, aligned
            with the datum's positions (e.g. ``compute_logprobs`` of `full_sequence`
            without its first entry).
        coef: β >= 0.

    Returns:
        A new Datum; `datum` is unchanged.

    Example:
        >>> from tinkex_jax.builders import rl_datum
        >>> d = rl_datum([1, 2], [3, 4], [-1.0, -2.0], 1.0)
        >>> penalised = with_kl_penalty(d, [0.0, -1.5, -1.0], coef=0.5)
        >>> penalised.loss_fn_inputs["advantages"].tolist(), d.loss_fn_inputs["advantages"].tolist()
        ([0.0, 0.75, 1.5], [0.0, 1.0, 1.0])
    """
    where = "with_kl_penalty"
    if not (isinstance(coef, int | float) and not isinstance(coef, bool) and coef >= 0
            and np.isfinite(coef)):
        raise invalid(f"{where}(coef)", "a finite number >= 0", coef)
    inputs = datum.loss_fn_inputs
    if "logprobs" not in inputs or "advantages" not in inputs:
        raise invalid(f"{where}(datum)", "an RL datum with 'logprobs' and 'advantages'",
                      f"<loss_fn_inputs {sorted(inputs)}>", "build it with rl_datum")
    sampled = inputs["logprobs"].to_numpy().astype(np.float32)
    advantages = inputs["advantages"].to_numpy().astype(np.float32)
    reference = np.asarray(reference_logprobs, dtype=np.float32)
    if reference.shape != sampled.shape:
        raise invalid(f"{where}(reference_logprobs)",
                      f"{sampled.size} logprobs, one per datum position",
                      f"<{reference.size} values>")
    completion = (sampled != 0) | (advantages != 0)
    penalised = np.where(completion, advantages - coef * (sampled - reference), 0.0)
    return Datum(model_input=datum.model_input,
                 loss_fn_inputs={**inputs,
                                 "advantages": TensorData.from_numpy(
                                     penalised.astype(np.float32))})
