"""Latency and throughput, measured the same way for every policy: TTFT, TPOT, decode throughput, end-to-end time,
per-token traces along a stream. Definitions are in the README ("What the numbers mean").

Timing: warm-up runs first, then ``repeats`` timed runs, each with a fresh cache; on CUDA with CUDA events after a
synchronise, on CPU with ``time.perf_counter``. Every loop goes through :class:`~streamlib.caches.generation.TokenStream`
or :func:`~streamlib.caches.generation.decode_step`, so what is timed is the step a user runs.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import pandas as pd
import torch

from ..caches.generation import TokenStream, decode_step, forward_chunks, prefill
from ..core.checks import check_input_ids, check_int, check_sampling
from ..core.stats import median_spread
from .measurement import Measurement
from .memory import kv_cache_bytes, kv_resident_bytes, memory_now, peak_memory


def random_prompt(model, batch: int, tokens: int, seed: int = 0) -> torch.Tensor:
    """A prompt of random token ids, shape (batch, tokens), the same for every policy timed with the same seed."""
    return torch.randint(0, model.config.vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(seed))


class Clock:
    """Marks on CUDA events or on perf_counter; ``elapsed(a, b)`` in seconds."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def elapsed(self, start, end) -> float:
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
        return end - start

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class GenerationTiming:
    ttft_s: float
    step_s: list[float]  # one entry per decode step after the first token
    batch_size: int
    kv_bytes_after_prompt: int  # read from the cache once the prompt is in

    @property
    def tpot_s(self) -> float:
        return statistics.fmean(self.step_s) if self.step_s else float("nan")

    @property
    def e2e_s(self) -> float:
        return self.ttft_s + sum(self.step_s)

    @property
    def throughput_tok_s(self) -> float:
        return self.batch_size * len(self.step_s) / sum(self.step_s) if self.step_s else float("nan")


@dataclass
class SpeedResult:
    runs: list[GenerationTiming] = field(default_factory=list)

    def summary(self) -> dict[str, tuple[float, float, str]]:
        """metric -> (mean over repeats, standard deviation over repeats, unit)."""
        def agg(values):
            return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

        steps = [s for r in self.runs for s in r.step_s]
        return {
            "ttft": (*agg([r.ttft_s for r in self.runs]), "s"),
            "tpot_mean": (*agg([r.tpot_s for r in self.runs]), "s"),
            "tpot_p50": (percentile(steps, 0.5), 0.0, "s"),
            "tpot_p90": (percentile(steps, 0.9), 0.0, "s"),
            "decode_throughput": (*agg([r.throughput_tok_s for r in self.runs]), "tok/s"),
            "e2e_time": (*agg([r.e2e_s for r in self.runs]), "s"),
        }


@torch.inference_mode()
def time_generation(model, policy, prompt_ids: torch.Tensor, new_tokens: int, *, warmup: int = 1,
                    repeats: int = 3, chunk_size: int | None = None, compile: bool = False) -> SpeedResult:
    """Greedy generation of ``new_tokens`` after ``prompt_ids`` (batch, T) under ``policy``, timed per step.

    With ``compile=True`` the decode steps run compiled (:mod:`streamlib.caches.compiled`; StreamingLLM and Window as they
    are, Dense on a cache preallocated to prompt plus ``new_tokens``); the warm-up run (at least one) pays the
    compilation.
    """
    check_input_ids(prompt_ids)
    check_int("new_tokens", new_tokens, 2)
    check_int("warmup", warmup, 1 if compile else 0)
    check_int("repeats", repeats, 1)
    device = next(model.parameters()).device
    clock = Clock(device)
    prompt_ids = prompt_ids.to(device)
    result = SpeedResult()
    for run in range(warmup + repeats):
        stream = TokenStream(model, policy, chunk_size=chunk_size, compile=compile,
                             max_length=prompt_ids.shape[1] + new_tokens)
        clock.sync()
        start = clock.mark()
        stream.feed(prompt_ids)
        stream.step()
        ttft = clock.elapsed(start, clock.mark())
        kv_bytes = kv_cache_bytes(stream.cache)
        steps = []
        for _ in range(new_tokens - 1):
            a = clock.mark()
            stream.step()
            steps.append(clock.elapsed(a, clock.mark()))
        if run >= warmup:
            result.runs.append(GenerationTiming(ttft, steps, prompt_ids.shape[0], kv_bytes))
    return result


