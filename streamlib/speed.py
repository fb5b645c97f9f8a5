"""Efficiency metrics: latency, throughput, memory and FLOPs, measured the same way for every policy.

Definitions (the README repeats them):

* **TTFT** (time to first token): from the start of the prefill of the prompt until the first new token is chosen,
  prefill included. Seconds.
* **TPOT** (time per output token): the time of one decode step (one new token for every row of the batch) after the
  first; reported as mean, p50 and p90 over the decode steps. Seconds.
* **decode throughput**: new tokens per second over the decode steps, ``batch * steps / sum(step times)``.
* **end-to-end time**: TTFT plus all decode steps. Seconds.
* **peak memory**: on CUDA ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` after a reset, over one
  generation; on CPU the peak resident set size of the process sampled every 2 ms during it. Bytes.
* **KV bytes**: the bytes of the key and value tensors the cache holds, read from the cache itself.
* **FLOPs**: forward floating-point operations (a multiply-add is 2) of the matmuls: projections, MLP, LM head and
  the two attention matmuls. ``flops_per_token`` gives the analytic count for one token that attends ``context`` keys;
  calflops (with eager attention) measures a whole forward, see :func:`calflops_forward`.

Timing: warm-up runs first, then ``repeats`` timed runs, each with a fresh cache; on CUDA with CUDA events after a
synchronise, on CPU with ``time.perf_counter``.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field

import pandas as pd
import torch

from .arch import shapes_of
from .cache import StreamingCache
from .generation import TokenStream, cache_for, check_input_ids, check_sampling, decoder_for, prefill
from .policies import Recompute
from .results import Measurement

# ----------------------------------------------------------------------------------------------------- timers --


class _Clock:
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


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class GenerationTiming:
    ttft_s: float
    step_s: list[float]  # one entry per decode step after the first token
    batch_size: int
    kv_bytes_after_prompt: int | None = None  # read from the cache once the prompt is in (None for Recompute)

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
        out = {
            "ttft": (*agg([r.ttft_s for r in self.runs]), "s"),
            "tpot_mean": (*agg([r.tpot_s for r in self.runs]), "s"),
            "tpot_p50": (_percentile(steps, 0.5), 0.0, "s"),
            "tpot_p90": (_percentile(steps, 0.9), 0.0, "s"),
            "decode_throughput": (*agg([r.throughput_tok_s for r in self.runs]), "tok/s"),
            "e2e_time": (*agg([r.e2e_s for r in self.runs]), "s"),
        }
        return out


def _check_counts(**values):
    for name, (value, minimum) in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")


@torch.inference_mode()
def time_generation(model, policy, prompt_ids: torch.Tensor, new_tokens: int, *, warmup: int = 1,
                    repeats: int = 3, chunk_size: int | None = None, compile: bool = False) -> SpeedResult:
    """Greedy generation of ``new_tokens`` after ``prompt_ids`` (batch, T) under ``policy``, timed per step.

    With ``compile=True`` the decode steps run compiled (:mod:`streamlib.compiled`; StreamingLLM and Window as they
    are, Dense on a cache preallocated to prompt plus ``new_tokens``); the warm-up run (at least one) pays the
    compilation.
    """
    check_input_ids(prompt_ids)
    _check_counts(new_tokens=(new_tokens, 2), warmup=(warmup, 1 if compile else 0), repeats=(repeats, 1))
    device = next(model.parameters()).device
    clock = _Clock(device)
    prompt_ids = prompt_ids.to(device)
    result = SpeedResult()
    for run in range(warmup + repeats):
        timing = _one_generation(model, policy, prompt_ids, new_tokens, clock, chunk_size, compile)
        if run >= warmup:
            result.runs.append(timing)
    return result


def _one_generation(model, policy, prompt_ids, new_tokens, clock, chunk_size, compile=False) -> GenerationTiming:
    batch = prompt_ids.shape[0]
    if isinstance(policy, Recompute):
        if compile:
            raise ValueError("compile=True covers StreamingLLM and Window; Recompute runs a fresh forward per token")
        # every token is a fresh forward over the last `window` tokens
        w = policy.window
        ids = prompt_ids[:, -w:]
        clock.sync()
        start = clock.mark()
        token = model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
        first = clock.mark()
        ttft = clock.elapsed(start, first)
        steps = []
        for _ in range(new_tokens - 1):
            ids = torch.cat([ids, token], dim=1)[:, -w:]
            a = clock.mark()
            token = model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
            b = clock.mark()
            steps.append(clock.elapsed(a, b))
        return GenerationTiming(ttft, steps, batch)
    cache = cache_for(model, policy, compile, max_length=prompt_ids.shape[1] + new_tokens)
    decoder = decoder_for(model, cache) if compile else None
    clock.sync()
    start = clock.mark()
    token = prefill(model, prompt_ids, cache, chunk_size).argmax(-1, keepdim=True)
    first = clock.mark()
    ttft = clock.elapsed(start, first)
    kv_bytes = kv_cache_bytes(cache)
    steps = []
    for _ in range(new_tokens - 1):
        a = clock.mark()
        if decoder is not None and decoder.can_step(cache):
            token = decoder.step(token, cache).argmax(-1, keepdim=True)
        else:
            if isinstance(cache, StreamingCache):
                cache.maybe_rebase()
            token = model(input_ids=token, cache=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
        b = clock.mark()
        steps.append(clock.elapsed(a, b))
    return GenerationTiming(ttft, steps, batch, kv_bytes)


# ----------------------------------------------------------------------------------------------------- memory --


def kv_cache_bytes(cache) -> int:
    """Bytes of the key and value tensors a cache holds (allocated buffers for the streaming cache)."""
    if isinstance(cache, StreamingCache):
        return cache.kv_bytes()[0]
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


class _RssSampler:
    def __init__(self, interval: float = 0.002):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def peak_memory(fn, device: torch.device | str) -> dict[str, int]:
    """Run ``fn()`` and return its peak memory in bytes: CUDA allocated/reserved, or CPU peak RSS."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return {"peak_allocated": torch.cuda.max_memory_allocated(device),
                "peak_reserved": torch.cuda.max_memory_reserved(device)}
    with _RssSampler() as sampler:
        fn()
    return {"peak_rss": sampler.peak}


