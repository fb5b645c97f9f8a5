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
export_figures = None  # also write the report's figures to the repository's figures/

# %% [markdown]
# # 07 · Report
#
# Every figure and table of the lab report, rebuilt from this run's records and curves alone: no model is loaded here, so the report can be re-drawn anywhere from a copied run directory. It writes `report.md` (figures embedded, one caption each), which `python -m streamlib run` renders to a self-contained `report.html`: the page to share, with the headings, tables, figures and captions and no code.

# %%
from IPython.display import Markdown, display

from streamlib import report, workbook as wb
from streamlib.core.arch import SLIDING, layer_types
from streamlib.core.costs import kv_bytes_per_token
from streamlib.loading.models import load_config
from streamlib.metrics.memory import kv_along_stream
from streamlib.policies import policy_from_row
from streamlib.report import figures, to_markdown

# %%
cfg, run = wb.open_run(profile, run_dir=run_dir, dry_run=dry_run, force=force, export_figures=export_figures)

# %% [markdown]
# ## Baseline against StreamingLLM
# Every perplexity with its 95 % interval, and the change with the paired interval (the same tokens, the same bootstrap blocks for both); timings are medians over interleaved rounds, and the change's interquartile range is that of the per-round ratios.

# %%
comparison = run.table(report.comparison(run), 'comparison')
display(Markdown(to_markdown(comparison)))

# %% [markdown]
# ## Along one long stream: quality, memory, latency

# %%
nll = run.curves('long_nll')
if not nll.empty:
    nll = nll.query('dataset == @cfg.long_stream_corpus')
    run.figure(figures.fig_nll_vs_position(nll, cfg.trained_length()), 'fig1_nll_vs_position')
    if 'kv_bytes' in nll and nll.kv_bytes.notna().any():
        run.figure(figures.fig_trace(nll.dropna(subset=['kv_bytes']), 'kv_bytes', 'KV cache held (MiB)',
                   'KV cache along the whole stream', 1 / 2**20,
                   log_x=nll.position.max() > 16 * cfg.trained_length()), 'fig12_kv_whole_stream')

# %%
traces = run.curves('trace')
traces = traces.query('dataset == @cfg.long_stream_corpus') if not traces.empty else traces
if not traces.empty:
    run.figure(figures.fig_trace(traces, 'kv_resident_bytes', 'KV cache held (MiB)', 'KV-cache memory along the stream',
               1 / 2**20), 'fig2_memory_vs_position')

# %%
if not traces.empty:
    run.figure(figures.fig_trace(traces, 'step_s', 'time per token (ms)', 'Per-token latency along the stream', 1e3),
               'fig3_latency_vs_position')

# %% [markdown]
# KV memory at the trained length, from the model's shapes (its config, not its weights) and the traced policies, with the traces on the formula as the check.

# %%
if not traces.empty:
    config, dtype = load_config(cfg.model), cfg.torch_dtype()
    traced = list(dict.fromkeys(policy_from_row(row) for row in run.metrics('trace').to_dict('records')))  # with every parameter
    at_length = kv_along_stream(config, traced, dtype, until=cfg.trained_length())
    first = kv_along_stream(config, traced, dtype, until=int(traces.position.max()), points=33)
    every_layer = kv_bytes_per_token(config, dtype) if SLIDING in layer_types(config) else None
    run.figure(figures.fig_kv_along_stream(at_length, first, traces, cfg.trained_length(), every_layer),
               'fig11_kv_at_length')

# %% [markdown]
# ## The sweep

# %%
report.draw(run, 'fig4_tradeoff')

# %%
report.draw(run, 'fig15_bits')

# %%
report.draw(run, 'fig5_ppl_vs_sinks')

# %% [markdown]
# ## Speed, attention, generation

# %%
speed = report.speed_table(run)
if not speed.empty:
    run.figure(figures.fig_speed(speed), 'fig6_speed')

# %%
attention = run.curves('attention')
if not attention.empty:
    run.figure(figures.fig_attention(attention, attention['uniform'].iloc[0]), 'fig7_attention_sinks')

# %%
steps = run.curves('generation')
if not steps.empty:
    steps = steps.query('new_tokens == @cfg.generation_new_tokens')
    run.figure(figures.fig_generation(steps, cfg.trained_length()), 'fig8_generation')

# %% [markdown]
# ## The lab's press, done right
# Burst eviction with the lab's configuration and tuning table beside StreamingLLM at the same peak and the same mean memory; then the lab's speed metrics on our implementation.

# %%
bursts = report.burst_table(run)
bursts.round(2)

# %%
report.draw(run, 'fig9_burst_memory')
report.burst_speed_table(run).round(2)

# %% [markdown]
# ## What each policy remembers
# Pass-key retrieval at one KV budget (06): accuracy and whether the key was still cached, against its distance from the question.

# %%
retrieval = report.retrieval_table(run)
retrieval_summary = report.retrieval_summary(run)
if not retrieval.empty:
    run.figure(figures.fig_retrieval(report.retrieval_trials(run), cfg.retrieval_cache), 'fig10_retrieval')
retrieval_summary.round(2)

# %% [markdown]
# StreamEval (06): questions all along one stream about facts a set number of lines back, before and past the trained length; then recall across the turns of one chat (models with a chat template).

# %%
streameval = report.streameval_table(run)
if not streameval.empty:
    run.figure(figures.fig_streameval(report.streameval_questions(run), cfg.retrieval_cache), 'fig13_streameval')
streameval.round(2)

# %%
recall = report.recall_table(run)
if not recall.empty:
    run.figure(figures.fig_recall(report.recall_turns(run), cfg.retrieval_cache), 'fig14_recall')
recall.round(2)

# %% [markdown]
# Memory beyond the window (06): the retrieval score of every kv head, then pass keys further back than the window under HeadSplit and StreamingLLM at equal KV bytes.

# %%
report.draw(run, 'fig16_head_map')

# %%
report.draw(run, 'fig17_beyond_window')
report.beyond_window_table(run).round(3)

# %% [markdown]
# ## Published numbers
# For shape, not digits: models, data and protocols differ.

# %%
published = report.published_results()
published[['source', 'table', 'model', 'dataset', 'n_sink', 'window', 'ppl', 'note']].astype(object).fillna('')

# %% [markdown]
# ## report.md
# The tables above and the sweep's, latency, bit-width and task tables, as `streamlib.report.report_tables` lists them, then every figure with its caption.

# %%
tables = report.report_tables(run)
list(tables)

# %%
report_md = report.write_report(run, tables, note=report.INTERVALS_NOTE)
print('wrote', report_md)