@torch.inference_mode()
def stream_trace(model, input_ids: torch.Tensor, policy, *, every: int = 64, max_dense_tokens: int | None = None,
                 timed: bool = True):
    """Feed a stream token by token and record, every ``every`` tokens: position, KV bytes, memory in use and the
    step latency (seconds, mean over the last ``every`` steps). Dense stops at ``max_dense_tokens`` if given (it runs
    out of memory or past its trained length); a CUDA OOM ends the trace where it happened. With ``timed=False``
    (a memory trace) the stream goes in chunks of ``every`` tokens, which hold the same tokens at every boundary as
    one token at a time does, and ``step_s`` is NaN.

    Returns a list of dicts with keys ``position``, ``kv_bytes`` (allocated), ``kv_resident_bytes`` (held),
    ``memory_bytes``, ``step_s``.
    """
    check_input_ids(input_ids)
    device = next(model.parameters()).device
    clock = Clock(device)
    ids = input_ids.to(device)
    cache = policy.make_cache(model)
    limit = ids.shape[1] if max_dense_tokens is None or policy.budget is not None else min(ids.shape[1], max_dense_tokens)
    if not timed:
        rows = []
        for start in range(0, limit - limit % every, every):
            for _ in forward_chunks(model, ids[:, start : start + every], cache, every, all_logits=False):
                pass
            rows.append({"position": start + every, "kv_bytes": kv_cache_bytes(cache),
                         "kv_resident_bytes": kv_resident_bytes(cache), "memory_bytes": memory_now(device),
                         "step_s": float("nan")})
        return rows
    rows, window_steps = [], []
    try:
        for t in range(limit):
            a = clock.mark()
            decode_step(model, cache, ids[:, t : t + 1])
            window_steps.append(clock.elapsed(a, clock.mark()))
            if (t + 1) % every == 0:
                rows.append({"position": t + 1, "kv_bytes": kv_cache_bytes(cache),
                             "kv_resident_bytes": kv_resident_bytes(cache), "memory_bytes": memory_now(device),
                             "step_s": statistics.fmean(window_steps)})
                window_steps = []
    except torch.cuda.OutOfMemoryError:
        pass
    return rows


# ------------------------------------------------------------------------------------------- as measurements --


def measure_generation(model, policy, prompt_ids: torch.Tensor, new_tokens: int, *, repeats: int = 3,
                       warmup: int = 1, compile: bool = False) -> Measurement:
    """:func:`time_generation` and :func:`~streamlib.metrics.memory.peak_memory` as a record: TTFT, TPOT (mean, p50, p90),
    decode throughput, end-to-end time (means over repeats, and their standard deviations), peak memory, KV bytes
    after the prompt. ``compile=True`` times compiled decode steps; record it with ``compile`` in the params. KV bytes
    are the policy's own (a compiled Dense preallocates its whole length; peak memory shows it)."""
    device = next(model.parameters()).device
    holder = {}
    mem = peak_memory(lambda: holder.setdefault(
        "r", time_generation(model, policy, prompt_ids, new_tokens, repeats=repeats, warmup=warmup,
                             compile=compile)), device)
    summary = holder["r"].summary()
    rows = [(m, mean, unit) for m, (mean, _, unit) in summary.items()]
    rows += [(m + "_std", std, unit) for m, (_, std, unit) in summary.items() if std]
    rows += [(f"gen_{k}_mem", v, "bytes") for k, v in mem.items()]
    rows.append(("kv_bytes_after_prompt", kv_bytes_after_prompt(model, policy, prompt_ids.to(device)), "bytes"))
    return Measurement(rows=rows)


