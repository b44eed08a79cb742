"""optax in the loop: per-step AdamParams from any optax schedule, and a pipelined step loop.

Tinker keeps the parameters and the Adam state on the server, so optax *optimizers* cannot
run client-side; optax *schedules* (``step -> value``) can: `adam_params` evaluates them per
step. `pipelined` keeps ``depth`` forward_backward / optim_step pairs in flight, the loop
shape the cookbook hand-rolls with a deque (a request that is not queued when a server
"clock cycle" starts misses it).

Example:
    >>> import optax
    >>> sched = optax.warmup_cosine_decay_schedule(0.0, 1e-3, warmup_steps=10, decay_steps=100)
    >>> [round(adam_params(s, sched).learning_rate, 6) for s in (0, 5, 10)]
    [0.0, 0.0005, 0.001]
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from .errors import invalid
from .types import AdamParams, ForwardBackwardOutput, OptimStepResponse

__all__ = ["PipelineStep", "adam_params", "pipelined"]

T_co = TypeVar("T_co", covariant=True)
B = TypeVar("B")
ScalarOrSchedule = float | Callable[[int], Any]


def _value_at(schedule: ScalarOrSchedule, step: int, where: str) -> float:
    value = schedule(step) if callable(schedule) else schedule
    try:
        return float(value)
    except (TypeError, ValueError):
        raise invalid(where, "a number or an optax schedule returning a scalar",
                      f"<{type(value).__name__}>") from None


def adam_params(
    step: int,
    learning_rate: ScalarOrSchedule,
    *,
    beta1: float = 0.9,
    beta2: float = 0.95,
    eps: float = 1e-12,
    weight_decay: ScalarOrSchedule = 0.0,
    grad_clip_norm: float = 0.0,
) -> AdamParams:
    """The AdamParams of one step, evaluating optax schedules (or plain numbers) at `step`.

    Args:
        step: The optimizer step (0-based), as passed to the schedule.
        learning_rate: A float or any ``step -> value`` schedule (optax schedules included).
        beta1: First-moment decay.
        beta2: Second-moment decay.
        eps: Adam epsilon (the Tinker default is 1e-12).
        weight_decay: Decoupled weight decay: a float or a schedule.
        grad_clip_norm: Global-norm clipping threshold; 0 disables it.

    Returns:
        Validated `AdamParams` for `TrainingClient.optim_step`.

    Raises:
        ValidationError: a negative step or an out-of-range hyperparameter.

    Example:
        >>> adam_params(3, lambda s: 1e-3 * (1 - s / 10)).learning_rate
        0.0007
    """
    if step < 0:
        raise invalid("adam_params(step)", "a step >= 0", step)
    return AdamParams(
        learning_rate=_value_at(learning_rate, step, "adam_params(learning_rate)"),
        beta1=beta1, beta2=beta2, eps=eps,
        weight_decay=_value_at(weight_decay, step, "adam_params(weight_decay)"),
        grad_clip_norm=grad_clip_norm,
    )


class _Result(Protocol[T_co]):
    def result(self, timeout: float | None = None) -> T_co: ...


class PipelineStep(NamedTuple, Generic[B]):
    """One finished step of `pipelined`."""

    step: int
    batch: B
    forward_backward: ForwardBackwardOutput
    optim: OptimStepResponse


class _TrainingClientLike(Protocol):
    def forward_backward(self, data: Any, loss_fn: Any, loss_fn_config: Any = None) -> Any: ...

    def optim_step(self, optim_params: Any = None) -> Any: ...


def pipelined(
    training_client: _TrainingClientLike,
    batches: Iterable[B],
    *,
    optimizer: Callable[[int], AdamParams] | AdamParams,
    depth: int = 2,
    submit: Callable[[int, B], _Result[ForwardBackwardOutput]] | None = None,
    loss_fn: str = "cross_entropy",
    loss_fn_config: dict[str, float] | None = None,
) -> Iterator[PipelineStep[B]]:
    """Run forward_backward + optim_step per batch, keeping `depth` steps in flight.

    Step ``i + depth`` is submitted before step ``i`` is resolved, so the server always has
    the next step queued; results come back in order. ``depth=1`` is the plain synchronous
    loop (both requests of a step are still submitted before waiting, as Tinker intends).

    Args:
        training_client: A TrainingClient.
        batches: Any iterable of batches (each a list of Datum, unless `submit` is given).
        optimizer: AdamParams, or ``step -> AdamParams`` (e.g. ``functools.partial(adam_params,
            learning_rate=schedule)``).
        depth: Steps in flight, >= 1.
        submit: How to submit a batch's forward_backward, ``(step, batch) -> Future``; by
            default ``training_client.forward_backward(batch, loss_fn, loss_fn_config)``. Use it
            for ``forward_backward_custom``.
        loss_fn: Built-in loss for the default `submit`.
        loss_fn_config: Its config.

    Yields:
        `PipelineStep` per batch, in order, once both of its requests have finished.

    Example:
        >>> class Done:
        ...     def __init__(self, value): self.value = value
        ...     def result(self, timeout=None): return self.value
        >>> class FakeClient:
        ...     def forward_backward(self, data, loss_fn, loss_fn_config=None):
        ...         return Done(ForwardBackwardOutput(metrics={"loss:sum": float(sum(data))}))
        ...     def optim_step(self, optim_params=None): return Done(OptimStepResponse())
        >>> steps = pipelined(FakeClient(), [[1], [2, 3]], optimizer=AdamParams())
        >>> [(s.step, s.forward_backward.metrics["loss:sum"]) for s in steps]
        [(0, 1.0), (1, 5.0)]
    """
    if depth < 1:
        raise invalid("pipelined(depth)", "an int >= 1", depth)

    def default_submit(step: int, batch: B) -> _Result[ForwardBackwardOutput]:
        return training_client.forward_backward(batch, loss_fn, loss_fn_config)

    send = submit or default_submit
    in_flight: collections.deque[tuple[int, B, _Result[ForwardBackwardOutput],
                                       _Result[OptimStepResponse]]] = collections.deque()
    for step, batch in enumerate(batches):
        fb = send(step, batch)
        params = optimizer(step) if callable(optimizer) else optimizer
        in_flight.append((step, batch, fb, training_client.optim_step(params)))
        if len(in_flight) >= depth:
            yield _finish(*in_flight.popleft())
    while in_flight:
        yield _finish(*in_flight.popleft())


def _finish(step: int, batch: B, fb: _Result[ForwardBackwardOutput],
            optim: _Result[OptimStepResponse]) -> PipelineStep[B]:
    return PipelineStep(step, batch, fb.result(), optim.result())
