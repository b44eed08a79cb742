"""A training script written against the official ``tinker`` SDK's API, cookbook style.

The e2e tests run it twice: unchanged with the official SDK, and with only the import line
changed to ``import tinkex_jax as tinker``. It reads the server from TINKER_BASE_URL /
TINKER_API_KEY, like any script written for the hosted service, and prints a JSON summary.
"""

import asyncio
import json
import math

import numpy as np
import tinker
from tinker import types

BASE_MODEL = "tinkex-jax/tiny"
STEPS = 6
LEARNING_RATE = 2e-3
PAIRS = [("abc=", "cba\n"), ("xyz=", "zyx\n"), ("hello=", "olleh\n")]


def make_datum(prompt: str, completion: str) -> types.Datum:
    prompt_tokens, completion_tokens = list(prompt.encode()), list(completion.encode())
    tokens = prompt_tokens + completion_tokens
    weights = [0.0] * len(prompt_tokens) + [1.0] * len(completion_tokens)
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights[1:]},
    )


async def sample_many(sampling_client, prompts):
    params = types.SamplingParams(max_tokens=4, temperature=1.0, seed=0)
    results = await asyncio.gather(*[
        sampling_client.sample_async(prompt=types.ModelInput.from_ints(list(p.encode())),
                                     num_samples=2, sampling_params=params)
        for p in prompts])
    scores = await sampling_client.compute_logprobs_async(
        types.ModelInput.from_ints(list(b"abc=cba")))
    return results, scores


def main() -> dict:
    service_client = tinker.ServiceClient()
    training_client = service_client.create_lora_training_client(base_model=BASE_MODEL, rank=8)
    training_client = training_client.result()
    data = [make_datum(p, c) for p, c in PAIRS]

    losses = []
    for step in range(STEPS):
        lr = LEARNING_RATE * max(0.0, 1.0 - step / STEPS)
        adam_params = types.AdamParams(learning_rate=lr, beta1=0.9, beta2=0.95, eps=1e-8)
        fwd_bwd_future = training_client.forward_backward(data, loss_fn="cross_entropy")
        optim_future = training_client.optim_step(adam_params)
        fwd_bwd_result = fwd_bwd_future.result()
        optim_future.result()
        logprobs = np.concatenate([out["logprobs"].tolist()
                                   for out in fwd_bwd_result.loss_fn_outputs])
        weights = np.concatenate([d.loss_fn_inputs["weights"].tolist() for d in data])
        losses.append(float(-np.dot(logprobs, weights) / weights.sum()))

    sampling_client = training_client.save_weights_and_get_sampling_client(name="final")
    sampling_client = sampling_client.result()
    prompt = types.ModelInput.from_ints(list(b"abc="))
    sample = sampling_client.sample(prompt=prompt, num_samples=2,
                                    sampling_params=types.SamplingParams(max_tokens=4)).result()
    async_results, scores = asyncio.run(sample_many(sampling_client, ["abc=", "xyz="]))

    state_path = training_client.save_state("final").result().path
    sampler_path = training_client.save_weights_for_sampler("final-sampler").result().path
    rest_client = service_client.create_rest_client()
    checkpoints = rest_client.list_checkpoints(training_client.model_id).result().checkpoints
    resumed = service_client.create_training_client_from_state_with_optimizer(state_path).result()

    return {
        "losses": losses,
        "finite": all(math.isfinite(x) for x in losses),
        "samples": [seq.tokens for seq in sample.sequences],
        "async_samples": [len(r.sequences) for r in async_results],
        "scores": [s is None for s in scores[:2]],
        "state_path": state_path,
        "sampler_path": sampler_path,
        "checkpoints": sorted(c.checkpoint_id for c in checkpoints),
        "resumed_base_model": resumed.get_info().model_data.model_name,
    }


if __name__ == "__main__":
    print(json.dumps(main()))
