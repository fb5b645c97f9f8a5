"""Retrieval under eviction: pass-key trials (Mohtashami & Jaggi, 2023) generated from a seed, answered greedily
through a policy's cache, scored by exact match, with whether the key was still in the cache when the question was
asked (read from the cache, per layer)."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass

import pandas as pd
import torch

from ..caches.generation import TokenStream
from ..loading.data import stream_bos
from .measurement import Measurement

INTRO = ("There is a pass key hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the pass key.")
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key?"
ANSWER_START = "The pass key is"


@dataclass
class PassKeyTrial:
    """One prompt: filler text with a 5-digit key at a depth, then the question. Positions are token indices."""

    seed: int
    key: str
    depth: float  # where the key sits in the filler, 0 (start) to 1 (end)
    prompt_ids: torch.Tensor  # (1, T)
    key_positions: list[int]  # the tokens of the key's digits (both mentions)
    question_position: int  # the first token of the question
    prefix_tokens: int = 0  # the prompt before the filler: BOS, a chat template's header and the instructions

    @property
    def distance(self) -> int:
        """Tokens from the key's last digit to the question."""
        return self.question_position - self.key_positions[-1]


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def _frame(tokenizer, chat: bool) -> tuple[str, str]:
    """Text before the user's content and after it up to the answer (the chat template's markup when ``chat``)."""
    if not chat:
        return "", QUESTION + " " + ANSWER_START
    marker = "<<CONTENT>>"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False,
                                             add_generation_prompt=True)
    head, tail = rendered.split(marker)
    return head, QUESTION + tail + ANSWER_START


def passkey_trial(tokenizer, context_tokens: int, depth: float, seed: int, chat: bool | None = None,
                  bos: bool | None = None) -> PassKeyTrial:
    """A prompt of about ``context_tokens`` tokens with the key at ``depth`` of the filler. ``chat`` (default: the
    tokenizer has a chat template) wraps it in the model's chat template; otherwise it is raw completion text. The
    answer is primed with "The pass key is" in both forms, so every policy is asked the same thing. The prompt starts
    with BOS where the tokenizer adds one (``bos``: :func:`streamlib.loading.data.stream_bos`), once."""
    if not 0 <= depth <= 1:
        raise ValueError(f"depth must be in [0, 1]; got {depth!r}")
    chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    key = f"{random.Random(seed).randrange(10_000, 100_000)}"
    head_text, tail_text = _frame(tokenizer, chat)
    head, filler, tail = _ids(tokenizer, head_text + INTRO), _ids(tokenizer, FILLER), _ids(tokenizer, tail_text)
    if stream_bos(tokenizer, bos) and head[:1] != [tokenizer.bos_token_id]:  # a chat template may bring its own
        head = [tokenizer.bos_token_id] + head
    needle = _ids(tokenizer, NEEDLE.format(key=key))
    units = max(1, (context_tokens - len(head) - len(needle) - len(tail)) // len(filler))
    before = round(depth * units)
    ids = head + filler * before + needle + filler * (units - before) + tail
    start = len(head) + before * len(filler)
    digits = [start + i for i, t in enumerate(needle) if tokenizer.decode([t]).strip().isdigit()]
    question = len(ids) - len(tail)
    return PassKeyTrial(seed, key, depth, torch.tensor([ids]), digits, question, prefix_tokens=len(head))


def passkey_grid(tokenizer, context_tokens: list[int], depths: list[float], seeds: int,
                 chat: bool | None = None, bos: bool | None = None) -> list[PassKeyTrial]:
    """Every context length × depth, ``seeds`` trials each (seeds 0, 1, ...; a seed fixes the key)."""
    return [passkey_trial(tokenizer, n, d, s, chat, bos) for n in context_tokens for d in depths for s in range(seeds)]


def parse_answer(text: str) -> str | None:
    """The first number in a model's answer, digits run together ("48213.", "48 213", "4,8,2,1,3" give "48213"),
    or None when it gives none."""
    match = re.search(r"\d(?:[\d ,]*\d)?", text)
    return re.sub(r"[ ,]", "", match.group(0)) if match else None


def key_residency(cache, positions: list[int]) -> list[float]:
    """Per layer, the share of the key's tokens the cache still holds (averaged over kv heads for H2O)."""
    wanted = torch.tensor(positions)
    return [float(torch.stack([torch.isin(wanted, row) for row in held]).float().mean())
            for held in cache.held_by_layer()]


@torch.inference_mode()
def measure_retrieval(model, tokenizer, policy, trials: list[PassKeyTrial], max_new_tokens: int = 10) -> Measurement:
    """Each trial through its own stream under ``policy``: the prompt fed (a prompt longer than the cache is
    streamed, so the key may be evicted before the question), the key's residency read from the cache, then a greedy
    answer. The curve has a row per trial; the records the accuracy and the share of trials whose key was fully
    cached in every layer."""
    rows = []
    for trial in trials:
        stream = TokenStream(model, policy)
        stream.feed(trial.prompt_ids)
        residency = key_residency(stream.cache, trial.key_positions)
        answer = [int(t[0, 0]) for t in stream.generate(max_new_tokens, eos_token_id=tokenizer.eos_token_id)]
        text = tokenizer.decode(answer, skip_special_tokens=True)
        found = parse_answer(text)
        rows.append({"seed": trial.seed, "depth": trial.depth, "prompt_tokens": trial.prompt_ids.shape[1],
                     "distance": trial.distance, "pass_key": trial.key, "answer": text.strip(), "found": found,
                     "correct": found == trial.key, "key_cached": sum(residency) / len(residency),
                     "key_cached_by_layer": json.dumps([round(r, 3) for r in residency])})
    curve = pd.DataFrame(rows)
    return Measurement(rows=[("retrieval_accuracy", float(curve.correct.mean()), ""),
                             ("key_fully_cached", float((curve.key_cached == 1).mean()), ""),
                             ("trials", len(curve), "")], curve=curve)
