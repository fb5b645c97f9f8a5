"""The report: tables built from a run's records (like for like), in the units people read, as Markdown and LaTeX;
the figure captions; ``report.md`` and its one-page HTML rendering."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import pandas as pd

from .plots import family_label
from .records import policy_from_row

# Display units: what people expect to read in a table (records keep SI units: seconds and bytes).
DISPLAY_UNITS = {"s": ("ms", 1e3), "bytes": ("MiB", 1 / 2**20), "FLOP": ("GFLOP", 1e-9)}


def in_display_units(table: pd.DataFrame, value_columns=("baseline", "streamingllm", "value")) -> pd.DataFrame:
    """Seconds to ms, bytes to MiB (GiB from 1 GiB up), FLOP to GFLOP, in a table with a ``unit`` column."""
    out = table.copy()
    cols = [c for c in value_columns if c in out.columns]
    for i, unit in out["unit"].items():
        if unit not in DISPLAY_UNITS:
            continue
        new_unit, scale = DISPLAY_UNITS[unit]
        values = pd.to_numeric(out.loc[i, cols], errors="coerce")
        if unit == "bytes" and values.abs().max() >= 2**30:
            new_unit, scale = "GiB", 1 / 2**30
        out.loc[i, cols] = values * scale
        out.loc[i, "unit"] = new_unit
    return out


# What makes two measurements comparable: the same text and token count, the same batch and prompt, the same
# decoding mode. A record lacks the fields that do not apply to it; a missing field is a value like any other.
LIKE_FOR_LIKE = ("dataset", "n_tokens", "tokens", "batch_size", "prompt_tokens", "new_tokens", "compiled")


def _plain(value):
    """A record field as a comparable Python value: NaN and NA become None, whole floats become ints."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value.item() if hasattr(value, "item") else value


def describe_setting(setting: dict) -> str:
    """``{"dataset": "wikitext2", "n_tokens": 2048}`` -> ``"wikitext2, 2048 tokens"``: a table cell a reader parses."""
    forms = {"n_tokens": "{} tokens", "tokens": "{} tokens", "batch_size": "batch {}", "prompt_tokens": "prompt {}",
             "new_tokens": "{} new", "compiled": "{}"}
    parts = []
    for name, value in setting.items():
        if value is None:
            continue
        if name == "compiled":
            value = "compiled" if value else "eager"
        parts.append(forms.get(name, "{}").format(value))
    return ", ".join(parts) or "-"


def comparison_table(df: pd.DataFrame, baseline: dict, streaming: dict, metrics: list[str],
                     match: tuple[str, ...] = LIKE_FOR_LIKE, prefer: dict | None = None) -> pd.DataFrame:
    """The lab report's table: metric | baseline | StreamingLLM | change | measured on, from ``ok`` rows.

    ``baseline`` and ``streaming`` select rows by column values (e.g. ``{"policy": "dense"}``). For each metric the two
    sides are paired on the ``match`` columns, so a value is only set beside one measured on the same text, token
    count, batch and prompt; of several such pairs, those with the ``prefer`` values (e.g. the run's own token count)
    come first, then the latest. Where no pair matches, both values stay empty
    and ``measured on`` says what each side has. ``change`` is ``streaming / baseline - 1`` as a percentage.
    """
    ok = df[df["status"] == "ok"]
    match = [c for c in match if c in ok.columns]

    def latest_by_setting(selector: dict, metric: str) -> dict[tuple, pd.Series]:
        rows = ok[ok["metric"] == metric]
        for col, val in selector.items():
            rows = rows[rows[col] == val]
        # in time order, file order among rows of the same second: the last row of each setting stays
        return {tuple(_plain(row[c]) for c in match): row
                for _, row in rows.sort_values("timestamp", kind="stable").iterrows()}

    def recency(row: pd.Series) -> tuple:
        return row["timestamp"], row.name  # the row's place in the records breaks ties within a second

    out = []
    for metric in metrics:
        base, stream = latest_by_setting(baseline, metric), latest_by_setting(streaming, metric)
        common = [s for s in base if s in stream]
        row = {"metric": metric, "unit": "", "baseline": None, "streamingllm": None, "change_%": None}
        if common:
            def rank(s: tuple) -> tuple:
                preferred = all(_plain(v) == dict(zip(match, s)).get(k) for k, v in (prefer or {}).items())
                return preferred, max(recency(base[s]), recency(stream[s]))

            setting = max(common, key=rank)
            b, s = float(base[setting]["value"]), float(stream[setting]["value"])
            row.update(unit=base[setting]["unit"] or stream[setting]["unit"], baseline=b, streamingllm=s)
            row["change_%"] = (s / b - 1) * 100 if b != 0 else None
            row["measured on"] = describe_setting(dict(zip(match, setting)))
        elif base or stream:
            sides = []
            for name, found in (("baseline", base), ("streaming", stream)):
                settings = "; ".join(describe_setting(dict(zip(match, s))) for s in found) or "nothing"
                sides.append(f"{name}: {settings}")
            row["measured on"] = "no like-for-like pair (" + " | ".join(sides) + ")"
        else:
            row["measured on"] = "not measured"
        out.append(row)
    return pd.DataFrame(out, columns=["metric", "unit", "baseline", "streamingllm", "change_%", "measured on"])


