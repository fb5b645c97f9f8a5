"""Compiled vs eager decoding, and the cost of a long prompt, as ratios measured in one run (CPU, fp32).

  1. Decode step, eager vs compiled (``streamlib.caches.compiled``), StreamingLLM and Window, on the embedded micro model
     and on random Pythia-160m weights; rounds alternate the two so machine noise hits both alike.  (goal >= 4x micro)
  2. stream_generate(model, ids, StreamingLLM(4, 124), 600, compile=True) end to end on the micro model, compilation
     excluded, against the eager call, with the tokens compared.                                   (goal >= 3x)
  3. Compile time of a fresh decoder (inductor's on-disk caches off, so it is the cold cost a first user pays).
  4. The weight-streaming floor of a micro decode step: its 17 linear layers alone, run eagerly one after another
     (fp32 weights that do not fit the cores' L2 caches; no compiler makes a step cheaper than reading them).
  5. Prefill of a prompt longer than the cache: StreamingLLM 4+252 vs Dense on a 2048-token prompt, random
     Pythia-160m, with the queries turned to the sinks (default) and with a copy of the sinks per query.
                                                                                                   (goal <= 1.1x)

    .venv/bin/python bench/bench_decode.py [--steps 200] [--rounds 5] [--out bench/results]
"""

from __future__ import annotations

import os

os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")  # compile times below are cold ones

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from streamlib.caches.compiled import compiled_decoder  # noqa: E402
from streamlib.caches.generation import decode_step, prefill, stream_generate  # noqa: E402
from streamlib.caches.sink_window import SinkWindowCache  # noqa: E402
from streamlib.core.arch import rotary_of  # noqa: E402
from streamlib.loading.models import describe, load_model  # noqa: E402
from streamlib.policies import Dense, StreamingLLM, Window  # noqa: E402


def random_ids(model, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, model.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def step_times(model, cache, token, steps: int, decoder=None) -> list[float]:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        token = decode_step(model, cache, token, decoder).argmax(-1, keepdim=True)
        times.append(time.perf_counter() - t0)
    return times


def eager_vs_compiled(model, policy, prompt_len: int, steps: int, rounds: int) -> dict:
    """Median decode step (ms) of both modes on full caches, and the cold compile time (s)."""
    ids = random_ids(model, prompt_len)
    caches = {}
    with torch.inference_mode():
        for mode in ("eager", "compiled"):
            cache = policy.make_cache(model)
            caches[mode] = (cache, prefill(model, ids, cache).argmax(-1, keepdim=True))
    decoder = compiled_decoder(model, fresh=True)
    cache, token = caches["compiled"]
    t0 = time.perf_counter()
    step_times(model, cache, token, 1, decoder)
    compile_s = time.perf_counter() - t0
    medians = {"eager": [], "compiled": []}
    for _ in range(rounds):
        for mode, (cache, token) in caches.items():
            medians[mode].append(statistics.median(
                step_times(model, cache, token, steps, decoder if mode == "compiled" else None)))
    eager, compiled = (statistics.median(medians[m]) for m in ("eager", "compiled"))
    return {"policy": policy.label(), "eager_step_ms": eager * 1e3, "compiled_step_ms": compiled * 1e3,
            "speedup": eager / compiled, "compile_s": compile_s}


def stream_generate_ratio(model, rounds: int) -> dict:
    policy, ids = StreamingLLM(4, 124), random_ids(model, 64, seed=1)
    stream_generate(model, ids, policy, 8, compile=True)  # compiled already by eager_vs_compiled, warms up
    times = {"eager": [], "compiled": []}
    outputs = {}
    for _ in range(rounds):
        for mode in ("eager", "compiled"):
            t0 = time.perf_counter()
            outputs[mode] = stream_generate(model, ids, policy, 600, compile=mode == "compiled")
            times[mode].append(time.perf_counter() - t0)
    eager, compiled = (statistics.median(times[m]) for m in ("eager", "compiled"))
    return {"call": "stream_generate(micro, 64-token prompt, StreamingLLM(4, 124), 600)",
            "eager_s": eager, "compiled_s": compiled, "speedup": eager / compiled,
            "same_tokens": bool(torch.equal(outputs["eager"], outputs["compiled"]))}


@torch.inference_mode()
def linear_floor_ms(model, repeats: int = 500) -> float:
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(1, 1, m.in_features) for m in linears]
    for _ in range(20):
        for m, x in zip(linears, inputs):
            m(x)
    t0 = time.perf_counter()
    for _ in range(repeats):
        for m, x in zip(linears, inputs):
            m(x)
    return (time.perf_counter() - t0) / repeats * 1e3


def prefill_ratio(model, prompt_len: int, rounds: int) -> dict:
    """Dense vs StreamingLLM 4+252 with the queries turned to the sinks (the default), and with one turned copy of
    the sinks per query (a cache made without the hand-over, rotate_queries=False: chunks about the window)."""
    ids = random_ids(model, prompt_len, seed=2)
    policy = StreamingLLM(4, 252)

    def run(name):
        if name == "sink_copies":
            cache = SinkWindowCache(model.config.num_hidden_layers, 4, 252, True, rotary_of(model))
            prefill(model, ids, cache)
            return
        prefill(model, ids, (Dense() if name == "dense" else policy).make_cache(model))

    times = {k: [] for k in ("dense", "turned_queries", "sink_copies")}
    for r in range(rounds + 1):
        for name in times:
            t0 = time.perf_counter()
            run(name)
            if r:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
    dense, turned, copies = (statistics.median(times[k]) for k in times)
    return {"prompt": prompt_len, "dense_s": dense, "streamingllm_4_252_s": turned, "ratio": turned / dense,
            "sink_copies_s": copies, "sink_copies_ratio": copies / dense}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--model", default=None,
                    help="only this model (e.g. smollm2-135m): its decode step eager vs compiled, its linear floor and "
                         "the prefill ratio; writes decode-cpu-<model>.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    results = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    if args.model:
        model = load_model(args.model, device="cpu")
        results[args.model] = {"model": describe(model), "linear_floor_ms": linear_floor_ms(model),
                               "decode": [eager_vs_compiled(model, p, 300, max(args.steps // 8, 16), args.rounds)
                                          for p in (StreamingLLM(4, 252), Window(256))],
                               "prefill": prefill_ratio(model, 2048, 3)}
        print(json.dumps(results[args.model], indent=1), flush=True)
        path = Path(args.out) / f"decode-cpu-{args.model.replace('/', '_')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {path}")
        return

    micro = load_model("micro", device="cpu")
    results["micro"] = {"model": describe(micro),
                        "linear_floor_ms": linear_floor_ms(micro),
                        "decode": [eager_vs_compiled(micro, p, 200, args.steps, args.rounds)
                                   for p in (StreamingLLM(4, 124), Window(128))]}
    results["micro"]["stream_generate"] = stream_generate_ratio(micro, args.rounds)
    print(json.dumps(results["micro"], indent=1), flush=True)
    del micro

    big = load_model("random:pythia-160m", device="cpu")
    results["pythia-160m"] = {"model": describe(big),
                              "decode": [eager_vs_compiled(big, p, 300, max(args.steps // 8, 16), args.rounds)
                                         for p in (StreamingLLM(4, 252), Window(256))],
                              "prefill": prefill_ratio(big, 2048, 3)}
    print(json.dumps(results["pythia-160m"], indent=1), flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "decode-cpu.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
