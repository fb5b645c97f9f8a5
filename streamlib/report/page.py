"""The run's report as one page: ``report.md`` (the tables given, then the figures with their captions) and
``report.html``, the same page with its images inlined."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import pandas as pd

from ..core.format import to_markdown

CAPTIONS = {
    "fig1_nll_vs_position": "NLL along one long stream (bands: 95 % CI of each stretch's mean): Dense past its "
                            "trained length (dotted line) against the bounded caches.",
    "fig2_memory_vs_position": "KV-cache memory along the stream: Dense grows with every token, the bounded caches "
                               "stay flat.",
    "fig3_latency_vs_position": "Time per token along the stream: Recompute pays a forward over its whole window "
                                "for each token.",
    "fig4_tradeoff": "Perplexity (95 % CI bars) against KV-cache memory over the cache-size sweep (Pareto front in "
                     "grey), and each timed policy's decode step against Dense's in the same round (median, IQR).",
    "fig5_ppl_vs_sinks": "Perplexity (95 % CI bars) against the number of attention sinks at a fixed cache size, "
                         "beside the paper's Table 2.",
    "fig6_speed": "TTFT, TPOT and decode throughput, Dense against StreamingLLM, per batch size.",
    "fig7_attention_sinks": "Mean attention weight on each of the first four tokens, per layer, against uniform "
                            "attention.",
    "fig8_generation": "Memory and time per token while generating far past the trained length, Dense against "
                       "StreamingLLM.",
    "fig9_burst_memory": "KV cache held along the stream: the lab's burst eviction (0.7, 4, 256) as the sawtooth it "
                         "is, beside StreamingLLM at its peak and at its mean memory.",
    "fig10_retrieval": "Pass-key retrieval at one KV budget: accuracy (Wilson 95 % CI bars), and the share of the key's tokens still cached "
                       "at the question, against the key's distance from it (Dense is the model's own ceiling).",
    "fig11_kv_at_length": "KV cache held up to the trained length, from the model's shapes (a hybrid model's sliding "
                          "layers keep their window whatever the policy; dotted: every layer keeping every token), "
                          "and the formula against the measured traces over the first tokens.",
    "fig12_kv_whole_stream": "KV cache held after every forward of the long stream's NLL pass, to its end: Dense "
                             "grows, the bounded caches stay flat.",
    "fig13_streameval": "StreamEval: questions in one stream about facts a set number of lines back, accuracy "
                        "(Wilson 95 % CI bars) against the tokens from fact to question, before and past the trained "
                        "length.",
    "fig14_recall": "Recall across turns of one chat: accuracy (Wilson 95 % CI bars) against the turns from a fact to "
                    "its question, and the KV cache held after each turn.",
    "fig16_head_map": "The map HeadSplit picks its heads from, per kv head: the retrieval score (the share of a pass "
                      "key's digits its strongest attention lands on while the model writes the key, under Dense) or "
                      "DuoAttention's trained gate (1: full attention, 0: streaming), as the title says; the "
                      "brightest heads are kept whole.",
    "fig17_beyond_window": "Pass keys further back than the window: accuracy (Wilson 95 % CI bars) against the KV "
                           "cache each policy holds at the prompt's length; HeadSplit keeping its best retrieval heads "
                           "whole beside StreamingLLM at equal bytes.",
    "fig15_bits": "Bits per kept token: the paired change in perplexity (95 % CI bars) against KV memory for one cache at fewer bits and for "
                  "caches of equal code bytes (more tokens at fewer bits), and the paired change from quantizing the "
                  "sinks too.",
}

STYLE = """body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
  color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; }
blockquote { border-left: 4px solid #c33; margin-left: 0; padding-left: 1rem; }
em { color: #555; }"""


def write_report(run, tables: dict[str, pd.DataFrame], note: str = "") -> Path:
    """``report.md`` in the run directory: ``note`` (e.g. how the intervals are made), the tables given, then every
    report figure the run has, embedded as a PNG with its one-line caption. A dry run says so at the top. ``run`` is
    a :class:`streamlib.experiments.records.Run`; of several processes sharing the run, the first writes it."""
    path = run.path / "report.md"
    if not run.share.main:
        return path
    cfg = run.cfg
    lines = [f"# streamlib run `{run.path.name}`: profile {cfg.profile}, model {cfg.model}", ""]
    if cfg.dry_run:
        lines += ["> **DRY RUN.** Random weights, embedded text and scaled-down token counts: this checks that the "
                  f"`{cfg.profile}` chain runs end to end. None of its numbers is a result.", ""]
    if note:
        lines += [note, ""]
    for title, table in tables.items():
        lines += [f"## {title}", "", to_markdown(table), ""]
    lines += ["## Figures", ""]
    for name, caption in CAPTIONS.items():
        if (run.path / "figures" / f"{name}.png").exists():
            lines += [f"![{caption}](figures/{name}.png)", "", f"*{name}: {caption}* ([PDF](figures/{name}.pdf))", ""]
    path.write_text("\n".join(lines))
    return path


def render_html(markdown_path: str | Path) -> Path:
    """``report.html`` beside ``report.md``: the Markdown rendered (headings, tables, captions) with each PNG it
    links inlined, so the one file can be mailed or opened anywhere."""
    import mistune

    md_path = Path(markdown_path)
    body = mistune.create_markdown(plugins=["table"])(md_path.read_text(encoding="utf-8"))

    def inline(match: re.Match) -> str:
        image = md_path.parent / html.unescape(match.group(1))
        if not image.is_file():
            return match.group(0)
        return f'src="data:image/png;base64,{base64.b64encode(image.read_bytes()).decode()}"'

    body = re.sub(r'src="([^"]+\.png)"', inline, body)
    title = md_path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ").replace("`", "")
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>\n"
            f"<style>\n{STYLE}\n</style></head>\n<body>\n{body}</body></html>\n")
    out = md_path.with_suffix(".html")
    out.write_text(page, encoding="utf-8")
    return out
