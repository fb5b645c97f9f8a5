"""StreamEval, rebuilt: one long stream of facts with a question every few lines whose answer lies a set number of
lines back, all through one cache (Xiao et al., 2023, section 4.4 and appendix: built on LongEval's line retrieval,
Li et al., 2023; their code was never released, so this is ours from the description).

Each fact is a line with a register's name, two words, and a four-digit value ("amber-falcon: 4821"); a question is
the name of the register ``d`` lines back said again, with its colon, and the answer is the value that follows,
which a model gives by copying from its context. Measured on SmolLM2-135M with its whole context (Dense, 2,500-token
streams): this bare form is answered 65-80 % of the time, against 29-50 % for questions in sentences ("What is the
value of register amber-falcon? The value of register amber-falcon is"). Every question asks about a different line
and no value repeats, so the answer can only come from the line asked about. The answer's digits are in the stream
(teacher-forced, as if every earlier question had been answered right), and a question counts as answered when the
model's greedy choice at each of the answer's tokens (the space, then the digits) is that token: exactly when greedy
decoding would write the answer, without a decode loop
per question. So one pass over the stream in chunks scores every question, at any stream length.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pandas as pd
import torch

from ..caches.generation import forward_chunks
from ..loading.data import stream_bos
from .measurement import Measurement

INTRO = ("Below is a record of registers, one per line: a register's name and its value. Now and then a register "
         "named earlier is called again, and its value follows.\n")
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
    """One stream: token ids, and per question the stream positions of its answer's tokens up to the last digit (what
    a greedy decoder must write), the line it asks about, and how far back that line is."""

    ids: torch.Tensor  # (1, T)
    questions: pd.DataFrame  # one row per question: line, asked_at_line, lines_back, tokens_back, answer positions
    prefix_tokens: int  # BOS and the instructions before the first fact


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def streameval_task(tokenizer, tokens: int, lines_back: list[int], every: int = 3, seed: int = 0, digits: int = 4,
                    bos: bool | None = None) -> StreamEvalTask:
    """A stream of at least ``tokens`` tokens (BOS where the tokenizer adds one, the instructions, then fact lines
    with values of ``digits`` digits), and after every ``every``-th line a question about the line ``d`` lines back:
    ``d`` the distance of ``lines_back`` asked least so far whose line is not asked yet (none: no question there).
    Deterministic for a ``seed``."""
    if not lines_back or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in lines_back):
        raise ValueError(f"lines_back must be a non-empty list of integers >= 1; got {lines_back!r}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an integer >= 1; got {every!r}")
    if isinstance(digits, bool) or not isinstance(digits, int) or not 2 <= digits <= 9:
        raise ValueError(f"digits must be an integer in [2, 9]; got {digits!r}")
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
        if len(values) == 9 * 10 ** (digits - 1):  # every value used: another line would repeat one
            raise ValueError(f"digits: {tokens} tokens need more than the {len(values)} values of {digits} digits")
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
        digit_at = [i for i, t in enumerate(answer) if tokenizer.decode([t]).strip().isdigit()]
        answer_at = [question_end + i for i in range(digit_at[-1] + 1)]  # up to the last digit, its space too
        rows.append({"line": line, "asked_after_line": len(facts) - 1, "lines_back": d,
                     "tokens_back": question_end - end, "value": value, "answer_positions": answer_at,
                     "question_position": question_end})
        ids += answer
    return StreamEvalTask(torch.tensor([ids]), pd.DataFrame(rows), prefix)


@torch.inference_mode()
def measure_streameval(model, task: StreamEvalTask, policy, chunk_size: int | None = None,
                       max_tokens: int | None = None) -> Measurement:
    """The whole stream through one cache under ``policy`` (in chunks; token by token for TOVA and H2O), up to
    ``max_tokens``; a question is answered when the greedy choice at each of its answer's tokens is that token. The
    curve has a row per question the stream reached: whether it was answered, the share of its answer's tokens
    right, and the token ids the model chose at them."""
    ids = task.ids if max_tokens is None else task.ids[:, :max_tokens]
    want = task.questions[task.questions.answer_positions.map(max) < ids.shape[1]]
    if want.empty:
        raise ValueError(f"max_tokens: the first question's answer ends at token "
                         f"{max(task.questions.answer_positions.iloc[0]) + 1}; got {max_tokens}")
    targets = {p for positions in want.answer_positions for p in positions}
    predicted: dict[int, int] = {}
    cache = policy.make_cache(model)
    for start, logits in forward_chunks(model, ids, cache, 1 if policy.token_mode else chunk_size):
        for p in range(start, start + logits.shape[1]):
            if p + 1 in targets:
                predicted[p + 1] = int(logits[0, p - start].argmax())
    stream = ids[0].tolist()
    rows = []
    for q in want.itertuples():
        right = [predicted[p] == stream[p] for p in q.answer_positions]
        rows.append({"line": q.line, "lines_back": q.lines_back, "tokens_back": q.tokens_back,
                     "question_position": q.question_position, "correct": all(right),
                     "tokens_right": sum(right) / len(right),
                     "predicted": " ".join(str(predicted[p]) for p in q.answer_positions)})
    curve = pd.DataFrame(rows)
    return Measurement(rows=[("streameval_accuracy", float(curve.correct.mean()), ""),
                             ("questions", len(curve), "")], curve=curve)
