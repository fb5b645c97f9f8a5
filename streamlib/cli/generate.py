"""``python -m streamlib generate``: streaming generation from the terminal, and a conversation that never ends.

    python -m streamlib generate --model micro --policy streamingllm:4+124 --prompt "And God said"
    python -m streamlib generate --model micro --interactive < turns.txt
    python -m streamlib generate --model smollm2-135m --chat --interactive   # through the chat template

Text goes to stdout as it is produced; statistics go to stderr. With ``--interactive`` each line read from stdin
is a turn: it is appended to the same stream and cache (nothing is recomputed), then the model answers until a
newline, an end-of-text token or ``--max-new-tokens``. Under a bounded policy memory stays flat over any number of
turns; one stderr line per turn shows it, and what the cache keeps. With ``--chat`` a StreamingLLM, window or burst
policy keeps the chat template's system header as its sinks, in the same budget (``--keep``): without it the
header leaves the cache once the conversation outgrows it, and the model forgets who it is.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from ..policies import forms, parse_policy
from .usage import fail


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="Hub id, local directory, 'micro', 'smollm2-135m', 'gemma3-270m' or 'random:pythia-XXX' "
                        "(default: the model of the profile `make run` would pick)")
    p.add_argument("--prompt", default=None, help="the prompt text")
    p.add_argument("--prompt-file", default=None, help="read the prompt from this file")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (per turn with --interactive)")
    p.add_argument("--policy", default="streamingllm:4+252", help="one of: " + ", ".join(forms()))
    p.add_argument("--temperature", type=float, default=0.8, help="0 for greedy decoding")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling: keep the tokens holding this mass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--compile", action="store_true",
                   help="compiled decode steps (window and streamingllm only; the first step compiles, seconds)")
    p.add_argument("--interactive", action="store_true",
                   help="read turns from stdin (a terminal or a pipe), all in one stream and one cache")
    p.add_argument("--chat", action="store_true",
                   help="with --interactive: each line is a user turn through the model's chat template (e.g. "
                        "--model smollm2-135m); replies end at the model's end-of-turn token")
    p.add_argument("--keep", default=None,
                   help="what a StreamingLLM, window or burst policy keeps as its sinks, in the same budget: "
                        "'header' (the chat template's system header; the default with --chat), 'sinks' (the "
                        "policy's own; the default otherwise) or N (the stream's first N tokens)")


class TextWriter:
    """Writes tokens to a text stream as they come, holding back a token that ends inside a UTF-8 character."""

    def __init__(self, tokenizer, out=None):
        self.tokenizer, self.out = tokenizer, out or sys.stdout
        self.line: list[int] = []
        self.printed = 0

    def write(self, token_id: int) -> str:
        self.line.append(token_id)
        text = self.tokenizer.decode(self.line)
        if text.endswith("\ufffd"):
            return ""
        new = text[self.printed :]
        self.out.write(new)
        self.out.flush()
        if "\n" in new:
            self.line, self.printed = [], 0
        else:
            self.printed = len(text)
        return new


def _default_model() -> str:
    from ..experiments.config import Config
    from .run import choose_profile

    return Config.load(choose_profile()[0]).model


def kept_text(policy, header: int | None = None) -> str:
    """What the cache keeps, for the per-turn line: the policy, and a kept chat header with its length."""
    if header is None:
        return policy.label()
    return f"{policy.label()}: keeps the chat header ({header} tokens) and the last {policy.budget - header}"


def keep_policy(policy, keep: str | None, chat: bool, tokenizer) -> tuple[object, int | None]:
    """The policy with what ``--keep`` asks kept as its sinks, and the header's length when it is the chat header.
    Raises ValueError naming ``--keep``."""
    from ..metrics.chat import chat_header_ids

    chosen = keep if keep is not None else ("header" if chat else "sinks")
    if chosen == "sinks":
        return policy, None
    if chosen == "header":
        if not chat:
            raise ValueError("--keep header needs --chat: the header is the chat template's")
        if keep is None and not policy.takes_sinks:
            return policy, None  # the default, under a policy with no sinks to give (Dense, TOVA, H2O, Recompute)
        n = len(chat_header_ids(tokenizer))
        try:
            return policy.with_sinks(n), n
        except ValueError as err:
            raise ValueError(f"--keep header: the chat header is {n} tokens and {policy.label()} cannot keep it "
                             f"({err}); give a larger cache, or --keep sinks") from None
    if not chosen.isdigit():
        raise ValueError(f"--keep must be 'header', 'sinks' or a number of tokens; got {keep!r}")
    try:
        return policy.with_sinks(int(chosen)), None
    except ValueError as err:
        raise ValueError(f"--keep {chosen}: {err}") from None


def _stats(stream, kept: str, tokens: int, seconds: float) -> str:
    from ..metrics.memory import kv_cache_bytes

    rate = tokens / seconds if seconds > 0 else float("nan")
    return (f"{tokens} tokens in {seconds:.2f} s ({rate:.1f} tok/s) | {kept} | "
            f"KV cache {kv_cache_bytes(stream.cache) / 2**20:.3f} MiB | stream position {stream.position} | "
            f"model position {stream.cache.get_seq_length()}")


def run_generate(args, parser: argparse.ArgumentParser) -> int:
    from ..caches.generation import TokenStream
    from ..loading.data import adds_bos
    from ..loading.models import WeightsUnavailableError, load_model, load_tokenizer
    from ..metrics.chat import ChatTranscript

    try:
        policy = parse_policy(args.policy)
    except ValueError as err:
        fail(parser, f"--policy: {err}")
    if args.max_new_tokens < 1:
        fail(parser, f"--max-new-tokens must be an integer >= 1; got {args.max_new_tokens}")
    if args.temperature < 0:
        fail(parser, f"--temperature must be >= 0 (0: greedy); got {args.temperature}")
    if not 0 < args.top_p <= 1:
        fail(parser, f"--top-p must be in (0, 1]; got {args.top_p}")
    if args.device is not None and not (args.device == "cpu" or args.device.split(":")[0] == "cuda"):
        fail(parser, f"--device must be 'cpu', 'cuda' or 'cuda:N'; got {args.device!r}")
    if args.prompt is not None and args.prompt_file is not None:
        fail(parser, "give --prompt or --prompt-file, not both")
    prompt = args.prompt
    if args.prompt_file is not None:
        try:
            with open(args.prompt_file, encoding="utf-8") as fh:
                prompt = fh.read()
        except (OSError, UnicodeDecodeError) as err:
            fail(parser, f"--prompt-file: cannot read {args.prompt_file!r}: {getattr(err, 'strerror', None) or err}")
        if not prompt.strip():
            fail(parser, f"--prompt-file: {args.prompt_file!r} is empty; it must hold the text to continue")
    elif prompt is not None and not prompt.strip():
        fail(parser, "--prompt is empty; give the text to continue (or --interactive to read turns from stdin)")
    if prompt is None and not args.interactive:
        fail(parser, "give --prompt or --prompt-file (or --interactive)")
    if args.chat and not args.interactive:
        fail(parser, "--chat needs --interactive: the turns are read from stdin")
    if args.keep is not None and args.keep not in ("header", "sinks") and not args.keep.isdigit():
        fail(parser, f"--keep must be 'header', 'sinks' or a number of tokens; got {args.keep!r}")
    if args.keep == "header" and not args.chat:
        fail(parser, "--keep header needs --chat: the header is the chat template's")
    if args.compile:
        try:  # the policy's own answer; a chat's length is not known, so Dense has no preallocated form here
            policy.compiled_form(max_length=None)
        except ValueError as err:
            fail(parser, f"--compile: compiled decoding covers window and streamingllm, whose cache keeps one shape; "
                         f"got --policy {args.policy} ({err})")

    name = args.model or _default_model()
    try:
        model = load_model(name, device=args.device)
        tokenizer = load_tokenizer(name if not name.startswith("random:") else "micro")
    except (WeightsUnavailableError, ValueError, OSError) as err:
        fail(parser, f"--model {name!r}: {err}")
    transcript = None
    if args.chat:
        try:
            transcript = ChatTranscript(tokenizer)
        except ValueError as err:
            fail(parser, f"--chat: {err} (model {name!r})")
    try:
        policy, header = keep_policy(policy, args.keep, args.chat, tokenizer)
    except ValueError as err:
        fail(parser, str(err))
    kept = kept_text(policy, header)
    stream = TokenStream(model, policy, do_sample=args.temperature > 0, temperature=args.temperature or 1.0,
                         top_p=args.top_p, seed=args.seed, compile=args.compile)
    writer = TextWriter(tokenizer)
    eos = tokenizer.eos_token_id
    generated, started = 0, time.perf_counter()

    def answer(stop_at_newline: bool) -> tuple[str, bool]:
        """Stream the reply to stdout; returns its text and whether it ended with the end-of-text token."""
        nonlocal generated
        reply = []
        for token in stream.generate(args.max_new_tokens, eos_token_id=eos):
            generated += 1
            if int(token[0, 0]) == eos and args.chat:
                sys.stdout.write("\n")
                return "".join(reply), True
            text = writer.write(int(token[0, 0]))
            reply.append(text)
            if stop_at_newline and "\n" in text:
                return "".join(reply), False
        if stop_at_newline or args.chat:
            sys.stdout.write("\n")
        return "".join(reply), False

    def encode(text: str, first: bool = False) -> torch.Tensor:
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        if first and adds_bos(tokenizer):  # the stream's first token: a model trained with BOS first sinks on it
            ids = torch.cat([torch.tensor([[tokenizer.bos_token_id]]), ids], dim=1)
        return ids

    if not args.interactive:
        sys.stdout.write(prompt)
        stream.feed(encode(prompt, first=True))
        answer(stop_at_newline=False)
        sys.stdout.write("\n")
        print(_stats(stream, kept, generated, time.perf_counter() - started), file=sys.stderr)
        return 0

    if prompt:
        stream.feed(encode(prompt, first=not args.chat))  # a chat template brings its own BOS
    tty = sys.stdin.isatty()
    turn, busy = 0, 0.0  # busy: seconds spent reading turns and replying, not waiting for the user to type
    while True:
        if tty:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        turn += 1
        before, turn_started = generated, time.perf_counter()
        if transcript is None:
            stream.feed(encode(line if line.endswith("\n") else line + "\n"))
            answer(stop_at_newline=True)
        else:
            stream.feed(encode(transcript.user(line.rstrip("\n"))))
            writer.line, writer.printed = [], 0
            transcript.assistant(*answer(stop_at_newline=False))
        seconds = time.perf_counter() - turn_started
        busy += seconds
        print(f"[turn {turn}] " + _stats(stream, kept, generated - before, seconds), file=sys.stderr, flush=True)
    print(f"[all {turn} turns] " + _stats(stream, kept, generated, busy)
          + f" | {time.perf_counter() - started:.2f} s wall, waiting for input included", file=sys.stderr)
    return 0
