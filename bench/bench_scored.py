"""TOVA and H2O against StreamingLLM at the same budget, as ratios measured in one run (CPU, fp32, random
Pythia-160m weights; on CUDA it uses the GPU). Goals from the issue:

  1. decode step of TOVA and of H2O vs StreamingLLM at equal budget      (goal <= 1.3)
  2. token-mode evaluation throughput (tokens/s) of each, StreamingLLM chunked and token by token beside them

    .venv/bin/python bench/bench_scored.py [--arch pythia-160m] [--budget 512] [--steps 48] [--rounds 3]
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
from bench_policies import bench_model, bench_parser, median_step

from streamlib.metrics.quality import token_nll
from streamlib.policies import H2O, TOVA, StreamingLLM


def eval_throughput(model, policy, n_tokens: int, mode: str) -> float:
    ids = torch.randint(0, model.config.vocab_size, (1, n_tokens + 1), generator=torch.Generator().manual_seed(2))
    start = time.perf_counter()
    token_nll(model, ids, policy, mode=mode)
    return n_tokens / (time.perf_counter() - start)


def main() -> None:
    ap = bench_parser()
    ap.add_argument("--budget", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=1024)
    args = ap.parse_args()
    model, tag, info = bench_model(args)
    b = args.budget
    policies = {"streamingllm": StreamingLLM(4, b - 4), "tova": TOVA(b), "h2o": H2O(b // 2, b - b // 2)}

    # 1. decode step on a full cache (prompt twice the budget); rounds alternate the policies against drift
    steps = {name: [] for name in policies}
    for _ in range(args.rounds):
        for name, policy in policies.items():
            steps[name].append(median_step(model, policy, 2 * b, args.steps))
    step = {name: statistics.median(t) for name, t in steps.items()}

    # 2. evaluation throughput: the scored caches are token by token once full; StreamingLLM both ways
    throughput = {f"{name}_token": eval_throughput(model, p, args.eval_tokens, "token") for name, p in policies.items()}
    throughput["streamingllm_chunked"] = eval_throughput(model, policies["streamingllm"], args.eval_tokens, "chunked")

    result = {"machine": info, "torch_threads": torch.get_num_threads(), "budget": b,
              "decode_step_s": step,
              "ratio_tova_vs_streamingllm": step["tova"] / step["streamingllm"],
              "ratio_h2o_vs_streamingllm": step["h2o"] / step["streamingllm"],
              "eval_tokens_per_s": throughput}
    print(json.dumps(result, indent=1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"scored-{info['device']}-{tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"TOVA / StreamingLLM decode step at budget {b}: {result['ratio_tova_vs_streamingllm']:.3f} (goal <= 1.3)")
    print(f"H2O  / StreamingLLM decode step at budget {b}: {result['ratio_h2o_vs_streamingllm']:.3f} (goal <= 1.3)")
    print("evaluation tokens/s: " + ", ".join(f"{k} {v:.1f}" for k, v in throughput.items()))


if __name__ == "__main__":
    main()
