"""``python -m tinkex_jax.cli``: the same as the ``tinkex`` console script."""

from . import main

if __name__ == "__main__":
    raise SystemExit(main())