@torch.inference_mode()
def time_interleaved(model, policies: list, prompt_ids, new_tokens: int, *, rounds: int = 5,
                     warmup: int = 1) -> tuple[dict, dict]:
    """Greedy generation of ``new_tokens`` after ``prompt_ids`` under each policy, interleaved: round ``r`` runs
    every policy once, starting from policy ``r mod k`` (A B C, B C A, ...), so drift in the machine's speed (heat,
    other work) hits every policy alike and each round gives a paired comparison. ``warmup`` rounds come first and
    are not kept. ``prompt_ids``: one prompt for all, or ``{policy: prompt}``. Returns
    ``({policy: SpeedResult}, {policy: peak memory dict})``, the peak memory read during the first round (the
    warm-up when there is one), so that no sampler runs beside the timed rounds."""
    if not policies:
        raise ValueError("policies must hold at least one policy")
    prompts = prompt_ids if isinstance(prompt_ids, dict) else {p: prompt_ids for p in policies}
    for p in policies:
        check_input_ids(prompts[p])
    check_int("rounds", rounds, 1)
    check_int("warmup", warmup, 0)
    device = next(model.parameters()).device
    results = {p: SpeedResult() for p in policies}
    peaks: dict = {}
    for r in range(warmup + rounds):
        start = r % len(policies)
        for policy in policies[start:] + policies[:start]:
            run = lambda: time_generation(model, policy, prompts[policy], new_tokens, warmup=0, repeats=1)  # noqa: E731
            if r == 0:
                # peak memory from the first round (the warm-up, if any): its sampler thread would slow the timed
                # rounds down on a CPU
                holder = {}
                peaks[policy] = peak_memory(lambda: holder.setdefault("r", run()), device)
                timed = holder["r"]
            else:
                timed = run()
            if r >= warmup:
                results[policy].runs += timed.runs
    return results, peaks


def measure_interleaved(model, policies: list, prompt_ids, new_tokens: int, *, rounds: int = 5,
                        warmup: int = 1) -> dict:
    """:func:`time_interleaved` as one record per policy: TTFT, TPOT (each run's mean step), decode throughput and
    end-to-end time as the median over rounds with their quartiles (``_q1``, ``_q3``), TPOT's p50 and p90 over every
    step, peak memory, KV bytes after the prompt; and against the first policy (the baseline, e.g. Dense) the
    median and quartiles of the per-round ratios ``ttft_vs_baseline`` and ``tpot_vs_baseline`` (1 for itself).
    Returns ``{policy: Measurement}``."""
    timed, peaks = time_interleaved(model, policies, prompt_ids, new_tokens, rounds=rounds, warmup=warmup)
    base = timed[policies[0]].runs
    out = {}
    for policy in policies:
        runs = timed[policy].runs
        rows = []
        for metric, values, unit in (("ttft", [x.ttft_s for x in runs], "s"), ("tpot_mean", [x.tpot_s for x in runs], "s"),
                                     ("decode_throughput", [x.throughput_tok_s for x in runs], "tok/s"),
                                     ("e2e_time", [x.e2e_s for x in runs], "s")):
            med, q1, q3 = median_spread(values)
            rows += [(metric, med, unit), (metric + "_q1", q1, unit), (metric + "_q3", q3, unit)]
        steps = [s for x in runs for s in x.step_s]
        rows += [("tpot_p50", percentile(steps, 0.5), "s"), ("tpot_p90", percentile(steps, 0.9), "s")]
        for metric, pick in (("ttft", lambda x: x.ttft_s), ("tpot", lambda x: x.tpot_s)):
            med, q1, q3 = median_spread([pick(a) / pick(b) for a, b in zip(runs, base)])
            rows += [(f"{metric}_vs_baseline", med, ""), (f"{metric}_vs_baseline_q1", q1, ""),
                     (f"{metric}_vs_baseline_q3", q3, "")]
        rows += [(f"gen_{k}_mem", v, "bytes") for k, v in peaks[policy].items()]
        rows.append(("kv_bytes_after_prompt", runs[-1].kv_bytes_after_prompt, "bytes"))
        out[policy] = Measurement(rows=rows)
    return out


