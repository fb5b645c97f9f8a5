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
retrieval_cache = None  # the KV budget (tokens) every bounded policy gets
retrieval_context_tokens = None  # prompt lengths
retrieval_depths = None  # where the key sits in the filler, 0 (start) to 1 (end)

# %% [markdown]
# # 06 · What each policy remembers: pass-key retrieval
#
# **Question.** Perplexity says how well a policy predicts the next token. It does not say whether a fact stated many tokens ago can still be recalled. A five-digit pass key is hidden in filler text (Mohtashami & Jaggi, 2023); at the end the model is asked for it. Each policy gets the same KV budget; a prompt longer than the cache is streamed through it, so the key may be evicted before the question arrives.
#
# **What to expect.** StreamingLLM's own FAQ says it does not extend the context: it should recall the key only while the key is within its window. Dense, with every token cached, is the ceiling: where Dense fails, the model is the limit, not the cache. Whether TOVA and H2O, which keep the tokens that received attention, hold on to the key is the open question this measures. Beside each accuracy curve, the share of trials whose key was still cached when the question was asked (read from the cache, every layer) says why a policy got it right or wrong.

# %%
import pandas as pd

from streamlib import plots, report, workbook as wb
from streamlib.models import describe
from streamlib.policies import H2O, TOVA, Dense, StreamingLLM, Window
from streamlib.retrieval import measure_retrieval, passkey_grid

# %%
cfg, run = wb.open_run(profile, run_dir=run_dir, dry_run=dry_run, force=force, retrieval_cache=retrieval_cache,
                       retrieval_context_tokens=retrieval_context_tokens, retrieval_depths=retrieval_depths)

# %% [markdown]
# ## The model and the trials
# Raw completion text for a base model; a chat model's own template for an instruction-tuned one. Every prompt ends with "The pass key is", so every policy is asked the same thing.

# %%
model, tokenizer = wb.model_and_tokenizer(cfg)
pd.DataFrame([describe(model)])

# %%
trials = passkey_grid(tokenizer, cfg.retrieval_context_tokens, cfg.retrieval_depths, cfg.retrieval_seeds,
                      bos=cfg.bos)
pd.DataFrame([{'seed': t.seed, 'key': t.key, 'depth': t.depth, 'prompt tokens': t.prompt_ids.shape[1],
               'key to question (tokens)': t.distance} for t in trials])

# %% [markdown]
# ## The policies, at one KV budget
# StreamingLLM twice: with its 4 sinks, and keeping the whole prompt prefix (BOS, the chat markup and the instructions, at most half the budget) as its sinks in the same budget, as llama.cpp's `--keep` does. H2O in both splits: heavy hitters and recent tokens half and half, and a quarter heavy. TOVA and H2O read a prompt longer than their budget token by token (a full decode step each), so they get the first `retrieval_scored_seeds` seeds of the grid; the others, prefilled in chunks, get all `retrieval_seeds`.

# %%
budget = cfg.retrieval_cache
streaming = StreamingLLM(cfg.n_sink, budget - cfg.n_sink)
keeps_prompt = streaming.with_sinks(min(trials[0].prefix_tokens, budget // 2))
policies = [Dense(), Window(budget), streaming, keeps_prompt, TOVA(budget),
            H2O(budget // 2, budget - budget // 2), H2O(budget // 4, budget - budget // 4)]
pd.DataFrame([{'label': p.label(), 'keeps (tokens)': p.budget} for p in policies])

# %% [markdown]
# ## Ask every policy
# One stream per trial: the prompt fed, whether the key's tokens are still cached read from the cache, then a greedy answer of `retrieval_new_tokens` tokens, scored by exact match of the number in it.

# %%
for policy in policies:
    seeds = cfg.retrieval_scored_seeds if policy.token_mode else cfg.retrieval_seeds
    mine = [t for t in trials if t.seed < seeds]
    run.measure('retrieval', policy, lambda: measure_retrieval(model, tokenizer, policy, mine,
                cfg.retrieval_new_tokens), context_tokens=cfg.retrieval_context_tokens, depths=cfg.retrieval_depths,
                seeds=seeds, new_tokens=cfg.retrieval_new_tokens)
answers = report.retrieval_trials(run)
answers[['label', 'distance', 'pass_key', 'answer', 'correct', 'key_cached']].head(12)

# %% [markdown]
# ## Accuracy against the key's distance from the question
# Solid: the share of trials answered correctly; dashed: the share whose key was still cached. The dotted line is the cache budget: beyond it a window has lost the key.

# %%
run.figure(plots.fig_retrieval(answers, budget), 'fig10_retrieval')

# %% [markdown]
# ## Accuracy per policy, with its interval
# Every trial of a policy pooled, with Wilson's 95 % interval; and the same over the trials whose key was still wholly cached at the question. Two policies differ only where their intervals do not overlap; with a handful of trials an interval spans half the range, so read the token-by-token policies' rows with that in mind.

# %%
report.retrieval_summary(run).round(2)

# %%
report.retrieval_table(run).round(2)
