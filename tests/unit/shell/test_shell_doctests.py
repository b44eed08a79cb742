"""The runnable examples in the shell's and the clients' docstrings."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import tinkex_jax._shell
import tinkex_jax.clients


class _Finder(doctest.DocTestFinder):
    """Also finds objects re-exported under ``tinkex_jax`` (their ``__module__`` is renamed)."""

    def _from_module(self, module, object):
        if getattr(object, "__module__", None) == "tinkex_jax":
            return vars(module).get(getattr(object, "__name__", "")) is object
        return super()._from_module(module, object)


MODULES = sorted(
    f"{package.__name__}.{info.name}"
    for package in (tinkex_jax._shell, tinkex_jax.clients)
    for info in pkgutil.iter_modules(package.__path__))


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in _Finder().find(module, name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0


def test_the_finder_sees_renamed_classes():
    from tinkex_jax.clients import _sampling

    # the top-level name is what renames the class (lazily, on first access), so the test
    # must not depend on another test having touched it first
    assert tinkex_jax.RetryConfig is _sampling.RetryConfig
    assert _sampling.RetryConfig.__module__ == "tinkex_jax"
    names = [t.name for t in _Finder().find(_sampling) if t.examples]
    assert any(n.endswith("RetryConfig") for n in names)
    assert not any(n.endswith("RetryConfig") for n in
                   (t.name for t in doctest.DocTestFinder().find(_sampling)))
