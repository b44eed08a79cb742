"""Rebuild the built-in presets' weights (``tinkex_jax/local/model/presets/``).

Usage::

    JAX_COMPILATION_CACHE_DIR=.jax_cache python scripts/pretrain_presets.py            # both
    python scripts/pretrain_presets.py --only tiny                                      # one
    python scripts/pretrain_presets.py --only tiny --steps 50 --out /tmp/presets        # smoke

Deterministic for a given seed (recipes in ``tinkex_jax.local.model.pretrain.RECIPES``); takes
about 3 min for ``tiny`` and 6-10 min for ``small`` on 2 CPU cores.
"""

from __future__ import annotations

import sys

from tinkex_jax.local.model.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
