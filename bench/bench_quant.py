"""Quantized KV caches against the full-precision cache of the same policy, as ratios measured in one run (CPU, fp32,
random SmolLM2-135M weights by default; on CUDA it uses the GPU):

  1. decode step of StreamingLLM 4+252 and 4+1020 at 8 and 4 bits, each against the full-precision cache of its size
     (rounds alternate the policies against drift): what rebuilding the keys and values from codes costs per step
     (goal: at most 1.15x); each quantized cache twice: its rebuild eager, and compiled from the first call
     (``quant_fused.FUSED_AFTER = 0``; by default a process compiles a shape after 4,096 eager rebuilds of it)
  2. evaluation throughput (tokens/s, chunked, in the same interleaved rounds): a quantized StreamingLLM cache reads a
     stream in chunks of full precision's size, which cross its blocks (the later blocks' queries attend to the earlier
     blocks' quantized copies, kept after the chunk's keys) (goal: at least 1 / 1.5 of full precision's)
  3. KV bytes after a full cache, against full precision's of the same size: allocated (what ``generate``'s KV line
     shows; goal 4+252 int4 at most 0.30x) and held (the tokens the next query sees)

    .venv/bin/python bench/bench_quant.py [--arch smollm2-135m] [--steps 48] [--rounds 3] [--eval-tokens 2048]
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
from bench_policies import bench_model, bench_parser, median_step

from streamlib.caches import quant_fused
from streamlib.metrics.quality import token_nll
from streamlib.policies import StreamingLLM


def eval_throughput(model, policy, n_tokens: int) -> float:
    ids = torch.randint(0, model.config.vocab_size, (1, n_tokens + 1), generator=torch.Generator().manual_seed(2))
    start = time.perf_counter()
    token_nll(model, ids, policy)
    return n_tokens / (time.perf_counter() - start)


def kv_bytes(model, policy, n_tokens: int) -> tuple[int, int]:
    """(allocated, held) bytes after ``n_tokens``."""
    ids = torch.randint(0, model.config.vocab_size, (1, n_tokens), generator=torch.Generator().manual_seed(3))
    cache = policy.make_cache(model)
    with torch.no_grad():
        for _ in cache.feed(model, ids, all_logits=False):
            pass
    return cache.kv_bytes()


def main() -> None:
    ap = bench_parser("smollm2-135m")
    ap.add_argument("--eval-tokens", type=int, default=2048)
    args = ap.parse_args()
    model, tag, info = bench_model(args)
    policies, fused_after = {}, {}
    for window in (252, 1020):
        for name, bits in (("fp", 16), ("int8", 8), ("int4", 4)):
            for rebuild, after in (("", None), (" compiled", 0)) if bits < 16 else (("", None),):
                policies[f"{name} 4+{window}{rebuild}"] = StreamingLLM(4, window, bits=bits)
                fused_after[f"{name} 4+{window}{rebuild}"] = after
    base = {name: f"fp {name.split()[1]}" for name in policies}  # the full-precision cache of the same size

    def measure(name, fn, *a):
        quant_fused.FUSED_AFTER = fused_after[name]
        return fn(model, policies[name], *a)

    steps = {name: [] for name in policies}
    throughputs = {name: [] for name in policies}
    for _ in range(args.rounds):
        for name, policy in policies.items():
            steps[name].append(measure(name, median_step, 2 * policy.budget, args.steps))
            throughputs[name].append(measure(name, eval_throughput, args.eval_tokens))
    step = {name: statistics.median(t) for name, t in steps.items()}
    throughput = {name: statistics.median(t) for name, t in throughputs.items()}
    kv = {name: kv_bytes(model, p, 2 * p.budget) for name, p in policies.items()}
    allocated = {name: a for name, (a, _) in kv.items()}
    held = {name: h for name, (_, h) in kv.items()}

    def ratios(values):
        return {k: v / values[base[k]] for k, v in values.items()}

    # each round's ratio against the same round's full precision: the spread of the interleaved rounds
    round_ratios = {k: [t / steps[base[k]][i] for i, t in enumerate(v)] for k, v in steps.items()}
    eval_rounds = {k: [t / throughputs[base[k]][i] for i, t in enumerate(v)] for k, v in throughputs.items()}
    result = {"machine": info, "torch_threads": torch.get_num_threads(), "decode_step_s": step,
              "decode_step_vs_fp": ratios(step), "decode_step_vs_fp_rounds": round_ratios,
              "eval_tokens_per_s": throughput, "eval_vs_fp": ratios(throughput), "eval_vs_fp_rounds": eval_rounds,
              "kv_allocated_bytes": allocated, "kv_allocated_vs_fp": ratios(allocated),
              "kv_held_bytes": held, "kv_held_vs_fp": ratios(held)}
    print(json.dumps(result, indent=1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"quant-{info['device']}-{tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    for name in policies:
        spread, eval_spread = round_ratios[name], eval_rounds[name]
        print(f"{name:21s} decode step x{result['decode_step_vs_fp'][name]:.2f} (rounds {min(spread):.2f}-"
              f"{max(spread):.2f}), evaluation x{result['eval_vs_fp'][name]:.2f} (rounds {min(eval_spread):.2f}-"
              f"{max(eval_spread):.2f}), KV allocated x{result['kv_allocated_vs_fp'][name]:.3f}, held x"
              f"{result['kv_held_vs_fp'][name]:.3f} (against {base[name]})")


if __name__ == "__main__":
    main()
