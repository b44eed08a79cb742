"""`tinkex_jax.install_as_tinker()` and the official module layout under tinkex_jax.

Every check of the switch runs in a fresh interpreter, so this test process never has
``tinker`` replaced (and the official SDK, imported by other tests, cannot get in the way).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tinkex_jax
from tinkex_jax import _modules

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str, tmp_path: Path, **env: str) -> str:
    """Run `code` in a fresh interpreter in `tmp_path`; return its stdout (fail on an error)."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, capture_output=True,
        text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}",
             "TINKER_TELEMETRY": "0", **env})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


# --------------------------------------------------------------------------- module layout


def test_official_module_paths_hold_the_same_objects():
    import tinkex_jax.lib.public_interfaces.rest_client as rest_module
    import tinkex_jax.types.tensor_data as tensor_module

    from tinkex_jax.lib.public_interfaces import APIFuture

    shared = importlib.import_module("tinkex_jax.types.shared.untyped_api_future")

    assert tensor_module.TensorData is tinkex_jax.TensorData
    assert tensor_module.__all__ == ["TensorData"]
    assert rest_module.RestClient is tinkex_jax.RestClient
    assert APIFuture is tinkex_jax.APIFuture
    assert shared.UntypedAPIFuture is tinkex_jax.types.UntypedAPIFuture
    # attribute access without an import, as after the official `import tinker`
    assert tinkex_jax.types.image_chunk.ImageChunk is tinkex_jax.types.ImageChunk
    assert tinkex_jax.lib.public_interfaces.api_future.APIFuture is tinkex_jax.Future


def test_every_official_module_path_imports():
    for path in _modules.layout():
        module = importlib.import_module(f"tinkex_jax.{path}" if path else "tinkex_jax")
        for name in getattr(module, "__all__", ()):
            assert hasattr(module, name), (path, name)


def test_an_official_name_we_lack_says_so():
    module = importlib.import_module("tinkex_jax.lib.public_interfaces.training_client")
    with pytest.raises(AttributeError, match=r"fetch_training_info has no tinkex_jax "
                       r"counterpart \(docs/porting.md"):
        module.fetch_training_info  # noqa: B018
    with pytest.raises(AttributeError, match=r"has no attribute 'nonsense'$"):
        module.nonsense  # noqa: B018
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("tinkex_jax.types.no_such_module")
    with pytest.raises(AttributeError):
        tinkex_jax.types.no_such_module  # noqa: B018


def test_the_layout_finder_answers_only_for_the_table():
    finder = _modules.LayoutFinder()
    assert finder.find_spec("tinkex_jax.types.tensor_data") is not None
    assert finder.find_spec("tinkex_jax.types.shared").submodule_search_locations == []
    assert finder.find_spec("tinkex_jax.types.nothing") is None
    assert finder.find_spec("tinker.types.tensor_data") is None
    assert sum(isinstance(f, _modules.LayoutFinder) for f in sys.meta_path) == 1


def test_auth_helpers(tmp_path):
    home = tmp_path / "home"
    (home / ".tinker").mkdir(parents=True)
    (home / ".tinker" / "credentials.json").write_text(
        '{"version": 1, "default": "k", "keys": {"k": {"key": "tml-stored"}}}')
    out = run_python("""
        import doctest, os, tinkex_jax.auth as auth
        assert not doctest.testmod(auth).failed
        print(auth.get_tinker_token(), auth.tinker_has_credentials())
        os.environ["TINKER_API_KEY"] = "tml-env"
        print(auth.get_tinker_token())
        """, tmp_path, HOME=str(home), TINKER_API_KEY="", TINKER_BASE_URL="https://example.invalid")
    assert out.split() == ["tml-stored", "True", "tml-env"]
    out = run_python("""
        import tinkex_jax.auth as auth
        print(auth.get_tinker_token(), auth.tinker_has_credentials())
        """, tmp_path, HOME=str(tmp_path / "nobody"), TINKER_API_KEY="",
        TINKER_BASE_URL="https://example.invalid")
    assert out.split() == ["None", "False"]


# --------------------------------------------------------------------------- the switch


