"""`ClientFuture`: the Future of a client that can also stand in for the client.

Client-creating methods (``create_lora_training_client``, ``create_sampling_client``, …)
return a Future. Much cookbook code uses the return value directly as the client, as the
official SDK still allows; a `ClientFuture` forwards attribute access to the finished client
(waiting for it) with a `FutureWarning` that shows the fix.
"""

from __future__ import annotations

import warnings
from typing import Any, TypeVar

from .._shell import Future

__all__ = ["ClientFuture"]

C = TypeVar("C")


class ClientFuture(Future[C]):
    """A `Future` of a client; deprecated direct use forwards to the client.

    Example:
        >>> import warnings
        >>> class Client:
        ...     def hello(self): return "hi"
        >>> f = ClientFuture.completed(Client())
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     f.hello(), caught[0].category.__name__
        ('hi', 'FutureWarning')
        >>> f.result().hello()
        'hi'
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        warnings.warn(
            f"Using `.{name}` on the Future returned by a client-creating method is deprecated. "
            "Get the client first: `client = service.create_...(...).result()` (or "
            "`client = await service.create_...(...)`).",
            FutureWarning, stacklevel=2)
        return getattr(self.result(), name)

    def __reduce__(self) -> Any:
        warnings.warn("Pickling the Future returned by a client-creating method pickles the "
                      "client; call .result() first.", FutureWarning, stacklevel=2)
        return self.result().__reduce__()
