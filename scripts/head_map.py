"""The retrieval score of every kv head of a model, from Dense runs of the pass-key task (Wu et al., 2024; see
``streamlib.metrics.head_scores``), written as an asset beside the model's card for HeadSplit to pick its heads from.

    .venv/bin/python scripts/head_map.py --model smollm2-135m      # -> streamlib/assets/smollm2-135m/head_map.json
    .venv/bin/python scripts/head_map.py --model gemma3-270m --trials 12

The trials use seeds from 1000 on, apart from the seeds the notebooks evaluate with (0, 1, ...), so a map is never
scored on the prompts it is judged on.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from streamlib.loading.models import load_model, load_tokenizer
from streamlib.metrics.head_scores import retrieval_scores
from streamlib.metrics.retrieval import passkey_trial

ASSETS = Path(__file__).resolve().parents[1] / "streamlib" / "assets"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=1024, help="prompt length of each trial")
    ap.add_argument("--trials", type=int, default=12, help="pass-key prompts, the key at depths spread over the prompt")
    args = ap.parse_args()
    start = time.perf_counter()
    model = load_model(args.model, attn_implementation="eager")
    tokenizer = load_tokenizer(args.model)
    loaded = time.perf_counter()
    depths = [(i + 0.5) / args.trials for i in range(args.trials)]
    trials = [passkey_trial(tokenizer, args.tokens, depth, 1000 + i) for i, depth in enumerate(depths)]
    scores = retrieval_scores(model, tokenizer, trials)
    seconds = time.perf_counter() - loaded
    out = ASSETS / args.model / "head_map.json"
    out.write_text(json.dumps({
        "model": args.model, "score": "retrieval score (Wu et al. 2024, arXiv 2404.15574): the share of the answer's "
        "digits whose strongest attention lands on that digit in the context, teacher-forced under Dense; a kv head "
        "scores the best of its query heads", "tokens": args.tokens, "trials": args.trials, "seeds": "1000 on",
        "made_by": "scripts/head_map.py", "seconds": round(seconds, 1), "load_seconds": round(loaded - start, 1),
        "scores": [[round(float(v), 4) for v in row] for row in scores]}, indent=1) + "\n")
    print(f"{out}: {scores.shape[0]} layers x {scores.shape[1]} kv heads, {args.trials} trials in {seconds:.0f} s")


if __name__ == "__main__":
    main()
