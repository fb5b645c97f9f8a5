"""One prepared GPU check: decode speed, memory and numerical agreement of the streaming caches on CUDA.

Run it through ``bench/gpu_check.sh`` (which can install a transformers wheel first); see that file for usage.
On random-weight Pythia-2.8b in fp16, batch 1, a 2048-token prompt and 256 new tokens, it measures

* TTFT, TPOT and peak memory for Dense, StreamingLLM 4+252 and StreamingLLM 4+1020, eager and compiled (CUDA graphs;
  compiled Dense runs on a cache preallocated to prompt + new tokens);
* the device-to-device copy bandwidth in the same run, and TPOT over its floor: the weight bytes read once per token
  divided by that bandwidth;
* TTFT, TPOT and peak memory, eager, for the adaptive budgets (issue 34): HeadSplit with a quarter of the kv heads
  whole, PyramidKV's budgets per layer and a window that grows with the stream, at StreamingLLM 4+252's sinks and
  window;
* exactness on CUDA: every registered policy's examples against its naive float64 reference (on the CPU) on the
  tiny GPT-NeoX, Llama (GQA) and Gemma 3 (hybrid) models in fp32, token by token and in chunks of 7 and 64, as
  tests/test_registry.py does on the CPU;
* agreement: chunked vs token-by-token evaluation in fp16 (StreamingLLM 4+252 on the trained micro model and on the
  2.8b shapes; StreamingLLM 4+124 with 4-bit keys and values on the micro model; 4+1020 at 4 bits is timed eager), fp16 on the GPU vs fp32 on the CPU (micro), compiled vs eager greedy decoding in fp16 (micro).

It writes ``gpu_check.json`` (after every stage, ``complete`` false until the end) and ``gpu_check.md`` to
``--out``. ``--smoke`` runs the same code on the CPU with tiny
shapes and a few tokens, so that CI keeps the script working.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch
import transformers

from streamlib.caches.generation import TokenStream, stream_generate
from streamlib.loading.models import describe, load_model
from streamlib.metrics.quality import token_nll
from streamlib.metrics.timing import measure_generation
from streamlib.naive import reference_nll, tiny_model
from streamlib.policies import Dense, GrowingWindow, HeadSplit, LayerBudgets, StreamingLLM, registered

FULL = {"model": "random:pythia-2.8b", "prompt": 2048, "new_tokens": 256, "repeats": 2, "copy_mib": 2048,
        "policies": [Dense(), StreamingLLM(4, 252), StreamingLLM(4, 1020), StreamingLLM(4, 1020, bits=4),
                     HeadSplit(4, 252, "every4"), LayerBudgets.pyramid(4, 252, 32), GrowingWindow(4, 0.25, 252, 1020)],
        "exact_tokens": 600, "micro_steps": 400}
SMOKE = {"model": "random:pythia-14m", "prompt": 64, "new_tokens": 8, "repeats": 1, "copy_mib": 16,
         "policies": [Dense(), StreamingLLM(4, 12), StreamingLLM(4, 28), StreamingLLM(4, 28, bits=4),
                      HeadSplit(4, 12, "every4"), LayerBudgets.pyramid(4, 12, 6), GrowingWindow(4, 0.25, 12, 28)],
         "exact_tokens": 160, "micro_steps": 40}
EXACT_BUDGET, EXACT_TOKENS, EXACT_FAMILIES = 12, 40, ("gpt_neox", "llama", "gemma3_text")


def compiles(policy) -> bool:
    """Compiled decoding takes Dense and full-precision StreamingLLM caches; every other cache decodes eager."""
    return type(policy) in (Dense, StreamingLLM) and getattr(policy, "bits", 16) == 16


def copy_bandwidth(device: torch.device, mib: int, repeats: int = 10) -> float:
    """Bytes per second a device-to-device copy moves, counting the bytes read and the bytes written."""
    src = torch.empty(mib * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * src.numel() * repeats / (time.perf_counter() - t0)


def speed_rows(model, cfg: dict, bandwidth: float, log, rows: list, save) -> None:
    """Appends one row per (policy, eager or compiled) to ``rows`` and saves after each."""
    ids = torch.randint(0, model.config.vocab_size, (1, cfg["prompt"]), generator=torch.Generator().manual_seed(0))
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    floor_s = weight_bytes / bandwidth
    for policy in cfg["policies"]:
        for compiled in (False, True) if compiles(policy) else (False,):
            t0 = time.perf_counter()
            m = measure_generation(model, policy, ids, cfg["new_tokens"], repeats=cfg["repeats"], warmup=1,
                                   compile=compiled)
            values = {metric: value for metric, value, _ in m.rows}
            peak = values.get("gen_peak_allocated_mem", values.get("gen_peak_rss_mem"))
            row = {"policy": policy.label(), "compiled": compiled, "ttft_ms": values["ttft"] * 1e3,
                   "tpot_ms": values["tpot_mean"] * 1e3, "tpot_p90_ms": values["tpot_p90"] * 1e3,
                   "peak_mem_gib": peak / 2**30, "kv_mib": values["kv_bytes_after_prompt"] / 2**20,
                   "tpot_over_floor": values["tpot_mean"] / floor_s, "wall_s": time.perf_counter() - t0}
            log(f"  {row['policy']:<22} {'compiled' if compiled else 'eager':<8} TTFT {row['ttft_ms']:.1f} ms, "
                f"TPOT {row['tpot_ms']:.2f} ms ({row['tpot_over_floor']:.1f}x floor), peak {row['peak_mem_gib']:.2f} GiB"
                f" [{row['wall_s']:.0f} s]")
            rows.append(row)
            save()


def chunked_vs_token(model, ids: torch.Tensor, policy) -> dict:
    n_tokens = ids.shape[1]
    chunked = token_nll(model, ids, policy)
    token = token_nll(model, ids, policy, mode="token")
    return {"policy": policy.label(), "tokens": n_tokens, "max_abs_nll_diff": (chunked - token).abs().max().item(),
            "mean_nll_chunked": chunked.mean().item(), "mean_nll_token": token.mean().item()}


def exact_on_device(device: torch.device) -> list[dict]:
    """Every registered policy's examples on ``device`` (fp32) against the naive float64 reference (computed on the
    CPU: the reference is the definition, wherever it runs): one row per (family, policy) with the largest
    |NLL - reference| over token-by-token and chunked feeding, and the smallest eviction gap (a near tie below 1e-5
    could go either way in fp32, as tests/test_registry.py refuses)."""
    rows = []
    ids = torch.randperm(97, generator=torch.Generator().manual_seed(7))[None, :EXACT_TOKENS]
    examples = [p for cls in registered() for p in cls.examples(EXACT_BUDGET)]
    for family in EXACT_FAMILIES:
        model64 = tiny_model(family, "sdpa" if family == "llama" else "eager")
        model = copy.deepcopy(model64).to(device)
        model64.double()
        for policy in examples:
            row = {"family": family, "policy": str(policy)}
            try:  # a device-only failure is a finding: recorded, and the check goes on to the next policy
                expected, gap = reference_nll(policy, model64, ids)
                row["max_abs_nll_diff"] = max(
                    (token_nll(model, ids.to(device), policy, mode=mode, chunk_size=chunk).cpu()
                     - expected.float()).abs().max().item()
                    for mode, chunk in (("token", None), ("chunked", 7), ("chunked", 64)))
                row["closest_tie"] = gap
            except Exception as error:  # noqa: BLE001
                row.update(max_abs_nll_diff=float("inf"), error=f"{type(error).__name__}: {error}"[:300])
            rows.append(row)
    return rows


def micro_agreement(device: torch.device, cfg: dict) -> dict:
    """On the trained micro model (meaningful logits): fp16 GPU vs fp32 CPU NLL, chunked vs token in the GPU dtype,
    compiled vs eager greedy decoding."""
    policy = StreamingLLM(4, 124)
    low = load_model("micro", device=device)
    ref = load_model("micro", device="cpu", dtype=torch.float32)
    # a stream in the model's own distribution (sampled from it, seeded) rather than random ids: its logits are peaky
    seed_ids = torch.zeros(1, 1, dtype=torch.long)
    ids = torch.cat([seed_ids, stream_generate(ref, seed_ids, Dense(), cfg["exact_tokens"] - 1, do_sample=True,
                                               seed=2)], dim=1)
    nll_low, nll_ref = token_nll(low, ids, policy), token_nll(ref, ids, policy)
    out = {"dtype": describe(low)["dtype"],
           "max_abs_nll_diff_vs_fp32_cpu": (nll_low - nll_ref).abs().max().item(),
           "ppl": torch.exp(nll_low.mean()).item(), "ppl_fp32_cpu": torch.exp(nll_ref.mean()).item(),
           "chunked_vs_token": chunked_vs_token(low, ids, policy),
           "quantized_chunked_vs_token": chunked_vs_token(low, ids, StreamingLLM(4, 124, bits=4))}
    eager, compiled = TokenStream(low, policy), TokenStream(low, policy, compile=True)
    prompt = ids[:, :140]  # past the 129 tokens that fill the cache: every step below is a compiled one
    eager.feed(prompt)
    compiled.feed(prompt)
    same, worst = 0, 0.0
    for _ in range(cfg["micro_steps"]):
        a, b = eager.step(), compiled.step()
        worst = max(worst, (eager.logits.float() - compiled.logits.float()).abs().max().item())
        if not torch.equal(a, b):
            break
        same += 1
    out["compiled_vs_eager"] = {"steps": cfg["micro_steps"], "same_greedy_tokens": same, "max_abs_logit_diff": worst}
    return out


def markdown(results: dict) -> str:
    env, bw = results["env"], results["bandwidth_gb_s"]
    lines = [f"# GPU check: {env['device_name']}", "",
             f"torch {env['torch']}, transformers {env['transformers']}, {results['model']['model']} "
             f"({results['model']['n_params'] / 1e9:.2f} B parameters, {results['model']['dtype']}), batch 1, prompt "
             f"{results['config']['prompt']}, {results['config']['new_tokens']} new tokens. Copy bandwidth {bw:.0f} GB/s "
             f"(read + write); TPOT floor {results['tpot_floor_ms']:.2f} ms (weight bytes / bandwidth). "
             f"Total {results['total_s']:.0f} s.", "",
             "| policy | decode | TTFT (ms) | TPOT (ms) | TPOT p90 (ms) | TPOT / floor | peak memory (GiB) | KV (MiB) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results["speed"]:
        lines.append(f"| {r['policy']} | {'compiled' if r['compiled'] else 'eager'} | {r['ttft_ms']:.1f} | "
                     f"{r['tpot_ms']:.2f} | {r['tpot_p90_ms']:.2f} | {r['tpot_over_floor']:.1f} | "
                     f"{r['peak_mem_gib']:.2f} | {r['kv_mib']:.1f} |")
    exact = results["exact"]
    worst = max(exact, key=lambda r: r["max_abs_nll_diff"])
    families = sorted({r["family"] for r in exact})
    lines += ["", f"Exact on {env['device_name']}: {len(exact) // len(families)} registered policy examples x "
              f"{len(families)} families ({', '.join(families)}) in fp32 against the naive float64 reference (on "
              f"the CPU), token by token and in chunks of 7 and 64: worst max |NLL - reference| {worst['max_abs_nll_diff']:.2e}"
              f" ({worst['policy']} on {worst['family']}); "
              f"{sum(r['max_abs_nll_diff'] < 1e-4 for r in exact)}/{len(exact)} within 1e-4."]
    lines += [f"- {r['policy']} on {r['family']}: {r.get('error', 'max |NLL - reference| %.2e' % r['max_abs_nll_diff'])}"
              for r in exact if not r["max_abs_nll_diff"] < 1e-4]
    micro, big = results["micro"], results["chunked_vs_token"]
    cv = micro["compiled_vs_eager"]
    lines += ["", "| agreement check | result |", "|---|---|",
              f"| micro {micro['dtype']} vs fp32 CPU, StreamingLLM 4+124 | max abs NLL diff "
              f"{micro['max_abs_nll_diff_vs_fp32_cpu']:.2e}; ppl {micro['ppl']:.3f} vs {micro['ppl_fp32_cpu']:.3f} |",
              f"| micro chunked vs token, {micro['dtype']} | max abs NLL diff "
              f"{micro['chunked_vs_token']['max_abs_nll_diff']:.2e} over {micro['chunked_vs_token']['tokens']} tokens |",
              f"| micro chunked vs token, {micro['quantized_chunked_vs_token']['policy']}, {micro['dtype']} | max abs "
              f"NLL diff {micro['quantized_chunked_vs_token']['max_abs_nll_diff']:.2e} |",
              f"| {results['model']['model']} chunked vs token, {big['policy']} | max abs NLL diff "
              f"{big['max_abs_nll_diff']:.2e} over {big['tokens']} tokens |",
              f"| micro compiled vs eager, greedy | {cv['same_greedy_tokens']}/{cv['steps']} same tokens, "
              f"max abs logit diff {cv['max_abs_logit_diff']:.2e} |", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, a few tokens (what CI runs)")
    ap.add_argument("--out", default="bench/results", help="directory for gpu_check.json and gpu_check.md")
    args = ap.parse_args()
    start = time.perf_counter()
    cfg = SMOKE if args.smoke else FULL
    if args.smoke:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        raise SystemExit("gpu_check: no CUDA device is visible; run with --smoke for the CPU check")

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {msg}", flush=True)

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"}
    log(f"environment: {env}")
    bandwidth = copy_bandwidth(device, cfg["copy_mib"])
    log(f"copy bandwidth: {bandwidth / 1e9:.0f} GB/s")
    model = load_model(cfg["model"], device=device)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    log(f"model: {describe(model)}, {weight_bytes / 2**30:.2f} GiB of weights")
    results = {"env": env, "config": {k: v for k, v in cfg.items() if k != "policies"}, "model": describe(model),
               "bandwidth_gb_s": bandwidth / 1e9, "weight_bytes": weight_bytes,
               "tpot_floor_ms": weight_bytes / bandwidth * 1e3}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every stage: a run stopped at its time limit keeps what it measured
        results["total_s"] = time.perf_counter() - start
        (out / "gpu_check.json").write_text(json.dumps(results, indent=1) + "\n")

    results["speed"], results["complete"] = [], False
    speed_rows(model, cfg, bandwidth, log, results["speed"], save)
    log("chunked vs token evaluation on the model")
    ids = torch.randint(0, model.config.vocab_size, (1, cfg["exact_tokens"]), generator=torch.Generator().manual_seed(1))
    results["chunked_vs_token"] = chunked_vs_token(model, ids, cfg["policies"][1])
    save()
    del model
    log("every registered policy against its naive reference on the device")
    results["exact"] = exact_on_device(device)
    save()
    log("agreement on the micro model")
    results["micro"] = micro_agreement(device, cfg)
    results["complete"] = True
    save()
    (out / "gpu_check.md").write_text(markdown(results))
    print(markdown(results))
    log(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")


if __name__ == "__main__":
    main()
