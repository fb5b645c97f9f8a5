"""Recall across turns: a scripted chat through the model's chat template, in one stream and one cache, in which
the user states facts about themselves and asks for each one a set number of turns later.

The user's side is scripted; the model writes every reply itself (greedy). A question's reply is primed with the
start of the answer ("Your dog is called"), so the model has only to name the fact, the one thing a 135M model does
reliably (without the prime it apologises that it cannot know). Each fact's answer is a name no prior favours
("Biscuit", not "Max"), and each fact is asked once. The curve has a row per turn: what was said, the stream
position, the KV bytes the cache holds, and for a question whether it was answered and how many tokens back the fact
was stated.
"""

from __future__ import annotations

import random
import re

import pandas as pd
import torch

from ..caches.generation import TokenStream
from .chat import ChatTranscript
from .measurement import Measurement
from .memory import kv_cache_bytes

# (what the user says, what the user asks, the reply's primed start); {} is the fact's answer
FACTS = (("My dog is called {}.", "What is my dog called?", "Your dog is called"),
         ("My sister's name is {}.", "What is my sister's name?", "Your sister's name is"),
         ("I grew up in a village called {}.", "What was the village I grew up in called?",
          "The village you grew up in was called"),
         ("My boat is named {}.", "What is my boat named?", "Your boat is named"),
         ("My best friend is called {}.", "What is my best friend called?", "Your best friend is called"),
         ("My cat's name is {}.", "What is my cat's name?", "Your cat's name is"),
         ("My horse is called {}.", "What is my horse called?", "Your horse is called"),
         ("My grandmother's name was {}.", "What was my grandmother's name?", "Your grandmother's name was"),
         ("The street I live on is {} Street.", "What is the street I live on?", "You live on"),
         ("My teacher was called Mr {}.", "What was my teacher called?", "Your teacher was called Mr"),
         ("My parrot is called {}.", "What is my parrot called?", "Your parrot is called"),
         ("My first car was a {}.", "What was my first car?", "Your first car was a"),
         ("My neighbour's name is {}.", "What is my neighbour's name?", "Your neighbour's name is"),
         ("The band I play in is called {}.", "What is the band I play in called?", "The band you play in is called"),
         ("My favourite restaurant is {}.", "What is my favourite restaurant?", "Your favourite restaurant is"),
         ("My goldfish is named {}.", "What is my goldfish named?", "Your goldfish is named"),
         ("My uncle's name is {}.", "What is my uncle's name?", "Your uncle's name is"),
         ("The hotel we stayed at was the {}.", "What was the hotel we stayed at?", "The hotel you stayed at was the"),
         ("My tortoise is called {}.", "What is my tortoise called?", "Your tortoise is called"),
         ("My piano teacher is Mrs {}.", "Who is my piano teacher?", "Your piano teacher is Mrs"))
# Answers no prior favours, each one word of letters
ANSWERS = ("Biscuit", "Marisol", "Kettleby", "Seafret", "Tobiah", "Quill", "Brambles", "Ottilie", "Larkspur",
           "Pemberton", "Zephyr", "Corvette", "Ingrid", "Moonrakers", "Delphine", "Nimbus", "Barnaby", "Ravenscar",
           "Juniper", "Whitlock", "Caspian", "Rosalind", "Thistle", "Hollis")

# What the user says when no fact is left to state and no question is due
SMALL_TALK = ("Tell me something interesting.", "What should I cook tonight?", "Any tips for sleeping well?",
              "Name a good book.")


