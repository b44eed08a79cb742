"""Built-in preset lookup (`tinkex-jax/<name>`), against a temporary presets directory."""

from __future__ import annotations

import json

import pytest

from tests.support.tokenizer_helpers import word_level_hf, write_hf_dir
from tinkex_jax import tokenizer as tokmod
from tinkex_jax.errors import ValidationError
from tinkex_jax.tokenizer import find_preset_tokenizer, get_tokenizer


@pytest.fixture
def presets(tmp_path, monkeypatch):
    root = tmp_path / "presets"
    root.mkdir()
    monkeypatch.setattr(tokmod, "PRESETS_ROOT", root)
    return root


def test_directory_preset(presets):
    write_hf_dir(presets / "tiny", config={"eos_token": "</s>"})
    tok = get_tokenizer("tinkex-jax/tiny")
    assert tok.name_or_path == "tinkex-jax/tiny"
    assert tok.eos_token == "</s>"
    assert get_tokenizer("tinkex-jax/tiny") is tok
    assert get_tokenizer("tinkex-jax/tiny:lora") is tok  # the suffix after ':' is dropped


def test_flat_file_preset_with_prefixed_config(presets):
    word_level_hf().save(str(presets / "small.tokenizer.json"))
    (presets / "small.tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}))
    tok = get_tokenizer("tinkex-jax/small")
    assert tok.bos_token == "<s>"
    assert find_preset_tokenizer("small") == presets / "small.tokenizer.json"


def test_directory_layout_wins(presets):
    write_hf_dir(presets / "both")
    word_level_hf().save(str(presets / "both.tokenizer.json"))
    assert find_preset_tokenizer("tinkex-jax/both") == presets / "both" / "tokenizer.json"


def test_explicit_root(tmp_path):
    write_hf_dir(tmp_path / "elsewhere" / "x")
    path = find_preset_tokenizer("x", presets_root=tmp_path / "elsewhere")
    assert path == tmp_path / "elsewhere" / "x" / "tokenizer.json"


def test_missing_preset_lists_searched_paths_and_available(presets):
    write_hf_dir(presets / "tiny")
    word_level_hf().save(str(presets / "small.tokenizer.json"))
    with pytest.raises(ValidationError) as info:
        get_tokenizer("tinkex-jax/huge")
    message = str(info.value)
    assert str(presets / "huge" / "tokenizer.json") in message
    assert str(presets / "huge.tokenizer.json") in message
    assert "['tinkex-jax/small', 'tinkex-jax/tiny']" in message


def test_no_presets_installed(tmp_path, monkeypatch):
    monkeypatch.setattr(tokmod, "PRESETS_ROOT", tmp_path / "nothing")
    with pytest.raises(ValidationError, match="no presets are installed"):
        get_tokenizer("tinkex-jax/tiny")


@pytest.mark.parametrize("name", ["tinkex-jax/../etc", "tinkex-jax/a/b", "tinkex-jax/", ".hidden"])
def test_malformed_names(presets, name):
    with pytest.raises(ValidationError, match="preset name"):
        find_preset_tokenizer(name)


def test_default_root_is_inside_the_package():
    assert tokmod.PRESETS_ROOT.parts[-4:] == ("tinkex_jax", "local", "model", "presets")
