# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% tags=["parameters"]
profile = "smoke"  # smoke | cpu | paper | path to a YAML profile
run_dir = "runs/notebooks"  # where records, curves, figures and tables go
dry_run = False  # the profile's chain on random weights and embedded text, on CPU, in minutes (not a result)
force = False  # re-measure configurations already recorded
sweep_cache_sizes = None  # cache sizes (tokens) for Window, StreamingLLM (both position modes), Recompute
sweep_sinks = None  # sink counts at a fixed cache size
sweep_sink_cache = None  # that cache size
sweep_more_policies = None  # more policies on the curves, by spec string, e.g. ["knorm:64+64"]

# %% [markdown]
# # 03 · Sweep: quality against memory and latency
#
# **Question.** At a given KV-cache budget, which policy predicts best, and what does a larger cache buy? How many sinks are enough?
#
# **What to expect.** On a pretrained Pythia, Window collapses once the first tokens leave its cache, StreamingLLM stays close to Recompute (the slow, accurate baseline) at every size, and 1 sink already recovers most of the gap, 4 all of it (the paper's Table 2). KV memory grows linearly with the cache size. The micro model has no sink, so its sink curve is flat. TOVA and H2O (score-based eviction, decided token by token) answer the lab report's last question: does choosing what to keep by attention beat sinks plus a window at the same memory, and at what decode cost?

# %%
import inspect

import pandas as pd
import torch

from streamlib import report, workbook as wb
from streamlib.experiments.grids import SWEEP_NEW_TOKENS, sweep_grid
from streamlib.loading.data import load_stream
from streamlib.loading.models import describe
from streamlib.metrics.quality import measure_perplexity
from streamlib.metrics.timing import measure_interleaved, measure_kv, measure_trace, random_prompt
from streamlib.naive import check_exact, tiny_model
from streamlib.policies import TOVA, Dense, KNorm, StreamingLLM, streaming_matches

# %%
cfg, run = wb.open_run(profile, run_dir=run_dir, dry_run=dry_run, force=force,
                       sweep_cache_sizes=sweep_cache_sizes, sweep_sinks=sweep_sinks, sweep_sink_cache=sweep_sink_cache,
                       sweep_more_policies=sweep_more_policies)

# %% [markdown]
# ## The model, the text and a prompt for timing

# %%
model, tokenizer = wb.model_and_tokenizer(cfg)
pd.DataFrame([describe(model)])

# %%
ids = load_stream(cfg.datasets[0], tokenizer, max_tokens=cfg.sweep_tokens, bos=cfg.bos)
prompt = random_prompt(model, 1, cfg.speed_prompt_tokens)
print(f'{ids.shape[1]} tokens of {cfg.datasets[0]}; decode timed after a {prompt.shape[1]}-token prompt')

# %% [markdown]
# ## The grid
# Every cache size with each policy (StreamingLLM with 4 sinks; quantized StreamingLLM at `quant_bits`; TOVA and H2O at `sweep_scored_cache_sizes`; the lab's burst-eviction table; the policies named in `sweep_more_policies`), then the sink counts at one cache size. The grid is `streamlib.experiments.grids.sweep_grid`, which the report reads too, so a row is in the report's table because it was measured for it.

# %%
sections = sweep_grid(cfg)
bursts = cfg.burst_policies()  # the lab's press and its tuning table (below)
grid = list(dict.fromkeys(sections['cache'] + sections['sinks']))
pd.DataFrame([{'label': p.label(), 'keeps (tokens)': p.budget,
               'section': ' + '.join(name for name, ps in sections.items() if p in ps)} for p in grid])

# %% [markdown]
# ## A policy of your own, in one file
# A policy is one file in `streamlib/policies/`: a frozen dataclass with its paper in the docstring, its name and spec-string form, its label and line style, and its rule. K-norm (Devoto et al., 2024: keep the keys of smallest norm, which go with the most attention) is such a file, and nothing else in the package names it: the registry finds it, `parse_policy('knorm:64+64')` reads it, the records store it, the figures draw it, the tests hold it to its definition, and a profile puts it on the curves by its spec string (`sweep_more_policies`). `docs/adding_a_policy.md` walks through writing one. Its whole source:

# %%
print(inspect.getsource(inspect.getmodule(KNorm)))

# %% [markdown]
# Does the cache do what the definition says? Its cache against the naive float64 reference (`streamlib.naive`: explicit lists of held tokens, the rule applied token by token), fed token by token and in chunks, on a small random model of this run's family. Look for differences at float32 rounding (about 1e-6) in the first column, a budget that binds in the second, and no near tie (a gap above 1e-5) in the third.

# %%
family = model.config.model_type if model.config.model_type in ('gpt_neox', 'llama', 'gemma3_text') else 'llama'
check_exact(KNorm(6, 6), tiny_model(family), torch.randperm(97, generator=torch.Generator().manual_seed(0))[None, :40])

