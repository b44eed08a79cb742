"""The public surface of ``regularizers`` is explicit (its docstring examples run as doctests:
pyproject.toml's ``--doctest-modules``)."""

from __future__ import annotations

import regularizers


def test_public_surface_is_every_reexport() -> None:
    public = {n for n in dir(regularizers) if not n.startswith("_")}
    assert regularizers.__all__ == sorted(public) and len(public) > 20
    assert {"compose", "restrict", "adaptive_kl", "l2", "TermSpec"} <= public
