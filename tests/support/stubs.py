"""Small stand-ins shared by tests that call the SDK's download code without a server."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

__all__ = ["Done", "ExternalWeightsService"]


class Done:
    """A future that is already resolved to `value`."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self, timeout: float | None = None) -> Any:
        return self.value


class ExternalWeightsService:
    """Just what `download_checkpoint` calls for an ``external_weights`` path: a REST client
    whose ``get_external_weights_urls`` answers `urls`."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls

    def create_rest_client(self) -> Any:
        return SimpleNamespace(get_external_weights_urls=lambda path: Done(
            SimpleNamespace(urls=self.urls)))