# %% [markdown]
# ## Perplexity of each policy on the same stream

# %%
for policy in grid:
    run.measure('ppl', policy, lambda: measure_perplexity(model, ids, policy),
                dataset=cfg.datasets[0], n_tokens=ids.shape[1])

# %% [markdown]
# ## KV memory of each policy
# Read from each cache after a prompt: a bounded cache allocates its whole budget at once, so a prompt of its budget shows what it holds at any length.

# %%
for policy in grid:
    run.measure('sweep_kv', policy, lambda: measure_kv(model, policy, prompt[:, : policy.budget or prompt.shape[1]]),
                prompt_tokens=prompt.shape[1])
sweep = report.sweep_table(run)
sweep.query("sweep != 'sinks'").pivot_table(index='cache_size', columns='family', values='ppl').round(2)

# %% [markdown]
# ## Perplexity with its 95 % interval, and against StreamingLLM at the same size
# The interval comes from a block bootstrap over the per-token NLL (blocks of 128 tokens, so the correlation along the text is kept). `vs StreamingLLM` is the ratio of perplexities on the same tokens, with a paired interval: where it includes 1, the two policies are not told apart by this text.

# %%
sweep.query("sweep != 'sinks'")[['label', 'cache_size', 'ppl', 'ppl_low', 'ppl_high', 'vs_streamingllm',
                                  'vs_low', 'vs_high']].sort_values(['cache_size', 'ppl']).round(3)

# %% [markdown]
# ## Bits per kept token
# The other axis of KV memory: each kept token's keys and values stored in 8, 4 or 2 bits (`quant_bits`; KIVI's grouping, the last block of 32 tokens and the sinks in full precision, `streamlib.caches.quant`). Three series on a stream longer than every cache: the same cache of `quant_budget` tokens at fewer bits (what quantization costs), caches of equal code bytes (16-bit 4+252, 8-bit 4+508, 4-bit 4+1020: fewer bits or fewer tokens?), and the same caches with their sinks quantized too (do the sinks, which take much of the attention, need full precision?). The KV column is measured from each cache's own tensors: codes, scales and zero points, the full-precision part, and the one layer of full-precision slots the layers share while they attend. Profiles without `quant_bits` (offline, to keep its 20 minutes) skip this section; offline-full, cpu and paper run it.

# %%
bit_series = cfg.quant_policies()
quant_ids = load_stream(cfg.datasets[0], tokenizer, max_tokens=cfg.quant_tokens, bos=cfg.bos) if bit_series else None
pd.DataFrame([{'series': name, 'label': p.label(), 'bits': p.bits, 'keeps (tokens)': p.budget}
              for name, policies in bit_series.items() for p in policies])

# %%
bit_policies = list(dict.fromkeys(p for policies in bit_series.values() for p in policies))
for policy in bit_policies:
    run.measure('ppl', policy, lambda: measure_perplexity(model, quant_ids, policy),
                dataset=cfg.datasets[0], n_tokens=quant_ids.shape[1])
    run.measure('quant_kv', policy, lambda: measure_kv(model, policy, prompt[:, : policy.budget]),
                prompt_tokens=prompt.shape[1])

# %% [markdown]
# Each row's `change` is the paired ratio of perplexities on the same tokens against `against` (the 16-bit cache of `quant_budget` tokens; for the quantized sinks, the same cache with full-precision sinks). Where its interval includes no change, this text does not tell the two apart.

# %%
bits = report.bits_table(run)
report.bits_report(bits).round(3) if not bits.empty else bits

# %%
report.draw(run, 'fig15_bits')

# %% [markdown]
# What does dequantizing cost a decode step? Every cache of the first two series, timed in turns against Dense (`speed_repeats` rounds). On a CPU each layer rebuilds its keys and values from the codes before it attends, so expect the cost to grow with the tokens kept.

# %%
quant_timed = list(dict.fromkeys([Dense()] + bit_series['same tokens'] + bit_series['equal bytes'])) if bit_series else []
if quant_timed:
    run.measure_all('quant_speed', quant_timed, lambda: measure_interleaved(model, quant_timed, prompt, SWEEP_NEW_TOKENS,
                    rounds=cfg.speed_repeats), prompt_tokens=prompt.shape[1], new_tokens=SWEEP_NEW_TOKENS, rounds=cfg.speed_repeats)
report.latency_table(run, 'quant_speed', new_tokens=SWEEP_NEW_TOKENS).round(3)

# %% [markdown]
# ## Decode latency: does the cache size matter?
# A few policies timed in turns (`speed_repeats` rounds after a warm-up), each against Dense in the same round. On a CPU the weights dominate a decode step, so expect the ratios to sit within a few percent of 1 at every size; the finding is how flat, with its spread. TOVA and H2O read a prompt longer than their budget token by token, so they get a prompt of their budget here: their records say so, and the table leaves their TTFT empty rather than set it under Dense's prompt; compare their TPOT.

