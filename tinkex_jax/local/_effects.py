"""Time, identifiers and random seeds of the local backend, in one injectable record.

The engine's services take every clock reading, fresh identifier and unseeded random draw
from an `Effects` (the wall clock through `Storage`, which is built from `Effects.clock`),
so a test can pin them: ``Engine(config, backend, effects=Effects(clock=...))``. This
module only names the effects; it must not hold state, touch HTTP, storage or the model.

What stays truly random on purpose, outside this record: the JWT signing secret and
``jti`` (`_jwt`) and the checkpoint directory names (`_storage`), which double as the
unauthenticated download tokens of exported weights. A predictable value there would be a
hole, and no test needs to control them.

Example:
    >>> import itertools
    >>> ids = itertools.count(1)
    >>> pinned = Effects(clock=lambda: 1000.0, new_id=lambda: f"{next(ids):032x}",
    ...                  random_bits=lambda bits: 7)
    >>> pinned.clock(), pinned.new_id()[-2:], pinned.random_bits(32)
    (1000.0, '01', 7)
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["REAL_EFFECTS", "Effects"]


def _uuid_hex() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Effects:
    """The local backend's clocks, identifiers and seeds.

    Attributes:
        clock: Wall clock, epoch seconds: row timestamps, TTLs, session idleness, stability
            record expiry, JWT ``iat`` / ``exp``.
        monotonic: Monotonic seconds: how long finished results are kept.
        new_id: A fresh 32-hex-digit identifier (session ids, ids of copied runs).
        random_bits: An integer of that many random bits: the seeds of adapters created
            without ``lora_config.seed`` and of samples drawn without ``sampling_params.seed``.
    """

    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    new_id: Callable[[], str] = _uuid_hex
    random_bits: Callable[[int], int] = secrets.randbits


#: The real effects (system clocks, uuid4, the OS's randomness).
REAL_EFFECTS = Effects()
