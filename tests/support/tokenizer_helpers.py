"""Helpers for tokenizer and renderer tests: tiny tokenizers written to tmp_path."""

from __future__ import annotations

import base64
import json
from pathlib import Path

HF_ENV = ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HF_TOKEN_PATH",
          "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT",
          "XDG_CACHE_HOME")

WORDS = ["hello", "world", "the", "cat", "sat", "on", "mat", "user", "assistant"]
SPECIALS = ["<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]


def word_level_hf(specials: list[str] = SPECIALS):
    """A WordLevel tokenizer: whitespace-split words, ids 0.. for specials then words."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0}
    for w in WORDS:
        vocab[w] = len(vocab)
    hf = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.add_special_tokens(specials)
    return hf


def bpe_hf():
    """A byte-level BPE trained on a few sentences (merges included), with ChatML tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    corpus = ["hello world, the cat sat on the mat"] * 20 + ["user assistant system"] * 20
    hf.train_from_iterator(corpus, trainer=trainer)
    return hf


def write_hf_dir(directory: Path, hf=None, *, config: dict | None = None,
                 special_map: dict | None = None, template_file: str | None = None) -> Path:
    """An HF-style tokenizer directory: tokenizer.json and optional config files."""
    directory.mkdir(parents=True, exist_ok=True)
    (hf or word_level_hf()).save(str(directory / "tokenizer.json"))
    if config is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps(config))
    if special_map is not None:
        (directory / "special_tokens_map.json").write_text(json.dumps(special_map))
    if template_file is not None:
        (directory / "chat_template.jinja").write_text(template_file)
    return directory


def kimi_files(directory: Path, *, extra_ranks: list[bytes] = (), config: dict | None = None
               ) -> Path:
    """A Kimi-style directory: tiktoken.model (bytes + `extra_ranks`) and tokenizer_config.json."""
    directory.mkdir(parents=True, exist_ok=True)
    ranks = [bytes([b]) for b in range(256)] + list(extra_ranks)
    lines = [f"{base64.b64encode(tok).decode()} {rank}" for rank, tok in enumerate(ranks)]
    (directory / "tiktoken.model").write_text("\n".join(lines) + "\n")
    n = len(ranks)
    if config is None:
        config = {
            "bos_token": "[BOS]",
            "eos_token": {"__type": "AddedToken", "content": "[EOS]", "special": True},
            "pad_token": "[PAD]",
            "added_tokens_decoder": {
                str(n): {"content": "[BOS]", "special": True},
                str(n + 1): {"content": "[EOS]", "special": True},
                str(n + 2): {"content": "<|im_end|>", "special": True},
                str(n + 255): {"content": "[PAD]", "special": True},
            },
            "chat_template": "{% for m in messages %}<|im_{{m.role}}|>{% endfor %}",
        }
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory
