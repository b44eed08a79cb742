"""Loading tokenizers from local directories and files."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tests.support.tokenizer_helpers import bpe_hf, word_level_hf, write_hf_dir
from tinkex_jax.errors import ValidationError
from tinkex_jax.tokenizer import Tokenizer, byte_tokenizer, clear_tokenizer_cache, get_tokenizer

CONFIG = {"bos_token": "<s>", "eos_token": {"content": "</s>", "special": True,
                                            "__type": "AddedToken"}, "pad_token": None}


def test_directory_with_configs(tmp_path):
    d = write_hf_dir(tmp_path / "tok", config=CONFIG)
    tok = get_tokenizer(str(d))
    assert isinstance(tok, Tokenizer)
    assert tok.backend == "tokenizers"
    assert tok.name_or_path == str(d)
    assert tok.encode("hello world") == [
        tok.token_to_id("hello"), tok.token_to_id("world")]
    assert tok.bos_token == "<s>" and tok.eos_token == "</s>"
    assert tok.bos_token_id == tok.token_to_id("<s>")
    assert tok.eos_token_id == tok.token_to_id("</s>")
    assert tok.pad_token is None and tok.pad_token_id is None
    assert tok.vocab_size == len(tok) == 10 + 5
    assert tok.id_to_token(tok.token_to_id("cat")) == "cat"
    assert tok.id_to_token(10_000) is None and tok.token_to_id("zebra") is None
    assert tok.chat_template is None
    assert tok.renderer_name == "chatml"  # has <|im_start|> / <|im_end|> tokens


def test_no_config_means_no_special_roles(tmp_path):
    tok = get_tokenizer(str(write_hf_dir(tmp_path / "tok", word_level_hf(specials=[]))))
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (None, None, None)
    assert tok.renderer_name == "role_tags"


def test_special_tokens_map_overrides_config(tmp_path):
    d = write_hf_dir(tmp_path / "tok", config=CONFIG,
                     special_map={"eos_token": "<|im_end|>", "pad_token": {"content": "<pad>"}})
    tok = get_tokenizer(str(d))
    assert tok.bos_token == "<s>"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<pad>"
    assert tok.pad_token_id == tok.token_to_id("<pad>")


@pytest.mark.parametrize("template, expected", [
    ("{{ '<|im_start|>' }}", "chatml"),
    ([{"name": "tool_use", "template": "x"}, {"name": "default", "template": "<|im_start|>"}],
     "chatml"),
    ("{{ bos_token }}[INST]", None),
])
def test_chat_template_from_config(tmp_path, template, expected):
    d = write_hf_dir(tmp_path / "tok", config={"chat_template": template})
    tok = get_tokenizer(str(d))
    assert tok.chat_template is not None and tok.renderer_name == expected


def test_chat_template_jinja_file(tmp_path):
    d = write_hf_dir(tmp_path / "tok", config={}, template_file="<|im_start|>{{x}}")
    assert get_tokenizer(str(d)).chat_template == "<|im_start|>{{x}}"


def test_apply_chat_template_without_matching_renderer(tmp_path):
    d = write_hf_dir(tmp_path / "tok", config={"chat_template": "[INST]"})
    tok = get_tokenizer(str(d))
    with pytest.raises(ValidationError, match="renderer='chatml'"):
        tok.apply_chat_template([{"role": "user", "content": "hello"}])
    ids = tok.apply_chat_template([{"role": "user", "content": "hello"}], renderer="chatml")
    assert ids[0] == tok.token_to_id("<|im_start|>")


def test_file_path_and_prefixed_siblings(tmp_path):
    d = write_hf_dir(tmp_path / "tok", config=CONFIG)
    assert get_tokenizer(str(d / "tokenizer.json")).eos_token == "</s>"
    flat = tmp_path / "flat"
    flat.mkdir()
    word_level_hf().save(str(flat / "tiny.tokenizer.json"))
    (flat / "tiny.tokenizer_config.json").write_text(json.dumps({"eos_token": "<pad>"}))
    (flat / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))  # not ours
    assert get_tokenizer(str(flat / "tiny.tokenizer.json")).eos_token == "<pad>"


def test_bpe_round_trip_and_special_tokens(tmp_path):
    tok = get_tokenizer(str(write_hf_dir(tmp_path / "bpe", bpe_hf())))
    text = "hello world, the cat sat on the mat! ünïcödé 🙂"
    ids = tok.encode(text)
    assert len(ids) < len(text.encode())  # merges were learned and used
    assert tok.decode(ids) == text
    with_special = tok.encode("hi<|im_end|>")
    assert with_special[-1] == tok.token_to_id("<|im_end|>")
    assert tok.decode(with_special, skip_special_tokens=True) == "hi"


def test_add_special_tokens_uses_post_processor(tmp_path):
    from tokenizers import processors

    hf = word_level_hf()
    hf.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", hf.token_to_id("<s>"))])
    tok = get_tokenizer(str(write_hf_dir(tmp_path / "tok", hf, config=CONFIG)))
    assert tok.encode("cat") == [tok.token_to_id("cat")]
    assert tok.encode("cat", add_special_tokens=True) == [tok.bos_token_id, tok.token_to_id("cat")]


def test_cache_identity(tmp_path):
    d = write_hf_dir(tmp_path / "tok")
    first = get_tokenizer(str(d))
    assert get_tokenizer(str(d)) is first
    assert get_tokenizer(str(d / "tokenizer.json")) is not first  # a different path
    assert get_tokenizer(str(d) + "/") is first  # same resolved path
    clear_tokenizer_cache()
    assert get_tokenizer(str(d)) is not first


def test_cache_is_thread_safe(tmp_path):
    d = write_hf_dir(tmp_path / "tok")
    results: list[Tokenizer] = []
    threads = [threading.Thread(target=lambda: results.append(get_tokenizer(str(d))))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(r) for r in results}) == 1


def test_relative_path(tmp_path, monkeypatch):
    write_hf_dir(tmp_path / "rel" / "tok")
    monkeypatch.chdir(tmp_path / "rel")
    assert get_tokenizer("tok").encode("cat") == [4]
    assert get_tokenizer("./tok") is get_tokenizer("tok")


@pytest.mark.parametrize("spec, fragment", [
    ("/definitely/not/here", "does not exist"),
    ("./missing-dir", "does not exist"),
    ("not a repo id!", "Hugging Face repo id"),
])
def test_bad_specs(spec, fragment):
    with pytest.raises(ValidationError, match=fragment) as info:
        get_tokenizer(spec, offline=True)
    assert "Fix:" in str(info.value)


def test_empty_spec_needs_model_name():
    with pytest.raises(ValidationError, match="model_name="):
        get_tokenizer("")


def test_directory_without_tokenizer_files(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ValidationError, match=r"tokenizer.json.*config.json"):
        get_tokenizer(str(tmp_path / "empty"))


def test_unparseable_files(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValidationError, match=r"Hugging Face tokenizer\.json"):
        get_tokenizer(str(d))
    write_hf_dir(tmp_path / "bad2", config=None)
    (tmp_path / "bad2" / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(ValidationError, match="a JSON object"):
        get_tokenizer(str(tmp_path / "bad2"))


def test_special_token_not_in_vocab(tmp_path):
    d = write_hf_dir(tmp_path / "tok", config={"eos_token": "<|eot|>"})
    with pytest.raises(ValidationError, match="eos_token"):
        get_tokenizer(str(d))


def test_wrong_file_kind(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ValidationError, match="tokenizer directory"):
        get_tokenizer(str(tmp_path / "model.safetensors"))


def test_decode_rejects_out_of_range_and_encode_non_str():
    tok = byte_tokenizer()
    with pytest.raises(ValidationError, match=r"decode\(ids\)\[1\].*\[0, 256\)"):
        tok.decode([1, 256])
    with pytest.raises(ValidationError, match="a str"):
        tok.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="sequence of int"):
        tok.decode(["a"])  # type: ignore[list-item]


def test_decode_accepts_numpy():
    import numpy as np

    tok = byte_tokenizer()
    assert tok.decode(np.array([104, 105], dtype=np.int32)) == "hi"


def test_byte_tokenizer_round_trip():
    tok = byte_tokenizer(special_tokens=["<|end|>"], eos_token="<|end|>")
    text = "\x00 tabs\tand\nnewlines, ünïcödé, 世界, 🙂"
    assert tok.encode(text) == list(text.encode())
    assert tok.decode(tok.encode(text)) == text
    assert tok.id_to_token(256) == "<|end|>"
    assert "byte-level" in repr(tok)


def test_token_never_in_repr(tmp_path):
    tok = get_tokenizer(str(write_hf_dir(tmp_path / "tok")), token="hf_secret_value")
    assert "hf_secret_value" not in repr(tok) and "hf_secret_value" not in repr(vars(tok))


def test_import_is_light():
    import subprocess
    import sys

    code = ("import sys, tinkex_jax, tinkex_jax.tokenizer; "
            "bad = [m for m in ('jax', 'transformers', 'tokenizers', 'tiktoken', 'httpx') "
            "if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent)
    assert out.stdout.strip() == "[]"


def test_pickle_round_trip(tmp_path):
    import pickle

    from tests.support.tokenizer_helpers import kimi_files

    hf_tok = get_tokenizer(str(write_hf_dir(tmp_path / "tok", config=CONFIG)))
    hf_tok.apply_chat_template([{"role": "user", "content": "cat"}])  # fills the renderer cache
    kimi = get_tokenizer(str(kimi_files(tmp_path / "kimi")))
    for tok in (hf_tok, kimi, byte_tokenizer()):
        copy = pickle.loads(pickle.dumps(tok))
        assert copy.encode("hello cat") == tok.encode("hello cat")
        assert copy.eos_token_id == tok.eos_token_id
        assert copy.apply_chat_template([{"role": "user", "content": "x"}], renderer="role_tags") \
            == tok.apply_chat_template([{"role": "user", "content": "x"}], renderer="role_tags")
