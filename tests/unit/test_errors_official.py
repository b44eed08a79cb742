"""The exceptions are built the way the official SDK's are: every official constructor form
(positional and keyword, read from the installed `tinker` package) works on ours and gives
the same attributes; our keyword forms keep working; every error pickles; no secret leaks
through the rebuilt request / response."""

from __future__ import annotations

import inspect
import pickle
import subprocess
import sys
from typing import Any

import httpx
import pytest

import tinkex_jax.errors as ours
from tinkex_jax._shell._errors import connection_error, status_error

official = pytest.importorskip("tinker._exceptions")

OFFICIAL_CLASSES = sorted(
    name for name, value in vars(official).items()
    if inspect.isclass(value) and issubclass(value, official.TinkerError)
    and not name.startswith("_"))

REQUEST = httpx.Request("POST", "http://backend.test/api/v1/asample")


def _status_for(name: str) -> int:
    status = vars(getattr(official, name)).get("status_code")
    return status if isinstance(status, int) else 503


def _value(cls_name: str, param: str) -> Any:
    if param == "message":
        return f"{cls_name} happened"
    if param == "request":
        return REQUEST
    if param == "response":
        return httpx.Response(_status_for(cls_name), request=REQUEST,
                              json={"detail": "server says no"},
                              headers={"retry-after": "3"})
    if param == "body":
        return {"detail": "server says no"}
    if param == "request_id":
        return "req-42"
    if param == "category":
        return "user"
    raise AssertionError(f"no test value for {cls_name}({param}=...)")


