"""Which public SDK method a request belongs to, for the ported ``*_async`` methods too.

Every public client method hands its work to `Shell.submit` under its own name, which the
requests then carry as ``x-sdk-method`` (docs/protocol.md §1.1) and which errors and telemetry
name. A ``*_async`` method is a thin coroutine around its sync sibling; `instrument_async`
makes it count as a method of its own (``TrainingClient.save_weights_external_async``, not
``TrainingClient.save_weights_external``), the way the official SDK attributes them. The
outermost public method wins: a public method called by another one keeps the caller's name.

Example:
    >>> class Client:
    ...     async def ping_async(self) -> str | None:
    ...         return current_outer_method()
    >>> Client = instrument_async(Client)
    >>> import asyncio
    >>> asyncio.run(Client().ping_async())
    'Client.ping_async'
    >>> Client.ping_async.__tinkex_sdk_method__
    'Client.ping_async'
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

__all__ = ["as_sdk_method", "current_outer_method", "instrument_async"]

C = TypeVar("C", bound=type)

_OUTER: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tinkex_jax_outer_sdk_method", default=None)


def current_outer_method() -> str | None:
    """The outermost public method running in this context (None outside one)."""
    return _OUTER.get()


@contextlib.contextmanager
def as_sdk_method(name: str) -> Iterator[None]:
    """Run the block as the public method `name` (unless an outer one is already running).

    Example:
        >>> with as_sdk_method("ServiceClient.get_server_capabilities"):
        ...     current_outer_method()
        'ServiceClient.get_server_capabilities'
    """
    token = _OUTER.set(_OUTER.get() or name)
    try:
        yield
    finally:
        _OUTER.reset(token)


def _instrumented(func: Callable[..., Coroutine[Any, Any, Any]], sdk_method: str
                  ) -> Callable[..., Coroutine[Any, Any, Any]]:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        with as_sdk_method(sdk_method):
            return await func(*args, **kwargs)

    wrapper.__tinkex_sdk_method__ = sdk_method  # type: ignore[attr-defined]
    return wrapper


def instrument_async(cls: C) -> C:
    """Class decorator: every public ``*_async`` coroutine method `cls` defines runs as the
    SDK method ``<ClassName>.<name>`` (see the module docstring)."""
    for name, member in list(vars(cls).items()):
        if (not name.startswith("_") and name.endswith("_async")
                and inspect.iscoroutinefunction(member)):
            setattr(cls, name, _instrumented(member, f"{cls.__name__}.{name}"))
    return cls
