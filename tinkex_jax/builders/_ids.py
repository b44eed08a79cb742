"""Id allocation as explicit state (docs/protocol.md §7.1): pure functions over small tuples."""

from __future__ import annotations

from typing import NamedTuple

from ..errors import invalid

__all__ = [
    "CLONE_SEQ_BLOCK",
    "RequestCounter",
    "SessionCounters",
    "next_model_seq_id",
    "next_sampling_session_seq_id",
    "reserve_request_ids",
    "sampling_seq_id",
    "seq_id_of",
]

#: Each sampling-client clone numbers its asample seq_ids in its own block of this size.
CLONE_SEQ_BLOCK = 1_000_000_000


class SessionCounters(NamedTuple):
    """Per-session counters: training clients, sampling sessions, custom losses (from 0)."""

    model_seq_id: int = 0
    sampling_session_seq_id: int = 0
    custom_loss_seq_id: int = 0


def next_model_seq_id(counters: SessionCounters) -> tuple[int, SessionCounters]:
    """Take the next ``model_seq_id`` (create_model and create-via-load share it).

    Example:
        >>> first, c = next_model_seq_id(SessionCounters())
        >>> second, c = next_model_seq_id(c)
        >>> first, second
        (0, 1)
    """
    return counters.model_seq_id, counters._replace(model_seq_id=counters.model_seq_id + 1)


def next_sampling_session_seq_id(counters: SessionCounters) -> tuple[int, SessionCounters]:
    """Take the next ``sampling_session_seq_id`` (create_sampling_session, ephemeral saves)."""
    value = counters.sampling_session_seq_id
    return value, counters._replace(sampling_session_seq_id=value + 1)


class RequestCounter(NamedTuple):
    """A training client's request counter; request id r travels as ``seq_id = r + 1``."""

    next_request_id: int = 0


def reserve_request_ids(counter: RequestCounter, n: int) -> tuple[range, RequestCounter]:
    """Reserve `n` consecutive request ids in program order.

    Example:
        >>> ids, c = reserve_request_ids(RequestCounter(), 3)
        >>> list(ids), [seq_id_of(i) for i in ids], c.next_request_id
        ([0, 1, 2], [1, 2, 3], 3)
    """
    if n < 1:
        raise invalid("reserve_request_ids(n)", "n >= 1", n)
    start = counter.next_request_id
    return range(start, start + n), RequestCounter(start + n)


def seq_id_of(request_id: int) -> int:
    """The wire ``seq_id`` of a training-client request id (always >= 1)."""
    return request_id + 1


def sampling_seq_id(clone_id: int, n: int) -> int:
    """The asample ``seq_id`` of a clone's n-th request.

    Example:
        >>> sampling_seq_id(0, 5), sampling_seq_id(2, 5)
        (5, 2000000005)
    """
    if clone_id < 0 or not 0 <= n < CLONE_SEQ_BLOCK:
        raise invalid("sampling_seq_id", "clone_id >= 0 and 0 <= n < 1e9", (clone_id, n))
    return CLONE_SEQ_BLOCK * clone_id + n
