"""Pure, jit-compiled JAX losses over Tinker's per-token logprobs.

* The loss table :data:`LOSS_SPECS`: every ``loss_fn`` name of the wire, what it takes and
  whether it is served; :func:`validate_loss_request`, :func:`check_loss_inputs` and
  :func:`resolve_loss_config` check a request against it (the SDK and the local server
  call them too).
* The built-in Tinker losses (``cross_entropy``, ``importance_sampling``, ``ppo``, ``cispo``,
  ``dro``, ``gspo``, ``stable_reinforce``) with the exact server math, and the
  :data:`BUILTIN_LOSSES` registry the local backend and the client dispatch through.
* Research losses: :func:`dpo`, :func:`bradley_terry`, :func:`kl_penalized_policy_gradient`,
  :func:`topk_distillation`, and the helpers :func:`sequence_logprobs`, :func:`kl_estimate`.
* The batch a custom loss sees (:class:`LossBatch`) and the host-side padding into length
  buckets (:func:`make_loss_batch`, :func:`pad_to_bucket`, :func:`unpad`,
  :class:`BucketPolicy`).

Every loss takes an explicit mask (``where=``), an explicit keyword-only ``reduction``
(``"sum"``: the server's token sum; ``"mean"``; ``"none"``) and keyword-only
hyperparameters. Implementation lives in private modules; import from ``losses`` only. A few
array helpers the ``regularizers`` package shares are public too (:func:`align`,
:func:`check_choice`, :func:`masked_log_softmax`, :func:`kl_per_token`).

Names are loaded on first use: request validation (:func:`validate_loss_request`,
:data:`LOSS_SPECS`, ...) and the NumPy padding helpers never import JAX, so an HTTP-only
client can use them and stay fast to import.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any


def _exports() -> dict[str, str]:
    """Public name -> module, read from ``__init__.pyi`` (the one list of public names)."""
    stub = ast.parse(Path(__file__).with_suffix(".pyi").read_text(encoding="utf-8"))
    return {alias.asname or alias.name: node.module
            for node in stub.body if isinstance(node, ast.ImportFrom) and node.module
            for alias in node.names}


_MODULE_OF = _exports()
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'losses' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
