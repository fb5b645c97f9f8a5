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

# %% [markdown]
# # 01 · Baseline: dense attention
#
# **Question.** How good, how fast and how large is the model with its full KV cache, the baseline every streaming policy is measured against?
#
# **What to expect.** Perplexity at the trained length close to the model's published value; per-token NLL falling along the text as context builds up; on a pretrained Pythia, far more attention on token 0 than uniform attention would give it (the *attention sink* StreamingLLM relies on). The embedded micro model has no such sink: see its model card.
#
# Every number goes to the run's `results.jsonl`; a configuration already recorded is read back, not measured again (set `force = True` to re-measure).

# %%
import pandas as pd

from streamlib import report, workbook as wb
from streamlib.loading.data import load_stream
from streamlib.loading.models import describe
from streamlib.metrics.attention import measure_first_tokens
from streamlib.metrics.flops import measure_flops
from streamlib.metrics.quality import measure_perplexity
from streamlib.metrics.timing import measure_generation, random_prompt
from streamlib.policies import Dense
from streamlib.report import figures, in_display_units

# %%
cfg, run = wb.open_run(profile, run_dir=run_dir, dry_run=dry_run, force=force)

# %% [markdown]
# ## The model and the text

# %%
model, tokenizer = wb.model_and_tokenizer(cfg)
pd.DataFrame([describe(model)])

# %%
streams = {corpus: load_stream(corpus, tokenizer, max_tokens=cfg.ppl_tokens, bos=cfg.bos) for corpus in cfg.datasets}
policy = Dense()
{corpus: ids.shape[1] for corpus, ids in streams.items()}

# %% [markdown]
# ## Perplexity
# Each token is predicted from everything before it; perplexity is `exp(mean NLL)` over the stream.

# %%
for corpus, ids in streams.items():
    run.measure('ppl', policy, lambda: measure_perplexity(model, ids, policy, progress=True),
                dataset=corpus, n_tokens=ids.shape[1])
run.metrics('ppl').query("spec == @policy.spec()")[['label', 'dataset', 'n_tokens', 'ppl', 'mean_nll']]

# %% [markdown]
# ## NLL along the text
# The curve should fall as the context grows, and stay level up to the trained length (dotted line).

# %%
curves = run.curves('ppl').query("spec == @policy.spec()")
curves = curves.assign(label=curves.label + ' · ' + curves.dataset)
run.figure(figures.fig_nll_vs_position(curves, cfg.trained_length()), 'nll_baseline')

# %% [markdown]
# ## Where attention goes
# Attention weights need eager attention, so a second copy of the model is loaded with it. Look at token 0 against the grey line (uniform attention).

# %%
eager, _ = wb.model_and_tokenizer(cfg, attn_implementation='eager')
first = streams[cfg.datasets[0]][:, : min(512, cfg.ppl_tokens)]
attention = run.measure('attention', policy, lambda: measure_first_tokens(eager, first),
                        dataset=cfg.datasets[0], n_tokens=first.shape[1])
print(f"token 0 gets up to {attention['token0_over_uniform']:.1f}x the uniform share")

# %%
run.figure(figures.fig_attention(attention.curve, attention.curve['uniform'].iloc[0]), 'fig7_attention_sinks')

# %% [markdown]
# ## FLOPs
# Analytic counts (a multiply-add is 2 FLOPs), and calflops' count of one forward beside the analytic one as a check.

# %%
flops = run.measure('flops', policy, lambda: measure_flops(
    model.config, policy, prompt_tokens=cfg.speed_prompt_tokens, stream_tokens=cfg.long_stream_tokens,
    eager_model=eager, calflops_tokens=cfg.flops_tokens), tokens=cfg.long_stream_tokens)
del eager
in_display_units(flops.table())

# %% [markdown]
# ## Speed and memory
# Greedy generation after a random prompt, timed per step, at each batch size.

# %%
for batch in cfg.speed_batch_sizes:
    prompt = random_prompt(model, batch, cfg.speed_prompt_tokens)
    run.measure('speed', policy, lambda: measure_generation(model, policy, prompt, cfg.speed_new_tokens,
                repeats=cfg.speed_repeats), batch_size=batch, prompt_tokens=cfg.speed_prompt_tokens,
                new_tokens=cfg.speed_new_tokens)
report.speed_table(run).query("spec == @policy.spec()").round(2)
