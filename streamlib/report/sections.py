"""The report of a run, defined once: which tables report.md shows, under which titles, and the figures that a
notebook and the report both draw, each by one function with one selection of the records (the notebook that measures
and notebook 07 call the same one)."""

from __future__ import annotations

import pandas as pd

from ..experiments.grids import SWEEP_NEW_TOKENS
from .figures import fig_bits, fig_sinks, fig_trace, fig_tradeoff
from .task_figures import fig_beyond_window, fig_head_map
from .compare import comparison, published_results
from .tables import (bits_report, bits_table, burst_speed_table, burst_table, decode_modes_table, latency_table,
                     sweep_report, sweep_table)
from .tasks import beyond_window_table, harness_grid, recall_grid, retrieval_grid, retrieval_summary, streameval_grid

WILSON_BOUNDS = ["accuracy_low", "accuracy_high"]  # the bounds behind each "accuracy 95 % CI" cell


# -- figures drawn by a notebook and by the report ----------------------------------------------------------------
def fig4_tradeoff(run):
    """Perplexity against KV memory for 03's cache-size grid, beside each timed policy's decode step against Dense."""
    sweep = sweep_table(run)
    if sweep.empty:
        return None
    latency = latency_table(run, "sweep_speed", new_tokens=SWEEP_NEW_TOKENS)
    return fig_tradeoff(sweep[sweep.sweep.str.contains("cache")], latency)


def fig5_ppl_vs_sinks(run):
    """Perplexity against the number of sinks at 03's fixed cache size, beside the paper's Table 2."""
    sweep = sweep_table(run)
    sinks = sweep[sweep.sweep.str.contains("sinks")].sort_values("n_sink") if not sweep.empty else sweep
    if sinks.empty:
        return None
    return fig_sinks(sinks, published_results().query("table == 'table2'"))


def fig9_burst_memory(run):
    """KV memory through 03's burst-eviction trace (the longest one recorded) and its StreamingLLM matches."""
    traces = run.curves("burst_trace")
    if traces.empty:
        return None
    traces = traces[traces.n_tokens == traces.n_tokens.max()]
    return fig_trace(traces, "kv_resident_bytes", "KV cache held (MiB)", "KV-cache memory along the stream",
                             1 / 2**20)


def fig15_bits(run):
    """Bits per kept token: 03's bit-width series with their paired changes."""
    bits = bits_table(run)
    return None if bits.empty else fig_bits(bits)


def fig16_head_map(run):
    """Every kv head's retrieval score, as 06 measured it (or read it from the model's shipped map)."""
    scores = run.curves("head_scores")
    return None if scores.empty else fig_head_map(scores[scores.key == scores.key.iloc[-1]])


def fig17_beyond_window(run):
    """Pass keys beyond the window: accuracy against the KV bytes each policy holds."""
    table = beyond_window_table(run)
    return None if table.empty else fig_beyond_window(table)


RUN_FIGURES = {"fig4_tradeoff": fig4_tradeoff, "fig5_ppl_vs_sinks": fig5_ppl_vs_sinks,
               "fig9_burst_memory": fig9_burst_memory, "fig15_bits": fig15_bits, "fig16_head_map": fig16_head_map,
               "fig17_beyond_window": fig17_beyond_window}


def draw(run, name: str) -> None:
    """Draw the run's figure ``name`` (one of :data:`RUN_FIGURES`) and save it (nothing when the run has nothing for
    it). In a notebook it shows once, below the cell: returning the figure as well would show it twice."""
    fig = RUN_FIGURES[name](run)
    if fig is not None:
        run.figure(fig, name)


# -- the tables of report.md ----------------------------------------------------------------------------------------
def report_tables(run) -> dict[str, pd.DataFrame]:
    """The tables report.md shows, by title, in order; a table the run has nothing for is left out."""
    cfg = run.cfg
    sweep, bits, bursts = sweep_table(run), bits_table(run), burst_table(run)
    latency = latency_table(run, "sweep_speed", new_tokens=SWEEP_NEW_TOKENS)
    quant_latency = latency_table(run, "quant_speed", new_tokens=SWEEP_NEW_TOKENS)
    prompt = f"prompt {cfg.speed_prompt_tokens}"
    candidates = {
        "Baseline against StreamingLLM": comparison(run),
        f"Sweep ({cfg.datasets[0]}, {cfg.sweep_tokens} tokens)": sweep_report(sweep).round(3) if not sweep.empty
        else sweep,
        f"Decode latency against Dense, interleaved ({SWEEP_NEW_TOKENS} new; TTFT only after Dense's {prompt})":
        latency[["label", "cache_size", "prompt_tokens", "ttft_ms", "TTFT IQR (ms)", "tpot_ms", "TPOT IQR (ms)",
                 "TPOT vs Dense (IQR)", "rounds"]].round(2) if not latency.empty else latency,
        f"Bits per kept token ({cfg.datasets[0]}, {cfg.quant_tokens} tokens)": bits_report(bits).round(3),
        "Decode latency of the quantized caches against Dense, interleaved": quant_latency[
            ["label", "cache_size", "tpot_ms", "TPOT IQR (ms)", "TPOT vs Dense (IQR)", "rounds"]].round(2)
        if not quant_latency.empty else quant_latency,
        f"Eager and compiled decoding (batch 1, {prompt}, {cfg.speed_new_tokens} new)": decode_modes_table(run).round(3),
        "The lab's press: burst eviction beside StreamingLLM ("
        f"{cfg.datasets[0]}, {bursts.tokens.iloc[0] if not bursts.empty else 0} tokens)":
            bursts.drop(columns="tokens").round(2) if not bursts.empty else bursts,
        f"The lab's speed metrics on our implementation (batch 1, {prompt}, {cfg.burst_new_tokens} new)":
            burst_speed_table(run).round(2),
        f"Pass-key retrieval per policy (KV budget {cfg.retrieval_cache} tokens)": _without(retrieval_summary(run)),
        "Pass-key retrieval by distance (accuracy [Wilson 95 % CI] (trials))": retrieval_grid(run),
        f"StreamEval ({cfg.streameval_tokens} tokens, a question every {cfg.streameval_every} lines; KV budget "
        f"{cfg.retrieval_cache}; accuracy [Wilson 95 % CI] (questions))": streameval_grid(run),
        f"Recall across the turns of one chat ({cfg.recall_turns} turns; KV budget {cfg.retrieval_cache}; "
        "accuracy [Wilson 95 % CI] (questions))": recall_grid(run).round(2),
        f"Memory beyond the window: pass keys further back than the window ({cfg.head_split_tokens}-token prompts, "
        f"KV budget {cfg.retrieval_cache}; HeadSplit beside StreamingLLM and PyramidKV at equal KV bytes)":
            _without(beyond_window_table(run)).drop(columns="spec", errors="ignore"),  # a mask's spec is long
        f"The pass key through lm-evaluation-harness ({', '.join(map(str, cfg.retrieval_context_tokens))}-token "
        f"prompts, KV budget {cfg.retrieval_cache}; exact match [Wilson 95 % CI] (keys))": harness_grid(run),
        "Published numbers (for shape, not digits)": published_results()[
            ["source", "model", "dataset", "n_sink", "window", "ppl"]],
    }
    return {title: table for title, table in candidates.items() if not table.empty}


def _without(table: pd.DataFrame) -> pd.DataFrame:
    """A task table as report.md shows it: the interval's cell without its two bound columns."""
    return table if table.empty else table.drop(columns=WILSON_BOUNDS).round(2)
