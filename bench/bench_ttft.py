"""Time to first token of StreamingLLM against Dense at the offline profile's setting, as ratios in one run.

A prompt of 384 tokens into StreamingLLM 4+252 (longer than the cache, so the stream must evict while it reads the
prompt) against Dense on the same prompt, greedy first token included. Rounds interleave the policies (Dense,
StreamingLLM, StreamingLLM, Dense, ...) after a warm-up round; the result is the median of the per-round ratios with
its interquartile range.                                                                         (goal <= 1.05x)

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompt", type=int, default=384)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    model = load_model(args.model, device="cpu", dtype=torch.float32)
    prompt = random_prompt(model, 1, args.prompt)
    dense, streaming = Dense(), StreamingLLM(4, 252)
    timed, _ = time_interleaved(model, [dense, streaming], prompt, 2, rounds=args.rounds, warmup=1)
    ttft = {p: [run.ttft_s for run in timed[p].runs] for p in (dense, streaming)}
    ratio, q1, q3 = median_spread([s / d for s, d in zip(ttft[streaming], ttft[dense])])
    result = {"model": describe(model), "threads": torch.get_num_threads(), "prompt": args.prompt,
              "rounds": args.rounds, "dense_ttft_ms": median_spread(ttft[dense])[0] * 1e3,
              "streamingllm_4_252_ttft_ms": median_spread(ttft[streaming])[0] * 1e3,
              "ratio_median": ratio, "ratio_q1": q1, "ratio_q3": q3}
    print(json.dumps(result, indent=1))
    path = Path(args.out) / f"ttft-cpu-{args.model.replace('/', '_').replace(':', '_')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"ratio {ratio:.3f} (IQR {q1:.3f}-{q3:.3f}); wrote {path}")


if __name__ == "__main__":
    main()
