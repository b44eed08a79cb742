"""The pure pieces of a custom-loss step (docs/protocol.md §8.1), in numpy: no JAX, no torch.

A custom loss trains through two ordinary requests: a forward pass that gives the per-token
logprobs of the targets, and a ``cross_entropy`` forward_backward whose weights are the
negated gradient of the loss with respect to those logprobs (the server's loss is
``Σ -logprob · weight``, so its parameter gradient equals the custom loss's). These
functions build both phases' datums and merge the metrics; the client runs them
(`TrainingClient.forward_backward_surrogate`), and whatever computes the gradient (a JAX
loss, a torch loss) only has to return a `SurrogateGradients`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ..errors import invalid
from ..types import Datum, TensorData

__all__ = [
    "SurrogateGradients",
    "merge_custom_metrics",
    "split_like",
    "surrogate_data",
    "surrogate_forward_data",
]


class SurrogateGradients(NamedTuple):
    """What a custom loss gives for one step, on the host.

    Attributes:
        loss: the loss value (``loss:sum`` of the result).
        grads: ``dLoss / dlogprobs`` for each datum, shaped like its ``target_tokens``.
        metrics: the loss's own metrics, merged into the result's.
        state: the new state of stateful loss terms, or None (see
            ``tinkex_jax.custom_loss.CustomLoss``).
    """

    loss: float
    grads: list[np.ndarray]
    metrics: dict[str, float]
    state: Any = None


def surrogate_forward_data(data: Sequence[Datum]) -> list[Datum]:
    """The datums the forward phase sends: ``target_tokens`` and ``weights`` only.

    Missing ``weights`` become zeros of the targets' shape; the other ``loss_fn_inputs`` stay
    on the client (the loss still sees them). Model inputs and provenance spans are kept.

    Raises:
        ValidationError: a datum without ``target_tokens``.

    Example:
        >>> from tinkex_jax.types import ModelInput
        >>> d = Datum(model_input=ModelInput.from_ints([1, 2]),
        ...           loss_fn_inputs={"target_tokens": [2, 3], "ref": [0.5, 0.5]})
        >>> fwd, = surrogate_forward_data([d])
        >>> sorted(fwd.loss_fn_inputs), fwd.loss_fn_inputs["weights"].tolist()
        (['target_tokens', 'weights'], [0.0, 0.0])
    """
    out: list[Datum] = []
    for i, datum in enumerate(data):
        inputs = datum.loss_fn_inputs
        if "target_tokens" not in inputs:
            raise invalid(f"data[{i}].loss_fn_inputs", "a 'target_tokens' entry",
                          f"<keys {sorted(inputs)}>",
                          "a custom loss differentiates the logprobs of target_tokens; add them "
                          "(the input shifted by one)")
        targets = inputs["target_tokens"]
        weights = inputs.get("weights")
        if weights is None:
            weights = TensorData.from_numpy(np.zeros(targets.shape, np.float32))
        out.append(_with_inputs(datum, {"target_tokens": targets, "weights": weights}))
    return out


def _with_inputs(datum: Datum, inputs: Mapping[str, Any]) -> Datum:
    return Datum(model_input=datum.model_input, loss_fn_inputs=inputs,
                 model_input_spans=datum.model_input_spans,
                 loss_fn_input_spans=datum.loss_fn_input_spans)


def surrogate_data(forward_data: Sequence[Datum], grads: Sequence[np.ndarray]) -> list[Datum]:
    """The backward phase's datums: the same targets, ``weights = -grad`` (float32).

    Example:
        >>> import numpy as np
        >>> from tinkex_jax.builders import datum_from_tokens
        >>> d = surrogate_forward_data([datum_from_tokens([1, 2, 3])])
        >>> surrogate_data(d, [np.array([0.5, -1.0])])[0].loss_fn_inputs["weights"].tolist()
        [-0.5, 1.0]
    """
    if len(grads) != len(forward_data):
        raise ValueError(f"surrogate_data: {len(grads)} gradients for {len(forward_data)} datums")
    return [
        _with_inputs(datum, {"target_tokens": datum.loss_fn_inputs["target_tokens"],
                             "weights": TensorData.from_numpy(np.negative(grad, dtype=np.float32))})
        for datum, grad in zip(forward_data, grads, strict=True)
    ]


def split_like(items: Sequence[Datum], chunks: Sequence[Sequence[Datum]]) -> list[list[Datum]]:
    """`items` cut into lists of the same lengths as `chunks` (the backward phase keeps the
    forward phase's chunk boundaries, so its reserved request ids stay contiguous).

    Example:
        >>> split_like([1, 2, 3], [["a", "b"], ["c"]])
        [[1, 2], [3]]
    """
    out: list[list[Datum]] = []
    start = 0
    for chunk in chunks:
        out.append(list(items[start:start + len(chunk)]))
        start += len(chunk)
    return out


def merge_custom_metrics(backward: Mapping[str, float], custom_loss: float,
                         loss_metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics of a custom step, as the official SDK reports them (docs/protocol.md §8.1 step 8).

    The server's ``loss:sum`` (the linear surrogate) becomes ``surrogate_loss:sum`` (left
    out when an older server reports none); the loss's metrics are added; ``loss:sum`` is
    the custom loss.

    Example:
        >>> merge_custom_metrics({"loss:sum": 3.0, "tokens:sum": 8.0}, 1.5, {"acc:mean": 0.5})
        {'tokens:sum': 8.0, 'acc:mean': 0.5, 'loss:sum': 1.5, 'surrogate_loss:sum': 3.0}
    """
    merged = dict(backward)
    surrogate = merged.pop("loss:sum", None)
    merged.update(loss_metrics)
    merged["loss:sum"] = float(custom_loss)
    if surrogate is not None:
        merged["surrogate_loss:sum"] = float(surrogate)
    return merged
