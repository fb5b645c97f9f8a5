"""Like for like: the lab report's baseline-against-streaming table, the fields that make two measurements
comparable, and the intervals every comparison carries (:mod:`streamlib.core.stats`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..core.format import format_interval, in_display_units, plain_value
from ..core.stats import BLOCK, RESAMPLES, paired_ratio_interval, perplexity_interval
from ..policies import baseline

CI = "95 % CI"


INTERVALS_NOTE = (f"Perplexity intervals: {CI}, circular block bootstrap over the per-token NLL ({BLOCK}-token blocks, "
                  f"{RESAMPLES} resamples); comparisons on the same tokens are paired (the same blocks for both). "
                  "Accuracies: Wilson 95 % interval. Timings: median over interleaved rounds, with the interquartile "
                  "range (IQR); a change against Dense is the median of the per-round ratios.")


# What makes two measurements comparable: the same text and token count, the same batch and prompt, the same
# decoding mode. A record lacks the fields that do not apply to it; a missing field is a value like any other.
LIKE_FOR_LIKE = ("dataset", "n_tokens", "tokens", "batch_size", "prompt_tokens", "new_tokens", "compiled")


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

    ``baseline`` and ``streaming`` select rows by column values (e.g. ``{"spec": "dense"}``). For each metric the two
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
        return {tuple(plain_value(row[c]) for c in match): row
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
                preferred = all(plain_value(v) == dict(zip(match, s)).get(k) for k, v in (prefer or {}).items())
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


def published_results() -> pd.DataFrame:
    """The published numbers (paper tables, attention_sinks benchmarks, the lab report) shipped with the package."""
    return pd.read_csv(Path(__file__).resolve().parents[1] / "reference" / "published_results.csv",
                       dtype={"eval_tokens": "Int64", "n_sink": "Int64", "window": "Int64"})


def comparison(run) -> pd.DataFrame:
    """The lab report's table, baseline (Dense) vs the run's StreamingLLM: perplexity per dataset, TTFT, TPOT,
    throughput, KV bytes and peak memory at the first batch size, FLOPs per token over the long stream. In the units
    people read: ms, MiB or GiB, GFLOP. Each row pairs measurements of the same setting (``measured on``), the run's
    own setting first (:func:`comparison_table`)."""
    cfg, df = run.cfg, run.records()
    streaming, dense = {"spec": cfg.streaming_policy().spec()}, {"spec": baseline().spec()}
    tables = []
    for corpus in cfg.datasets:
        t = comparison_table(df[(df["group"] == "ppl") & (df["dataset"] == corpus)], dense, streaming,
                             ["ppl"], prefer={"n_tokens": cfg.ppl_tokens})
        t["metric"] = f"ppl ({corpus})"
        tables.append(t)
    speed = df[(df["group"] == "speed") & (df["batch_size"] == cfg.speed_batch_sizes[0])] if "batch_size" in df else df[:0]
    memory = [m for m in ("gen_peak_allocated_mem", "gen_peak_rss_mem") if m in set(speed["metric"])]
    tables.append(comparison_table(speed, dense, streaming,
                                   ["ttft", "tpot_mean", "decode_throughput", "kv_bytes_after_prompt"] + memory,
                                   prefer={"prompt_tokens": cfg.speed_prompt_tokens, "new_tokens": cfg.speed_new_tokens}))
    tables.append(comparison_table(df[df["group"] == "flops"], dense, streaming,
                                   ["flops_stream_per_token"], prefer={"tokens": cfg.long_stream_tokens}))
    table = in_display_units(pd.concat(tables, ignore_index=True))
    _comparison_intervals(run, table, streaming)
    names = {"ttft": "TTFT", "tpot_mean": "TPOT (mean)", "decode_throughput": "decode throughput",
             "kv_bytes_after_prompt": "KV cache after the prompt", "gen_peak_allocated_mem": "peak GPU memory",
             "gen_peak_rss_mem": "peak RSS", "flops_stream_per_token": "FLOPs per token (long stream)"}
    table["metric"] = [names.get(m, m) for m in table["metric"]]
    label = cfg.streaming_policy().label()
    table = table[["metric", "unit", "baseline", f"baseline {CI}", "streamingllm", f"streaming {CI}", "change_%",
                   f"change {CI}", "change IQR (timings)", "measured on"]]
    return table.rename(columns={"streamingllm": label, f"streaming {CI}": f"{label} {CI}"})


def _comparison_intervals(run, table: pd.DataFrame, streaming: dict) -> None:
    """Fill the comparison's interval columns: perplexity rows get each side's 95 % CI and the paired change's
    (on the run's own token count); TTFT and TPOT rows get, from the interleaved timing, the median of the per-round
    ratios as their change and the ratios' IQR beside it."""
    cfg = run.cfg
    for col in (f"baseline {CI}", f"streaming {CI}", f"change {CI}", "change IQR (timings)"):
        table[col] = "–"
    label = cfg.streaming_policy().label()
    for corpus in cfg.datasets:
        wide = latest_of_each(same_setting(run.metrics("ppl"), dataset=corpus, n_tokens=cfg.ppl_tokens), ["label"])
        nll = nll_curves(run, "ppl", wide[wide["label"].isin(["Dense", label])]) if not wide.empty else {}
        rows = table.index[table["metric"] == f"ppl ({corpus})"]
        if rows.empty:
            continue
        row = rows[0]
        table.loc[row, f"baseline {CI}"] = format_interval(*interval_pair(ppl_interval(nll, "Dense")))
        table.loc[row, f"streaming {CI}"] = format_interval(*interval_pair(ppl_interval(nll, label)))
        iv = paired_interval(nll, label, "Dense")
        table.loc[row, f"change {CI}"] = resolved_change(iv.value, iv.low, iv.high) if iv else "–"
    speed = latest_of_each(same_setting(run.metrics("speed"), batch_size=cfg.speed_batch_sizes[0],
                                         prompt_tokens=cfg.speed_prompt_tokens, new_tokens=cfg.speed_new_tokens),
                           ["label"])
    if speed.empty or "ttft_vs_baseline" not in speed or label not in set(speed["label"]):
        return
    v = speed.set_index("label").loc[label]
    for metric, ratio in (("ttft", "ttft_vs_baseline"), ("tpot_mean", "tpot_vs_baseline")):
        if v[ratio] == v[ratio]:
            # the change is the median of the per-round ratios, as its IQR beside it (not the ratio of medians)
            rows = table["metric"] == metric
            table.loc[rows, "change_%"] = (v[ratio] - 1) * 100
            table.loc[rows, "change IQR (timings)"] = format_interval(v[ratio + "_q1"], v[ratio + "_q3"], percent=True)


def latest_of_each(wide: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """The latest measurement for each value of ``by`` (a re-run with other settings leaves older records behind)."""
    if wide.empty:
        return wide
    return wide.sort_values("timestamp", kind="stable").drop_duplicates(by, keep="last")


def same_setting(wide: pd.DataFrame, **setting) -> pd.DataFrame:
    """The rows measured with these field values: one table compares policies on one prompt and token count."""
    for name, value in setting.items():
        wide = wide[wide[name] == value] if name in wide else wide.iloc[0:0]
    return wide


def nll_curves(run, group: str, wide: pd.DataFrame) -> dict[str, np.ndarray]:
    """``label -> per-token NLL`` (in position order) of the measurement each row of ``wide`` records (its ``key``)."""
    curves = run.curves(group)
    if curves.empty or wide.empty:
        return {}
    out = {}
    for label, key in zip(wide["label"], wide["key"]):
        c = curves[curves["key"] == key]
        if not c.empty:
            out[label] = c.sort_values("position")["nll"].to_numpy()
    return out


def ppl_interval(nll: dict, label: str):
    """The perplexity interval of ``label``'s NLL, or None when it has no curve."""
    return perplexity_interval(nll[label]) if label in nll else None


def paired_interval(nll: dict, label: str, reference: str):
    """The paired ratio of perplexities ``label / reference`` on the same tokens, or None when either curve is
    missing or they cover different tokens."""
    if label not in nll or reference not in nll or len(nll[label]) != len(nll[reference]):
        return None
    return paired_ratio_interval(nll[label], nll[reference])


def interval_bounds(intervals) -> tuple[list, list]:
    return ([iv.low if iv else np.nan for iv in intervals], [iv.high if iv else np.nan for iv in intervals])


def resolved_change(value, low, high) -> str:
    """A paired ratio's interval as a change in percent, saying when it includes no change."""
    if value != value or low != low:
        return "–"
    if low == high == 1:
        return "(itself)"
    cell = format_interval(low, high, percent=True)
    return cell if (low > 1 or high < 1) else cell + " not resolved"


def interval_pair(interval) -> tuple:
    return (interval.low, interval.high) if interval else (None, None)


def stretch_table(curves: pd.DataFrame, edges: list[int]) -> pd.DataFrame:
    """Mean NLL per stretch of the stream (``[edges[i], edges[i+1])`` positions) for each policy, with its 95 %
    interval (block bootstrap inside the stretch), as table cells ``mean [low, high]``."""
    from ..core.stats import mean_interval

    edges = sorted(set(edges))
    out = {}
    for label, df in curves.groupby("label", sort=False):
        row = {}
        for lo, hi in zip(edges[:-1], edges[1:]):
            values = df.loc[(df["position"] >= lo) & (df["position"] < hi), "nll"].to_numpy()
            if values.size >= 2:
                iv = mean_interval(values, block=min(BLOCK, max(1, values.size // 4)), resamples=500)
                row[f"{lo}-{hi - 1}"] = f"{iv.value:.3f} [{iv.low:.3f}, {iv.high:.3f}]"
        out[label] = row
    return pd.DataFrame.from_dict(out, orient="index").fillna("–")
