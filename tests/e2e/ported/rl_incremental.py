"""A GRPO-style RL loop written the way published tinker RL code is written (the official
SDK's API only; nothing from tinkex_jax).

Each step samples groups from a fresh sampling client, scores them, centres the rewards
per group and builds one datum per sample incrementally: tokens accumulate in a reused
list that is flushed into an EncodedTextChunk and cleared (the accumulate-then-flush
pattern of RL data processing), loss inputs are torch tensors with a "mask" key that is
dropped before training, a small length penalty is added to the advantages in place, and
for stable_reinforce every datum names its sampled sequence with provenance spans.

Usage: python rl_incremental.py LOSS_FN   (server from TINKER_BASE_URL / TINKER_API_KEY).
Prints a JSON summary on its last line.
"""

import json
import sys
from typing import ClassVar

import tinker
import torch
from tinker import types
from tinker.types.tensor_data import TensorData

BASE_MODEL = "tinkex-jax/tiny"
STEPS = 3
GROUP_SIZE = 4
WORDS = ["abc", "hello", "jax"]
LENGTH_PENALTY = 0.01


def reward(word: str, sampled: list[int]) -> float:
    target = list(f"{word[::-1]}\n".encode())
    hits = sum(1 for a, b in zip(sampled, target, strict=False) if a == b)
    return hits / len(target)


def flat_tokens_to_model_input(flat: list[int]) -> types.ModelInput:
    chunks: list[types.ModelInputChunk] = []
    current: list[int] = []

    def flush() -> None:
        if current:
            chunks.append(types.EncodedTextChunk(tokens=current))
            current.clear()

    for token in flat:
        current.append(token)
        if len(current) == 4:  # several chunks per datum, each flushed from the same list
            flush()
    flush()
    return types.ModelInput(chunks=chunks)


class SequenceAccumulator:
    """Buffers reused for every sample (cleared in place between samples)."""

    full_sequence: ClassVar[list[int]] = []
    logprobs: ClassVar[list[float]] = []
    advantages: ClassVar[list[float]] = []
    mask: ClassVar[list[float]] = []

    @classmethod
    def clear(cls) -> None:
        cls.full_sequence.clear()
        cls.logprobs.clear()
        cls.advantages.clear()
        cls.mask.clear()


def sample_to_datum(prompt_tokens: list[int], sampled_tokens: list[int],
                    sampled_logprobs: list[float], advantage: float) -> types.Datum:
    acc = SequenceAccumulator
    acc.clear()
    acc.full_sequence.extend(prompt_tokens)
    acc.logprobs.extend([0.0] * len(prompt_tokens))
    acc.advantages.extend([0.0] * len(prompt_tokens))
    acc.mask.extend([0.0] * len(prompt_tokens))
    acc.full_sequence.extend(sampled_tokens)
    acc.logprobs.extend(sampled_logprobs)
    acc.advantages.extend([advantage] * len(sampled_tokens))
    acc.mask.extend([1.0] * len(sampled_tokens))
    return types.Datum(
        model_input=flat_tokens_to_model_input(acc.full_sequence[:-1]),
        loss_fn_inputs={
            "target_tokens": TensorData.from_torch(torch.tensor(acc.full_sequence[1:])),
            "logprobs": TensorData.from_torch(torch.tensor(acc.logprobs[1:])),
            "advantages": TensorData.from_torch(torch.tensor(acc.advantages[1:])),
            "mask": TensorData.from_torch(torch.tensor(acc.mask[1:])),
        },
    )


def remove_mask(datum: types.Datum) -> types.Datum:
    return types.Datum(
        model_input=datum.model_input,
        loss_fn_inputs={k: v for k, v in datum.loss_fn_inputs.items() if k != "mask"},
    )


def with_sampled_provenance(datum: types.Datum, prompt_length: int, num_sampled: int,
                            sequence_id: str) -> types.Datum:
    return datum.with_provenance(
        model_input=[
            types.PromptProvenanceSpan(sequence_id=sequence_id, length=prompt_length),
            types.SampledProvenanceSpan(sequence_id=sequence_id, length=num_sampled - 1),
        ],
        loss_fn_inputs=[
            types.PromptProvenanceSpan(sequence_id=sequence_id, offset=1,
                                       length=prompt_length - 1),
            types.SampledProvenanceSpan(sequence_id=sequence_id, length=num_sampled),
        ],
    )


def main(loss_fn: str) -> dict:
    service_client = tinker.ServiceClient()
    training_client = service_client.create_lora_training_client(
        base_model=BASE_MODEL, rank=8, seed=1).result()
    adam_params = types.AdamParams(learning_rate=2e-3, beta1=0.9, beta2=0.95, eps=1e-8)
    history = []
    for step in range(STEPS):
        sampling_client = training_client.save_weights_and_get_sampling_client(
            record_stability_info=loss_fn == "stable_reinforce").result()
        futures = []
        for i, word in enumerate(WORDS):
            prompt = types.ModelInput.from_ints(list(f"{word}=".encode()))
            params = types.SamplingParams(max_tokens=6, temperature=1.0, seed=100 * step + i,
                                          stop=["\n"])
            futures.append((word, prompt, sampling_client.sample(
                prompt=prompt, num_samples=GROUP_SIZE, sampling_params=params)))

        datums: list[types.Datum] = []
        rewards: list[float] = []
        for word, prompt, future in futures:
            result = future.result()
            rewards_g = [reward(word, seq.tokens) for seq in result.sequences]
            mean_reward = sum(rewards_g) / len(rewards_g)
            rewards.extend(rewards_g)
            for seq, r in zip(result.sequences, rewards_g, strict=True):
                if len(seq.tokens) < 2:
                    continue
                datum = sample_to_datum(prompt.to_ints(), seq.tokens, seq.logprobs,
                                        r - mean_reward)
                # penalise length in place, as KL penalties adjust advantages in recipes
                mask = datum.loss_fn_inputs["mask"].to_torch()
                datum.loss_fn_inputs["advantages"] = TensorData.from_torch(
                    datum.loss_fn_inputs["advantages"].to_torch() - LENGTH_PENALTY * mask)
                datum = remove_mask(datum)
                if loss_fn == "stable_reinforce":
                    datum = with_sampled_provenance(datum, prompt.length, len(seq.tokens),
                                                    seq.sequence_id)
                datums.append(datum)

        fwd_bwd_future = training_client.forward_backward(datums, loss_fn=loss_fn)
        optim_future = training_client.optim_step(adam_params)
        fwd_bwd_result = fwd_bwd_future.result()
        optim_future.result()
        history.append({
            "step": step,
            "reward": sum(rewards) / len(rewards),
            "num_datums": len(datums),
            "num_tokens": sum(d.model_input.length for d in datums),
            "chunks": sum(len(d.model_input.chunks) for d in datums),
            "loss:sum": fwd_bwd_result.metrics["loss:sum"],
            "advantage_sum": sum(sum(d.loss_fn_inputs["advantages"].data) for d in datums),
        })
    return {"loss_fn": loss_fn, "history": history}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
