"""Export a LoRA adapter in Hugging Face PEFT format (``adapter_config.json`` and
``adapter_model.safetensors``), the layout ``tinker checkpoint push-hf`` expects.

Our adapters compute ``x @ W + (alpha / r) * (x @ A) @ B`` with ``A [in, r]`` and
``B [r, out]``; PEFT stores ``lora_A.weight = A.T [r, in]`` and ``lora_B.weight = B.T
[out, r]`` with the same ``lora_alpha / r`` scaling.

Example:
    >>> import numpy as np
    >>> arrays = {"layers.wq.a": np.ones((2, 8, 4), np.float32),
    ...           "layers.wq.b": np.zeros((2, 4, 8), np.float32)}
    >>> sorted(peft_tensors(arrays))[0]
    'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PEFT_MODULES", "peft_config", "peft_tensors", "write_peft_adapter"]

#: Our projection names and the Hugging Face module each one adapts.
PEFT_MODULES: Mapping[str, str] = {
    "wq": "self_attn.q_proj",
    "wk": "self_attn.k_proj",
    "wv": "self_attn.v_proj",
    "wo": "self_attn.o_proj",
    "w_gate": "mlp.gate_proj",
    "w_up": "mlp.up_proj",
    "w_down": "mlp.down_proj",
}


def peft_tensors(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PEFT tensor names and layouts for flat adapter arrays (``layers.<name>.a|b``,
    ``unembed.a|b``)."""
    out: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        parts = key.split(".")
        half = {"a": "lora_A", "b": "lora_B"}[parts[-1]]
        if parts[0] == "layers":
            module = PEFT_MODULES[parts[1]]
            for i in range(value.shape[0]):
                name = f"base_model.model.model.layers.{i}.{module}.{half}.weight"
                out[name] = np.ascontiguousarray(np.asarray(value[i], np.float32).T)
        else:
            name = f"base_model.model.lm_head.{half}.weight"
            out[name] = np.ascontiguousarray(np.asarray(value, np.float32).T)
    return out


def peft_config(base_model: str, rank: int, alpha: float, arrays: Mapping[str, Any]
                ) -> dict[str, Any]:
    """The ``adapter_config.json`` content.

    Example:
        >>> peft_config("m", 8, 32.0, {"unembed.a": 0, "unembed.b": 0})["target_modules"]
        ['lm_head']
    """
    targets = set()
    for key in arrays:
        parts = key.split(".")
        targets.add(PEFT_MODULES[parts[1]].split(".")[-1] if parts[0] == "layers"
                    else "lm_head")
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "target_modules": sorted(targets),
    }


def write_peft_adapter(out_dir: Path, base_model: str, rank: int, alpha: float,
                       arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` into `out_dir`."""
    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(peft_tensors(arrays), str(out_dir / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    (out_dir / "adapter_config.json").write_text(
        json.dumps(peft_config(base_model, rank, alpha, arrays), indent=2, sort_keys=True)
        + "\n")