# %%
timed = [Dense()] + [StreamingLLM(4, size - 4) for size in (min(cfg.sweep_cache_sizes), max(cfg.sweep_cache_sizes))]
timed += [p for size in cfg.sweep_scored_cache_sizes[:1] for p in [TOVA(size)] + cfg.h2o_policies(size)[:1]]
prompts = {p: prompt[:, : p.budget] if p.token_mode else prompt for p in timed}
run.measure_all('sweep_speed', timed, lambda: measure_interleaved(model, timed, prompts, SWEEP_NEW_TOKENS, rounds=cfg.speed_repeats),
                each={p: {'prompt_tokens': prompts[p].shape[1]} for p in timed}, new_tokens=SWEEP_NEW_TOKENS,
                rounds=cfg.speed_repeats)
report.latency_table(run, 'sweep_speed', new_tokens=SWEEP_NEW_TOKENS).round(3)

# %% [markdown]
# ## At equal memory, which policy predicts best?
# The lowest perplexity at each cache size, and what a decode step costs there.

# %%
best = sweep.query("sweep != 'sinks'").sort_values('ppl').groupby('cache_size').head(1)
best[['cache_size', 'label', 'ppl', 'ppl_low', 'ppl_high', 'kv_mib']].sort_values('cache_size').round(3)

# %% [markdown]
# ## The trade-off
# Left: lower and further left is better; bars are 95 % intervals, the grey band is the Pareto front. Right: each timed policy's decode step against Dense's in the same round (median and interquartile range).

# %%
report.draw(run, 'fig4_tradeoff')

# %% [markdown]
# ## How many sinks?
# Perplexity at a fixed cache size as sinks replace recent tokens, beside the paper's Table 2.

# %%
report.draw(run, 'fig5_ppl_vs_sinks')

# %% [markdown]
# ## The lab's press, done right: burst eviction
# The lab report configured `PythiaStreamingLLMPress(compression_ratio=0.7, n_sink=4, max_capacity=256)`: when the cache reaches 256 tokens, 70 % of the tokens between the sinks and the end leave at once, and the cache grows again (llama.cpp's context shift does the same with half). `BurstEviction` implements that description exactly; the lab's tuning table follows it. Each runs beside StreamingLLM with the same peak memory (the same capacity) and with the same mean memory (the middle of the burst's sawtooth), on a stream long enough for every configuration to burst. Read across a row: what does evicting in bursts cost against evicting one token at a time?

# %%
long_ids = load_stream(cfg.datasets[0], tokenizer, max_tokens=cfg.burst_tokens, bos=cfg.bos)
matched = {b: streaming_matches(b) for b in bursts}
pd.DataFrame([{'burst': b.label(), 'discards at once': b.discard, 'peak tokens': b.capacity,
               'mean tokens': b.mean_resident, 'equal peak': peak.label(), 'equal mean': mean.label()}
              for b, (peak, mean) in matched.items()])

# %%
for policy in dict.fromkeys([Dense()] + bursts + [p for pair in matched.values() for p in pair]):
    run.measure('ppl', policy, lambda: measure_perplexity(model, long_ids, policy),
                dataset=cfg.datasets[0], n_tokens=long_ids.shape[1])
report.burst_table(run).round(2)

# %% [markdown]
# ## Burst eviction's memory: a sawtooth
# Through the lab's configuration and its two StreamingLLM matches, read every 8 tokens: the KV cache held (not allocated: every policy here preallocates its peak) falls by the discarded tokens at each burst and grows back.

# %%
lab, (peak, mean) = bursts[0], matched[bursts[0]]
n = min(long_ids.shape[1], max(cfg.trace_tokens, 2 * lab.capacity))
for policy in (lab, peak, mean):
    run.measure('burst_trace', policy, lambda: measure_trace(model, long_ids[:, :n], policy, every=8, timed=False),
                dataset=cfg.datasets[0], n_tokens=n, every=8)
report.draw(run, 'fig9_burst_memory')

# %% [markdown]
# ## The lab's speed claims, on our implementation
# TTFT, TPOT, throughput and memory of greedy generation, `burst_new_tokens` past a prompt, batch 1: Dense, the lab's configuration and StreamingLLM at its peak memory, timed in turns (`speed_repeats` rounds after a warm-up). Each change against Dense is the median of the per-round ratios with its interquartile range. Between bursts a burst-eviction step attends to a varying number of tokens, so TPOT is given as mean and p90.

# %%
prompt = random_prompt(model, 1, cfg.speed_prompt_tokens)
lab_speed = [Dense(), lab, peak]
run.measure_all('burst_speed', lab_speed, lambda: measure_interleaved(model, lab_speed, prompt, cfg.burst_new_tokens,
                rounds=cfg.speed_repeats), batch_size=1, prompt_tokens=prompt.shape[1], new_tokens=cfg.burst_new_tokens,
                rounds=cfg.speed_repeats)
report.burst_speed_table(run).round(2)
