"""What the server tells clients about itself: ``client/config``,
``client/dynamic_config`` and ``get_server_capabilities``.

Pure functions of the settings and the backend's base models; they hold no state, never
touch HTTP and change nothing.

Example:
    >>> from pathlib import Path
    >>> from tinkex_jax.local._config import ServerConfig
    >>> config = ServerConfig(data_dir=Path("unused"), fwdbwd_max_chunk_len=64)
    >>> client_config(config)["fwdbwd_max_chunk_len"], dynamic_config()["refresh_interval_sec"]
    (64, 300.0)
"""

from __future__ import annotations

from typing import Any

from ._backend import Backend
from ._config import ServerConfig

__all__ = ["capabilities", "client_config", "dynamic_config"]


def client_config(config: ServerConfig) -> dict[str, Any]:
    """The ``client/config`` answer."""
    return {
        "pjwt_auth_enabled": config.pjwt_auth_enabled,
        "credential_default_source": "api_key",
        "use_pyqwest_transport": config.use_pyqwest_transport,
        "proto_compress_fwdbwd": config.proto_compress_fwdbwd,
        "parallel_fwdbwd_chunks": True,
        "fwdbwd_max_chunk_len": config.fwdbwd_max_chunk_len,
        "sample_use_retrieve_futures": False,
        "custom_loss_server_side": False,
        "sample_join_sampling_session": False,
    }


def dynamic_config() -> dict[str, Any]:
    """The ``client/dynamic_config`` answer."""
    return {"refresh_interval_sec": 300.0, "sample_cancel_enabled": False,
            "sample_cancel_max_batch_size": 64}


def capabilities(config: ServerConfig, backend: Backend) -> dict[str, Any]:
    """The ``get_server_capabilities`` answer: the served base models that load."""
    models = []
    for name in config.base_models:
        try:
            info = backend.base_model(name)
        except KeyError:
            continue  # listed only once it can be loaded
        models.append({"model_name": name, "max_context_length": info.max_context_length,
                       "trainable": True, "sampleable": True})
    return {"supported_models": models}