@torch.inference_mode()
def stream_trace(model, input_ids: torch.Tensor, policy, *, every: int = 64, max_dense_tokens: int | None = None):
    """Feed a stream token by token and record, every ``every`` tokens: position, KV bytes, memory in use and the
    step latency (seconds, mean over the last ``every`` steps). Dense stops at ``max_dense_tokens`` if given (it runs
    out of memory or past its trained length); a CUDA OOM ends the trace where it happened.

    Returns a list of dicts with keys ``position``, ``kv_bytes``, ``memory_bytes``, ``step_s``.
    """
    check_input_ids(input_ids)
    device = next(model.parameters()).device
    clock = _Clock(device)
    ids = input_ids.to(device)
    rows = []
    if isinstance(policy, Recompute):
        w = policy.window
        window_steps = []
        for t in range(ids.shape[1]):
            a = clock.mark()
            model(input_ids=ids[:, max(0, t - w + 1) : t + 1], use_cache=False, logits_to_keep=1)
            b = clock.mark()
            window_steps.append(clock.elapsed(a, b))
            if (t + 1) % every == 0:
                rows.append({"position": t + 1, "kv_bytes": 0, "memory_bytes": _memory_now(device),
                             "step_s": statistics.fmean(window_steps)})
                window_steps = []
        return rows
    cache = policy.make_cache(model)
    limit = ids.shape[1] if max_dense_tokens is None or policy.budget is not None else min(ids.shape[1], max_dense_tokens)
    window_steps = []
    try:
        for t in range(limit):
            a = clock.mark()
            if isinstance(cache, StreamingCache):
                cache.maybe_rebase()
            model(input_ids=ids[:, t : t + 1], cache=cache, use_cache=True)
            b = clock.mark()
            window_steps.append(clock.elapsed(a, b))
            if (t + 1) % every == 0:
                rows.append({"position": t + 1, "kv_bytes": kv_cache_bytes(cache), "memory_bytes": _memory_now(device),
                             "step_s": statistics.fmean(window_steps)})
                window_steps = []
    except torch.cuda.OutOfMemoryError:
        pass
    return rows