def kv_bytes_after_prompt(model, policy, prompt_ids: torch.Tensor) -> int:
    """KV-cache bytes once the prompt is in a fresh cache of ``policy``; for Recompute, the transient KV of one
    window's forward."""
    cache = policy.make_cache(model)
    prefill(model, prompt_ids, cache)
    return kv_cache_bytes(cache)


def measure_kv(model, policy, prompt_ids: torch.Tensor) -> Measurement:
    """KV bytes once ``prompt_ids`` is in the cache, without timing anything. A bounded cache allocates its whole
    budget on its first call, so a prompt of ``budget`` tokens gives the bytes of any longer one (tested)."""
    return Measurement(rows=[("kv_bytes_after_prompt", kv_bytes_after_prompt(model, policy, prompt_ids), "bytes")])


def measure_trace(model, input_ids: torch.Tensor, policy, *, every: int = 64,
                  max_dense_tokens: int | None = None, timed: bool = True) -> Measurement:
    """:func:`stream_trace` as a record: the per-position curve, and the first and last step times and KV bytes."""
    rows = stream_trace(model, input_ids, policy, every=every, max_dense_tokens=max_dense_tokens, timed=timed)
    if not rows:
        raise ValueError(f"input_ids: the trace needs at least every={every} tokens; got {input_ids.shape[1]}")
    return Measurement(rows=[("trace_final_kv_bytes", rows[-1]["kv_bytes"], "bytes"),
                             ("trace_final_step_s", rows[-1]["step_s"], "s"),
                             ("trace_first_step_s", rows[0]["step_s"], "s"),
                             ("trace_positions", rows[-1]["position"], "tokens")],
                       curve=pd.DataFrame(rows))


@torch.inference_mode()
def measure_generation_trace(model, prompt_ids: torch.Tensor, policy, new_tokens: int, *, temperature: float = 0.0,
                             top_p: float = 1.0, seed: int = 0) -> Measurement:
    """Generate ``new_tokens`` after a prompt (batch 1) and record every step: the token chosen, its position in the
    stream, the KV bytes held and the step's time. ``temperature`` 0 is greedy decoding. Dense stops early on a
    CUDA out-of-memory error, and the curve says how far it got."""
    check_input_ids(prompt_ids, batch_one=True)
    check_sampling(new_tokens, temperature > 0, temperature, top_p)
    clock = Clock(next(model.parameters()).device)
    stream = TokenStream(model, policy, do_sample=temperature > 0, temperature=temperature or 1.0, top_p=top_p,
                         seed=seed)
    start = clock.mark()
    stream.feed(prompt_ids)
    prefill_s = clock.elapsed(start, clock.mark())
    rows = []
    try:
        for step in range(new_tokens):
            a = clock.mark()
            token = stream.step()
            b = clock.mark()
            rows.append({"step": step, "position": stream.position, "token": int(token[0, 0]),
                         "kv_bytes": kv_cache_bytes(stream.cache), "step_s": clock.elapsed(a, b)})
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
    steps = [r["step_s"] for r in rows[1:]]
    return Measurement(rows=[("ttft", prefill_s + rows[0]["step_s"], "s"),
                             ("tpot_mean", statistics.fmean(steps) if steps else float("nan"), "s"),
                             ("final_kv_bytes", rows[-1]["kv_bytes"], "bytes"),
                             ("tokens_generated", len(rows), "tokens")],
                       curve=pd.DataFrame(rows))
