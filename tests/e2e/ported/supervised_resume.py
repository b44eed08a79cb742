"""Supervised fine-tuning with checkpoint resume, written the way published tinker recipes
are written (the official SDK's API only; nothing from tinkex_jax).

Datums come from token lists with explicit TensorData, forward_backward and optim_step are
pipelined, the mean NLL is computed from the returned logprobs with torch, metrics are
written as JSON lines, and a state checkpoint is saved every SAVE_EVERY steps and recorded
in checkpoints.jsonl. Run with STOP_AFTER to end early (a crash); the next run resumes from
the last recorded state with its optimizer.

Usage: python supervised_resume.py LOG_DIR [STOP_AFTER]   (server from TINKER_BASE_URL /
TINKER_API_KEY). Prints a JSON summary on its last line.
"""

import json
import os
import sys

import tinker
from tinker import types
from tinker.types.tensor_data import TensorData

BASE_MODEL = "tinkex-jax/tiny"
TOTAL_STEPS = 6
SAVE_EVERY = 2
BATCH_SIZE = 2
LEARNING_RATE = 3e-3
PAIRS = [("abc=", "cba\n"), ("hello=", "olleh\n"), ("jax=", "xaj\n"), ("tinker=", "reknit\n")]


def conversation_to_datum(prompt: str, completion: str) -> types.Datum:
    prompt_tokens = list(prompt.encode())
    completion_tokens = list(completion.encode())
    tokens = prompt_tokens + completion_tokens
    weights = [0] * len(prompt_tokens) + [1] * len(completion_tokens)
    input_tokens, target_tokens, weights = tokens[:-1], tokens[1:], weights[1:]
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens=input_tokens),
        loss_fn_inputs={
            "weights": TensorData(data=weights, dtype="float32", shape=[len(weights)]),
            "target_tokens": TensorData(data=target_tokens, dtype="int64",
                                        shape=[len(target_tokens)]),
        },
    )


def compute_mean_nll(logprobs_list: list, weights_list: list) -> float:
    total_weighted_logprobs = 0.0
    total_weights = 0.0
    for logprobs, weights in zip(logprobs_list, weights_list, strict=True):
        logprobs_torch = logprobs.to_torch()
        weights_torch = weights.to_torch()
        total_weighted_logprobs += logprobs_torch.dot(weights_torch)
        total_weights += weights_torch.sum()
    return float(-total_weighted_logprobs / total_weights)


def get_last_checkpoint(log_dir: str) -> dict | None:
    path = os.path.join(log_dir, "checkpoints.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return lines[-1] if lines else None


def main(log_dir: str, stop_after: int | None) -> dict:
    os.makedirs(log_dir, exist_ok=True)
    service_client = tinker.ServiceClient()
    resume_info = get_last_checkpoint(log_dir)
    if resume_info:
        training_client = service_client.create_training_client_from_state_with_optimizer(
            resume_info["state_path"]).result()
        start_step = resume_info["step"]
    else:
        training_client = service_client.create_lora_training_client(
            base_model=BASE_MODEL, rank=8, seed=0).result()
        start_step = 0

    dataset = [conversation_to_datum(p, c) for p, c in PAIRS]
    metrics_log = []
    for step in range(start_step, TOTAL_STEPS):
        if stop_after is not None and step >= stop_after:
            break
        batch_start = (step * BATCH_SIZE) % len(dataset)
        batch = dataset[batch_start:batch_start + BATCH_SIZE]
        lr = LEARNING_RATE * (1.0 - step / TOTAL_STEPS)
        adam_params = types.AdamParams(learning_rate=lr, beta1=0.9, beta2=0.95, eps=1e-8)

        fwd_bwd_future = training_client.forward_backward(batch, loss_fn="cross_entropy")
        optim_step_future = training_client.optim_step(adam_params)
        fwd_bwd_result = fwd_bwd_future.result()
        optim_step_future.result()

        train_logprobs = [x["logprobs"] for x in fwd_bwd_result.loss_fn_outputs]
        train_weights = [datum.loss_fn_inputs["weights"] for datum in batch]
        metrics = {
            "step": step,
            "learning_rate": lr,
            "num_sequences": len(batch),
            "num_loss_tokens": sum(sum(datum.loss_fn_inputs["weights"].data) for datum in batch),
            "train_mean_nll": compute_mean_nll(train_logprobs, train_weights),
            "loss:sum": fwd_bwd_result.metrics["loss:sum"],
        }
        with open(os.path.join(log_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(metrics) + "\n")  # json rejects numpy scalars: plain floats only
        metrics_log.append(metrics)

        if (step + 1) % SAVE_EVERY == 0:
            state_path = training_client.save_state(name=f"{step + 1:06d}").result().path
            with open(os.path.join(log_dir, "checkpoints.jsonl"), "a") as f:
                f.write(json.dumps({"step": step + 1, "state_path": state_path}) + "\n")

    final_logprobs = training_client.forward(dataset, loss_fn="cross_entropy").result()
    final_nll = compute_mean_nll([x["logprobs"] for x in final_logprobs.loss_fn_outputs],
                                 [d.loss_fn_inputs["weights"] for d in dataset])
    return {"start_step": start_step, "steps": [m["step"] for m in metrics_log],
            "train_mean_nll": [m["train_mean_nll"] for m in metrics_log],
            "loss_sum": [m["loss:sum"] for m in metrics_log], "final_nll": final_nll}


if __name__ == "__main__":
    stop = int(sys.argv[2]) if len(sys.argv) > 2 else None
    print(json.dumps(main(sys.argv[1], stop)))
