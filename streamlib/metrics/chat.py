"""A conversation through a model's chat template, fed to one stream turn by turn.

Each user turn renders the whole conversation with the template and feeds only what is new since the last render
(the reply the model wrote is already in the cache), so one cache serves the whole conversation: under a bounded
policy memory stays flat however many turns there are.
"""

from __future__ import annotations

import os


class ChatTranscript:
    """The text a model has read of a conversation: ``user(text)`` gives what to feed for a new turn (the template's
    markup, the turn, the assistant's header), ``assistant(text, ended)`` records the reply the model wrote."""

    def __init__(self, tokenizer, system: str | None = None):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("tokenizer: it has no chat template; use a chat model such as smollm2-135m")
        self.tokenizer = tokenizer
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.fed = ""  # the rendered text the stream has read so far

    def user(self, content: str) -> str:
        """Add a user turn; returns the text to feed: everything the template adds after what was read."""
        self.messages.append({"role": "user", "content": content})
        rendered = self.tokenizer.apply_chat_template(self.messages, tokenize=False, add_generation_prompt=True)
        common = os.path.commonprefix([self.fed, rendered])
        self.fed = rendered
        return rendered[len(common):]

    def assistant(self, content: str, ended: bool) -> None:
        """Record the reply the model generated (and fed itself); ``ended``: it closed with its end-of-turn token."""
        self.messages.append({"role": "assistant", "content": content})
        self.fed += content + (self.tokenizer.eos_token if ended and self.tokenizer.eos_token else "")


# First user messages that begin differently: the tokens every rendering of them shares is the header
PROBES = ("Hello", "1 + 1?", "What is the capital of France?", " (a test)")


def chat_header_ids(tokenizer, system: str | None = None) -> list[int]:
    """The tokens a chat template puts before the first user message's text: its BOS, the system prompt (``system``
    or the template's own default) and the markup that opens the user's turn, tokenized as a conversation's first
    turn is (no added special tokens). Kept as sinks (``policy.with_sinks(len(...))``), they stay in view however
    long the conversation. Counted as the tokens shared by first turns that begin differently, so a header whose last
    token a message's first would merge with is counted without it."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("tokenizer: it has no chat template; use a chat model such as smollm2-135m")
    head = [{"role": "system", "content": system}] if system else []
    renders = [tokenizer(tokenizer.apply_chat_template(head + [{"role": "user", "content": probe}], tokenize=False,
                                                       add_generation_prompt=True), add_special_tokens=False).input_ids
               for probe in PROBES]
    n = 0
    while all(len(r) > n for r in renders) and len({r[n] for r in renders}) == 1:
        n += 1
    return renders[0][:n]


# Questions a reader can follow, cycled over the turns: short, and each one answerable without the others.
QUESTIONS = ("What is the capital of France?", "Name three colours of the rainbow.", "What do bees make?",
             "How many days are in a week?", "Write one sentence about the sea.", "What is two plus three?",
             "Which planet do we live on?", "Give me a word that rhymes with cat.")


def measure_chat(model, tokenizer, policy, turns: int, max_new_tokens: int = 48, questions=QUESTIONS):
    """A conversation of ``turns`` user turns (``questions`` cycled) through the chat template in one stream and one
    cache, greedy replies. The curve has one row per turn: the question, the reply, the stream position after it and
    the KV bytes held; the records give the final position and the largest KV bytes."""
    import pandas as pd

    from ..caches.generation import TokenStream
    from .measurement import Measurement
    from .memory import kv_cache_bytes

    transcript, stream = ChatTranscript(tokenizer), TokenStream(model, policy)
    eos, rows = tokenizer.eos_token_id, []
    for turn in range(1, turns + 1):
        question = questions[(turn - 1) % len(questions)]
        stream.feed(tokenizer(transcript.user(question), return_tensors="pt", add_special_tokens=False).input_ids)
        reply = [int(t[0, 0]) for t in stream.generate(max_new_tokens, eos_token_id=eos)]
        ended = bool(reply) and reply[-1] == eos
        text = tokenizer.decode(reply[:-1] if ended else reply)
        transcript.assistant(text, ended)
        rows.append({"turn": turn, "user": question, "reply": text.strip(), "stream_position": stream.position,
                     "kv_bytes": kv_cache_bytes(stream.cache)})
    curve = pd.DataFrame(rows)
    return Measurement(rows=[("chat_final_position", curve.stream_position.iloc[-1], "tokens"),
                             ("chat_max_kv_bytes", curve.kv_bytes.max(), "bytes")], curve=curve)
