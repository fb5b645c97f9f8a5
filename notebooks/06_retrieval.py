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
streameval_tokens = None  # the StreamEval stream's length (past the trained length to see what Dense does there)
recall_turns = None  # turns of the scripted chat (0: none)
head_split_shares = None  # shares of the kv heads HeadSplit keeps whole ([]: no section)
head_map_method = None  # the map HeadSplit picks its heads from: "retrieval" or "gates"
harness_seeds = None  # the pass key through lm-evaluation-harness, keys per depth (0: no section)

# %% [markdown]
# # 06 · What each policy remembers: pass key, StreamEval, recall across turns
#
# **Question.** Perplexity says how well a policy predicts the next token. It does not say whether a fact stated many tokens ago can still be recalled. A five-digit pass key is hidden in filler text (Mohtashami & Jaggi, 2023); at the end the model is asked for it. Each policy gets the same KV budget; a prompt longer than the cache is streamed through it, so the key may be evicted before the question arrives.
#
# **What to expect.** StreamingLLM's own FAQ says it does not extend the context: it should recall the key only while the key is within its window. Dense, with every token cached, is the ceiling: where Dense fails, the model is the limit, not the cache. Whether TOVA and H2O, which keep the tokens that received attention, hold on to the key is the open question this measures. Beside each accuracy curve, the share of trials whose key was still cached when the question was asked (read from the cache, every layer) says why a policy got it right or wrong.
#
# Then two tasks in one stream each, the way a streaming model meets them: **StreamEval** (the paper's section 4.4, rebuilt: questions every few lines of a long record, each about a line a set distance back, on past the trained length) and **recall across the turns of one chat** (facts the user states, asked again some turns later, the model writing every reply).

# %%
import pandas as pd
import torch

from streamlib import report, workbook as wb
from streamlib.experiments.grids import harness_policies, head_split_grid
from streamlib.loading.head_maps import head_map
from streamlib.loading.models import describe
from streamlib.metrics.chat import chat_header_ids
from streamlib.metrics.head_scores import map_trials, measure_head_scores
from streamlib.metrics.recall import measure_recall, recall_script
from streamlib.metrics.retrieval import measure_retrieval, passkey_grid
from streamlib.metrics.streameval import measure_streameval, streameval_task
from streamlib.policies import TOVA, BurstEviction, Dense, StreamingLLM, Window
from streamlib.report import figures

# %%
cfg, run = wb.open_run(profile, run_dir=run_dir, dry_run=dry_run, force=force, retrieval_cache=retrieval_cache,
                       retrieval_context_tokens=retrieval_context_tokens, retrieval_depths=retrieval_depths,
                       streameval_tokens=streameval_tokens, recall_turns=recall_turns,
                       head_split_shares=head_split_shares, head_map_method=head_map_method,
                       harness_seeds=harness_seeds)

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
# Dense, StreamingLLM twice and, as `task_policies` says, Window (the same budget without sinks), TOVA and H2O. StreamingLLM with its 4 sinks, and keeping the whole prompt prefix (BOS, the chat markup and the instructions, at most half the budget) as its sinks in the same budget, as llama.cpp's `--keep` does. H2O in each split of `h2o_heavy_shares` (the share of its budget that keeps heavy hitters; the rest keeps recent tokens). TOVA and H2O read a prompt longer than their budget token by token (a full decode step each), so they get the first `retrieval_scored_seeds` seeds of the grid; the others, prefilled in chunks, get all `retrieval_seeds`.

