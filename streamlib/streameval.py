"""StreamEval, rebuilt: one long stream of numbered facts with a question every few lines whose answer lies a set
number of lines back, all through one cache (Xiao et al., 2023, section 4.4 and appendix: built on LongEval's line
retrieval, Li et al., 2023; their code was never released, so this is ours from the description).

Each fact line names a register by two words and gives it a five-digit value; a question repeats the register's
name and primes the answer ("... The value of register amber-falcon is"), so a model that can copy from its context
answers with the five digits. Every question asks about a different line, and no value repeats, so the answer can
only come from the line asked about. The answer's digits are in the stream (teacher-forced, as if every earlier
question had been answered right), and a question counts as answered when the model's greedy choice at each digit
is the digit: exactly what greedy decoding would write, without a decode loop per question. So one pass over the
stream in chunks scores every question, at any stream length.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pandas as pd
import torch

from .data import stream_bos
from .generation import forward_chunks
from .measurement import Measurement

INTRO = ("Below is a record of registers. Each line gives a register's name and its value. Now and then you are "
         "asked for the value of a register named earlier; answer with its value.\n")
FACT = "{name}: {value}\n"
QUESTION = "{name}:"
ANSWER = " {value}\n"

# Register names are two words, adjective-noun, so no two registers share a name and a question's name is a phrase
# that occurs once before it (the copy a small model can make).
ADJECTIVES = ("amber", "bold", "calm", "dusty", "eager", "faint", "gentle", "hollow", "icy", "jolly", "keen",
              "lofty", "mellow", "narrow", "olive", "proud", "quiet", "rusty", "silver", "tidy", "upper", "vivid",
              "wild", "young", "brave", "crisp", "dark", "early", "fancy", "grand", "humble", "ivory", "lucky",
              "misty", "noble", "plain", "rapid", "sandy", "tall", "warm")
NOUNS = ("falcon", "river", "lantern", "meadow", "anchor", "basket", "candle", "harbor", "island", "jacket",
         "kettle", "ladder", "mirror", "needle", "orchard", "pebble", "quarry", "saddle", "tower", "valley",
         "wagon", "garden", "forest", "bridge", "castle", "desert", "engine", "feather", "glacier", "hammer",
         "insect", "jungle", "kitchen", "lemon", "magnet", "nest", "ocean", "pillow", "rocket", "spoon")


@dataclass
class StreamEvalTask:
    """One stream: token ids, and per question the stream positions of its answer's digits (the tokens a greedy
    decoder must write), the line it asks about, and how far back that line is."""

    ids: torch.Tensor  # (1, T)
    questions: pd.DataFrame  # one row per question: line, asked_at_line, lines_back, tokens_back, answer positions
    prefix_tokens: int  # BOS and the instructions before the first fact


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def streameval_task(tokenizer, tokens: int, lines_back: list[int], every: int = 4, seed: int = 0, digits: int = 5,
                    bos: bool | None = None) -> StreamEvalTask:
    """A stream of about ``tokens`` tokens: fact lines, and after every ``every``-th line a question about the line
    ``d`` lines back, ``d`` cycling through ``lines_back`` (a question whose line was already asked, or lies before
    the first, is skipped for that round). Deterministic for a ``seed``."""
    if not lines_back or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in lines_back):
        raise ValueError(f"lines_back must be a non-empty list of integers >= 1; got {lines_back!r}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an integer >= 1; got {every!r}")
    rng = random.Random(seed)
    names = [f"{a}-{n}" for a in ADJECTIVES for n in NOUNS]
    rng.shuffle(names)
    ids = _ids(tokenizer, INTRO)
    if stream_bos(tokenizer, bos) and ids[:1] != [tokenizer.bos_token_id]:
        ids = [tokenizer.bos_token_id] + ids
    prefix = len(ids)
    values: set[str] = set()
    facts: list[tuple[str, str, int]] = []  # name, value, position of the line's last token
    asked: set[int] = set()
    rows, turn, used = [], 0, dict.fromkeys(lines_back, 0)
    while len(ids) < tokens:
        if len(facts) == len(names):
            raise ValueError(f"tokens: {tokens} needs more than the {len(names)} register names there are")
        value = f"{rng.randrange(10 ** (digits - 1), 10 ** digits)}"
        while value in values:
            value = f"{rng.randrange(10 ** (digits - 1), 10 ** digits)}"
        values.add(value)
        name = names[len(facts)]
        ids += _ids(tokenizer, FACT.format(name=name, value=value))
        facts.append((name, value, len(ids) - 1))
        if len(facts) % every:
            continue
        # the distance asked least so far whose line is free (each line is asked once: a second question would find
        # the first one's answer nearer than the line); ties go round the list in order
        free = [d for d in lines_back if 0 <= len(facts) - d and len(facts) - d not in asked]
        if not free:
            continue
        d = min(free, key=lambda d: (used[d], (lines_back.index(d) - turn) % len(lines_back)))
        used[d], turn = used[d] + 1, turn + 1
        line = len(facts) - d
        asked.add(line)
        name, value, end = facts[line]
        ids += _ids(tokenizer, QUESTION.format(name=name))
        question_end = len(ids)
        answer = _ids(tokenizer, ANSWER.format(value=value))
        answer_at = [question_end + i for i, t in enumerate(answer) if tokenizer.decode([t]).strip().isdigit()]
        rows.append({"line": line, "asked_after_line": len(facts) - 1, "lines_back": d,
                     "tokens_back": question_end - end, "value": value, "digit_positions": answer_at,
                     "question_position": question_end})
        ids += answer
    return StreamEvalTask(torch.tensor([ids]), pd.DataFrame(rows), prefix)


@torch.inference_mode()
def measure_streameval(model, task: StreamEvalTask, policy, chunk_size: int | None = None,
                       max_tokens: int | None = None) -> Measurement:
    """The whole stream through one cache under ``policy`` (in chunks; token by token for TOVA and H2O), up to
    ``max_tokens``; a question is answered when the greedy choice at each of its digits is that digit. The curve has
    a row per question the stream reached, with whether each digit's token was still cached when the question came."""
    ids = task.ids if max_tokens is None else task.ids[:, :max_tokens]
    want = task.questions[task.questions.digit_positions.map(max) < ids.shape[1]]
    targets = {p for positions in want.digit_positions for p in positions}
    predicted: dict[int, int] = {}
    cache = policy.make_cache(model)
    for start, logits in forward_chunks(model, ids, cache, 1 if policy.token_mode else chunk_size):
        for p in range(start, start + logits.shape[1]):
            if p + 1 in targets:
                predicted[p + 1] = int(logits[0, p - start].argmax())
    stream = ids[0].tolist()
    rows = []
    for q in want.itertuples():
        right = [predicted[p] == stream[p] for p in q.digit_positions]
        rows.append({"line": q.line, "lines_back": q.lines_back, "tokens_back": q.tokens_back,
                     "question_position": q.question_position, "correct": all(right),
                     "digits_right": sum(right) / len(right)})
    curve = pd.DataFrame(rows)
    return Measurement(rows=[("streameval_accuracy", float(curve.correct.mean()), ""),
                             ("questions", len(curve), ""), ("stream_tokens", ids.shape[1], "tokens")], curve=curve)
