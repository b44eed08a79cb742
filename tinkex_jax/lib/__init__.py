"""The official SDK's ``tinker.lib`` path: `tinkex_jax.lib.public_interfaces` holds the clients
under the module names code written for the official SDK imports.

Example:
    >>> from tinkex_jax.lib.public_interfaces import APIFuture
    >>> APIFuture.__name__
    'Future'
"""

from __future__ import annotations

from typing import Any

__all__ = ["ExperimentalWarning"]


class ExperimentalWarning(FutureWarning):
    """Warned when code uses a feature whose interface may still change."""


def __getattr__(name: str) -> Any:
    from .._modules import submodule

    return submodule(__name__, name)
