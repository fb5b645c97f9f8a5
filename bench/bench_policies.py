"""Decode-step benchmarks of the cache policies, as ratios measured in one run (CPU, fp32, random Pythia-160m
weights; on CUDA it uses the GPU). Goals from the policies issue:

  1. StreamingLLM vs Dense step time at the same number of resident tokens   (goal <= 1.05)
  2. StreamingLLM step time at stream length 16K vs 1K                       (goal <= 1.05)
  3. StreamingLLM vs Recompute per token at window 1024                      (the paper: 22.2x at 4096 on a GPU)

    .venv/bin/python bench/bench_policies.py [--arch pythia-160m] [--steps 48] [--rounds 3] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from streamlib.caches.generation import decode_step, prefill
from streamlib.loading.models import describe, load_model
from streamlib.metrics.timing import time_generation
from streamlib.policies import Dense, Recompute, StreamingLLM


def timed_step(model, cache, token) -> tuple[torch.Tensor, float]:
    """One greedy decode step: (the next token, its time in seconds, synchronised on CUDA)."""
    cuda = token.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    token = decode_step(model, cache, token).argmax(-1, keepdim=True)
    if cuda:
        torch.cuda.synchronize()
    return token, time.perf_counter() - t0


@torch.inference_mode()
def decode_steps(model, cache, first_token, steps: int) -> list[float]:
    """Times of ``steps`` greedy decode steps on a prefilled cache (synchronised on CUDA)."""
    token, times = first_token, []
    for _ in range(steps):
        token, seconds = timed_step(model, cache, token)
        times.append(seconds)
    return times


def prefilled(model, policy, n_tokens: int, seed: int = 0):
    ids = torch.randint(0, model.config.vocab_size, (1, n_tokens), generator=torch.Generator().manual_seed(seed))
    cache = policy.make_cache(model)
    last = prefill(model, ids.to(model.device), cache)
    return cache, last.argmax(-1, keepdim=True)


def median_step(model, policy, n_tokens: int, steps: int) -> float:
    cache, tok = prefilled(model, policy, n_tokens)
    decode_steps(model, cache, tok, 4)  # warm-up on this cache
    return statistics.median(decode_steps(model, cache, tok, steps))


def bench_parser(arch: str = "pythia-160m") -> argparse.ArgumentParser:
    """The options every benchmark takes: the model (random weights of a shape, or a real one), decode steps per
    measurement, rounds, and where the JSON goes."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default=arch, help="random weights of this shape (pythia-XXX, smollm2-135m)")
    ap.add_argument("--model", default=None, help="a real model instead, e.g. smollm2-135m (load_model's names)")
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="bench/results")
    return ap


def bench_model(args):
    """(model, tag for the result file, the machine and model as described), the description printed."""
    torch.manual_seed(0)
    model = load_model(args.model or f"random:{args.arch}")
    info = describe(model)
    print(json.dumps(info))
    return model, (args.model or args.arch).replace("/", "_"), info


def main() -> None:
    ap = bench_parser()
    ap.add_argument("--long", type=int, default=16384)
    args = ap.parse_args()
    model, tag, info = bench_model(args)
    streaming = StreamingLLM(4, 1020)

    # 1. same resident tokens: Dense holds 1024 after a 1024-token prompt; StreamingLLM holds 4 + 1020 once full.
    # Rounds alternate the two so that machine noise hits both alike.
    dense_t, stream_t = [], []
    for _ in range(args.rounds):
        dense_t.append(median_step(model, Dense(), 1024, args.steps))
        stream_t.append(median_step(model, streaming, 2048, args.steps))
    r1 = statistics.median(stream_t) / statistics.median(dense_t)

    # 2. StreamingLLM at stream length 16K vs 1K+ (both full caches; positions re-based on the long one)
    short_t, long_t = [], []
    long_cache, long_tok = prefilled(model, streaming, args.long)
    for _ in range(args.rounds):
        short_t.append(median_step(model, streaming, 1100, args.steps))
        decode_steps(model, long_cache, long_tok, 4)
        long_t.append(statistics.median(decode_steps(model, long_cache, long_tok, args.steps)))
    r2 = statistics.median(long_t) / statistics.median(short_t)

    # 3. Recompute at window 1024: one fresh 1024-token forward per token
    prompt = torch.randint(0, model.config.vocab_size, (1, 1100), generator=torch.Generator().manual_seed(1)).to(model.device)
    rec = time_generation(model, Recompute(1024), prompt, new_tokens=6, warmup=1, repeats=1).runs[0]
    rec_step = statistics.median(rec.step_s)
    r3 = rec_step / statistics.median(stream_t)

    result = {
        "machine": info, "torch_threads": torch.get_num_threads(),
        "dense_step_s_at_1024": statistics.median(dense_t), "streamingllm_step_s_at_1024": statistics.median(stream_t),
        "ratio_streaming_vs_dense": r1,
        "streamingllm_step_s_stream_1k": statistics.median(short_t),
        f"streamingllm_step_s_stream_{args.long // 1024}k": statistics.median(long_t),
        "ratio_long_vs_short": r2,
        "recompute_step_s_window_1024": rec_step, "ratio_recompute_vs_streaming": r3,
    }
    print(json.dumps(result, indent=1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"policies-{info['device']}-{tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"StreamingLLM / Dense step at 1024 resident: {r1:.3f} (goal <= 1.05)")
    print(f"StreamingLLM step at {args.long} / ~1K stream: {r2:.3f} (goal <= 1.05)")
    print(f"Recompute / StreamingLLM per token at window 1024: {r3:.1f}x")


if __name__ == "__main__":
    main()
