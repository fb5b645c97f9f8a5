"""A map of every kv head of a model for HeadSplit to pick its heads from, written as an asset beside the model's
card: the retrieval score from Dense runs of the pass-key task (Wu et al., 2024; ``streamlib.metrics.head_scores``),
or DuoAttention's gates, trained with the model frozen (Xiao et al., 2024; ``streamlib.metrics.head_gates``).

    .venv/bin/python scripts/head_map.py --model smollm2-135m      # -> streamlib/assets/smollm2-135m/head_map.json
    .venv/bin/python scripts/head_map.py --model gemma3-270m --trials 12
    .venv/bin/python scripts/head_map.py --model smollm2-135m --method gates   # -> .../head_gates.json

The trials use seeds from 1000 on, apart from the seeds the notebooks evaluate with (0, 1, ...), so a map is never
scored on the prompts it is judged on.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from streamlib.loading.head_maps import MAP_FILES
from streamlib.loading.models import load_model, load_tokenizer
from streamlib.metrics.head_gates import train_gates
from streamlib.metrics.head_scores import retrieval_scores
from streamlib.metrics.retrieval import passkey_trial

SCORES = {"retrieval": "retrieval score (Wu et al. 2024, arXiv 2404.15574): the share of the answer's digits whose "
          "strongest attention lands on that digit in the context, teacher-forced under Dense; a kv head scores the "
          "best of its query heads",
          "gates": "DuoAttention gate (Xiao et al. 2024, arXiv 2410.10819): each kv head's output mixes full attention "
          "(1) with a streaming head's (0: sinks and a window, original positions), trained with the model frozen so "
          "the last hidden states over the pass key's answer stay Dense's, with an L1 pull toward 0"}

ASSETS = Path(__file__).resolve().parents[1] / "streamlib" / "assets"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--method", choices=sorted(MAP_FILES), default="retrieval")
    ap.add_argument("--tokens", type=int, default=1024, help="prompt length of each trial")
    ap.add_argument("--trials", type=int, default=12, help="pass-key prompts, the key at depths spread over the prompt")
    ap.add_argument("--steps", type=int, default=72, help="gates: optimiser steps (one prompt each, cycled)")
    ap.add_argument("--n-sink", type=int, default=4, help="gates: a streaming head's sinks")
    ap.add_argument("--window", type=int, default=124, help="gates: a streaming head's window")
    ap.add_argument("--l1", type=float, default=0.05, help="gates: weight of the mean gate in the loss")
    ap.add_argument("--lr", type=float, default=0.05, help="gates: Adam's learning rate")
    args = ap.parse_args()
    start = time.perf_counter()
    model = load_model(args.model, attn_implementation="eager" if args.method == "retrieval" else "sdpa")
    tokenizer = load_tokenizer(args.model)
    loaded = time.perf_counter()
    depths = [(i + 0.5) / args.trials for i in range(args.trials)]
    trials = [passkey_trial(tokenizer, args.tokens, depth, 1000 + i) for i, depth in enumerate(depths)]
    settings = {"tokens": args.tokens, "trials": args.trials, "seeds": "1000 on"}
    if args.method == "retrieval":
        scores = retrieval_scores(model, tokenizer, trials)
    else:
        def log(h: dict) -> None:
            print(f"step {h['step']:3d}: distill {h['distill']:.4f}, mean gate {h['mean_gate']:.3f} "
                  f"[{h['seconds']:.0f} s]", flush=True)

        scores, history = train_gates(model, tokenizer, trials, args.n_sink, args.window, args.steps, args.lr,
                                      args.l1, log=log)
        settings.update(n_sink=args.n_sink, window=args.window, steps=args.steps, lr=args.lr, l1=args.l1,
                        history=[{k: round(v, 5) for k, v in h.items()} for h in history])
    seconds = time.perf_counter() - loaded
    out = ASSETS / args.model / MAP_FILES[args.method]
    out.write_text(json.dumps({
        "model": args.model, "score": SCORES[args.method], **settings, "made_by": "scripts/head_map.py"
        + (f" --method {args.method}" if args.method != "retrieval" else ""), "seconds": round(seconds, 1),
        "load_seconds": round(loaded - start, 1), "threads": torch.get_num_threads(),
        "scores": [[round(float(v), 4) for v in row] for row in scores]}, indent=1) + "\n")
    print(f"{out}: {scores.shape[0]} layers x {scores.shape[1]} kv heads, {args.trials} trials in {seconds:.0f} s")


if __name__ == "__main__":
    main()
