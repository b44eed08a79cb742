"""The official SDK's public surface, checked by a machine against tinkex_jax.

Code written for the official ``tinker`` SDK must find the same things under ``tinkex_jax``:
every public module path (``tinker.types.tensor_data``, ``tinker.lib.public_interfaces``, ...),
every public name in those modules, every public method, property and field of the public
classes, and every parameter of those callables, with a compatible signature:

* every official parameter exists in ours under the same name; a parameter that can be passed
  positionally sits at the same position and still can be; one that can be passed by keyword
  still can be; ``*args`` / ``**kwargs`` stay;
* nothing optional there is required here, and everything we add is optional;
* an ``async def`` stays ``async def`` (and a plain method stays plain); a property or field
  stays an attribute; a classmethod / staticmethod stays callable on the class;
* a ``Literal`` alias accepts at least the official values.

What the official package holds is read from the installed package (``pytest.importorskip``;
the rules that pick public modules and names live in ``scripts/gen_official_layout.py``).
Deliberate differences live in ``official_surface_exclusions.toml`` next to this file, each
with its reason; gaps someone is closing right now are listed there as pending, with the
owner, and run as strict xfails here so that the entry must go once the gap is closed.

Keys in the report and in the exclusion file:

* ``tinker.types.foo`` (a module), ``tinker.types.foo:Name`` (a name in it),
* ``Class.member``, ``Class.__init__(param)`` (constructor), ``Class.member(param)``,
  ``tinker.auth:func(param)`` (a module-level function's parameter);
* a signature or kind difference adds a tag saying what differs: ``@missing``,
  ``@positional`` (position or positional/keyword kind), ``@required`` (optional there),
  ``@extra`` (a required parameter only we have), ``@kind`` (method vs attribute vs
  classmethod), ``@async``.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib
import importlib.util
import inspect
import sys
import tomllib
import types
import typing
from fnmatch import fnmatchcase
from functools import cache
from pathlib import Path

import pytest

official = pytest.importorskip("tinker")

_REPO = Path(__file__).resolve().parents[2]
_EXCLUSIONS = Path(__file__).with_name("official_surface_exclusions.toml")
_P = inspect.Parameter
_POSITIONAL = (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)


def _load_generator() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_official_layout", _REPO / "scripts" / "gen_official_layout.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


@cache
def _config() -> dict[str, dict[str, str]]:
    with _EXCLUSIONS.open("rb") as f:
        return tomllib.load(f)


def _covers(entry: str, key: str) -> bool:
    if fnmatchcase(key, entry) or any(key.startswith(entry + sep) for sep in ":.(@"):
        return True
    if ":" in key and not entry.startswith("tinker"):  # a bare class name covers it anywhere
        return _covers(entry, key.split(":", 1)[1])
    return False


# --------------------------------------------------------------------------- signatures


def _signature(obj: object) -> inspect.Signature | None:
    try:
        return inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _is_async(fn: object) -> bool:
    return inspect.iscoroutinefunction(inspect.unwrap(fn))  # type: ignore[arg-type]


def signature_gaps(key: str, theirs: inspect.Signature, ours: inspect.Signature) -> list[str]:
    """Why code calling ``theirs`` could break when calling ``ours`` (empty if it cannot)."""
    gaps = []
    mine = ours.parameters
    their_params = list(theirs.parameters.values())
    their_positional = [p for p in their_params if p.kind in _POSITIONAL]
    our_positional = [p for p in mine.values() if p.kind in _POSITIONAL]
    private_before = False
    for index, p in enumerate(their_positional):
        if p.name.startswith("_"):
            private_before = True
            continue
        q = mine.get(p.name)
        where = f"{key}({p.name})"
        if q is None:
            gaps.append(f"{where}@missing: parameter missing")
            continue
        if p.kind is _P.POSITIONAL_OR_KEYWORD and q.kind is _P.POSITIONAL_ONLY:
            gaps.append(f"{where}@positional: positional-only here, can be passed by keyword there")
        if not private_before and (index >= len(our_positional)
                                   or our_positional[index].name != p.name):
            gaps.append(f"{where}@positional: positional parameter {index} there, "
                        f"{'keyword-only' if q.kind is _P.KEYWORD_ONLY else 'elsewhere'} here")
        if p.default is not _P.empty and q.default is _P.empty:
            gaps.append(f"{where}@required: optional there, required here")
    for p in their_params:
        if p.name.startswith("_") or p.kind in _POSITIONAL:
            continue
        where = f"{key}({p.name})"
        if p.kind is _P.VAR_POSITIONAL:
            if not any(q.kind is _P.VAR_POSITIONAL for q in mine.values()):
                gaps.append(f"{where}@missing: *{p.name} missing")
        elif p.kind is _P.VAR_KEYWORD:
            if not any(q.kind is _P.VAR_KEYWORD for q in mine.values()):
                gaps.append(f"{where}@missing: **{p.name} missing")
        else:  # keyword-only
            q = mine.get(p.name)
            if q is None:
                gaps.append(f"{where}@missing: parameter missing")
            elif q.kind is _P.POSITIONAL_ONLY:
                gaps.append(f"{where}@positional: keyword there, positional-only here")
            elif p.default is not _P.empty and q.default is _P.empty:
                gaps.append(f"{where}@required: optional there, required here")
    their_names = set(theirs.parameters)
    for q in mine.values():
        if (q.name not in their_names and q.kind not in (_P.VAR_POSITIONAL, _P.VAR_KEYWORD)
                and q.default is _P.empty):
            gaps.append(f"{key}({q.name})@extra: required here, absent there")
    return gaps


def _literal_values(alias: object) -> set[object] | None:
    if typing.get_origin(alias) is typing.Literal:
        return set(typing.get_args(alias))
    return None


# --------------------------------------------------------------------------- members


def _fields(cls: type) -> set[str]:
    if dataclasses.is_dataclass(cls):
        return {f.name for f in dataclasses.fields(cls)}
    return set(getattr(cls, "model_fields", {}) or {})


def _defining_class(cls: type, name: str) -> type | None:
    for klass in cls.__mro__:
        if name in vars(klass) or name in _fields(klass):
            return klass
    return None


def _in_scope(klass: type | None) -> bool:
    """Members inherited from outside the official package (pydantic, builtins, enum, abc)
    are not part of its surface; the exclusion file says why, per package."""
    if klass is None:
        return False
    root = klass.__module__.split(".", 1)[0]
    assert root == "tinker" or root in _config()["inherited"], (
        f"{klass.__module__}.{klass.__qualname__}: add its package to [inherited]")
    return root == "tinker"


def _kind(raw: object) -> str:
    if isinstance(raw, staticmethod | classmethod):
        return "classcallable"
    if isinstance(raw, property | functools.cached_property | types.MemberDescriptorType
                  | types.GetSetDescriptorType):
        return "attribute"
    if inspect.isfunction(raw) or inspect.ismethoddescriptor(raw) or (callable(raw) and not (
            isinstance(raw, type | enum.Enum))):
        return "method"
    return "attribute"


def _static(cls: type, name: str) -> object:
    try:
        return inspect.getattr_static(cls, name)
    except AttributeError:
        return inspect.getattr_static(cls, "__no_such_member__", None)


def class_gaps(label: str, theirs: type, ours: object) -> list[str]:
    """Constructor and member differences between an official class and ours."""
    if not isinstance(ours, type):
        return [f"{label}: a class there, {type(ours).__name__} here"]
    gaps = []
    if not inspect.isabstract(theirs) and not issubclass(theirs, enum.Enum):
        their_sig, our_sig = _signature(theirs), _signature(ours)
        if their_sig is not None and our_sig is not None:
            gaps += signature_gaps(f"{label}.__init__", their_sig, our_sig)
    fields = _fields(theirs)
    for name in sorted(set(dir(theirs)) | fields):
        if name.startswith("_") or not _in_scope(_defining_class(theirs, name)):
            continue
        key = f"{label}.{name}"
        if not hasattr(ours, name) and name not in _fields(ours) and name not in getattr(
                ours, "__struct_fields__", ()):
            gaps.append(f"{key}: missing")
            continue
        their_kind = "attribute" if name in fields else _kind(_static(theirs, name))
        our_kind = ("attribute" if name in getattr(ours, "__struct_fields__", ())
                    else _kind(_static(ours, name)))
        enum_member = their_kind == "attribute" and issubclass(theirs, enum.Enum)
        if (their_kind != our_kind and not enum_member and "attribute" in (
                their_kind, our_kind)) or their_kind == "classcallable" != our_kind:
            gaps.append(f"{key}@kind: a {their_kind} there, a {our_kind} here")
            continue
        if their_kind == "attribute":
            continue
        their_fn, our_fn = getattr(theirs, name), getattr(ours, name)
        if _is_async(their_fn) != _is_async(our_fn):
            gaps.append(f"{key}@async: {'async' if _is_async(their_fn) else 'plain'} there, "
                        f"{'async' if _is_async(our_fn) else 'plain'} here")
        their_sig, our_sig = _signature(their_fn), _signature(our_fn)
        if their_sig is not None and our_sig is not None:
            gaps += signature_gaps(key, their_sig, our_sig)
    return gaps


# --------------------------------------------------------------------------- the surface


def _ours_path(path: str) -> str:
    return f"tinkex_jax.{path}" if path else "tinkex_jax"


@cache
def surface_gaps() -> tuple[str, ...]:
    """Every difference, as ``key: what`` lines (see the module docstring for the keys)."""
    gaps: list[str] = []
    seen_classes: set[int] = set()
    for path, names in gen.official_layout().items():
        module_key = f"tinker.{path}" if path else "tinker"
        try:
            ours_module = importlib.import_module(_ours_path(path))
        except ImportError as e:
            gaps.append(f"{module_key}: module missing ({e})")
            continue
        theirs_module = importlib.import_module(module_key)
        for name in names:
            key = f"{module_key}:{name}"
            if not hasattr(ours_module, name):
                gaps.append(f"{key}: missing")
                continue
            theirs, ours = getattr(theirs_module, name), getattr(ours_module, name)
            if isinstance(theirs, types.ModuleType):
                if not isinstance(ours, types.ModuleType):
                    gaps.append(f"{key}@kind: a module there, {type(ours).__name__} here")
            elif isinstance(theirs, type):
                if id(theirs) not in seen_classes:
                    seen_classes.add(id(theirs))
                    gaps += class_gaps(theirs.__qualname__, theirs, ours)
            elif inspect.isfunction(theirs):
                if not callable(ours):
                    gaps.append(f"{key}@kind: a function there, {type(ours).__name__} here")
                    continue
                if _is_async(theirs) != _is_async(ours):
                    gaps.append(f"{key}@async: async differs")
                their_sig, our_sig = _signature(theirs), _signature(ours)
                if their_sig is not None and our_sig is not None:
                    gaps += signature_gaps(key, their_sig, our_sig)
            else:
                their_values, our_values = _literal_values(theirs), _literal_values(ours)
                if their_values is not None:
                    if our_values is None:
                        gaps.append(f"{key}@kind: a Literal there, {ours!r} here")
                    elif their_values - our_values:
                        gaps.append(f"{key}@values: lacks the official values "
                                    f"{sorted(map(str, their_values - our_values))}")
    return tuple(gaps)


def _partition() -> tuple[list[str], dict[str, list[str]], dict[str, list[str]]]:
    excluded = _config()["excluded"]
    pending = _config()["pending"]
    open_gaps: list[str] = []
    by_exclusion: dict[str, list[str]] = {e: [] for e in excluded}
    by_pending: dict[str, list[str]] = {e: [] for e in pending}
    for gap in surface_gaps():
        key = gap.split(": ", 1)[0]
        hits = [e for e in excluded if _covers(e, key)]
        waits = [e for e in pending if _covers(e, key)]
        for e in hits:
            by_exclusion[e].append(gap)
        for e in waits:
            by_pending[e].append(gap)
        if not hits and not waits:
            open_gaps.append(gap)
    return open_gaps, by_exclusion, by_pending


def test_every_official_name_has_a_compatible_counterpart():
    open_gaps, _, _ = _partition()
    assert not open_gaps, (
        f"{len(open_gaps)} differences from the official SDK {official.__version__} "
        "(add the counterpart, or an entry with its reason to "
        f"{_EXCLUSIONS.name}):\n  " + "\n  ".join(open_gaps))


def test_every_exclusion_is_still_needed():
    _, by_exclusion, _ = _partition()
    stale = [e for e, gaps in by_exclusion.items() if not gaps]
    assert not stale, f"exclusions that cover nothing any more (remove them): {stale}"


@pytest.mark.parametrize("entry", sorted(_config()["pending"]))
def test_pending_gaps(entry):
    owner = _config()["pending"][entry]
    _, _, by_pending = _partition()
    if by_pending[entry]:
        pytest.xfail(f"{owner}: " + "; ".join(by_pending[entry]))
    pytest.fail(f"{entry!r} is closed: remove it from [pending] in {_EXCLUSIONS.name}")


def test_every_exclusion_says_why():
    for section in ("excluded", "pending", "inherited"):
        for entry, why in _config()[section].items():
            assert isinstance(why, str) and len(why.split()) >= 3, (section, entry)


def test_the_committed_layout_is_what_the_generator_writes():
    from tinkex_jax import _official_layout

    assert official.__version__ == _official_layout.OFFICIAL_VERSION, (
        "the official SDK was upgraded: run python scripts/gen_official_layout.py")
    assert gen.official_layout() == _official_layout.LAYOUT, (
        "run python scripts/gen_official_layout.py")


# --------------------------------------------------------------------------- the checker


def test_the_signature_check_catches_what_breaks_callers():
    def official_fn(a, b=1, *, c=2, **kw): ...

    def same(a, b=1, *, c=2, d=3, **kw): ...

    def renamed(a, bb=1, *, c=2, **kw): ...

    def moved(b=1, a=None, *, c=2, **kw): ...

    def now_required(a, b, *, c=2, **kw): ...

    def new_required(a, b=1, *, c=2, d, **kw): ...

    def keyword_only(a, *, b=1, c=2, **kw): ...

    def no_kwargs(a, b=1, *, c=2): ...

    sig = inspect.signature
    assert signature_gaps("f", sig(official_fn), sig(same)) == []
    for fn, fragment in [(renamed, "f(b)@missing"), (moved, "f(a)@positional"),
                         (now_required, "f(b)@required"), (new_required, "f(d)@extra"),
                         (keyword_only, "f(b)@positional: positional parameter 1"),
                         (no_kwargs, "f(kw)@missing: **kw missing")]:
        gaps = signature_gaps("f", sig(official_fn), sig(fn))
        assert any(fragment in g for g in gaps), (fn.__name__, gaps)


def test_the_coverage_rules():
    assert _covers("AdminClient", "tinker:AdminClient")
    assert _covers("AdminClient", "AdminClient.get_billing_usage(starting_on)")
    assert not _covers("AdminClient", "AdminClientX.y")
    assert _covers("tinker.lib.public_interfaces.admin_client",
                   "tinker.lib.public_interfaces.admin_client:AdminClient")
    assert _covers("Backcompat*.*", "BackcompatTrainingClientFuture.forward")
    assert not _covers("tinker.types", "tinker.typesX")
    assert _covers("Datum.__init__(*)@positional", "Datum.__init__(model_input)@positional")
    assert not _covers("Datum.__init__(*)@positional", "Datum.__init__(model_input)@missing")
