"""The model layer's package surface is explicit (its docstring examples run as doctests:
pyproject.toml's ``--doctest-modules``)."""

from __future__ import annotations

import tinkex_jax.local.model as model_pkg


def test_public_surface_is_sorted_and_complete() -> None:
    assert model_pkg.__all__ == sorted(model_pkg.__all__)
    public = {n for n in dir(model_pkg) if not n.startswith("_")}
    modules = {"config", "decoder", "lora", "runtime", "sampler", "tokenizer", "hf", "presets",
               "tasks", "pretrain", "options", "sharding", "plan"}
    assert set(model_pkg.__all__) <= public
    assert public - set(model_pkg.__all__) - modules == set()
