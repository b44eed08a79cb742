"""Error text written for Python users: one sentence of what happened, one of what to do,
no doubled periods, no advice that contradicts the server's, no official-CLI commands."""

from __future__ import annotations

import json

import pytest

from tinkex_jax._shell._errors import connection_error, hint_for, request_failed_error, status_error


def status(code: int, detail: object) -> str:
    return str(status_error(code, {}, json.dumps({"detail": detail}).encode(), method="POST",
                            url="http://h/api/v1/create_model",
                            sdk_method="ServiceClient.create_lora_training_client", secrets=()))


@pytest.mark.parametrize("code", [400, 401, 402, 403, 404, 409, 410, 422, 429, 500, 503, 418])
@pytest.mark.parametrize("detail", ["no such model", "no such model.", "why?", ""])
def test_no_doubled_periods_and_one_what_to_do(code, detail):
    message = status(code, detail)
    assert ".." not in message.replace("'tml-...'", "")
    assert message.count("What to do:") == 1
    assert message.endswith(".")


def test_the_servers_own_advice_is_kept_instead_of_a_generic_clause():
    message = status(400, "Unknown base model 'x'. Fix: pass one of ['tinkex-jax/tiny'].")
    assert message == (
        "ServiceClient.create_lora_training_client: POST /api/v1/create_model answered HTTP 400 "
        "(Bad Request): Unknown base model 'x'. Fix: pass one of ['tinkex-jax/tiny'].")
    failed = request_failed_error({"error": "prompt too long. Fix: shorten it.",
                                   "category": "user"}, request_id="r1",
                                  request_type="Sample", sdk_method=None, secrets=())
    assert str(failed).endswith("prompt too long. Fix: shorten it.")


def test_no_clause_claims_what_the_sdk_validated():
    for code in (400, 422):
        assert "validated" not in status(code, "bad")


def test_credential_advice_names_our_cli_or_the_environment():
    message = status(401, "invalid key")
    assert "TINKER_API_KEY" in message and "`tinkex auth login`" in message
    assert "tinker auth login" not in message
    for code in (400, 401, 402, 403, 404, 409, 410, 422, 429, 500):
        assert "tinker auth" not in hint_for(code)


def test_request_failures_and_connection_errors_are_clean_sentences():
    failed = str(request_failed_error({"error": "boom.", "category": "server"},
                                      request_id="r1", request_type="OptimStep",
                                      sdk_method="TrainingClient.optim_step", secrets=()))
    assert ".." not in failed and failed.count("What to do:") == 1
    refused = ConnectionRefusedError(111, "Connect call failed")
    for never in (True, False):
        text = str(connection_error(refused, method="POST", url="http://h:1/api/v1/x",
                                    sdk_method=None, secrets=(), attempts=3, elapsed=2.0,
                                    never_answered=never))
        assert ".." not in text and text.count("What to do:") == 1
        assert "connection refused; 3 tries in 2.0 s" in text
