"""Shared test configuration.

JAX compilations are cached on disk (``.jax_cache`` in the repo, or ``JAX_COMPILATION_CACHE_DIR``)
so that the test process and the local-backend server reuse each other's compiled functions.
"""

from __future__ import annotations

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_REPO / ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("TINKER_TELEMETRY", "0")
