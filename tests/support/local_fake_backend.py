"""A numpy-only `Backend` for fast engine and HTTP tests (no JAX, no compilation).

The "model" is a bigram table: ``logits(next | token) = base[token] + adapter[token]``.
Cross-entropy gradients are exact; the optimizer is plain SGD. Every compute call is logged
in `calls` (for ordering tests) and waits on `gate` (clear it to hold requests in flight).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tests.support.local_support import FAKE
from tinkex_jax.local._backend import (
    AdapterSpec,
    BaseModelInfo,
    SampledRow,
    SampleJob,
    SampleOutcome,
    TrainItem,
    TrainResult,
)
from tinkex_jax.types import AdamParams


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


class FakeBackend:
    """See the module docstring."""

    def __init__(self, vocab: int = 16, max_len: int = 64) -> None:
        self.vocab = vocab
        self.max_len = max_len
        self.base = np.random.default_rng(0).normal(size=(vocab, vocab)).astype(np.float32)
        self.calls: list[tuple[Any, ...]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def _enter(self, *record: Any) -> None:
        self.entered.set()
        assert self.gate.wait(30), "test gate never opened"
        self.calls.append(record)

    def base_models(self) -> Sequence[BaseModelInfo]:
        return [self.base_model(FAKE)]

    def base_model(self, name: str) -> BaseModelInfo:
        if name != FAKE:
            raise KeyError(name)
        return BaseModelInfo(name=FAKE, vocab_size=self.vocab, max_context_length=self.max_len,
                             tokenizer_id=FAKE, eos_token_ids=(self.vocab - 1,))

    def warm_up(self, name: str) -> None:
        self.base_model(name)

    def init_adapter(self, base: str, spec: AdapterSpec) -> dict[str, np.ndarray]:
        return {"w": np.zeros((self.vocab, self.vocab), np.float32)}

    def init_optimizer(self, base: str, adapter: Any) -> dict[str, np.ndarray]:
        return {"step": np.zeros((), np.int64)}

    def forward_backward(self, base: str, adapter: Any, items: Sequence[TrainItem],
                         loss_fn: str, config: Mapping[str, float], *,
                         forward_only: bool) -> TrainResult:
        self._enter("forward" if forward_only else "forward_backward",
                    [int(i.tokens[0]) for i in items])
        w = adapter["w"]
        grad = np.zeros_like(w)
        lps, losses = [], []
        for item in items:
            lp_table = _log_softmax(self.base[item.tokens] + w[item.tokens])
            lp = lp_table[np.arange(item.tokens.size), item.targets]
            weights = item.inputs.get("weights", np.ones_like(lp))
            lps.append(lp.astype(np.float32))
            losses.append((-lp * weights).astype(np.float32))
            p = np.exp(lp_table)
            onehot = np.eye(self.vocab, dtype=np.float32)[item.targets]
            np.add.at(grad, item.tokens, -(onehot - p) * weights[:, None])
        return TrainResult(logprobs=lps, losses=losses, grads=None if forward_only
                           else {"w": grad})

    def accumulate(self, total: Any, grads: Any) -> Any:
        return grads if total is None else {"w": total["w"] + grads["w"]}

    def optim_step(self, base: str, adapter: Any, opt_state: Any, grads: Any,
                   params: AdamParams) -> tuple[Any, Any, dict[str, float]]:
        self._enter("optim_step", params.learning_rate)
        g = np.zeros_like(adapter["w"]) if grads is None else grads["w"]
        new = {"w": adapter["w"] - params.learning_rate * g}
        metrics = {"grad_norm:mean": float(np.linalg.norm(g)),
                   "learning_rate:mean": params.learning_rate,
                   "param_norm:mean": float(np.linalg.norm(new["w"]))}
        if not all(np.isfinite(list(metrics.values()))):
            return adapter, opt_state, metrics  # the Backend contract: a skipped step
        return new, {"step": opt_state["step"] + 1}, metrics

    def sampling_handle(self, base: str, adapter: Any) -> Any:
        w = np.zeros_like(self.base) if adapter is None else adapter["w"].copy()
        return {"w": w}

    def sample(self, handle: Any, job: SampleJob, *, prompt_logprobs: bool,
               topk_prompt: int) -> SampleOutcome:
        self._enter("sample", int(job.prompt[0]))
        rows = []
        for _ in range(job.num_samples):
            tok, toks, lps, reason = int(job.prompt[-1]), [], [], "length"
            for _ in range(job.max_tokens):
                table = _log_softmax(self.base[tok] + handle["w"][tok])
                tok = int(np.argmax(table))
                toks.append(tok)
                lps.append(float(table[tok]))
                if tok in job.stop_tokens:
                    reason = "stop"
                    break
            rows.append(SampledRow(tokens=np.array(toks, np.int32),
                                   logprobs=np.array(lps, np.float32), stop_reason=reason))
        plp = None
        topk = None
        table = self.logprob_table(handle, job.prompt)
        if prompt_logprobs:
            plp = np.full(job.prompt.size, np.nan, np.float32)
            plp[1:] = table[np.arange(job.prompt.size - 1), job.prompt[1:]]
        if topk_prompt:
            order = np.argsort(-table, axis=-1)[:, :topk_prompt]
            vals = np.take_along_axis(table, order, axis=-1)
            ids = np.concatenate([np.zeros((1, topk_prompt), np.int32), order[:-1]])
            lp = np.concatenate([np.full((1, topk_prompt), -99999.0, np.float32), vals[:-1]])
            topk = (ids.astype(np.int32), lp.astype(np.float32))
        return SampleOutcome(rows=rows, prompt_logprobs=plp, topk_prompt=topk)

    def logprob_table(self, handle: Any, tokens: np.ndarray) -> np.ndarray:
        return _log_softmax(self.base[tokens] + handle["w"][tokens]).astype(np.float32)

    def adapter_to_arrays(self, adapter: Any) -> dict[str, np.ndarray]:
        return {"w": np.array(adapter["w"])}

    def adapter_from_arrays(self, base: str, spec: AdapterSpec,
                            arrays: Mapping[str, np.ndarray]) -> Any:
        return {"w": np.array(arrays["w"])}

    def optimizer_to_arrays(self, opt_state: Any) -> dict[str, np.ndarray]:
        return {"step": np.array(opt_state["step"])}

    def optimizer_from_arrays(self, base: str, adapter: Any,
                              arrays: Mapping[str, np.ndarray]) -> Any:
        return {"step": np.array(arrays["step"])}

    def export_hf(self, base: str, spec: AdapterSpec, adapter: Any, out_dir: Path) -> None:
        from safetensors.numpy import save_file

        save_file({"w": np.array(adapter["w"])}, str(Path(out_dir) / "adapter_model.safetensors"))
        (Path(out_dir) / "adapter_config.json").write_text('{"peft_type": "LORA"}')
