"""Fixtures of the local-backend tests: servers over a fake backend (fast, numpy only) and one
shared server over the real JAX model layer with the tiny preset."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.local_fake_backend import FAKE, FakeBackend
from tests.support.local_support import TINY, RawClient, make_backend
from tinkex_jax.local import LocalServer, serve


@pytest.fixture
def fake_backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def fake_server(tmp_path: Any, fake_backend: FakeBackend) -> Iterator[LocalServer]:
    with serve(tmp_path / "data", base_models=[FAKE], backend=fake_backend,
               long_poll_timeout_s=0.2) as server:
        yield server


@pytest.fixture
def raw(fake_server: LocalServer) -> Iterator[RawClient]:
    client = RawClient(fake_server)
    yield client
    client.http.close()


@pytest.fixture(scope="session")
def jax_backend() -> Any:
    return make_backend()


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory: Any, jax_backend: Any) -> Iterator[LocalServer]:
    """One real server (JAX model layer, tiny preset) shared by the whole session."""
    with serve(tmp_path_factory.mktemp("tiny-data"), base_models=[TINY], backend=jax_backend,
               long_poll_timeout_s=5.0) as server:
        yield server
