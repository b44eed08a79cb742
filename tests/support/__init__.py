"""Helpers shared by the tests (importable as ``tests.support`` through pytest's
``pythonpath`` setting): never imported by the package itself."""
