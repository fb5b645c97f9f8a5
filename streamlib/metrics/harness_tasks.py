"""lm-evaluation-harness tasks built from the embedded corpus and the pass-key generator, so the harness runs with
no Hub: a perplexity task (``loglikelihood_rolling``), a multiple-choice task (``multiple_choice``) and a needle task
(``generate_until``). Each is a task config of the harness (the dict a task YAML holds) over a JSON-lines file
written here; :func:`write_task_dir` also writes the YAMLs, for lm-eval's ``--include_path``.

- ``streamlib_kjv_prose``: held-out books of the King James Bible as plain prose, cut into documents of about
  ``doc_chars`` characters at line ends; word and byte perplexity, bits per byte.
- ``streamlib_next_verse``: a verse, then which of four verses comes next (the true one and three drawn from the
  rest of the held-out books); accuracy, and accuracy normalised by the choice's length in bytes.
- ``streamlib_passkey``: the pass-key prompts of :mod:`streamlib.metrics.retrieval` (Mohtashami & Jaggi, 2023) as
  raw text, the answer primed with "The pass key is"; exact match of the first number answered. Each document
  carries ``tokens_back`` (tokens from the key to the question) and ``depth`` for tables by distance.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..loading.data import DOC_SEPARATOR, kjv_prose
from .retrieval import passkey_trial

PERPLEXITY, CHOICE, PASSKEY = "streamlib_kjv_prose", "streamlib_next_verse", "streamlib_passkey"
# The first number of the answer, digits run together as retrieval.parse_answer takes them
NUMBER = r"(\d(?:[\d ,]*\d)?)"


def _json_task(name: str, path: Path, **fields) -> dict:
    return {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(path)}},
            "test_split": "test", "metadata": {"version": 1.0}, **fields}


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def prose_documents(n_docs: int, doc_chars: int) -> list[str]:
    """The first ``n_docs`` documents of about ``doc_chars`` characters (whole lines) of the held-out prose."""
    docs, current = [], []
    for book in kjv_prose("heldout").split(DOC_SEPARATOR):
        for line in book.splitlines():
            current.append(line)
            if sum(len(x) + 1 for x in current) >= doc_chars:
                docs.append("\n".join(current))
                current = []
                if len(docs) == n_docs:
                    return docs
    return docs


def next_verse_questions(n_questions: int, seed: int = 0) -> list[dict]:
    """``n_questions`` verses of the held-out books, each with the verse after it among four choices."""
    verses = [line for book in kjv_prose("heldout").split(DOC_SEPARATOR) for line in book.splitlines()[2:] if line]
    rng = random.Random(seed)
    rows = []
    for i in rng.sample(range(len(verses) - 1), n_questions):
        wrong = rng.sample([j for j in range(len(verses)) if j not in (i, i + 1)], 3)
        choices = [verses[j] for j in [i + 1, *wrong]]
        rng.shuffle(choices)
        rows.append({"context": verses[i], "choices": [" " + c for c in choices],
                     "label": choices.index(verses[i + 1])})
    return rows


def passkey_documents(tokenizer, context_tokens: list[int], depths: list[float], seeds: int) -> list[dict]:
    """Pass-key prompts as text, without BOS (the harness's tokenizer settings decide it), with their key."""
    rows = []
    for n in context_tokens:
        for depth in depths:
            for seed in range(seeds):
                trial = passkey_trial(tokenizer, n, depth, seed, chat=False, bos=False)
                rows.append({"prompt": tokenizer.decode(trial.prompt_ids[0]), "key": trial.key, "depth": depth,
                             "context_tokens": n, "tokens_back": trial.distance, "seed": seed})
    return rows


def task_configs(root: str | Path, tokenizer=None, *, n_docs: int = 8, doc_chars: int = 1500,
                 n_questions: int = 20, passkey_tokens: tuple[int, ...] = (1024,),
                 passkey_depths: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7), passkey_seeds: int = 5) -> list[dict]:
    """The three tasks' configs, their data written under ``root``; the pass-key task only with a ``tokenizer``
    (its prompts are sized in tokens)."""
    root = Path(root).resolve()
    configs = [
        _json_task(PERPLEXITY, _write(root / "kjv_prose.jsonl", [{"text": d} for d in prose_documents(n_docs, doc_chars)]),
                   output_type="loglikelihood_rolling", doc_to_text="", doc_to_target="{{text}}",
                   metric_list=[{"metric": m} for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")]),
        _json_task(CHOICE, _write(root / "next_verse.jsonl", next_verse_questions(n_questions)),
                   output_type="multiple_choice", doc_to_text="{{context}}", doc_to_choice="{{choices}}",
                   doc_to_target="{{label}}", target_delimiter="",
                   metric_list=[{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                                {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]),
    ]
    if tokenizer is not None:
        rows = passkey_documents(tokenizer, list(passkey_tokens), list(passkey_depths), passkey_seeds)
        configs.append(_json_task(
            PASSKEY, _write(root / "passkey.jsonl", rows), output_type="generate_until", doc_to_text="{{prompt}}",
            doc_to_target="{{key}}", generation_kwargs={"until": ["\n"], "max_gen_toks": 10, "do_sample": False},
            filter_list=[{"name": "number", "filter": [{"function": "regex", "regex_pattern": NUMBER},
                                                       {"function": "take_first"}]}],
            metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                          "regexes_to_ignore": [" ", ","]}]))
    return configs


def write_task_dir(root: str | Path, tokenizer=None, **kwargs) -> Path:
    """:func:`task_configs` and a YAML per task under ``root``: pass ``root`` to lm-eval's ``--include_path``."""
    import yaml

    root = Path(root).resolve()
    for config in task_configs(root, tokenizer, **kwargs):
        (root / f"{config['task']}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root
