"""Counting JAX traces from the outside, through ``jax.monitoring`` (no counter in the code
under test).

JAX reports every trace of a jitted function as a ``/jax/core/compile/jaxpr_trace_duration``
event carrying the function's name; `count_traces` counts those events while it is open.

Example:
    >>> import jax, jax.numpy as jnp
    >>> def double(x):
    ...     return x * 2
    >>> f = jax.jit(double)
    >>> with count_traces("double") as traces:
    ...     _ = f(jnp.ones(3)), f(jnp.ones(3)), f(jnp.ones(4))
    >>> traces.count
    2
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import jax

_TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
_lock = threading.Lock()
_open: list[Traces] = []
_registered = False


@dataclass
class Traces:
    """The traces of functions named `name` seen while the context was open."""

    name: str
    count: int = 0
    names: list[str] = field(default_factory=list)


def _listener(event: str, duration: float, **kwargs: object) -> None:
    if event != _TRACE_EVENT:
        return
    name = str(kwargs.get("fun_name", ""))
    with _lock:
        for traces in _open:
            traces.names.append(name)
            if name == traces.name:
                traces.count += 1


@contextmanager
def count_traces(name: str) -> Iterator[Traces]:
    """Count the traces of jitted functions whose name is `name` inside the block."""
    global _registered
    with _lock:
        if not _registered:
            jax.monitoring.register_event_duration_secs_listener(_listener)
            _registered = True
        traces = Traces(name)
        _open.append(traces)
    try:
        yield traces
    finally:
        with _lock:
            _open.remove(traces)
