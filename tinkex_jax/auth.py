"""Is a credential configured, and does the server accept it? (``tinker.auth`` of the
official SDK.)

The credential is found as every client finds it (see `tinkex_jax.ServiceClient`): the
``TINKER_API_KEY`` environment variable, ``TINKER_CREDENTIAL_CMD``, the default key stored
by ``tinkex auth login``, or, for a base URL on this machine, the local backend's key.

Example:
    >>> from tinkex_jax import auth
    >>> import os
    >>> os.environ["TINKER_API_KEY"] = "tml-example"
    >>> auth.get_tinker_token(), auth.tinker_has_credentials()
    ('tml-example', True)
    >>> del os.environ["TINKER_API_KEY"]
"""

from __future__ import annotations

import os

from .errors import TinkerError

__all__ = ["get_tinker_token", "raise_if_tinker_not_accessible", "tinker_has_credentials"]


def get_tinker_token() -> str | None:
    """The static key in use (``TINKER_API_KEY``, else the stored default key), or None.

    Reads only local configuration: ``TINKER_CREDENTIAL_CMD`` is not run.
    """
    from ._shell._config import credentials_path, read_stored_key

    key = (os.environ.get("TINKER_API_KEY") or "").strip()
    if key:
        return key
    try:
        return read_stored_key(credentials_path(os.environ))
    except TinkerError:
        return None


def tinker_has_credentials() -> bool:
    """Whether the clients would find a credential (nothing is sent; a configured
    ``TINKER_CREDENTIAL_CMD`` counts without being run)."""
    from ._shell._config import resolve_settings

    try:
        resolve_settings(env=os.environ)
    except (TinkerError, OSError, ValueError):
        return False
    return True


def raise_if_tinker_not_accessible() -> None:
    """Ask the server for its capabilities once (no retries) and raise if that fails.

    Raises:
        TinkerError: no credential is configured (or it is malformed);
            `tinkex_jax.AuthenticationError` when the server rejects it,
            `tinkex_jax.APIConnectionError` when it cannot be reached, another
            `tinkex_jax.APIStatusError` for any other refusal.
    """
    from .clients import RestClient

    with RestClient(max_retries=0) as rest:
        rest.get_server_capabilities().result()
