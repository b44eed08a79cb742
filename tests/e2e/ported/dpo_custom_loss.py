"""A DPO loop written the way published tinker preference recipes are written (the
official SDK's API only; nothing from tinkex_jax): an official-signature custom loss
``loss_fn(data, logprobs_list)`` over torch tensors, reference logprobs from a sampling
client's compute_logprobs, forward_backward_custom then optim_step.

Usage: python dpo_custom_loss.py   (server from TINKER_BASE_URL / TINKER_API_KEY).
Prints a JSON summary on its last line.
"""

import json

import tinker
import torch
import torch.nn.functional as F
from tinker import types

BASE_MODEL = "tinkex-jax/tiny"
STEPS = 3
DPO_BETA = 0.5
PAIRS = [("abc=", "cba\n", "abc\n"), ("hello=", "olleh\n", "hello\n"), ("jax=", "xaj\n", "jax\n")]


def make_datum(prompt: str, completion: str) -> types.Datum:
    prompt_tokens, completion_tokens = list(prompt.encode()), list(completion.encode())
    tokens = prompt_tokens + completion_tokens
    weights = [0.0] * len(prompt_tokens) + [1.0] * len(completion_tokens)
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights[1:]},
    )


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, chosen_ref: torch.Tensor,
             rejected_ref: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    chosen_ratio = chosen - chosen_ref
    rejected_ratio = rejected - rejected_ref
    loss = -F.logsigmoid(DPO_BETA * (chosen_ratio - rejected_ratio)).mean()
    return loss, {
        "dpo_loss": loss.item(),
        "accuracy": (chosen_ratio > rejected_ratio).float().mean().item(),
        "margin": (DPO_BETA * (chosen_ratio - rejected_ratio)).mean().item(),
    }


def main() -> dict:
    service_client = tinker.ServiceClient()
    training_client = service_client.create_lora_training_client(
        base_model=BASE_MODEL, rank=8, seed=2).result()
    data: list[types.Datum] = []
    for prompt, chosen, rejected in PAIRS:  # chosen, rejected, chosen, rejected, ...
        data.append(make_datum(prompt, chosen))
        data.append(make_datum(prompt, rejected))

    reference_client = training_client.save_weights_and_get_sampling_client(
        name="dpo-reference").result()
    full_sequences = [d.model_input.append_int(int(d.loss_fn_inputs["target_tokens"].data[-1]))
                      for d in data]
    ref_logprobs = [torch.tensor(reference_client.compute_logprobs(seq).result()[1:])
                    for seq in full_sequences]

    def dpo_loss_fn(data: list[tinker.Datum], logprobs_list: list[torch.Tensor]
                    ) -> tuple[torch.Tensor, dict[str, float]]:
        weighted = []
        weighted_ref = []
        for datum, logprobs, ref in zip(data, logprobs_list, ref_logprobs, strict=True):
            weights = torch.tensor(datum.loss_fn_inputs["weights"].data)
            weighted.append(torch.dot(logprobs.float(), weights.float()))
            weighted_ref.append(torch.dot(ref.float(), weights.float()))
        return dpo_loss(torch.stack(weighted[0::2]), torch.stack(weighted[1::2]),
                        torch.stack(weighted_ref[0::2]), torch.stack(weighted_ref[1::2]))

    adam_params = types.AdamParams(learning_rate=5e-3, beta1=0.9, beta2=0.95, eps=1e-8)
    history = []
    for step in range(STEPS):
        backward_result = training_client.forward_backward_custom(data, dpo_loss_fn).result()
        training_client.optim_step(adam_params).result()
        metrics = dict(backward_result.metrics)
        history.append({"step": step, "dpo_loss": metrics["dpo_loss"],
                        "accuracy": metrics["accuracy"], "margin": metrics["margin"],
                        "loss:sum": metrics["loss:sum"]})
    return {"history": history}


if __name__ == "__main__":
    print(json.dumps(main()))