def _memory_now(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    import psutil

    return psutil.Process().memory_info().rss


# ------------------------------------------------------------------------------------------------------ flops --


def _dense_flops_per_token(config) -> int:
    """Matmul FLOPs of one token that do not depend on the context: projections, MLP and the LM head."""
    sh = shapes_of(config)
    q_width, kv_width = sh.heads * sh.head_dim, sh.kv_heads * sh.head_dim
    projections = 2 * sh.hidden * (2 * q_width + 2 * kv_width)  # Q and output at full width, K and V per kv head
    mlp = 2 * sh.mlp_matrices * sh.hidden * sh.intermediate
    return sh.layers * (projections + mlp) + 2 * sh.hidden * sh.vocab


def _attention_flops(config, context: int) -> int:
    """Scores and the weighted sum of one token over ``context`` keys, every query head, every layer."""
    sh = shapes_of(config)
    return sh.layers * 4 * context * sh.heads * sh.head_dim


def flops_per_token(config, context: int) -> int:
    """Forward FLOPs for one token attending ``context`` keys (itself included), all matmuls, LM head included.

    Per layer, with ``q = heads * head_dim`` and ``k = kv_heads * head_dim``: Q and output projections ``2*2*h*q``,
    K and V ``2*2*h*k``, MLP ``2*m*h*i`` (``m`` = 2 matrices for Pythia's GELU MLP, 3 for SwiGLU), scores and
    weighted sum ``2*2*context*q``; then the LM head ``2*h*V``. For Pythia (``q = k = h``) that is
    ``8h² + 4hi + 4·context·h`` per layer. Norms, softmax and activations are left out (a few per cent at most).
    """
    return _dense_flops_per_token(config) + _attention_flops(config, context)


def forward_flops(config, tokens: int, context_per_token=None) -> int:
    """FLOPs of a forward over ``tokens`` tokens, attention computed as a full ``tokens x tokens`` matmul (what
    eager attention does, masked entries included) unless ``context_per_token`` (a function of the index) is given."""
    dense = tokens * _dense_flops_per_token(config)
    if context_per_token is None:
        return dense + tokens * _attention_flops(config, tokens)
    return dense + sum(_attention_flops(config, context_per_token(i)) for i in range(tokens))


def stream_flops(config, n_tokens: int, policy) -> int:
    """Analytic FLOPs to process a stream of ``n_tokens`` one token at a time under ``policy``."""
    if isinstance(policy, Recompute):
        w = policy.window
        per_window = forward_flops(config, w)  # one fresh forward per token once the window is full
        head = forward_flops(config, min(w, n_tokens))
        return head + max(0, n_tokens - w) * per_window
    budget = policy.budget
    return sum(flops_per_token(config, (t + 1) if budget is None else min(t + 1, budget + 1)) for t in range(n_tokens))


def calflops_forward(model, input_ids: torch.Tensor) -> int:
    """FLOPs of one forward over ``input_ids`` as calflops counts them (use an eager-attention model to count the
    attention matmuls; with SDPA calflops sees no attention matmul)."""
    from calflops import calculate_flops

    flops, _, _ = calculate_flops(model=model, kwargs={"input_ids": input_ids},
                                  output_as_string=False, print_results=False, print_detailed=False)
    return int(flops)


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes of keys and values one token adds to a dense cache: 2 (K, V) x layers x kv heads x head_dim x element
    size (kv heads x head_dim is the hidden size for Pythia, a third of it for SmolLM2)."""
    sh = shapes_of(config)
    return 2 * sh.layers * sh.kv_heads * sh.head_dim * torch.finfo(dtype).bits // 8


# ------------------------------------------------------------------------------------------- as measurements --


def kv_bytes_after_prompt(model, policy, prompt_ids: torch.Tensor) -> int:
    """KV-cache bytes once the prompt is in the cache; for Recompute, the transient KV of one window's forward."""
    if isinstance(policy, Recompute):
        p = next(model.parameters())
        return kv_bytes_per_token(model.config, p.dtype) * prompt_ids.shape[0] * min(policy.window, prompt_ids.shape[1])
    cache = policy.make_cache(model)
    prefill(model, prompt_ids, cache)
    return kv_cache_bytes(cache)


def measure_generation(model, policy, prompt_ids: torch.Tensor, new_tokens: int, *, repeats: int = 3,
                       warmup: int = 1, compile: bool = False) -> Measurement:
    """:func:`time_generation` and :func:`peak_memory` as a record: TTFT, TPOT (mean, p50, p90), decode throughput,
    end-to-end time (means over repeats, and their standard deviations), peak memory, KV bytes after the prompt.
    ``compile=True`` times compiled decode steps; record it with ``compile`` in the params. KV bytes are the
    policy's own (a compiled Dense preallocates its whole length; peak memory shows it)."""
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


def measure_decode(model, policy, prompt_ids: torch.Tensor, new_tokens: int = 32, *,
                   compile: bool = False) -> Measurement:
    """A quick decode-latency point for sweeps: one timed generation (after a warm-up); TPOT and KV bytes."""
    r = time_generation(model, policy, prompt_ids, new_tokens, repeats=1, compile=compile)
    kv_bytes = r.runs[-1].kv_bytes_after_prompt
    if kv_bytes is None or compile:  # Recompute keeps no cache; compiled Dense runs on a preallocated one
        kv_bytes = kv_bytes_after_prompt(model, policy, prompt_ids.to(next(model.parameters()).device))
    return Measurement(rows=[("tpot_mean", r.summary()["tpot_mean"][0], "s"), ("kv_bytes_after_prompt", kv_bytes, "bytes")])


def measure_flops(config, policy, *, prompt_tokens: int, stream_tokens: int, eager_model=None,
                  calflops_tokens: int = 256) -> Measurement:
    """Analytic FLOPs: one token at the end of a prompt of ``prompt_tokens`` and the mean per token over a stream of
    ``stream_tokens``; with ``eager_model``, calflops' count of one forward of ``calflops_tokens`` tokens and the
    analytic count of the same forward beside it."""
    context = prompt_tokens + 1 if policy.budget is None else min(prompt_tokens, policy.budget) + 1
    rows = [("flops_per_token_at_prompt_end", flops_per_token(config, context), "FLOP"),
            ("flops_stream_per_token", stream_flops(config, stream_tokens, policy) / stream_tokens, "FLOP")]
    if eager_model is not None:
        ids = torch.randint(0, config.vocab_size, (1, calflops_tokens), generator=torch.Generator().manual_seed(0))
        rows.append(("calflops_forward", calflops_forward(eager_model, ids.to(next(eager_model.parameters()).device)), "FLOP"))
        rows.append(("analytic_forward", forward_flops(config, calflops_tokens), "FLOP"))
    return Measurement(rows=rows)


def measure_trace(model, input_ids: torch.Tensor, policy, *, every: int = 64,
                  max_dense_tokens: int | None = None) -> Measurement:
    """:func:`stream_trace` as a record: the per-position curve, and the first and last step times and KV bytes."""
    rows = stream_trace(model, input_ids, policy, every=every, max_dense_tokens=max_dense_tokens)
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
    if isinstance(policy, Recompute):
        raise ValueError("policy: Recompute keeps no cache to generate from; use Dense, Window or StreamingLLM")
    clock = _Clock(next(model.parameters()).device)
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