def recall_script(turns: int, turns_back: list[int], seed: int = 0) -> list[dict]:
    """The user's side of a chat of ``turns`` turns: a turn either asks about the fact stated ``k`` turns earlier
    (when one is due) or states a new fact, to be asked ``k`` turns later, ``k`` the distance of ``turns_back`` asked
    least so far whose question turn is still free. Once every fact is stated, turns with no question due are small
    talk. Deterministic for a ``seed``."""
    if isinstance(turns, bool) or not isinstance(turns, int) or turns < 2:
        raise ValueError(f"turns must be an integer >= 2; got {turns!r}")
    if not turns_back or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in turns_back):
        raise ValueError(f"turns_back must be a non-empty list of integers >= 1; got {turns_back!r}")
    rng = random.Random(seed)
    facts, answers = list(FACTS), list(ANSWERS)
    rng.shuffle(facts)
    rng.shuffle(answers)
    due: dict[int, tuple[int, int]] = {}  # question turn -> (fact, k)
    used = dict.fromkeys(turns_back, 0)
    script, stated = [], 0
    for turn in range(turns):
        if turn in due:
            fact, k = due.pop(turn)
            script.append({"turn": turn, "kind": "question", "fact": fact, "turns_back": k,
                           "user": facts[fact][1], "primed": facts[fact][2], "answer": answers[fact]})
            continue
        free = [k for k in turns_back if turn + k < turns and turn + k not in due]
        if free and stated < len(facts):
            k = min(free, key=lambda k: (used[k], turns_back.index(k)))
            used[k] += 1
            due[turn + k] = (stated, k)
            script.append({"turn": turn, "kind": "statement", "fact": stated, "turns_back": None,
                           "user": facts[stated][0].format(answers[stated]), "primed": "", "answer": answers[stated]})
            stated += 1
        else:
            script.append({"turn": turn, "kind": "chat", "fact": None, "turns_back": None,
                           "user": SMALL_TALK[turn % len(SMALL_TALK)], "primed": "", "answer": ""})
    return script


SKIPPED = {"the", "a", "an", "mr", "mrs", "ms", "called", "named"}  # words a reply may put before the name


def answered(reply: str, answer: str) -> bool:
    """Whether the reply's first word past an article or title ("the Tobiah", ". Ottilie") is the answer, case and
    punctuation aside."""
    words = [w for w in re.findall(r"\w+", reply.lower())]
    while words and words[0] in SKIPPED:
        words.pop(0)
    return bool(words) and words[0] == answer.lower()


@torch.inference_mode()
def measure_recall(model, tokenizer, policy, script: list[dict], reply_tokens: int = 24,
                   answer_tokens: int = 6) -> Measurement:
    """The scripted chat through one stream under ``policy``: every user turn fed through the chat template, every
    reply written by the model (greedy, at most ``reply_tokens``; a question's reply is its primed start and then at
    most ``answer_tokens``). The curve has a row per turn; the records the accuracy over the questions."""
    transcript, stream = ChatTranscript(tokenizer), TokenStream(model, policy)
    eos, rows, stated_at = tokenizer.eos_token_id, [], {}

    def feed(text: str) -> None:
        stream.feed(tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids)

    for step in script:
        feed(transcript.user(step["user"]))
        if step["kind"] == "statement":
            stated_at[step["fact"]] = stream.position  # the fact is what the stream has read up to here
        primed = step["primed"]
        if primed:
            feed(primed)
        asked_at = stream.position
        reply = [int(t[0, 0]) for t in stream.generate(answer_tokens if primed else reply_tokens, eos_token_id=eos)]
        ended = bool(reply) and reply[-1] == eos
        text = tokenizer.decode(reply[:-1] if ended else reply)
        transcript.assistant(primed + text, ended)
        row = {"turn": step["turn"], "kind": step["kind"], "user": step["user"], "reply": (primed + text).strip(),
               "turns_back": step["turns_back"], "stream_position": stream.position,
               "kv_bytes": kv_cache_bytes(stream.cache), "correct": None, "tokens_back": None}
        if step["kind"] == "question":
            row["correct"] = answered(text, step["answer"])
            row["tokens_back"] = asked_at - stated_at[step["fact"]]
        rows.append(row)
    curve = pd.DataFrame(rows)
    asked = curve[curve.kind == "question"]
    return Measurement(rows=[("recall_accuracy", float(asked.correct.astype(bool).mean()), ""),
                             ("questions", len(asked), ""),
                             ("chat_final_position", int(curve.stream_position.iloc[-1]), "tokens"),
                             ("chat_max_kv_bytes", int(curve.kv_bytes.max()), "bytes")], curve=curve)