# %%
budget = cfg.retrieval_cache
streaming = StreamingLLM(cfg.n_sink, budget - cfg.n_sink)
keeps_prompt = streaming.with_sinks(min(trials[0].prefix_tokens, budget // 2))
window = [Window(budget)] if 'window' in cfg.task_policies else []
by_score = ([TOVA(budget)] if 'tova' in cfg.task_policies else []) + \
    (cfg.h2o_policies(budget) if 'h2o' in cfg.task_policies else [])
policies = [Dense(), *window, streaming, keeps_prompt, *by_score]
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
run.figure(figures.fig_retrieval(answers, budget), 'fig10_retrieval')

# %% [markdown]
# ## Accuracy per policy, with its interval
# Every trial of a policy pooled, with Wilson's 95 % interval; and the same over the trials whose key was still wholly cached at the question. Two policies differ only where their intervals do not overlap; with a handful of trials an interval spans half the range, so read the token-by-token policies' rows with that in mind.

# %%
report.retrieval_summary(run).round(2)

# %%
report.retrieval_table(run).round(2)

# %% [markdown]
# ## StreamEval: questions all along one stream
# A record of registers, one line each ("amber-falcon: 4821"), and after every `streameval_every` lines a question: a register's name again, about the line `d` lines back, `d` from `streameval_lines_back`. The answer's digits are in the stream (as if every earlier question had been answered right), and a question counts when the model's greedy choice is right at each digit, which is what greedy decoding would write. One stream, one cache per policy, read in chunks: it runs on past the trained length.
#
# **What to look for.** A bounded cache should answer whenever the line asked about is still in its window (left of the dotted budget line), at any stream length, and fail beyond it; Dense holds every line, so its accuracy is the model's own ceiling, until the stream passes the trained length (right panel).

# %%
task = streameval_task(tokenizer, cfg.streameval_tokens, cfg.streameval_lines_back, cfg.streameval_every,
                       bos=cfg.bos)
print(tokenizer.decode(task.ids[0, :task.prefix_tokens + 60]), '...')
task.questions.groupby('lines_back').agg(questions=('line', 'size'), tokens_back=('tokens_back', 'mean'))

# %% [markdown]
# The same budget as the pass key. StreamingLLM also keeps the record's instructions as sinks, and the lab's press (burst eviction with the first `burst_configs` ratio, when `task_policies` names it) runs at this budget too. TOVA and H2O read token by token: they get the first `streameval_scored_tokens` of the stream (0 leaves them out).

# %%
ratio = cfg.burst_configs[0][1]
stream_policies = [Dense(), *window, streaming, streaming.with_sinks(min(task.prefix_tokens, budget // 2))]
stream_policies += [BurstEviction(cfg.n_sink, budget, ratio)] if 'burst' in cfg.task_policies else []
if cfg.streameval_scored_tokens:
    stream_policies += [TOVA(budget)] + cfg.h2o_policies(budget)[:1]
for policy in stream_policies:
    read = cfg.streameval_scored_tokens if policy.token_mode else cfg.streameval_tokens
    run.measure('streameval', policy, lambda: measure_streameval(model, task, policy, max_tokens=read),
                stream_tokens=cfg.streameval_tokens, tokens_read=read, every=cfg.streameval_every,
                lines_back=cfg.streameval_lines_back)
questions = report.streameval_questions(run)
run.figure(figures.fig_streameval(questions, budget), 'fig13_streameval')

# %% [markdown]
# Per policy, distance and part of the stream, with Wilson's interval. Read a bounded policy's rows inside its window against Dense's: where the intervals overlap, the cache costs nothing there.

# %%
report.streameval_table(run).round(2)

# %% [markdown]
# ## Recall across the turns of one chat
# A scripted conversation through the model's chat template, one cache for all of it (Dense, Window and both StreamingLLMs; burst eviction, TOVA and H2O too with `recall_more_policies`): the user states facts about themselves ("My dog is called Biscuit.") and asks for each one some turns later; the model writes every reply, and a question's reply is primed ("Your dog is called") so that only the fact is asked for. A model without a chat template skips this (`recall_turns: 0`).
#
# **What to look for.** Accuracy against how far back the fact was stated: a bounded cache recalls what its window still holds; keeping the chat's header as sinks costs window. On the right, the KV cache held along the chat: Dense grows with every turn, the bounded caches stay flat.

# %%
chat = bool(cfg.recall_turns) and bool(getattr(tokenizer, 'chat_template', None))
script = recall_script(cfg.recall_turns, cfg.recall_turns_back) if chat else []
pd.DataFrame(script)[['turn', 'kind', 'turns_back', 'user', 'primed']].head(8) if chat else 'no recall chat'

# %%
if chat:
    header = len(chat_header_ids(tokenizer))
    chat_policies = [Dense(), *window, streaming, streaming.with_sinks(min(header, budget // 2))]
    if cfg.recall_more_policies:
        chat_policies += [BurstEviction(cfg.n_sink, budget, ratio), TOVA(budget)] + cfg.h2o_policies(budget)[:1]
    for policy in chat_policies:
        run.measure('recall', policy, lambda: measure_recall(model, tokenizer, policy, script),
                    turns=cfg.recall_turns, turns_back=cfg.recall_turns_back)
    run.figure(figures.fig_recall(report.recall_turns(run), budget), 'fig14_recall')

# %%
report.recall_table(run).round(2) if chat else 'no recall chat'

# %% [markdown]
# ## Memory beyond the window: retrieval heads
# StreamingLLM forgets a key once it leaves the window; its authors' answer to "can it remember more?" is no. Their follow-up, DuoAttention (Xiao et al., 2024), keeps the whole context in a few *retrieval heads* and sinks plus a window in all the others. Which heads retrieve can be found two ways, `head_map_method`:
#
# - `retrieval`, without training (Wu et al., 2024): while the model writes a pass key under Dense, a head whose strongest attention lands on the digit being copied retrieves it;
# - `gates`, DuoAttention's own: a gate per kv head mixing full and streaming attention, trained with the model frozen so the answer's hidden states stay Dense's while an L1 pull closes every gate it can (minutes to half an hour on a CPU, so only shipped).
#
# The map is the model's shipped one (`scripts/head_map.py`, `streamlib/assets/<model>/head_map.json` or `head_gates.json`) where it has one; else the retrieval score is measured here on six prompts apart from the ones asked below. Bright cells are the heads a split keeps whole.

# %%
shipped = head_map(cfg.model, cfg.head_map_method) if cfg.head_split_shares else None
method = cfg.head_map_method if shipped is not None else 'retrieval'
if cfg.head_split_shares and method != cfg.head_map_method:
    print(f'{cfg.model} ships no {cfg.head_map_method} map (scripts/head_map.py --method {cfg.head_map_method}): '
          'the retrieval score is measured here instead')
eager = wb.model_and_tokenizer(cfg, attn_implementation='eager')[0] if cfg.head_split_shares and shipped is None else None
scored = map_trials(tokenizer, cfg.head_split_tokens, bos=cfg.bos)
heads = run.measure('head_scores', Dense(), lambda: measure_head_scores(eager, tokenizer, scored, shipped, method),
                    tokens=cfg.head_split_tokens, trials=len(scored), shipped=shipped is not None,
                    method=method).curve if cfg.head_split_shares else None
del eager
report.draw(run, 'fig16_head_map')

# %% [markdown]
# The policies: Dense, StreamingLLM at the retrieval budget, and for each of `head_split_shares` HeadSplit keeping that share of the kv heads whole (the best scored) with the same sinks and window, beside StreamingLLM and PyramidKV's budgets per layer holding the same KV bytes at this prompt's length; with `head_split_scored_seeds`, TOVA and H2O at the retrieval budget too, which keep the tokens attention picked rather than the recent ones. The KV column is what each holds at the end of the prompt, from the model's shapes.

# %%
scores = torch.tensor(heads.pivot(index='layer', columns='kv_head', values='score').to_numpy()) \
    if heads is not None and len(heads) else None
grid = head_split_grid(cfg, scores, model.config) if scores is not None else []
if grid and cfg.head_split_scored_seeds:  # they read the prompt token by token: fewer keys
    grid += [TOVA(cfg.retrieval_cache)] + cfg.h2o_policies(cfg.retrieval_cache)[:1]
far = passkey_grid(tokenizer, [cfg.head_split_tokens], cfg.head_split_depths, cfg.head_split_seeds, bos=cfg.bos)
kv_mib = {p: p.kv_bytes_held(model.config, far[0].prompt_ids.shape[1], model.dtype) / 2**20 for p in grid}
pd.DataFrame([{'label': p.label(), 'KV at the prompt (MiB)': round(kv_mib[p], 2)} for p in grid])

# %% [markdown]
# Every policy on the same prompts, each key further back than the window (`head_split_depths` of a `head_split_tokens`-token prompt, `head_split_seeds` keys each; TOVA and H2O the first `head_split_scored_seeds`).

# %%
for policy in grid:
    seeds = cfg.head_split_scored_seeds if policy.token_mode else cfg.head_split_seeds
    mine = [t for t in far if t.seed < seeds]
    run.measure('beyond_window', policy, lambda: measure_retrieval(model, tokenizer, policy, mine,
                cfg.retrieval_new_tokens), context_tokens=cfg.head_split_tokens, depths=cfg.head_split_depths,
                seeds=seeds, new_tokens=cfg.retrieval_new_tokens, kv_mib=round(kv_mib[policy], 4))
report.beyond_window_table(run).round(3)

# %% [markdown]
# What to look for: StreamingLLM at the retrieval budget near zero (the key is gone), Dense the ceiling, and where HeadSplit sits between them for the KV bytes it holds, against StreamingLLM holding as many bytes. A difference counts only where the two Wilson intervals do not overlap.

# %%
report.draw(run, 'fig17_beyond_window')


# %% [markdown]
# ## The same question through lm-evaluation-harness
# EleutherAI's lm-evaluation-harness is how this field's numbers are usually made. `streamlib.metrics.harness` gives it a backend that runs any of its tasks under any policy: `python -m streamlib lm-eval --model streamlib --model_args model=smollm2-135m,policy=streamingllm:4+252 --tasks ...` (the README has more). Here its pass-key task (`streamlib_passkey`: this notebook's prompts as raw text, the first number of the answer against the key) under Dense, StreamingLLM and H2O at the retrieval budget and the largest head split above, `harness_seeds` keys per depth.
#
# What to look for: each policy's exact match close to its pass-key accuracy at the top of this notebook (the prompts are raw text here, without the chat template, so a difference can be the model's), and policies apart only where their intervals do not overlap.

# %%
from importlib.util import find_spec

harness = bool(cfg.harness_seeds) and find_spec('lm_eval') is not None
if cfg.harness_seeds and not harness:
    print('lm-evaluation-harness is not installed (pip install -e .[eval]): no section')
if harness:
    from streamlib.metrics.harness import measure_harness
    from streamlib.metrics.harness_tasks import PASSKEY, task_configs

    harness_tasks = [t for t in task_configs(run.path / 'lm_eval_tasks', tokenizer,
                                             passkey_tokens=tuple(cfg.retrieval_context_tokens),
                                             passkey_depths=tuple(cfg.retrieval_depths),
                                             passkey_seeds=cfg.harness_seeds) if t['task'] == PASSKEY]

# %%
for policy in harness_policies(cfg, scores, model.config) if harness else []:
    run.measure('harness', policy, lambda: measure_harness(model, tokenizer, policy, harness_tasks), task=PASSKEY,
                context_tokens=cfg.retrieval_context_tokens, depths=cfg.retrieval_depths, seeds=cfg.harness_seeds)
report.harness_grid(run)