def _params(cls: type) -> list[inspect.Parameter]:
    return [p for p in inspect.signature(cls.__init__).parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _call_forms(name: str) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    """Every way the official signature allows: all positional (where allowed), all keyword,
    and the required parameters alone."""
    params = _params(getattr(official, name))
    values = {p.name: _value(name, p.name) for p in params}
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keyword_only = [p for p in params if p.kind == p.KEYWORD_ONLY]
    forms = [
        ("positional", tuple(values[p.name] for p in positional),
         {p.name: values[p.name] for p in keyword_only}),
        ("keyword", (), dict(values)),
        ("required only", (), {p.name: values[p.name] for p in params
                               if p.default is inspect.Parameter.empty}),
    ]
    return forms


CASES = [(name, form, args, kwargs) for name in OFFICIAL_CLASSES
         for form, args, kwargs in _call_forms(name)]


def test_every_official_exception_has_a_counterpart():
    assert {"APIError", "APIStatusError", "BadRequestError", "APIConnectionError",
            "APITimeoutError", "APIResponseValidationError", "RequestFailedError",
            "InternalServerError"} <= set(OFFICIAL_CLASSES)
    for name in OFFICIAL_CLASSES:
        assert issubclass(getattr(ours, name), Exception), name


@pytest.mark.parametrize("name", OFFICIAL_CLASSES)
def test_hierarchy_matches(name):
    theirs = getattr(official, name)
    mine = getattr(ours, name)
    for other in OFFICIAL_CLASSES:
        assert issubclass(theirs, getattr(official, other)) == issubclass(
            mine, getattr(ours, other)), (name, other)
    for param in _params(theirs):
        assert param.name in inspect.signature(mine.__init__).parameters, (name, param.name)


@pytest.mark.parametrize(("name", "form", "args", "kwargs"), CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_official_call_forms(name, form, args, kwargs):
    theirs = getattr(official, name)(*args, **kwargs)
    mine = getattr(ours, name)(*args, **kwargs)
    assert str(mine) == str(theirs)
    assert mine.args == theirs.args
    for attr in ("message", "body", "status_code", "request_id", "category"):
        if hasattr(theirs, attr):
            assert getattr(mine, attr) == getattr(theirs, attr), attr
    for attr in ("request", "response"):
        if hasattr(theirs, attr):
            assert getattr(mine, attr) is getattr(theirs, attr), attr


def test_cookbook_style_bad_request():
    """As a test double in published code builds it."""
    err = ours.BadRequestError(
        "prompt is too long",
        response=httpx.Response(400, request=httpx.Request("POST", "http://backend/sample")),
        body=None)
    assert isinstance(err, ours.APIStatusError)
    assert (err.status_code, err.message, err.body) == (400, "prompt is too long", None)
    assert (err.method, err.url) == ("POST", "http://backend/sample")
    assert err.request is err.response.request


def test_our_keyword_forms_still_work():
    err = ours.InternalServerError("busy", status_code=503, method="GET",
                                   url="http://h/api/v1/healthz", body={"detail": "x"},
                                   headers={"Retry-After": "2"})
    assert (err.status_code, err.headers) == (503, {"retry-after": "2"})
    assert err.response.status_code == 503
    assert err.response.headers["retry-after"] == "2"
    assert err.response.json() == {"detail": "x"}
    assert (err.request.method, str(err.request.url)) == ("GET", "http://h/api/v1/healthz")
    assert ours.NotFoundError("gone").status_code == 404
    assert ours.InternalServerError("down").status_code == 500
    assert ours.APIStatusError("finished", status_code=410).status_code == 410
    assert ours.APIConnectionError("down").message == "down"
    assert ours.APIConnectionError(message="down").request is None
    assert ours.APITimeoutError("slow", method="GET", url="http://h/x").request.method == "GET"
    assert ours.APITimeoutError("slow", url="http://h/x").request is None  # no method known
    assert ours.APITimeoutError(REQUEST).message == "Request timed out."
    assert ours.APIResponseValidationError("bad", status_code=502).status_code == 502
    assert ours.APIResponseValidationError("bad").response.status_code == 200
    failed = ours.RequestFailedError("no", category="server", request_id="r1", body={"e": 1})
    assert (failed.category, failed.request_id, failed.body) == ("server", "r1", {"e": 1})


def test_unclear_constructions_say_what_to_pass():
    with pytest.raises(TypeError, match="status_code"):
        ours.APIStatusError("which status?")
    with pytest.raises(TypeError, match="two messages"):
        ours.APIConnectionError("one", "two")
    with pytest.raises(TypeError, match="two messages"):
        ours.APIResponseValidationError("one", None, "two")


def test_status_error_class_defaults_match_the_official_ones():
    for name in OFFICIAL_CLASSES:
        status = vars(getattr(official, name)).get("status_code")
        if isinstance(status, int):
            assert getattr(ours, name).status_code == status
            assert ours.status_error_class(status) is getattr(ours, name)


def _pickle_cases() -> list[Any]:
    built = [getattr(ours, name)(*args, **kwargs) for name, _, args, kwargs in CASES]
    built += [
        ours.NotFoundError("gone", status_code=404, method="GET", url="http://h/x",
                           body={"detail": "no"}, headers={"a": "b"}),
        ours.APITimeoutError("slow", method="POST", url="http://h/y"),
        ours.RequestFailedError("no", request_id="r", category="user", body={"error": "x"}),
        ours.ValidationError("bad", where="here"),
    ]
    return built


@pytest.mark.parametrize("error", _pickle_cases(), ids=lambda e: type(e).__name__)
def test_pickles(error):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    for attr in ("message", "body", "status_code", "request_id", "category", "method", "url",
                 "headers", "where"):
        if hasattr(error, attr):
            assert getattr(copy, attr) == getattr(error, attr), attr
    if isinstance(error, ours.APIError) and error.request is not None:
        assert (copy.request.method, copy.request.url) == (error.request.method,
                                                           error.request.url)
    if isinstance(error, ours.APIStatusError | ours.APIResponseValidationError):
        assert copy.response.status_code == error.response.status_code


SECRET = "tml-super-secret-key-1234567890"


def test_no_secret_in_errors_the_sdk_builds():
    err = status_error(401, {"WWW-Authenticate": f"key {SECRET}"},
                       f'{{"detail": "key {SECRET} rejected"}}'.encode(), method="POST",
                       url=f"http://h/api/v1/create_session?k={SECRET}",
                       sdk_method="ServiceClient.create_lora_training_client",
                       secrets=(SECRET,))
    conn = connection_error(ConnectionError(f"reset while sending {SECRET}"), method="POST",
                            url="http://h/api/v1/asample", sdk_method=None,
                            secrets=(SECRET,), attempts=3)
    for error in (err, conn):
        texts = [str(error), repr(error), repr(error.body), str(error.url),
                 str(error.request.url), repr(dict(error.request.headers)),
                 pickle.dumps(error).decode("latin-1")]
        if isinstance(error, ours.APIStatusError):
            texts += [error.response.text, repr(dict(error.response.headers))]
        for text in texts:
            assert SECRET not in text
        assert "x-api-key" not in {k.lower() for k in error.request.headers}


def test_importing_the_errors_does_not_import_httpx():
    code = ("import sys, tinkex_jax.errors as e; e.NotFoundError('x').status_code; "
            "print('httpx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