def _fmt(value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1e5 or abs(value) < 1e-2:
            return f"{value:.3g}"
        return f"{value:.2f}"
    return str(value)


def to_markdown(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in table.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            cells.append(f"{v:+.1f}%" if c == "change_%" and isinstance(v, float) and v == v else _fmt(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_latex(table: pd.DataFrame) -> str:
    cols = list(table.columns)

    def esc(s: str) -> str:
        return s.replace("_", r"\_").replace("%", r"\%")

    lines = [r"\begin{tabular}{l" + "r" * (len(cols) - 1) + "}", r"\toprule",
             " & ".join(esc(c) for c in cols) + r" \\", r"\midrule"]
    for _, row in table.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            cells.append(esc(f"{v:+.1f}%" if c == "change_%" and isinstance(v, float) and v == v else _fmt(v)))
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ tables from the records --


def published_results() -> pd.DataFrame:
    """The published numbers (paper tables, attention_sinks benchmarks, the lab report) shipped with the package."""
    return pd.read_csv(Path(__file__).parent / "reference" / "published_results.csv",
                       dtype={"eval_tokens": "Int64", "n_sink": "Int64", "window": "Int64"})


# ------------------------------------------------------------------------------------ tables from the records --


def comparison(run) -> pd.DataFrame:
    """The lab report's table, baseline (Dense) vs the run's StreamingLLM: perplexity per dataset, TTFT, TPOT,
    throughput, KV bytes and peak memory at the first batch size, FLOPs per token over the long stream. In the units
    people read: ms, MiB or GiB, GFLOP. Each row pairs measurements of the same setting (``measured on``), the run's
    own setting first (``results.comparison_table``)."""
    cfg, df = run.cfg, run.records()
    streaming = cfg.streaming_policy().params()
    tables = []
    for corpus in cfg.datasets:
        t = comparison_table(df[(df["group"] == "ppl") & (df["dataset"] == corpus)], {"policy": "dense"}, streaming,
                             ["ppl"], prefer={"n_tokens": cfg.ppl_tokens})
        t["metric"] = f"ppl ({corpus})"
        tables.append(t)
    speed = df[(df["group"] == "speed") & (df["batch_size"] == cfg.speed_batch_sizes[0])] if "batch_size" in df else df[:0]
    memory = [m for m in ("gen_peak_allocated_mem", "gen_peak_rss_mem") if m in set(speed["metric"])]
    tables.append(comparison_table(speed, {"policy": "dense"}, streaming,
                                   ["ttft", "tpot_mean", "decode_throughput", "kv_bytes_after_prompt"] + memory,
                                   prefer={"prompt_tokens": cfg.speed_prompt_tokens, "new_tokens": cfg.speed_new_tokens}))
    tables.append(comparison_table(df[df["group"] == "flops"], {"policy": "dense"}, streaming,
                                   ["flops_stream_per_token"], prefer={"tokens": cfg.long_stream_tokens}))
    table = in_display_units(pd.concat(tables, ignore_index=True))
    names = {"ttft": "TTFT", "tpot_mean": "TPOT (mean)", "decode_throughput": "decode throughput",
             "kv_bytes_after_prompt": "KV cache after the prompt", "gen_peak_allocated_mem": "peak GPU memory",
             "gen_peak_rss_mem": "peak RSS", "flops_stream_per_token": "FLOPs per token (long stream)"}
    table["metric"] = [names.get(m, m) for m in table["metric"]]
    return table.rename(columns={"streamingllm": cfg.streaming_policy().label()})


def latest_of_each(wide: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """The latest measurement for each value of ``by`` (a re-run with other settings leaves older records behind)."""
    if wide.empty:
        return wide
    return wide.sort_values("timestamp", kind="stable").drop_duplicates(by, keep="last")


def _same_setting(wide: pd.DataFrame, **setting) -> pd.DataFrame:
    """The rows measured with these field values: one table compares policies on one prompt and token count."""
    for name, value in setting.items():
        wide = wide[wide[name] == value] if name in wide else wide.iloc[0:0]
    return wide


def speed_table(run) -> pd.DataFrame:
    """TTFT, TPOT (ms), decode throughput (tok/s), peak memory and KV cache (MiB) per policy and batch size, all on
    the run's prompt and generation lengths."""
    cfg = run.cfg
    wide = _same_setting(run.metrics("speed"), prompt_tokens=cfg.speed_prompt_tokens, new_tokens=cfg.speed_new_tokens)
    wide = latest_of_each(wide, ["label", "batch_size"])
    if wide.empty:
        return wide
    mem = "gen_peak_allocated_mem" if "gen_peak_allocated_mem" in wide else "gen_peak_rss_mem"
    out = wide[["label", "policy", "pos_shift", "batch_size"]].copy()
    out["pos_shift"] = out["pos_shift"].fillna(True).astype(bool)
    out["ttft_ms"] = wide["ttft"] * 1e3
    out["tpot_ms"] = wide["tpot_mean"] * 1e3
    out["throughput"] = wide["decode_throughput"]
    out["peak_mem_mib"] = wide[mem] / 2**20
    out["kv_mib"] = wide["kv_bytes_after_prompt"] / 2**20
    return out.sort_values(["batch_size", "label"]).reset_index(drop=True)


def decode_modes_table(run) -> pd.DataFrame:
    """Eager against compiled decoding (notebook 02): TTFT and TPOT (ms) per policy, batch 1, on the run's prompt and
    generation lengths."""
    cfg = run.cfg
    wide = _same_setting(run.metrics("decode_modes"), prompt_tokens=cfg.speed_prompt_tokens,
                         new_tokens=cfg.speed_new_tokens)
    wide = latest_of_each(wide, ["label", "compiled"])
    if wide.empty:
        return wide
    out = wide[["label", "compiled"]].copy()
    out["compiled"] = out["compiled"].astype(bool)
    out["ttft_ms"] = wide["ttft"] * 1e3
    out["tpot_ms"] = wide["tpot_mean"] * 1e3
    return out.sort_values(["label", "compiled"]).reset_index(drop=True)


SWEEP_SINKS = 4  # the sink count of the cache-size sweep (the paper's choice)


def sweep_table(run) -> pd.DataFrame:
    """One row per swept policy: perplexity on the sweep stream, KV bytes after the prompt (MiB), TPOT (ms) and the
    cache size in tokens; ``sweep`` says whether the row belongs to the cache-size sweep, the sink sweep or both."""
    cfg = run.cfg
    ppl = latest_of_each(_same_setting(run.metrics("ppl"), n_tokens=cfg.sweep_tokens, dataset=cfg.datasets[0]),
                         ["label"])
    speed = latest_of_each(_same_setting(run.metrics("sweep_speed"), prompt_tokens=cfg.speed_prompt_tokens), ["label"])
    if ppl.empty or speed.empty:
        return pd.DataFrame()
    cols = ["policy", "n_sink", "window", "pos_shift"]
    speed = speed[["label", "tpot_mean", "kv_bytes_after_prompt"]]
    out = ppl[["label"] + cols + ["ppl"]].merge(speed, on="label", how="inner")
    policies = [policy_from_row(r) for r in ppl.set_index("label").loc[out["label"]].reset_index().to_dict("records")]
    out["pos_shift"] = out["pos_shift"].fillna(True).astype(bool)
    out["n_sink"] = out["n_sink"].fillna(0).astype(int)
    out["cache_size"] = [p.budget for p in policies]
    out["kv_mib"] = out["kv_bytes_after_prompt"] / 2**20
    out["tpot_ms"] = out["tpot_mean"] * 1e3
    out.insert(1, "family", [family_label(p) for p in policies])
    in_cache = (out["cache_size"].isin(cfg.sweep_cache_sizes) & ((out["policy"] != "streamingllm")
                                                                  | (out["n_sink"] == SWEEP_SINKS))) \
        | (out["policy"] == "burst")  # the lab's tuning table: its own capacities
    in_sinks = (out["policy"] == "streamingllm") & out["pos_shift"] & (out["cache_size"] == cfg.sweep_sink_cache)
    out["sweep"] = ["cache+sinks" if a and b else "cache" if a else "sinks" if b else "" for a, b in zip(in_cache, in_sinks)]
    return out[out["sweep"] != ""].drop(columns=["tpot_mean", "kv_bytes_after_prompt"]).reset_index(drop=True)


# The lab report's speed claims for its press (0.7, 4, 256) against its baseline on Pythia-2.8b, 1,024-token tests.
LAB_CLAIMS = {"gen_peak_mem": "-10 %", "decode_throughput": "+21.6 %", "ttft": "-39 %", "tpot_mean": "-18 %"}


def burst_table(run) -> pd.DataFrame:
    """Each burst-eviction configuration of the run beside StreamingLLM at its peak and at its mean memory, and
    Dense: perplexity on 03's burst stream (the longest one recorded up to ``burst_tokens``)."""
    from .policies import streaming_matches

    cfg = run.cfg
    wide = _same_setting(run.metrics("ppl"), dataset=cfg.datasets[0])
    if wide.empty or "burst" not in set(wide["policy"]):
        return pd.DataFrame()
    lengths = wide.loc[(wide["policy"] == "burst") & (wide["n_tokens"] <= cfg.burst_tokens), "n_tokens"]
    if lengths.empty:
        return pd.DataFrame()
    ppl = latest_of_each(wide[wide["n_tokens"] == lengths.max()], ["label"]).set_index("label")["ppl"]
    rows = []
    for burst in cfg.burst_policies():
        peak, mean = streaming_matches(burst)
        rows.append({"burst eviction": burst.label(), "peak tokens": burst.capacity, "mean tokens": burst.mean_resident,
                     "ppl": ppl.get(burst.label()), "StreamingLLM, equal peak": ppl.get(peak.label()),
                     "StreamingLLM, equal mean": ppl.get(mean.label()), "Dense": ppl.get("Dense"),
                     "tokens": int(lengths.max())})
    out = pd.DataFrame(rows)
    out["burst vs equal mean %"] = (out["ppl"] / out["StreamingLLM, equal mean"] - 1) * 100
    return out


def burst_speed_table(run) -> pd.DataFrame:
    """The lab's five speed metrics on our implementation: Dense, the lab's configuration and StreamingLLM at its
    peak memory, greedy generation of ``burst_new_tokens`` at batch 1 (TPOT as mean and p90), with the change
    against Dense and the lab report's claim beside it."""
    cfg = run.cfg
    wide = latest_of_each(_same_setting(run.metrics("burst_speed"), prompt_tokens=cfg.speed_prompt_tokens,
                                        new_tokens=cfg.burst_new_tokens), ["label"])
    if wide.empty or "Dense" not in set(wide["label"]):
        return pd.DataFrame()
    memory = "gen_peak_allocated_mem" if "gen_peak_allocated_mem" in wide else "gen_peak_rss_mem"
    metrics = [("ttft", "TTFT", "ms", 1e3), ("tpot_mean", "TPOT (mean)", "ms", 1e3),
               ("tpot_p90", "TPOT (p90)", "ms", 1e3),
               ("decode_throughput", "decode throughput", "tok/s", 1.0), (memory, "peak memory", "MiB", 2**-20),
               ("kv_bytes_after_prompt", "KV cache after the prompt", "MiB", 2**-20)]
    values = wide.set_index("label")
    dense = values.loc["Dense"]
    rows = []
    for metric, name, unit, scale in metrics:
        row = {"metric": name, "unit": unit, "Dense": dense[metric] * scale}
        for label in values.index.drop("Dense"):
            row[label] = values.loc[label, metric] * scale
            row[f"{label} vs Dense"] = f"{(values.loc[label, metric] / dense[metric] - 1) * 100:+.1f} %"
        row["lab report's claim"] = LAB_CLAIMS.get("gen_peak_mem" if metric == memory else metric, "")
        rows.append(row)
    return pd.DataFrame(rows)


def retrieval_trials(run) -> pd.DataFrame:
    """Every pass-key trial of the run's retrieval setting (06), one row per trial and policy."""
    cfg = run.cfg
    trials = run.curves("retrieval")
    if trials.empty:
        return trials
    setting = (trials["new_tokens"] == cfg.retrieval_new_tokens) & (trials["seeds"] == cfg.retrieval_seeds)
    return trials[setting].reset_index(drop=True)


def retrieval_table(run) -> pd.DataFrame:
    """Accuracy and the share of trials whose key was still cached, per policy and distance from key to question;
    Dense (the model's own ceiling) first."""
    trials = retrieval_trials(run)
    if trials.empty:
        return trials
    table = trials.groupby(["policy", "label", "prompt_tokens", "depth"], sort=False).agg(
        distance=("distance", "mean"), trials=("correct", "size"), accuracy=("correct", "mean"),
        key_cached=("key_cached", "mean")).reset_index()
    order = {kind: i for i, kind in enumerate(KIND_ORDER)}
    table["kind"] = table["policy"].map(lambda kind: order.get(kind, len(order)))
    table = table.sort_values(["kind", "label", "prompt_tokens", "distance"], kind="stable")
    return table.drop(columns=["kind", "policy", "depth"]).reset_index(drop=True)


KIND_ORDER = ("dense", "window", "streamingllm", "burst", "tova", "h2o", "recompute")


# ---------------------------------------------------------------------------------------------- report.md --

CAPTIONS = {
    "fig1_nll_vs_position": "NLL along one long stream: Dense past its trained length (dotted line) against the "
                            "bounded caches.",
    "fig2_memory_vs_position": "KV-cache memory along the stream: Dense grows with every token, the bounded caches "
                               "stay flat.",
    "fig3_latency_vs_position": "Time per token along the stream: Recompute pays a forward over its whole window "
                                "for each token.",
    "fig4_tradeoff": "Perplexity against KV-cache memory over the cache-size sweep (Pareto front in grey), and "
                     "decode latency against cache size.",
    "fig5_ppl_vs_sinks": "Perplexity against the number of attention sinks at a fixed cache size, beside the "
                         "paper's Table 2.",
    "fig6_speed": "TTFT, TPOT and decode throughput, Dense against StreamingLLM, per batch size.",
    "fig7_attention_sinks": "Mean attention weight on each of the first four tokens, per layer, against uniform "
                            "attention.",
    "fig8_generation": "Memory and time per token while generating far past the trained length, Dense against "
                       "StreamingLLM.",
    "fig9_burst_memory": "KV cache held along the stream: the lab's burst eviction (0.7, 4, 256) as the sawtooth it "
                         "is, beside StreamingLLM at its peak and at its mean memory.",
    "fig10_retrieval": "Pass-key retrieval at one KV budget: accuracy, and the share of the key's tokens still cached "
                       "at the question, against the key's distance from it (Dense is the model's own ceiling).",
}

STYLE = """body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
  color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; }
blockquote { border-left: 4px solid #c33; margin-left: 0; padding-left: 1rem; }
em { color: #555; }"""


def write_report(run, tables: dict[str, pd.DataFrame]) -> Path:
    """``report.md`` in the run directory: the tables given, then every report figure the run has, embedded as a PNG
    with its one-line caption. A dry run says so at the top. ``run`` is a :class:`streamlib.workbook.Run`."""
    cfg = run.cfg
    lines = [f"# streamlib run `{run.path.name}`: profile {cfg.profile}, model {cfg.model}", ""]
    if cfg.dry_run:
        lines += ["> **DRY RUN.** Random weights, embedded text and scaled-down token counts: this checks that the "
                  f"`{cfg.profile}` chain runs end to end. None of its numbers is a result.", ""]
    for title, table in tables.items():
        lines += [f"## {title}", "", to_markdown(table), ""]
    lines += ["## Figures", ""]
    for name, caption in CAPTIONS.items():
        if (run.path / "figures" / f"{name}.png").exists():
            lines += [f"![{caption}](figures/{name}.png)", "", f"*{name}: {caption}* ([PDF](figures/{name}.pdf))", ""]
    path = run.path / "report.md"
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
