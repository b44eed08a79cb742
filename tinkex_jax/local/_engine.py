"""The engine: the local backend's services, wired together over one shared core.

=================  =========================================================================
``core``           `_core.Core`: request dedup, futures, per-model lanes on the scheduler
``sessions``       `_sessions.Sessions`: create / heartbeat / finish / reap, REST session views
``training``       `_training.Training`: create / unload models, forward_backward, optim_step
``weights``        `_weights.Weights`: save / load / weights_info / export / copy checkpoints
``sampling``       `_sampling.Sampling`: sampling sessions, admission control, asample
``catalog``        `_catalog.Catalog`: REST runs and checkpoints, publish / TTL / delete, files
=================  =========================================================================

Every request is decoded into the wire types (which validate themselves) by the app and
checked against its model by the service when it is submitted: a bad request gets a 4xx
answer and is never queued. The app (`_app`) calls the service each route needs; `Engine`
only builds them and runs the life cycle (start, stop, periodic reaping). It holds no
request logic and never touches HTTP.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from tinkex_jax.local import ServerConfig
    >>> from tinkex_jax.local._jax_backend import JaxBackend
    >>> from tinkex_jax.types import CreateSessionRequest
    >>> engine = Engine(ServerConfig(data_dir=Path(tempfile.mkdtemp()), warm_up=False,
    ...                              base_models=("tinkex-jax/tiny",)), JaxBackend(),
    ...                 effects=Effects(new_id=lambda: "0" * 32))
    >>> engine.sessions.create_session(CreateSessionRequest())["session_id"]
    'sess-00000000000000000000'
    >>> engine.stop()
"""

from __future__ import annotations

from ._backend import Backend
from ._catalog import Catalog
from ._config import ServerConfig, with_api_key
from ._core import Core
from ._effects import REAL_EFFECTS, Effects
from ._sampling import Sampling
from ._sessions import Sessions
from ._stability import StabilityRecords
from ._storage import Storage
from ._training import Training
from ._weights import Weights

__all__ = ["Engine"]


class Engine:
    """The local backend's services over one core (see the module docstring).

    Args:
        config: Server settings (without an API key, the data directory's stored key is
            used: `with_api_key`; ``self.config`` has it).
        backend: The array work (the JAX model layer, or a test fake).
        storage: Durable state; opened from ``config.data_dir`` with ``effects.clock``
            when omitted (a given storage keeps its own clock).
        effects: Clocks, identifiers and seeds (tests pin them).
    """

    def __init__(self, config: ServerConfig, backend: Backend,
                 storage: Storage | None = None, effects: Effects = REAL_EFFECTS) -> None:
        self.config = config = with_api_key(config)
        self.storage = (storage if storage is not None
                        else Storage(config.data_dir, clock=effects.clock))
        self.core = Core(config, backend, self.storage, effects)
        self.stability = StabilityRecords(ttl_s=config.stability_record_ttl_s,
                                          max_tokens=config.stability_max_tokens,
                                          clock=self.storage.now)
        self.catalog = Catalog(self.core)
        self.training = Training(self.core, self.stability)
        self.sessions = Sessions(self.core, self.training)
        self.weights = Weights(self.core, self.training, self.catalog)
        self.sampling = Sampling(self.core, self.training, self.weights, self.stability)

    def start(self) -> None:
        """Start the compute workers and, if configured, load the base models."""
        self.core.start()

    def stop(self) -> None:
        """Stop the workers and close storage."""
        self.core.stop()

    def reap(self) -> int:
        """Forget old results and stability records, finish sessions idle for longer than
        ``session_idle_timeout_s``, prune what finished sessions left (`prune`) and delete
        expired checkpoints; returns the number of checkpoints deleted."""
        self.core.collect()
        self.sampling.collect()
        self.sessions.finish_idle()
        self.prune()
        return self.catalog.delete_expired()

    def prune(self) -> int:
        """Forget the in-memory samplers and remembered answers (dedup) of finished
        sessions, and delete the rows finished
        sessions and settled saves leave behind, as ``finished_sampler_retention_s``,
        ``finished_session_retention_s`` and ``result_retention_s`` say
        (`Storage.prune_finished`); returns the number of rows deleted."""
        now, config = self.storage.now(), self.config

        def finished(session_id: str) -> bool:
            row = self.storage.get_session(session_id)
            return row is None or row.finished_at is not None

        self.sampling.forget_finished(finished)
        self.core.forget_finished(finished)
        keep = config.finished_session_retention_s
        return self.storage.prune_finished(
            samplers_before=now - config.finished_sampler_retention_s,
            sessions_before=None if keep is None else now - keep,
            requests_before=now - config.result_retention_s)
