"""The fast (chunked) NLL path against token-by-token: same numbers, how much faster. Ratios from one run.

Goal from the metrics issue: >= 10x faster at window 256 on 4K tokens, NLLs equal to 1e-4 in fp32.

    .venv/bin/python bench/bench_quality.py [--arch pythia-160m] [--tokens 4096]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from streamlib.loading.models import describe, load_model
from streamlib.metrics.quality import token_nll
from streamlib.policies import Dense, StreamingLLM, Window


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="pythia-160m", help="random weights of this shape (pythia-XXX, smollm2-135m)")
    ap.add_argument("--model", default=None, help="a real model instead, e.g. smollm2-135m (load_model's names)")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    model = load_model(args.model or f"random:{args.arch}")
    tag = (args.model or args.arch).replace("/", "_")
    info = describe(model)
    ids = torch.randint(0, model.config.vocab_size, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    result = {"machine": info, "tokens": args.tokens, "torch_threads": torch.get_num_threads()}
    for policy in (StreamingLLM(4, 252), StreamingLLM(4, 252, pos_shift=False), Window(256), Dense()):
        token_nll(model, ids[:, :300], policy)  # warm-up
        t0 = time.perf_counter()
        fast = token_nll(model, ids, policy)
        t_fast = time.perf_counter() - t0
        t0 = time.perf_counter()
        slow = token_nll(model, ids, policy, mode="token")
        t_slow = time.perf_counter() - t0
        row = {"chunked_s": t_fast, "token_s": t_slow, "speedup": t_slow / t_fast,
               "max_abs_nll_diff": float((fast - slow).abs().max())}
        result[policy.label()] = row
        print(policy.label(), json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"quality-{info['device']}-{tag}.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
