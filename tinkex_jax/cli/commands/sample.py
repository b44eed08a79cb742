"""``tinkex sample``: sample completions of a prompt from a base model or saved weights.

For: the command line of sampling (prompt as text or token ids, sampling parameters) and the
printed completions. Not for: tokenizer loading (the sampling client's ``get_tokenizer``)
or formatting (`tinkex_jax.cli.output`). Without a tokenizer it falls back to token ids.

Example:
    >>> parse_token_ids("1, 2 3")
    [1, 2, 3]
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import TYPE_CHECKING, Any

from ..arguments import add_connection_options, parse_checkpoint_path, positive
from ..command import Command
from ..connection import connect
from ..errors import CLIError, guarded, not_found, one_line
from ..output import SampleView, format_samples, print_json

if TYPE_CHECKING:
    from ...clients import SamplingClient

__all__ = ["COMMAND", "cmd_sample", "configure_sample", "parse_token_ids"]


def configure_sample(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex sample``."""
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--base-model", default=None, help="sample from this base model")
    model.add_argument("--model-path", default=None, metavar="TINKER_PATH",
                       help="sample from these saved weights (tinker://.../sampler_weights/...)")
    parser.add_argument("prompt", metavar="PROMPT", help="the prompt text")
    parser.add_argument("--prompt-tokens", action="store_true",
                        help="PROMPT is token ids (e.g. '1 2 3' or '1,2,3'), not text")
    parser.add_argument("--max-tokens", type=positive, default=32,
                        help="tokens to generate per sample (default %(default)s)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="softmax temperature, 0 = greedy (default %(default)s)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (default 1.0)")
    parser.add_argument("--top-k", type=int, default=-1, help="top-k, -1 = all (default -1)")
    parser.add_argument("--num-samples", type=positive, default=1,
                        help="completions to draw (default %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible samples")
    parser.add_argument("--stop", action="append", default=None, metavar="STR",
                        help="stop at this string (repeatable)")
    add_connection_options(parser)


def parse_token_ids(text: str) -> list[int]:
    """Token ids from ``"1 2 3"`` or ``"1,2,3"``.

    Example:
        >>> parse_token_ids("1, 2 3")
        [1, 2, 3]
    """
    parts = [p for p in re.split(r"[\s,]+", text.strip()) if p]
    if not parts or not all(p.isdigit() for p in parts):
        raise CLIError(f"--prompt-tokens: expected token ids such as '1 2 3', got {text!r}",
                       exit_code=2)
    return [int(p) for p in parts]


def _tokenizer(sampler: SamplingClient) -> tuple[Any | None, str]:
    """The base model's tokenizer, or None and why not."""
    try:
        return sampler.get_tokenizer(), ""
    except Exception as exc:  # missing files, offline, no such repo: fall back to token ids
        return None, one_line(str(exc))


@guarded
def cmd_sample(args: argparse.Namespace) -> int:
    """Sample completions of a prompt and print them."""
    from ...types import ModelInput, SamplingParams

    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                            top_p=args.top_p, top_k=args.top_k, seed=args.seed, stop=args.stop)
    if args.model_path:
        parse_checkpoint_path(args.model_path)
    with connect(args) as service:
        with not_found(f"model {args.model_path or args.base_model!r}",
                       "check the name with `tinkex checkpoint list`."):
            sampler = service.create_sampling_client(model_path=args.model_path,
                                                      base_model=args.base_model).result()
        tokenizer, why = _tokenizer(sampler)
        if args.prompt_tokens:
            prompt = parse_token_ids(args.prompt)
        elif tokenizer is None:
            raise CLIError(f"cannot encode the prompt: no tokenizer for "
                           f"{sampler.get_base_model()} ({why}). Fix: pass the prompt as "
                           "token ids with --prompt-tokens.", exit_code=2)
        else:
            prompt = tokenizer.encode(args.prompt)
        response = sampler.sample(ModelInput.from_ints(prompt), args.num_samples,
                                  params).result()
    if tokenizer is None and not args.json:
        print(f"note: no tokenizer for {sampler.get_base_model()} ({why}); showing token ids",
              file=sys.stderr)
    views = [SampleView(tokens=s.tokens, stop_reason=s.stop_reason,
                        text=tokenizer.decode(s.tokens, skip_special_tokens=True)
                        if tokenizer is not None else None) for s in response.sequences]
    if args.json:
        print_json({"model": args.model_path or args.base_model,
                    "base_model": sampler.get_base_model(), "prompt_tokens": prompt,
                    "samples": [{"text": v.text, "tokens": v.tokens,
                                 "stop_reason": v.stop_reason} for v in views]})
    else:
        print(format_samples(views))
    return 0


COMMAND = Command("sample", "sample completions from a base model or saved weights",
                  configure_sample, cmd_sample)
