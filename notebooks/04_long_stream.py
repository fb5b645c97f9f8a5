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
long_stream_tokens = None  # tokens of the long text to stream
trace_tokens = None  # tokens fed one by one for the memory and latency traces

# %% [markdown]
# # 04 · A long stream
#
# **Question.** What happens far past the trained length: to quality, to memory, to time per token?
#
# **What to expect.** The paper's Figure 3: Dense's NLL rises once the stream passes the trained length (dotted line), Window's rises as soon as its first tokens are evicted, StreamingLLM and Recompute stay flat. Dense's KV memory and latency grow with every token; the bounded caches stay flat; Recompute pays a whole forward over its window for each token.

# %%
import pandas as pd

from streamlib import report, workbook as wb
from streamlib.core.arch import SLIDING, layer_types
from streamlib.core.costs import kv_bytes_per_token
from streamlib.loading.data import load_stream
from streamlib.loading.models import describe
from streamlib.metrics.memory import kv_along_stream
from streamlib.metrics.quality import measure_perplexity
from streamlib.metrics.timing import measure_trace
from streamlib.policies import Dense, Recompute, Window
from streamlib.report import figures

# %%
cfg, run = wb.open_run(profile, run_dir=run_dir, dry_run=dry_run, force=force,
                       long_stream_tokens=long_stream_tokens, trace_tokens=trace_tokens)

# %% [markdown]
# ## The model and one long text

# %%
model, tokenizer = wb.model_and_tokenizer(cfg)
pd.DataFrame([describe(model)])

# %%
ids = load_stream(cfg.long_stream_corpus, tokenizer, max_tokens=cfg.long_stream_tokens, bos=cfg.bos)
print(f'{ids.shape[1]} tokens of {cfg.long_stream_corpus}: {ids.shape[1] / cfg.trained_length():.1f}x '
      f'the trained length of {cfg.trained_length()}')

# %% [markdown]
# ## The policies
# Dense stops at `max_dense_tokens`; Recompute, at one forward over its window per token, reads the first `recompute_tokens` only. The bounded policies named in `long_stream_policies` (StreamingLLM, Window and the lab's press, burst eviction with the first of `burst_configs`, unless the profile says otherwise) stream the whole text; the others stop where Dense does.

# %%
policies = [Dense(), Window(cfg.n_sink + cfg.window), Recompute(cfg.recompute_window), cfg.streaming_policy(),
            cfg.burst_policies()[0]]
stretch = {p: ids[:, : cfg.recompute_tokens] if p.token_mode
           else ids if p.name in cfg.long_stream_policies else ids[:, : cfg.max_dense_tokens] for p in policies}
pd.DataFrame([{'label': p.label(), 'keeps': p.budget, 'tokens streamed': stretch[p].shape[1]} for p in policies])

# %% [markdown]
# ## NLL along the stream

# %%
for policy in policies:
    run.measure('long_nll', policy, lambda: measure_perplexity(model, stretch[policy], policy, kv_bytes=True,
                progress=True), dataset=cfg.long_stream_corpus, n_tokens=stretch[policy].shape[1])
labels = [p.label() for p in policies]
nll = run.curves('long_nll').query('dataset == @cfg.long_stream_corpus and label in @labels')
run.figure(figures.fig_nll_vs_position(nll, cfg.trained_length()), 'fig1_nll_vs_position')

# %% [markdown]
# ## Mean NLL by stretch of the stream
# The same curves as numbers, each mean with its 95 % interval (block bootstrap inside the stretch): the trained length in two halves, then stretches of an eighth of it up to twice the trained length (where a model without sinks breaks, if it does), a column per trained length up to 4x, then stretches that double. Read across a row to see a policy drift, and compare two policies' stretches only where their intervals are apart.

# %%
end, trained = nll.position.max() + 1, cfg.trained_length()
bins = [0, trained // 2] + list(range(trained, min(end, 2 * trained), trained // 8))
bins += list(range(2 * trained, min(end, 4 * trained + 1), trained))
bins += [trained * 2**k for k in range(3, 40) if trained * 2**k < end] + [end]  # then 8x, 16x, 32x ...
report.stretch_table(nll, [b for b in bins if b <= end])

# %% [markdown]
# ## KV memory along the whole stream
# What each cache held after every forward of the NLL pass above, to the end of the stream: Dense grows with every token it reads, the bounded caches stay flat however long the stream (the traces below follow the first `trace_tokens` token by token).

# %%
held = nll.dropna(subset=['kv_bytes']) if 'kv_bytes' in nll else nll.iloc[:0]
if len(held):
    run.figure(figures.fig_trace(held, 'kv_bytes', 'KV cache held (MiB)', 'KV cache along the whole stream',
               1 / 2**20, log_x=end > 16 * trained), 'fig12_kv_whole_stream')
held.groupby('label').agg(tokens=('position', 'max'), first_mib=('kv_bytes', 'first'),
                          last_mib=('kv_bytes', 'last'), max_mib=('kv_bytes', 'max')).div(
    [1, 2**20, 2**20, 2**20]).round(2) if len(held) else held

# %% [markdown]
# ## Memory and latency along the stream, token by token

# %%
for policy in policies:
    n = min(cfg.trace_tokens, stretch[policy].shape[1])
    run.measure('trace', policy, lambda: measure_trace(model, ids[:, :n], policy,
                every=cfg.trace_every, max_dense_tokens=cfg.max_dense_tokens),
                dataset=cfg.long_stream_corpus, n_tokens=n, every=cfg.trace_every)
traces = run.curves('trace').query('dataset == @cfg.long_stream_corpus and label in @labels')
traces.groupby('label').tail(1)[['label', 'position', 'kv_bytes', 'kv_resident_bytes', 'step_s']]

# %%
run.figure(figures.fig_trace(traces, 'kv_resident_bytes', 'KV cache held (MiB)', 'KV-cache memory along the stream',
           1 / 2**20), 'fig2_memory_vs_position')

# %%
run.figure(figures.fig_trace(traces, 'step_s', 'time per token (ms)', 'Per-token latency along the stream',
           1e3), 'fig3_latency_vs_position')

# %% [markdown]
# ## KV memory at the trained length
# The traces stop after `trace_tokens`; what each cache holds at any length follows from the model's shapes (`policy.kv_bytes_held`), and the right panel checks that formula against the traces (the markers should sit on the lines). A hybrid model (Gemma 3) keeps only its trained window in its sliding layers whatever the policy, so Dense grows in its few full layers alone; the dotted line is what a cache that kept every token in every layer would hold.

# %%
dtype = next(model.parameters()).dtype
hybrid = SLIDING in layer_types(model.config)
at_length = kv_along_stream(model.config, policies, dtype, until=cfg.trained_length())
first = kv_along_stream(model.config, policies, dtype, until=int(traces.position.max()), points=33)
run.figure(figures.fig_kv_along_stream(at_length, first, traces, cfg.trained_length(),
           kv_bytes_per_token(model.config, dtype) if hybrid else None), 'fig11_kv_at_length')
at_length.groupby('label').tail(1).assign(kv_mib=lambda d: d.kv_bytes / 2**20)[['label', 'position', 'kv_mib']].round(2)
