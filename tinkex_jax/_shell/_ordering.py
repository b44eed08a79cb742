"""Submission order of one TrainingClient (docs/protocol.md §7.2) as explicit turn state.

Request ids are reserved in program order (`tinkex_jax.builders.reserve_request_ids`). A
request may be POSTed once every smaller id has been *released* (its POST returned, well or
not, or it was abandoned). The chunks of one call wait for the call's first id, so they go
out together. Releasing is idempotent and may happen out of order.

Example:
    >>> import asyncio
    >>> async def main():
    ...     seq, log = TurnSequencer(), []
    ...     async def call(rid):
    ...         await seq.wait(rid); log.append(rid); seq.release(range(rid, rid + 1))
    ...     await asyncio.gather(call(2), call(0), call(1))
    ...     return log
    >>> asyncio.run(main())
    [0, 1, 2]
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from ..errors import ClientPoisonedError

__all__ = ["TurnSequencer"]


class TurnSequencer:
    """Turns of a training client's requests; lives on the shell's event loop."""

    def __init__(self) -> None:
        self.next_turn = 0
        self._released: set[int] = set()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.poisoned: BaseException | None = None

    def _poison_error(self) -> ClientPoisonedError:
        error = ClientPoisonedError(
            "A previous forward_backward_custom chain of this TrainingClient failed, so the "
            f"server may hold half a gradient step ({type(self.poisoned).__name__}: "
            f"{self.poisoned}). This request was not sent. What to do: create a new training "
            "client, e.g. ServiceClient.create_training_client_from_state_with_optimizer(path) "
            "from your last checkpoint.")
        error.__cause__ = self.poisoned
        return error

    async def wait(self, first_id: int) -> None:
        """Wait until every id below `first_id` is released.

        Raises:
            ClientPoisonedError: the client was poisoned before or while waiting.
        """
        if self.poisoned is not None:
            raise self._poison_error()
        if self.next_turn < first_id:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append((first_id, waiter))
            try:
                await waiter
            finally:
                self._waiters = [(i, w) for i, w in self._waiters if w is not waiter]
        if self.poisoned is not None:
            raise self._poison_error()

    def release(self, ids: Iterable[int]) -> None:
        """Mark ids as submitted (or abandoned) and wake the requests they held back."""
        for i in ids:
            if i >= self.next_turn:
                self._released.add(i)
        while self.next_turn in self._released:
            self._released.discard(self.next_turn)
            self.next_turn += 1
        for first_id, waiter in self._waiters:
            if first_id <= self.next_turn and not waiter.done():
                waiter.set_result(None)

    def poison(self, error: BaseException) -> None:
        """Fail every waiting and later request with `ClientPoisonedError`."""
        if self.poisoned is None:
            self.poisoned = error
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
