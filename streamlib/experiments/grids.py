"""The grids the notebooks measure, each defined once: the notebook that measures a grid and the report that reads it
back both ask this module, so a row belongs to a table because it was measured for it, not because a rule in the
report guesses so."""

from __future__ import annotations

from ..core.arch import SLIDING, layer_types
from ..metrics.head_scores import top_heads
from ..policies import TOVA, Dense, HeadSplit, LayerBudgets, Recompute, StreamingLLM, Window, parse_policy

SWEEP_SINKS = 4  # the sink count of the cache-size sweep (the paper's choice)
SWEEP_NEW_TOKENS = 16  # tokens generated after the prompt when 03 times decoding (its latency tables)


def sweep_reference(cache_size: int) -> StreamingLLM | None:
    """What every policy of the cache-size sweep is compared with at its size: StreamingLLM with 4 sinks."""
    return StreamingLLM(SWEEP_SINKS, cache_size - SWEEP_SINKS) if cache_size > SWEEP_SINKS + 1 else None


def sweep_grid(cfg) -> dict[str, list]:
    """Notebook 03's grid. ``cache``: at every cache size Window and StreamingLLM with 4 sinks in both position
    modes (and Recompute with ``sweep_recompute``), the same StreamingLLM at each of ``quant_bits``, TOVA and H2O
    (a heavy:recent split per ``h2o_heavy_shares``) at ``sweep_scored_cache_sizes``, the lab's burst-eviction table at its own capacities,
    and the policies of ``sweep_more_policies`` (spec strings). ``sinks``: StreamingLLM at ``sweep_sink_cache`` tokens
    with each of ``sweep_sinks`` sinks."""
    cache = []
    for size in cfg.sweep_cache_sizes:
        cache += [Window(size), StreamingLLM(SWEEP_SINKS, size - SWEEP_SINKS),
                  StreamingLLM(SWEEP_SINKS, size - SWEEP_SINKS, pos_shift=False)]
        if cfg.sweep_recompute:
            cache.append(Recompute(size))
    for size in cfg.sweep_cache_sizes:
        cache += [StreamingLLM(SWEEP_SINKS, size - SWEEP_SINKS, bits=bits) for bits in cfg.quant_bits]
    for size in cfg.sweep_scored_cache_sizes:
        cache += [TOVA(size)] + cfg.h2o_policies(size)
    cache += cfg.burst_policies()
    cache += [parse_policy(spec) for spec in cfg.sweep_more_policies]
    sinks = [StreamingLLM(s, cfg.sweep_sink_cache - s) for s in cfg.sweep_sinks]
    return {"cache": list(dict.fromkeys(cache)), "sinks": sinks}


def head_split_grid(cfg, scores, config) -> list:
    """06's memory beyond the window: Dense, StreamingLLM at the retrieval budget, and for each of
    ``head_split_shares`` HeadSplit keeping that share of the full layers' kv heads whole (those with the highest
    retrieval ``scores``) beside StreamingLLM holding the same KV bytes at a prompt of ``head_split_tokens`` (its
    budget ``share * T + (1 - share) * budget``) and, on a model without sliding layers, PyramidKV's budgets per layer
    at that total (more in the lower layers, less in the upper: the bottom layers reach keys a uniform window has
    dropped)."""
    budget, n_sink, tokens = cfg.retrieval_cache, cfg.n_sink, cfg.head_split_tokens
    grid = [Dense(), StreamingLLM(n_sink, budget - n_sink)]
    for share in cfg.head_split_shares:
        split = HeadSplit.of(top_heads(scores, share, config), n_sink, budget - n_sink)
        equal = round(split.full_share(config) * tokens + (1 - split.full_share(config)) * budget)
        grid += [split, StreamingLLM(n_sink, equal - n_sink)]
        if SLIDING not in layer_types(config):  # a hybrid model's sliding layers would take a share of the total
            grid.append(LayerBudgets.pyramid(n_sink, equal - n_sink, config.num_hidden_layers))
    return list(dict.fromkeys(grid))



def harness_policies(cfg, scores, config) -> list:
    """06's pass key through lm-evaluation-harness: Dense, StreamingLLM and H2O (its first split) at the retrieval
    budget, and HeadSplit keeping the largest of ``head_split_shares`` of the kv heads whole when the run has a map
    (``scores``)."""
    budget, n_sink = cfg.retrieval_cache, cfg.n_sink
    policies = [Dense(), StreamingLLM(n_sink, budget - n_sink)] + cfg.h2o_policies(budget)[:1]
    if scores is not None and cfg.head_split_shares:
        policies.append(HeadSplit.of(top_heads(scores, max(cfg.head_split_shares), config), n_sink, budget - n_sink))
    return policies
