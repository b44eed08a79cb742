"""Kimi K2 style tokenizers: tiktoken.model + tokenizer_config.json, built offline."""

from __future__ import annotations

import base64
import json

import pytest
import tiktoken

from tests.support.tokenizer_helpers import kimi_files
from tinkex_jax.errors import ValidationError
from tinkex_jax.tokenizer import KIMI_PAT_STR, get_tokenizer

HAO = "好".encode()  # 3 bytes
MERGES = [b"he", b"ll", b"llo", b"hello", HAO[:2], HAO, HAO + b"w"]


def test_loads_with_special_tokens(tmp_path):
    d = kimi_files(tmp_path / "kimi", extra_ranks=MERGES)
    tok = get_tokenizer(str(d))
    n = 256 + len(MERGES)
    assert tok.backend == "tiktoken" and isinstance(tok.raw, tiktoken.Encoding)
    assert tok.vocab_size == n + 256  # BPE ranks + 256 reserved special ids
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (n, n + 1, n + 255)
    assert tok.token_to_id("<|im_end|>") == n + 2
    assert tok.id_to_token(n + 3) == f"<|reserved_token_{n + 3}|>"  # unnamed reserved ids
    assert tok.chat_template is not None and tok.renderer_name is None


def test_encode_decode_and_merges(tmp_path):
    tok = get_tokenizer(str(kimi_files(tmp_path / "kimi", extra_ranks=MERGES)))
    hello = tok.token_to_id("hello")
    assert hello == 256 + 3
    assert tok.encode("hello") == [hello]
    text = "hello 世界, Héllo!\n\n  end"
    assert tok.decode(tok.encode(text)) == text
    ids = tok.encode("hello<|im_end|>")
    assert ids == [hello, tok.token_to_id("<|im_end|>")]
    assert tok.decode(ids) == "hello<|im_end|>"
    assert tok.decode(ids, skip_special_tokens=True) == "hello"


def test_kimi_pattern_splits_han_from_latin(tmp_path):
    tok = get_tokenizer(str(kimi_files(tmp_path / "kimi", extra_ranks=MERGES)))
    # "好w" is a rank, but Kimi's pattern puts Han runs in their own piece: never merged.
    assert tok.token_to_id(tok.id_to_token(256 + 6)) == 256 + 6
    assert tok.encode("好w") == [tok.encode("好")[0], ord("w")]
    assert tok.encode("好") == [256 + 5]
    plain = tiktoken.Encoding(name="plain", pat_str=r"\S+|\s+",
                              mergeable_ranks=tok.raw._mergeable_ranks, special_tokens={})
    assert plain.encode("好w") == [256 + 6]  # the same ranks with a naive pattern do merge
    assert tok.raw._pat_str == KIMI_PAT_STR


def test_id_to_token_uses_byte_level_spelling(tmp_path):
    tok = get_tokenizer(str(kimi_files(tmp_path / "kimi", extra_ranks=MERGES)))
    assert tok.id_to_token(ord(" ")) == "Ġ"
    assert tok.token_to_id("Ġ") == ord(" ")
    assert tok.token_to_id("not-a-token") is None
    assert tok.id_to_token(10**6) is None


def test_add_special_tokens_follows_config(tmp_path):
    d = kimi_files(tmp_path / "kimi")
    config = json.loads((d / "tokenizer_config.json").read_text())
    tok = get_tokenizer(str(d))
    assert tok.encode("a", add_special_tokens=True) == [97]  # add_bos_token absent → False
    config["add_bos_token"] = True
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    tok = get_tokenizer(str(d / "tiktoken.model"))  # a file path works too (new cache key)
    assert tok.encode("a", add_special_tokens=True) == [tok.bos_token_id, 97]
    assert tok.encode("a") == [97]


def test_cache_entry_in_hf_layout(tmp_path, monkeypatch):
    snapshot = tmp_path / "hub" / "models--moonshotai--Kimi-K2-Thinking" / "snapshots"
    kimi_files(snapshot / "612681931a8c906ddb349f8ad0f582cb552189cd")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    tok = get_tokenizer("moonshotai/Kimi-K2-Thinking", offline=True)  # the pinned revision
    assert tok.backend == "tiktoken" and tok.eos_token == "[EOS]"


def test_missing_config(tmp_path):
    d = kimi_files(tmp_path / "kimi")
    (d / "tokenizer_config.json").unlink()
    with pytest.raises(ValidationError, match=r"tokenizer_config\.json next to tiktoken\.model"):
        get_tokenizer(str(d))


def test_malformed_tiktoken_model(tmp_path):
    d = kimi_files(tmp_path / "kimi")
    with open(d / "tiktoken.model", "a") as fh:
        fh.write("not-base64!! 7\n")
    with pytest.raises(ValidationError, match=r"line 257.*'<base64 token> <rank>'"):
        get_tokenizer(str(d))


def test_special_id_collision(tmp_path):
    config = {"added_tokens_decoder": {"5": {"content": "[BOS]"}}}
    with pytest.raises(ValidationError, match="special token ids >= 256"):
        get_tokenizer(str(kimi_files(tmp_path / "kimi", config=config)))


def test_round_trip_of_generated_rank_file(tmp_path):
    d = kimi_files(tmp_path / "kimi", extra_ranks=[b"ab"])
    line = (d / "tiktoken.model").read_text().splitlines()[256]
    assert line == f"{base64.b64encode(b'ab').decode()} 256"
