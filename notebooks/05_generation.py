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
generation_prompt = None  # the prompt text (None: the start of the long-stream corpus)
generation_new_tokens = None  # tokens to generate after it
generation_temperature = None  # 0: greedy; above 0: sampled (with generation_top_p, generation_seed)

# %% [markdown]
# # 05 · Generation far past the trained length
#
# **Question.** The paper's headline demonstration: from one prompt, keep generating long after the model's trained length. What does the text look like with a full cache, and with StreamingLLM? What do memory and time per token do along the way?
#
# **What to expect.** From the paper and the lab's runs on Pythia: Dense degrades once the stream passes the trained length (repetition, then noise) while its memory and time per token keep growing; StreamingLLM stays fluent at flat memory. This notebook shows what happens and asserts nothing. The embedded micro model (5M parameters, trained at 512 tokens on the King James Bible) writes Bible-flavoured text of its own quality at any position, so in the `smoke` profile look at memory and latency, not at fluency.

# %%
import pandas as pd
from IPython.display import display

from streamlib import workbook as wb
from streamlib.caches.generation import excerpt
from streamlib.loading.data import load_stream, tokenize_stream
from streamlib.loading.models import describe
from streamlib.metrics.chat import chat_header_ids, measure_chat
from streamlib.metrics.timing import measure_generation_trace
from streamlib.policies import Dense
from streamlib.report import figures

# %%
cfg, run = wb.open_run(profile, run_dir=run_dir, dry_run=dry_run, force=force,
                       generation_prompt=generation_prompt, generation_new_tokens=generation_new_tokens, generation_temperature=generation_temperature)

# %% [markdown]
# ## The model and the prompt

# %%
model, tokenizer = wb.model_and_tokenizer(cfg)
pd.DataFrame([describe(model)])

# %%
text = cfg.generation_prompt or tokenizer.decode(
    load_stream(cfg.long_stream_corpus, tokenizer, max_tokens=cfg.generation_prompt_tokens, bos=False)[0])
prompt = tokenize_stream(tokenizer, text, bos=cfg.bos)  # BOS first where the model expects it (cfg.bos)
end = prompt.shape[1] + cfg.generation_new_tokens
print(f'prompt ({prompt.shape[1]} tokens): {text!r}')
print(f'the stream will reach position {end}: {end / cfg.trained_length():.1f}x the trained length')

# %% [markdown]
# ## Generate with each policy
# Every step is recorded: the token, its position, the KV bytes held and the step's time.

# %%
policies = [Dense(), cfg.streaming_policy()]
runs = {p.label(): run.measure('generation', p, lambda: measure_generation_trace(
            model, prompt, p, cfg.generation_new_tokens, temperature=cfg.generation_temperature,
            top_p=cfg.generation_top_p, seed=cfg.generation_seed),
            prompt=text, new_tokens=cfg.generation_new_tokens, temperature=cfg.generation_temperature,
            top_p=cfg.generation_top_p, seed=cfg.generation_seed)
        for p in policies}

# %% [markdown]
# ## The text at several positions
# Forty tokens from each position on. Read down a column: does the text hold up past the trained length?

# %%
trained = cfg.trained_length()
marks = sorted({m for m in (prompt.shape[1], trained // 2, trained, 2 * trained, 4 * trained, 8 * trained)
                if prompt.shape[1] <= m <= end - 40})
excerpts = pd.DataFrame({label: [excerpt(tokenizer, r.curve, m) for m in marks] for label, r in runs.items()},
                        index=pd.Index(marks, name='from position'))
excerpts.style.set_properties(**{'text-align': 'left', 'white-space': 'pre-wrap'})

# %% [markdown]
# ## Memory and time per token along the way

# %%
steps = pd.concat([r.curve for r in runs.values()], ignore_index=True)
run.figure(figures.fig_generation(steps, trained), 'fig8_generation')

# %%
summary = run.metrics('generation')[['label', 'tokens_generated', 'ttft', 'tpot_mean', 'final_kv_bytes']]
summary.assign(ttft_ms=summary.ttft * 1e3, tpot_ms=summary.tpot_mean * 1e3,
               final_kv_mib=summary.final_kv_bytes / 2**20).drop(columns=['ttft', 'tpot_mean', 'final_kv_bytes']).round(2)

# %% [markdown]
# ## A conversation past the cache
# The paper's headline use: one cache serves a whole chat. Each user turn goes through the model's chat template into the same stream under StreamingLLM, which keeps the template's header (the system prompt and the markup before the first message) as its sinks in the same budget, as `generate --chat` does: with 4 sinks the header leaves the cache once the chat passes its size, and the model loses its persona. Watch the stream position pass the cache size while the KV bytes stay flat. (Needs a chat model, such as SmolLM2 in the `offline` profile; `chat_turns = 0` skips it.)

# %%
chatty = cfg.chat_turns > 0 and getattr(tokenizer, 'chat_template', None) is not None
policy = cfg.streaming_policy()
if chatty:
    policy = policy.with_sinks(len(chat_header_ids(tokenizer)))
    print(f'{policy.label()}: keeps the chat header ({policy.n_sink} tokens) and the last {policy.window}')
chat = run.measure('chat', policy, lambda: measure_chat(model, tokenizer, policy, cfg.chat_turns,
                   cfg.chat_new_tokens), turns=cfg.chat_turns, new_tokens=cfg.chat_new_tokens) if chatty else None
if chat is not None and chat.curve is not None:
    display(chat.curve.assign(kv_mib=chat.curve.kv_bytes / 2**20).drop(columns='kv_bytes').round(3)
            .style.set_properties(**{'text-align': 'left'}))