def test_import_tinker_is_tinkex_jax_everywhere(tmp_path):
    # A third-party module that imports tinker at import time, as libraries do.
    (tmp_path / "thirdparty_rl.py").write_text(textwrap.dedent("""
        import tinker
        from tinker import TensorData, types
        from tinker.types.tensor_data import TensorData as TD2
        from tinker.lib.public_interfaces import APIFuture
        from tinker.lib.public_interfaces.rest_client import RestClient

        def build(tokens, advantages):
            ob = list(tokens)
            datum = tinker.Datum(
                model_input=tinker.ModelInput.from_ints(ob[:-1]),
                loss_fn_inputs={"target_tokens": TensorData(data=ob[1:], dtype="int64"),
                                "advantages": TD2(data=advantages, dtype="float32")})
            ob.clear()  # accumulate-then-flush: the datum owns its data
            return datum
        """))
    out = run_python("""
        import sys, tinkex_jax
        handle = tinkex_jax.install_as_tinker()
        import thirdparty_rl, tinker, tinker.types.image_chunk
        from tinker.types import AuditLogEntry, ExternalWeightsUrlsResponse, LossFnType
        from tinker import AdminClient, SamplingClient, ModelInput, AdamParams, types
        assert tinker is tinkex_jax and sys.modules["tinker"] is tinkex_jax
        assert types is tinkex_jax.types and sys.modules["tinker.types"] is tinkex_jax.types
        assert tinker.types.image_chunk.ImageChunk is tinkex_jax.types.ImageChunk
        assert thirdparty_rl.APIFuture is tinkex_jax.Future
        assert thirdparty_rl.RestClient is tinkex_jax.RestClient
        assert SamplingClient is tinkex_jax.SamplingClient
        assert AuditLogEntry is tinkex_jax.types.AuditLogEntry
        assert tinkex_jax.__spec__.name == "tinkex_jax"  # the alias does not rename the module
        datum = thirdparty_rl.build([1, 2, 3, 4], [0.5, 0.5, 0.5])
        assert isinstance(datum, tinker.Datum) and isinstance(datum, tinkex_jax.Datum)
        print(datum.model_input.to_ints(), datum.loss_fn_inputs["target_tokens"].tolist())
        assert handle.installed
        """, tmp_path)
    assert out.split("\n")[0] == "[1, 2, 3] [2, 3, 4]"


def test_import_tinkex_jax_alone_changes_nothing(tmp_path):
    pytest.importorskip("tinker")
    out = run_python("""
        import tinkex_jax, tinker
        print(tinker is tinkex_jax, tinker.__name__)
        """, tmp_path)
    assert out.split() == ["False", "tinker"]


def test_a_module_we_do_not_provide_is_a_clear_import_error(tmp_path):
    out = run_python("""
        import tinkex_jax
        tinkex_jax.install_as_tinker()
        for name in ("tinker.cli", "tinker.lib.retry_handler", "tinker._client"):
            try:
                __import__(name)
            except ModuleNotFoundError as e:
                assert e.name == name
                assert "tinkex_jax has no counterpart" in str(e) and "porting.md" in str(e)
                print("refused", name)
        """, tmp_path)
    assert out.split() == ["refused", "tinker.cli", "refused", "tinker.lib.retry_handler",
                           "refused", "tinker._client"]


def test_after_the_official_sdk_it_refuses_and_says_why(tmp_path):
    pytest.importorskip("tinker")
    out = run_python("""
        import tinker, tinkex_jax
        try:
            tinkex_jax.install_as_tinker()
        except RuntimeError as e:
            print(e)
        """, tmp_path)
    assert "already imported" in out and "before anything imports tinker" in out


def test_uninstall_and_the_context_manager(tmp_path):
    out = run_python("""
        import sys, doctest, tinkex_jax, tinkex_jax._as_tinker as switch
        examples = doctest.testmod(switch)  # in a fresh interpreter: see doctest_setup.py
        assert examples.attempted >= 10 and not examples.failed, examples
        with tinkex_jax.install_as_tinker() as handle:
            assert tinkex_jax.install_as_tinker().installed  # idempotent
            import tinker.types.tensor_data
        print(handle.installed, [m for m in sys.modules if m.split(".")[0] == "tinker"])
        tinkex_jax.uninstall_as_tinker()  # a no-op when off
        try:
            import tinker
            print(tinker is tinkex_jax)
        except ImportError:
            print("no official SDK")
        """, tmp_path)
    lines = out.splitlines()
    assert lines[0] == "False []"
    assert lines[1] in ("False", "no official SDK")
