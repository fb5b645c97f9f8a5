"""Time to first token of StreamingLLM against Dense on the same prompt, as ratios in one run, at the settings the
issue names: the offline profile's 4+252 at batch 1 and batch 4, and a small cache (4+60) whose prompt is read in a
chunk that attends with an explicit mask.

Each setting: a prompt of ``--prompt`` tokens (longer than the cache, so the stream evicts while it reads the prompt)
into StreamingLLM and into Dense, greedy first token included. Rounds interleave the policies (Dense, StreamingLLM,
StreamingLLM, Dense, ...) after a warm-up round; the result is the median of the per-round ratios with its
interquartile range.                                                                            (goal <= 1.05x)

    .venv/bin/python bench/bench_ttft.py [--model smollm2-135m] [--prompt 384] [--rounds 15] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from streamlib.core.stats import median_spread
from streamlib.loading.models import describe, load_model
from streamlib.metrics.timing import random_prompt, time_interleaved
from streamlib.policies import Dense, StreamingLLM

SETTINGS = [(1, 4, 252), (4, 4, 252), (1, 4, 60), (4, 4, 60)]  # (batch, n_sink, window)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompt", type=int, default=384)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    model = load_model(args.model, device="cpu", dtype=torch.float32)
    rows = []
    for batch, n_sink, window in SETTINGS:
        prompt = random_prompt(model, batch, args.prompt)
        dense, streaming = Dense(), StreamingLLM(n_sink, window)
        timed, _ = time_interleaved(model, [dense, streaming], prompt, 2, rounds=args.rounds, warmup=1)
        ttft = {p: [run.ttft_s for run in timed[p].runs] for p in (dense, streaming)}
        ratio, q1, q3 = median_spread([s / d for s, d in zip(ttft[streaming], ttft[dense])])
        rows.append({"batch": batch, "policy": streaming.label(), "dense_ttft_ms": median_spread(ttft[dense])[0] * 1e3,
                     "streaming_ttft_ms": median_spread(ttft[streaming])[0] * 1e3,
                     "ratio_median": ratio, "ratio_q1": q1, "ratio_q3": q3})
        print(f"batch {batch} {streaming.label():<18} Dense {rows[-1]['dense_ttft_ms']:.1f} ms, "
              f"{rows[-1]['streaming_ttft_ms']:.1f} ms: ratio {ratio:.3f} (IQR {q1:.3f}-{q3:.3f})", flush=True)
    result = {"model": describe(model), "threads": torch.get_num_threads(), "prompt": args.prompt,
              "rounds": args.rounds, "settings": rows}
    path = Path(args.out) / f"ttft-cpu-{args.model.replace('/', '_').replace(':', '_')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
