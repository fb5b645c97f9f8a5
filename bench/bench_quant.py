"""Quantized KV caches against the full-precision cache of the same policy, as ratios measured in one run (CPU, fp32,
random SmolLM2-135M weights by default; on CUDA it uses the GPU):

  1. decode step of StreamingLLM 4+252 and 4+1020 at 8 and 4 bits, each against the full-precision cache of its size:
     what rebuilding the keys and values from codes costs per step (goal: at most 1.15x); each quantized cache twice:
     its rebuild eager, and compiled from the first call (``quant_fused.FUSED_AFTER = 0``; by default a process
     compiles a shape after 4,096 eager rebuilds of it). The caches of one size take their steps in turn, one step
     each (the order turning), so that a load on the machine falls on all of them alike: whole rounds of one cache
     after another gave ratios from 0.98 to 1.32 for one cache on this shared machine, steps in turn 1.07-1.10.
     Steps per round: a multiple of the 32-token block, so that each cache quantizes its blocks as often.
  2. evaluation throughput (tokens/s, chunked, in the same interleaved rounds): a quantized StreamingLLM cache reads a
     stream in chunks of full precision's size, which cross its blocks (the later blocks' queries attend to the earlier
     blocks' quantized copies, kept after the chunk's keys) (goal: at least 1 / 1.5 of full precision's)
  3. KV bytes after a full cache, against full precision's of the same size: allocated (what ``generate``'s KV line
     shows; goal 4+252 int4 at most 0.30x) and held (the tokens the next query sees)

    .venv/bin/python bench/bench_quant.py [--arch smollm2-135m] [--steps 48] [--rounds 3] [--eval-tokens 2048]
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import torch
from bench_policies import bench_model, bench_parser, prefilled, timed_step

from streamlib.caches import quant_fused
from streamlib.metrics.quality import token_nll
from streamlib.policies import StreamingLLM


def eval_throughput(model, policy, n_tokens: int) -> float:
    ids = torch.randint(0, model.config.vocab_size, (1, n_tokens + 1), generator=torch.Generator().manual_seed(2))
    start = time.perf_counter()
    token_nll(model, ids, policy)
    return n_tokens / (time.perf_counter() - start)


@torch.inference_mode()
def steps_in_turn(model, policies: dict, fused_after: dict, steps: int, warmup: int = 4) -> dict[str, list[float]]:
    """Times of ``steps`` greedy decode steps of each policy's prefilled cache, one step of each cache in turn (the
    order turning by one every step); each step under its own ``quant_fused.FUSED_AFTER``."""
    names = list(policies)
    state = {}
    for name in names:
        quant_fused.FUSED_AFTER = fused_after[name]
        state[name] = list(prefilled(model, policies[name], 2 * policies[name].budget))
    times = {name: [] for name in names}
    for i in range(warmup + steps):
        for name in names[i % len(names):] + names[: i % len(names)]:
            quant_fused.FUSED_AFTER = fused_after[name]
            state[name][1], seconds = timed_step(model, *state[name])
            if i >= warmup:
                times[name].append(seconds)
    return times


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

    sizes = {size: [name for name in policies if base[name] == size] for size in set(base.values())}
    n_steps = 32 * math.ceil(args.steps / 32)
    steps = {name: [] for name in policies}
    throughputs = {name: [] for name in policies}
    for _ in range(args.rounds):
        for names in sizes.values():
            timed = steps_in_turn(model, {n: policies[n] for n in names}, fused_after, n_steps)
            for name in names:
                steps[name].append(statistics.median(timed[name]))
        for name, policy in policies.items():
            quant_fused.FUSED_AFTER = fused_after[name]
            throughputs[name].append(eval_throughput(model, policy, args.eval_tokens))
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
