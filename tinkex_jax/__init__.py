"""tinkex_jax."""
