"""Chat renderers: formats, supervised weights, parsing, the registry, and properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.support.tokenizer_helpers import bpe_hf, write_hf_dir
from tinkex_jax.builders import full_sequence
from tinkex_jax.errors import ValidationError
from tinkex_jax.renderers import (
    ChatMLRenderer,
    DelimitedRenderer,
    Renderer,
    RoleTagRenderer,
    get_renderer,
    register_renderer,
    renderer_names,
)
from tinkex_jax.tokenizer import byte_tokenizer, get_tokenizer

BYTES = byte_tokenizer()
CHATML_BYTES = byte_tokenizer(special_tokens=["<|im_start|>", "<|im_end|>", "<s>"],
                              bos_token="<s>")

CONVO = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "3+3?"},
    {"role": "assistant", "content": "6"},
]


def _weights(datum):
    return datum.loss_fn_inputs["weights"].to_numpy()


def _trained_text(tok, datum):
    targets = datum.loss_fn_inputs["target_tokens"].to_numpy()
    return tok.decode([int(t) for t, w in zip(targets, _weights(datum)) if w == 1.0])


# -- formats ----------------------------------------------------------------------------------

def test_role_tags_format():
    r = RoleTagRenderer(BYTES)
    assert BYTES.decode(r.render_conversation(CONVO)) == (
        "<|system|>Be brief.<|end|><|user|>2+2?<|end|><|assistant|>4<|end|>"
        "<|user|>3+3?<|end|><|assistant|>6<|end|>")
    assert r.get_stop_sequences() == ["<|end|>"]
    assert isinstance(r, Renderer)


def test_role_tags_use_special_tokens_when_present():
    tok = byte_tokenizer(special_tokens=["<|user|>", "<|assistant|>", "<|end|>"])
    r = RoleTagRenderer(tok)
    ids = r.build_generation_prompt([{"role": "user", "content": "hi"}]).to_ints()
    assert ids == [256, 104, 105, 258, 257]
    assert r.get_stop_sequences() == [258]


def test_chatml_format_with_bos():
    r = ChatMLRenderer(CHATML_BYTES)
    ids = r.build_generation_prompt(CONVO[:2]).to_ints()
    assert ids[0] == CHATML_BYTES.bos_token_id
    assert CHATML_BYTES.decode(ids[1:]) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert r.get_stop_sequences() == [CHATML_BYTES.token_to_id("<|im_end|>")]
    no_bos = ChatMLRenderer(CHATML_BYTES, add_bos=False).build_generation_prompt(CONVO[:2])
    assert no_bos.to_ints() == ids[1:]


def test_chatml_with_a_real_bpe(tmp_path):
    tok = get_tokenizer(str(write_hf_dir(tmp_path / "bpe", bpe_hf())))
    assert tok.renderer_name == "chatml"
    ids = tok.apply_chat_template(CONVO[:2], add_generation_prompt=True)
    assert ids.count(tok.token_to_id("<|im_start|>")) == 3
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")
    r = get_renderer("chatml", tok)
    message, done = r.parse_response(tok.encode("the cat sat<|im_end|>"))
    assert message == {"role": "assistant", "content": "the cat sat"} and done


def test_apply_chat_template_without_generation_prompt():
    full = BYTES.apply_chat_template(CONVO[:3])
    assert BYTES.decode(full).endswith("<|assistant|>4<|end|>")
    assert BYTES.apply_chat_template(CONVO[:3], renderer="role_tags") == full


def test_prefill():
    r = RoleTagRenderer(BYTES)
    mi = r.build_generation_prompt(CONVO[:2], prefill="The answer")
    assert BYTES.decode(mi.to_ints()).endswith("<|assistant|>The answer")
    assert r.build_generation_prompt(CONVO[:2], prefill="").to_ints() == (
        r.build_generation_prompt(CONVO[:2]).to_ints())


def test_no_empty_chunks():
    r = RoleTagRenderer(BYTES)
    empty = [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]
    prompt = r.build_generation_prompt([])
    assert [c.length for c in prompt.chunks] == [len("<|assistant|>")]
    for mi in (r.build_generation_prompt(empty),
               r.build_supervised_example(empty).model_input):
        assert len(mi.chunks) == 1 and all(c.length > 0 for c in mi.chunks)


# -- supervised examples ----------------------------------------------------------------------

def test_train_on_last_assistant_message():
    d = RoleTagRenderer(BYTES).build_supervised_example(CONVO)
    assert _trained_text(BYTES, d) == "6<|end|>"


def test_train_on_all_assistant_messages():
    d = RoleTagRenderer(BYTES).build_supervised_example(CONVO, train_on="all_assistant_messages")
    assert _trained_text(BYTES, d) == "4<|end|>6<|end|>"


def test_train_on_all_messages_and_all_tokens():
    r = ChatMLRenderer(CHATML_BYTES)
    d = r.build_supervised_example(CONVO, train_on="all_messages")
    assert _trained_text(CHATML_BYTES, d) == (
        "Be brief.<|im_end|>2+2?<|im_end|>4<|im_end|>3+3?<|im_end|>6<|im_end|>")
    d = r.build_supervised_example(CONVO, train_on="all_tokens")
    assert _weights(d).min() == 1.0  # everything but BOS, which is never a target


def test_supervised_datum_is_shifted():
    r = RoleTagRenderer(BYTES)
    tokens, weights = r.build_supervised_tokens(CONVO[1:3])
    d = r.build_supervised_example(CONVO[1:3])
    assert d.model_input.to_ints() == tokens[:-1]
    assert d.loss_fn_inputs["target_tokens"].to_numpy().tolist() == tokens[1:]
    assert _weights(d).tolist() == weights[1:]
    assert full_sequence(d).to_ints() == tokens


@pytest.mark.parametrize("messages, train_on, fragment", [
    (CONVO[:2], "last_assistant_message", "ending with an assistant message"),
    (CONVO[:2], "all_assistant_messages", "at least one assistant message"),
    ([], "all_messages", "at least one message"),
    (CONVO, "everything", "one of"),
])
def test_supervised_errors(messages, train_on, fragment):
    with pytest.raises(ValidationError, match=fragment) as info:
        RoleTagRenderer(BYTES).build_supervised_example(messages, train_on=train_on)
    assert "build_supervised_example" in str(info.value)


@pytest.mark.parametrize("messages, fragment", [
    ({"role": "user", "content": "hi"}, "wrap a single message in a list"),
    ("hello", "a list of"),
    ([{"role": "tool", "content": "x"}], r"messages\)\[0\]\['role'\].*one of"),
    ([{"role": "user", "content": [{"type": "text", "text": "x"}]}], "join text parts"),
    ([["user", "hi"]], "dict"),
])
def test_message_validation(messages, fragment):
    with pytest.raises(ValidationError, match=fragment):
        RoleTagRenderer(BYTES).build_generation_prompt(messages)


# -- parsing ----------------------------------------------------------------------------------

def test_parse_response_variants():
    r = RoleTagRenderer(byte_tokenizer(special_tokens=["</s>"], eos_token="</s>"))
    enc = r.tokenizer.encode
    assert r.parse_response(enc("ok<|end|>trailing")) == (
        {"role": "assistant", "content": "ok"}, True)
    assert r.parse_response(enc("cut off")) == ({"role": "assistant", "content": "cut off"}, False)
    assert r.parse_response(enc("eos</s>")) == ({"role": "assistant", "content": "eos"}, True)
    assert r.parse_response([]) == ({"role": "assistant", "content": ""}, False)
    assert r.parse_response(np.array(enc("x<|end|>"))) == (
        {"role": "assistant", "content": "x"}, True)


def test_parse_response_text_fallback():
    # The end marker sampled as plain text, not as the special token.
    tok = byte_tokenizer(special_tokens=["<|im_start|>", "<|im_end|>"])
    r = ChatMLRenderer(tok)
    sampled = list(b"done<|im_end|>")
    assert r.parse_response(sampled) == ({"role": "assistant", "content": "done"}, True)


def test_parse_response_flag_is_a_plain_bool():
    _, done = RoleTagRenderer(BYTES).parse_response(BYTES.encode("x"))
    assert done is False


# -- registry ---------------------------------------------------------------------------------

def test_registry():
    assert {"chatml", "role_tags"} <= set(renderer_names())
    assert isinstance(get_renderer("role_tags", BYTES), RoleTagRenderer)

    def factory(tok):
        return DelimitedRenderer(tok, headers={"system": ("S:", ""), "user": ("U:", ""),
                                               "assistant": ("A:", "")},
                                 end_marker="\n\n", name="plain")

    register_renderer("plain-test", factory)
    register_renderer("plain-test", factory)  # same factory again is fine
    with pytest.raises(ValidationError, match="overwrite=True"):
        register_renderer("plain-test", RoleTagRenderer)
    r = get_renderer("plain-test", BYTES)
    assert BYTES.decode(r.build_generation_prompt(CONVO[1:2]).to_ints()) == "U:2+2?\n\nA:"
    assert BYTES.apply_chat_template(CONVO[1:3], renderer="plain-test") == (
        list(b"U:2+2?\n\nA:4\n\n"))
    with pytest.raises(ValidationError, match=r"register_renderer\(name, factory\)"):
        get_renderer("nope", BYTES)
    with pytest.raises(ValidationError, match="callable"):
        register_renderer("bad", "not callable")  # type: ignore[arg-type]


def test_delimited_renderer_validation():
    with pytest.raises(ValidationError, match="no header for"):
        DelimitedRenderer(BYTES, headers={"user": ("U", "")}, end_marker="E")
    with pytest.raises(ValidationError, match="end marker"):
        DelimitedRenderer(BYTES, headers={r: ("x", "") for r in ("system", "user", "assistant")},
                          end_marker="")
    with pytest.raises(ValidationError, match="BOS token"):
        RoleTagRenderer(BYTES, add_bos=True)


# -- properties -------------------------------------------------------------------------------

ROLE = st.sampled_from(["system", "user", "assistant"])
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


def _safe(renderer, text):
    return renderer.end_marker not in text


def conversations(renderer):
    message = st.builds(lambda role, content: {"role": role, "content": content}, ROLE,
                        TEXT.filter(lambda t: _safe(renderer, t)))
    return st.lists(message, min_size=1, max_size=6)


RENDERERS = [RoleTagRenderer(BYTES), ChatMLRenderer(CHATML_BYTES)]
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("renderer", RENDERERS, ids=lambda r: r.name)
@PROPS
@given(data=st.data())
def test_supervised_input_starts_with_generation_prompt(renderer, data):
    messages = data.draw(conversations(renderer))
    tokens = renderer.render_conversation(messages)
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = renderer.build_generation_prompt(messages[:k]).to_ints()
        datum = renderer.build_supervised_example(messages[:k + 1])
        assert datum.model_input.to_ints()[:len(prompt)] == prompt
        assert tokens[:len(prompt)] == prompt  # the extension property


@pytest.mark.parametrize("renderer", RENDERERS, ids=lambda r: r.name)
@PROPS
@given(data=st.data())
def test_parse_response_round_trips(renderer, data):
    content = data.draw(TEXT.filter(lambda t: _safe(renderer, t)))
    history = data.draw(conversations(renderer))
    messages = [*history, {"role": "assistant", "content": content}]
    prompt = renderer.build_generation_prompt(history).to_ints()
    full = renderer.render_conversation(messages)
    assert full[:len(prompt)] == prompt
    reply = full[len(prompt):]
    assert renderer.parse_response(reply) == ({"role": "assistant", "content": content}, True)
    tok = renderer.tokenizer
    unterminated = tok.encode(content)
    assert renderer.parse_response(unterminated) == (
        {"role": "assistant", "content": content}, False)


@pytest.mark.parametrize("renderer", RENDERERS, ids=lambda r: r.name)
@PROPS
@given(data=st.data(), train_on=st.sampled_from(["last_assistant_message",
                                                 "all_assistant_messages", "all_messages"]))
def test_weights_are_one_exactly_on_trained_tokens(renderer, data, train_on):
    messages = data.draw(conversations(renderer))
    if train_on != "all_messages":
        messages = [*messages, {"role": "assistant", "content": data.draw(
            TEXT.filter(lambda t: _safe(renderer, t)))}]
    tokens, weights = renderer.build_supervised_tokens(messages, train_on=train_on)
    # Where each message's content + end marker sit, from the public API alone.
    expected = [0.0] * len(tokens)
    end = renderer.tokenizer.encode(renderer.end_marker)
    end_len = 1 if len(renderer.get_stop_sequences()) == 1 and isinstance(
        renderer.get_stop_sequences()[0], int) else len(end)
    for k, message in enumerate(messages):
        trained = (train_on == "all_messages"
                   or (train_on == "all_assistant_messages" and message["role"] == "assistant")
                   or (train_on == "last_assistant_message" and k == len(messages) - 1))
        if not trained:
            continue
        with_header = renderer.render_conversation(
            [*messages[:k], {"role": message["role"], "content": ""}])
        body = len(renderer.tokenizer.encode(message["content"])) + end_len
        start = len(with_header) - end_len - len(_sep(renderer))
        expected[start:start + body] = [1.0] * body
    assert weights == expected
    datum = renderer.build_supervised_example(messages, train_on=train_on)
    assert datum.loss_fn_inputs["weights"].to_numpy().tolist() == expected[1:]


def _sep(renderer):
    return renderer.tokenizer.encode(renderer.separator) if renderer.separator else []
