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
n_sink = None  # attention sinks kept (None: the profile's)
window = None  # recent tokens kept
pos_shift = None  # positions within the cache (True, the paper's) or original positions (False)

# %% [markdown]
# # 02 · StreamingLLM
#
# **Question.** What do `n_sink` attention sinks plus a window of `window` recent tokens cost in quality, and what do they save in memory and time, against the dense baseline of 01?
#
# **What to expect.** At the trained length a correct StreamingLLM loses little: the paper's Pythia-12B goes from 12.09 (4+2044) to 13.17 (4+252). The KV cache stops growing at `n_sink + window` tokens. Run 01 first for the baseline columns.

# %%
import pandas as pd
from IPython.display import Markdown, display

from streamlib import report, workbook as wb
from streamlib.loading.data import load_stream
from streamlib.loading.models import describe
from streamlib.metrics.flops import measure_flops
from streamlib.metrics.quality import measure_perplexity
from streamlib.metrics.timing import measure_generation, measure_interleaved, random_prompt
from streamlib.policies import Dense
from streamlib.report import figures, to_markdown

# %%
cfg, run = wb.open_run(profile, run_dir=run_dir, dry_run=dry_run, force=force,
                       n_sink=n_sink, window=window, pos_shift=pos_shift)

# %% [markdown]
# ## The model, the text and the policy

# %%
model, tokenizer = wb.model_and_tokenizer(cfg)
pd.DataFrame([describe(model)])

# %%
streams = {corpus: load_stream(corpus, tokenizer, max_tokens=cfg.ppl_tokens, bos=cfg.bos) for corpus in cfg.datasets}
policy = cfg.streaming_policy()
print(policy, '-> keeps', policy.budget, 'tokens')

# %% [markdown]
# ## Perplexity under StreamingLLM

# %%
for corpus, ids in streams.items():
    run.measure('ppl', policy, lambda: measure_perplexity(model, ids, policy, progress=True),
                dataset=corpus, n_tokens=ids.shape[1])
run.metrics('ppl').query('n_tokens == @cfg.ppl_tokens')[['label', 'dataset', 'ppl', 'mean_nll']]

# %% [markdown]
# ## Dense against StreamingLLM along the text
# The two curves are one line until the cache first fills (`n_sink + window` tokens); after that StreamingLLM sees less context and its NLL can sit a little higher.

# %%
curves = run.curves('ppl').query('dataset == @cfg.datasets[0] and n_tokens == @cfg.ppl_tokens')
curves = curves[curves.label.isin(['Dense', policy.label()])]
run.figure(figures.fig_nll_vs_position(curves, cfg.trained_length()), 'nll_streaming')

# %% [markdown]
# ## FLOPs, speed and memory
# Dense and StreamingLLM are timed in turns (Dense, StreamingLLM, StreamingLLM, Dense, ...), `speed_repeats` rounds after a warm-up round, so whatever slows the machine down slows both alike. Each time is the median over rounds with its interquartile range; `vs Dense` is the median of the per-round ratios. Read a difference as real only where the ratio's range excludes 1. On a CPU a decode step mostly reads the weights (SmolLM2: 538 MB per token), so a smaller cache saves little time; on a GPU at long contexts the attention over the cache is what a bounded cache saves.

# %%
run.measure('flops', policy, lambda: measure_flops(model.config, policy, prompt_tokens=cfg.speed_prompt_tokens,
            stream_tokens=cfg.long_stream_tokens), tokens=cfg.long_stream_tokens)
for batch in cfg.speed_batch_sizes:
    prompt = random_prompt(model, batch, cfg.speed_prompt_tokens)
    run.measure_all('speed', [Dense(), policy], lambda: measure_interleaved(model, [Dense(), policy], prompt,
                    cfg.speed_new_tokens, rounds=cfg.speed_repeats), batch_size=batch, interleaved=True,
                    prompt_tokens=cfg.speed_prompt_tokens, new_tokens=cfg.speed_new_tokens, rounds=cfg.speed_repeats)
speed = report.speed_table(run)
speed.round(2)

# %%
run.figure(figures.fig_speed(speed[speed.label.isin(['Dense', policy.label()])]), 'fig6_speed')

# %% [markdown]
# ## Compiled decoding
# The same greedy generation at batch 1, eager and with `compile=True`: every decode step becomes one compiled graph (inductor on a CPU, CUDA graphs on a GPU); its warm-up run pays the compilation. Look at TPOT. On a GPU an eager step is mostly kernel launches, so expect it to drop several-fold; on a CPU reading the weights bounds it (about 2x on the micro model, little on Pythia-160m). Compiled decoding needs the model on one device, and a profile can leave it out (`compare_compiled: false`, as `offline` does: compiling SmolLM2's 30 layers takes about 3 minutes on 2 cores).

# %%
prompt = random_prompt(model, 1, cfg.speed_prompt_tokens)
for compiled in ((False, True) if cfg.compare_compiled and cfg.layer_map() is None else (False,)):
    run.measure('decode_modes', policy, lambda: measure_generation(model, policy, prompt, cfg.speed_new_tokens,
                repeats=cfg.speed_repeats, compile=compiled), compiled=compiled,
                prompt_tokens=cfg.speed_prompt_tokens, new_tokens=cfg.speed_new_tokens)
report.decode_modes_table(run).round(3)

# %% [markdown]
# ## The lab report's table
# Baseline against StreamingLLM, also saved as Markdown and LaTeX in `tables/`.

# %%
table = run.table(report.comparison(run), 'comparison')
display(Markdown(to_markdown(table)))
