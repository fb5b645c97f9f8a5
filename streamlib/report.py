"""The report's tables, one builder per notebook step, each from a run's records and like for like, with the
intervals of :mod:`streamlib.stats`. How they are written (units, Markdown, LaTeX) is :mod:`streamlib.tables`; the
page they go on (``report.md``, ``report.html``, the figure captions) is :mod:`streamlib.report_page`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from .experiments import sweep_grid, sweep_reference
from .policies import baseline, parse_policy
from .report_page import CAPTIONS, render_html, write_report  # noqa: F401  (the notebooks' one import)
from .tables import format_interval, in_display_units, to_latex, to_markdown  # noqa: F401
from .tables import fmt as _fmt
from .stats import BLOCK, RESAMPLES, paired_ratio_interval, perplexity_interval, wilson_interval

CI = "95 % CI"
INTERVALS_NOTE = (f"Perplexity intervals: {CI}, circular block bootstrap over the per-token NLL ({BLOCK}-token blocks, "
                  f"{RESAMPLES} resamples); comparisons on the same tokens are paired (the same blocks for both). "
                  "Accuracies: Wilson 95 % interval. Timings: median over interleaved rounds, with the interquartile "
                  "range (IQR); a change against Dense is the median of the per-round ratios.")

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
        wide = latest_of_each(_same_setting(run.metrics("ppl"), dataset=corpus, n_tokens=cfg.ppl_tokens), ["label"])
        nll = nll_curves(run, "ppl", wide[wide["label"].isin(["Dense", label])]) if not wide.empty else {}
        rows = table.index[table["metric"] == f"ppl ({corpus})"]
        if rows.empty:
            continue
        row = rows[0]
        table.loc[row, f"baseline {CI}"] = format_interval(*_pair(ppl_interval(nll, "Dense")))
        table.loc[row, f"streaming {CI}"] = format_interval(*_pair(ppl_interval(nll, label)))
        iv = paired_interval(nll, label, "Dense")
        table.loc[row, f"change {CI}"] = _resolved(iv.value, iv.low, iv.high) if iv else "–"
    speed = latest_of_each(_same_setting(run.metrics("speed"), batch_size=cfg.speed_batch_sizes[0],
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


def _same_setting(wide: pd.DataFrame, **setting) -> pd.DataFrame:
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


def _bounds(intervals) -> tuple[list, list]:
    return ([iv.low if iv else np.nan for iv in intervals], [iv.high if iv else np.nan for iv in intervals])


def stretch_table(curves: pd.DataFrame, edges: list[int]) -> pd.DataFrame:
    """Mean NLL per stretch of the stream (``[edges[i], edges[i+1])`` positions) for each policy, with its 95 %
    interval (block bootstrap inside the stretch), as table cells ``mean [low, high]``."""
    from .stats import mean_interval

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


def speed_table(run) -> pd.DataFrame:
    """TTFT, TPOT (ms), decode throughput (tok/s), peak memory and KV cache (MiB) per policy and batch size, all on
    the run's prompt and generation lengths."""
    cfg = run.cfg
    wide = _same_setting(run.metrics("speed"), prompt_tokens=cfg.speed_prompt_tokens, new_tokens=cfg.speed_new_tokens)
    wide = latest_of_each(wide, ["label", "batch_size"])
    if wide.empty:
        return wide
    mem = "gen_peak_allocated_mem" if "gen_peak_allocated_mem" in wide else "gen_peak_rss_mem"
    out = wide[["label", "spec", "batch_size"]].copy()
    out["ttft_ms"] = wide["ttft"] * 1e3
    out["tpot_ms"] = wide["tpot_mean"] * 1e3
    for name, metric in (("ttft", "ttft"), ("tpot", "tpot_mean")):  # interleaved timings: quartiles over rounds
        if f"{metric}_q1" in wide:
            out[f"{name}_q1"], out[f"{name}_q3"] = wide[f"{metric}_q1"] * 1e3, wide[f"{metric}_q3"] * 1e3
    out["throughput"] = wide["decode_throughput"]
    out["peak_mem_mib"] = wide[mem] / 2**20
    out["kv_mib"] = wide["kv_bytes_after_prompt"] / 2**20
    return out.sort_values(["batch_size", "label"]).reset_index(drop=True)


def latency_table(run, group: str, new_tokens: int) -> pd.DataFrame:
    """Interleaved timings of ``group`` (e.g. 03's ``sweep_speed``) on the run's prompt: per policy its budget, TTFT
    and TPOT (ms, median and IQR over rounds) and TPOT against Dense in the same round (median and IQR of the
    per-round ratios)."""
    cfg = run.cfg
    wide = latest_of_each(_same_setting(run.metrics(group), prompt_tokens=cfg.speed_prompt_tokens,
                                        new_tokens=new_tokens), ["label"])
    if wide.empty or "tpot_vs_baseline" not in wide:
        return pd.DataFrame()
    policies = [parse_policy(spec) for spec in wide["spec"]]
    out = pd.DataFrame({"label": wide["label"].to_numpy(), "spec": wide["spec"].to_numpy(),
                        "baseline": [p.is_baseline for p in policies],
                        "cache_size": pd.array([p.budget for p in policies], dtype="Int64")})
    for name, metric in (("ttft", "ttft"), ("tpot", "tpot_mean")):
        out[f"{name}_ms"] = (wide[metric] * 1e3).to_numpy()
        out[f"{name.upper()} IQR (ms)"] = [format_interval(a * 1e3, b * 1e3)
                                           for a, b in zip(wide[f"{metric}_q1"], wide[f"{metric}_q3"])]
    out["tpot_vs_dense"] = wide["tpot_vs_baseline"].to_numpy()
    out["tpot_vs_dense_q1"] = wide["tpot_vs_baseline_q1"].to_numpy()
    out["tpot_vs_dense_q3"] = wide["tpot_vs_baseline_q3"].to_numpy()
    out["TPOT vs Dense (IQR)"] = [
        "(baseline)" if base else f"{(v - 1) * 100:+.1f} % " + format_interval(a, b, percent=True)
        for base, v, a, b in zip(out.baseline, out.tpot_vs_dense, out.tpot_vs_dense_q1, out.tpot_vs_dense_q3)]
    out["rounds"] = wide["rounds"].astype(int).to_numpy()
    return out.sort_values("cache_size", na_position="first").reset_index(drop=True)


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


def sweep_table(run) -> pd.DataFrame:
    """One row per policy of 03's grid (:func:`streamlib.experiments.sweep_grid`): perplexity on the sweep stream with
    its 95 % interval (``ppl_low``, ``ppl_high``), the paired ratio against StreamingLLM with 4 sinks at the same cache
    size on the same tokens (``vs_streamingllm``, ``vs_low``, ``vs_high``; 1 for itself), KV bytes after the prompt
    (MiB) and the cache size in tokens; ``sweep`` says whether the row belongs to the cache-size sweep, the sink sweep
    or both."""
    cfg = run.cfg
    ppl = latest_of_each(_same_setting(run.metrics("ppl"), n_tokens=cfg.sweep_tokens, dataset=cfg.datasets[0]),
                         ["label"])
    kv = latest_of_each(_same_setting(run.metrics("sweep_kv"), prompt_tokens=cfg.speed_prompt_tokens), ["label"])
    if ppl.empty or kv.empty:
        return pd.DataFrame()
    grid = {name: {p.spec() for p in policies} for name, policies in sweep_grid(cfg).items()}
    out = ppl[["label", "key", "spec", "ppl"]].merge(kv[["label", "kv_bytes_after_prompt"]], on="label", how="inner")
    in_cache, in_sinks = out["spec"].isin(grid["cache"]), out["spec"].isin(grid["sinks"])
    out["sweep"] = ["cache+sinks" if a and b else "cache" if a else "sinks" if b else ""
                    for a, b in zip(in_cache, in_sinks)]
    out = out[out["sweep"] != ""].reset_index(drop=True)
    policies = [parse_policy(spec) for spec in out["spec"]]
    out["n_sink"] = [getattr(p, "n_sink", 0) for p in policies]
    out["cache_size"] = [p.budget for p in policies]
    out["kv_mib"] = out["kv_bytes_after_prompt"] / 2**20
    out.insert(1, "family", [p.family() for p in policies])
    nll = nll_curves(run, "ppl", out)
    out["ppl_low"], out["ppl_high"] = _bounds([ppl_interval(nll, label) for label in out["label"]])
    references = [sweep_reference(size) for size in out["cache_size"]]
    paired = [paired_interval(nll, label, ref.label()) if ref else None for label, ref in zip(out["label"], references)]
    out["vs_streamingllm"] = [iv.value if iv else np.nan for iv in paired]
    out["vs_low"], out["vs_high"] = _bounds(paired)
    return out.drop(columns=["kv_bytes_after_prompt", "key"])


def bits_table(run) -> pd.DataFrame:
    """Notebook 03's bit widths (``cfg.quant_policies()``) on the ``quant_tokens`` stream: one row per series and
    policy, with its bits, tokens kept, KV bytes after a prompt of its budget (MiB), perplexity and its 95 % interval,
    and the paired ratio on the same tokens against its reference (``against``): the 16-bit cache of
    ``quant_budget`` tokens, or for ``sinks quantized`` the same cache with its sinks in full precision."""
    cfg = run.cfg
    ppl = latest_of_each(_same_setting(run.metrics("ppl"), n_tokens=cfg.quant_tokens, dataset=cfg.datasets[0]),
                         ["label"])
    kv = latest_of_each(run.metrics("quant_kv"), ["label"])
    if ppl.empty or kv.empty:
        return pd.DataFrame()
    nll = nll_curves(run, "ppl", ppl)
    kv_mib = dict(zip(kv["label"], kv["kv_bytes_after_prompt"] / 2**20))
    rows = []
    for series, policies in cfg.quant_policies().items():
        for policy in policies:
            label = policy.label()
            if label not in nll:
                continue
            if series == "sinks quantized":
                against = replace(policy, quantize_sinks=False).label()
            else:
                against = policies[0].label()
            iv, paired = ppl_interval(nll, label), paired_interval(nll, label, against)
            rows.append({"series": series, "label": label, "bits": policy.bits, "tokens": policy.budget,
                         "kv_mib": kv_mib.get(label, np.nan), "ppl": iv.value, "ppl_low": iv.low,
                         "ppl_high": iv.high, "against": against,
                         "vs": paired.value if paired else np.nan, "vs_low": paired.low if paired else np.nan,
                         "vs_high": paired.high if paired else np.nan})
    return pd.DataFrame(rows)


def bits_report(table: pd.DataFrame) -> pd.DataFrame:
    """The bit widths as report.md shows them: perplexity with its 95 % CI and the paired change against each row's
    reference ("not resolved" where its interval includes no change)."""
    if table.empty:
        return table
    out = table[["series", "label", "bits", "tokens", "kv_mib", "ppl"]].copy()
    out[f"ppl {CI}"] = [format_interval(a, b) for a, b in zip(table["ppl_low"], table["ppl_high"])]
    out["against"] = table["against"]
    out["change"] = [f"{(v - 1) * 100:+.2f} %" if v == v else "–" for v in table["vs"]]
    out[f"change {CI}"] = [_resolved(v, a, b) for v, a, b in zip(table["vs"], table["vs_low"], table["vs_high"])]
    return out


def sweep_report(sweep: pd.DataFrame) -> pd.DataFrame:
    """The sweep as report.md shows it: perplexity and its 95 % CI, the paired change against StreamingLLM with 4
    sinks at the same size (and its 95 % CI; "not resolved" where it includes zero), KV memory."""
    out = sweep[["label", "cache_size", "ppl"]].copy()
    out[f"ppl {CI}"] = [format_interval(a, b) for a, b in zip(sweep["ppl_low"], sweep["ppl_high"])]
    out["vs StreamingLLM 4 sinks"] = [f"{(v - 1) * 100:+.1f} %" if v == v else "–" for v in sweep["vs_streamingllm"]]
    out[f"vs StreamingLLM {CI}"] = [_resolved(v, a, b) for v, a, b in zip(sweep["vs_streamingllm"], sweep["vs_low"],
                                                                          sweep["vs_high"])]
    out["kv_mib"] = sweep["kv_mib"]
    return out


def _resolved(value, low, high) -> str:
    """A paired ratio's interval as a change in percent, saying when it includes no change."""
    if value != value or low != low:
        return "–"
    if low == high == 1:
        return "(itself)"
    cell = format_interval(low, high, percent=True)
    return cell if (low > 1 or high < 1) else cell + " not resolved"


# The lab report's speed claims for its press (0.7, 4, 256) against its baseline on Pythia-2.8b, 1,024-token tests.
LAB_CLAIMS = {"gen_peak_mem": "-10 %", "decode_throughput": "+21.6 %", "ttft": "-39 %", "tpot_mean": "-18 %"}


def burst_table(run) -> pd.DataFrame:
    """Each burst-eviction configuration of the run beside StreamingLLM at its peak and at its mean memory, and
    Dense: perplexity on 03's burst stream (the longest one recorded up to ``burst_tokens``) with the burst's 95 %
    interval, and the paired change of burst eviction against each StreamingLLM match on the same tokens."""
    from .policies import streaming_matches

    cfg = run.cfg
    wide = _same_setting(run.metrics("ppl"), dataset=cfg.datasets[0])
    bursts = wide["spec"].isin({b.spec() for b in cfg.burst_policies()}) if not wide.empty else None
    if wide.empty or not bursts.any():
        return pd.DataFrame()
    lengths = wide.loc[bursts & (wide["n_tokens"] <= cfg.burst_tokens), "n_tokens"]
    if lengths.empty:
        return pd.DataFrame()
    latest = latest_of_each(wide[wide["n_tokens"] == lengths.max()], ["label"])
    ppl = latest.set_index("label")["ppl"]
    nll = nll_curves(run, "ppl", latest)
    rows = []
    for burst in cfg.burst_policies():
        peak, mean = streaming_matches(burst)
        row = {"burst eviction": burst.label(), "peak tokens": burst.capacity, "mean tokens": burst.mean_resident,
               "ppl": ppl.get(burst.label()), f"ppl {CI}": format_interval(*_pair(ppl_interval(nll, burst.label()))),
               "StreamingLLM, equal peak": ppl.get(peak.label()), "StreamingLLM, equal mean": ppl.get(mean.label()),
               "Dense": ppl.get("Dense")}
        for name, match in (("equal peak", peak), ("equal mean", mean)):
            iv = paired_interval(nll, burst.label(), match.label())
            row[f"burst vs {name}"] = f"{(iv.value - 1) * 100:+.1f} %" if iv else "–"
            row[f"vs {name} {CI}"] = _resolved(iv.value, iv.low, iv.high) if iv else "–"
        row["tokens"] = int(lengths.max())
        rows.append(row)
    return pd.DataFrame(rows)


def _pair(interval) -> tuple:
    return (interval.low, interval.high) if interval else (None, None)


def burst_speed_table(run) -> pd.DataFrame:
    """The lab's five speed metrics on our implementation: Dense, the lab's configuration and StreamingLLM at its
    peak memory, greedy generation of ``burst_new_tokens`` at batch 1, timed in turns (medians over rounds; TPOT
    also as p90 over every step), with the change against Dense (TTFT and TPOT: the median of the per-round ratios
    and their IQR) and the lab report's claim beside it."""
    cfg = run.cfg
    wide = latest_of_each(_same_setting(run.metrics("burst_speed"), prompt_tokens=cfg.speed_prompt_tokens,
                                        new_tokens=cfg.burst_new_tokens), ["label"])
    if wide.empty or "Dense" not in set(wide["label"]):
        return pd.DataFrame()
    memory = "gen_peak_allocated_mem" if "gen_peak_allocated_mem" in wide else "gen_peak_rss_mem"
    metrics = [("ttft", "TTFT", "ms", 1e3), ("tpot_mean", "TPOT (median of runs)", "ms", 1e3),
               ("tpot_p90", "TPOT (p90)", "ms", 1e3),
               ("decode_throughput", "decode throughput", "tok/s", 1.0), (memory, "peak memory", "MiB", 2**-20),
               ("kv_bytes_after_prompt", "KV cache after the prompt", "MiB", 2**-20)]
    ratios = {"ttft": "ttft_vs_baseline", "tpot_mean": "tpot_vs_baseline"}
    values = wide.set_index("label")
    dense = values.loc["Dense"]
    rows = []
    for metric, name, unit, scale in metrics:
        row = {"metric": name, "unit": unit, "Dense": dense[metric] * scale}
        for label in values.index.drop("Dense"):
            row[label] = values.loc[label, metric] * scale
            paired = ratios.get(metric)
            if paired and paired in values and values.loc[label, paired] == values.loc[label, paired]:
                v = values.loc[label]
                row[f"{label} vs Dense"] = (f"{(v[paired] - 1) * 100:+.1f} % IQR "
                                            + format_interval(v[paired + "_q1"], v[paired + "_q3"], percent=True))
            else:
                row[f"{label} vs Dense"] = f"{(values.loc[label, metric] / dense[metric] - 1) * 100:+.1f} %"
        row["lab report's claim"] = LAB_CLAIMS.get("gen_peak_mem" if metric == memory else metric, "")
        rows.append(row)
    return pd.DataFrame(rows)


def retrieval_trials(run) -> pd.DataFrame:
    """Every pass-key trial of the run's retrieval setting (06), one row per trial and policy: each policy's latest
    measurement only (a run re-measured after its record keys changed holds the older trials too)."""
    cfg = run.cfg
    trials = run.curves("retrieval")
    if trials.empty:
        return trials
    setting = (trials["new_tokens"] == cfg.retrieval_new_tokens) \
        & trials["seeds"].isin([cfg.retrieval_seeds, cfg.retrieval_scored_seeds])
    wide = run.metrics("retrieval")
    latest = set(latest_of_each(wide[wide["key"].isin(trials.loc[setting, "key"])], ["label"])["key"])
    return trials[setting & trials["key"].isin(latest)].reset_index(drop=True)


def retrieval_table(run) -> pd.DataFrame:
    """Accuracy with its Wilson 95 % interval and the share of trials whose key was still cached, per policy and
    distance from key to question; Dense (the model's own ceiling) first."""
    trials = retrieval_trials(run)
    if trials.empty:
        return trials
    table = trials.groupby(["spec", "label", "prompt_tokens", "depth"], sort=False).agg(
        distance=("distance", "mean"), trials=("correct", "size"), correct=("correct", "sum"),
        accuracy=("correct", "mean"), key_cached=("key_cached", "mean")).reset_index()
    return _with_wilson(_in_kind_order(table, ["label", "prompt_tokens", "distance"])).drop(columns=["spec", "depth"])


def retrieval_summary(run) -> pd.DataFrame:
    """Per policy, every trial pooled: accuracy with its Wilson 95 % interval, and the same over the trials whose
    key was wholly cached at the question (can the policy answer when it still holds the key?)."""
    trials = retrieval_trials(run)
    if trials.empty:
        return trials
    held = trials.assign(held=trials["key_cached"] >= 1.0)
    table = held.groupby(["spec", "label"], sort=False).agg(
        trials=("correct", "size"), correct=("correct", "sum"), accuracy=("correct", "mean"),
        key_held=("held", "sum"), correct_when_held=("correct", lambda c: int(c[held.loc[c.index, "held"]].sum()))
    ).reset_index()
    table = _with_wilson(_in_kind_order(table, ["label"]))
    table[f"when key held {CI}"] = [
        f"{k}/{n}: " + format_interval(*_pair(wilson_interval(int(k), int(n)))) if n else "–"
        for k, n in zip(table["correct_when_held"], table["key_held"])]
    return table.drop(columns=["spec"])


def latest_curves(run, group: str, **setting) -> pd.DataFrame:
    """The curve rows of ``group`` measured with these field values, each policy's latest measurement only."""
    curves = run.curves(group)
    if curves.empty:
        return curves
    wide = latest_of_each(_same_setting(run.metrics(group), **setting), ["label"])
    curves = curves[curves["key"].isin(set(wide["key"]))]
    # Dense first, then by kind, fewest sinks first (StreamingLLM 4+124 before 36+92): the figures' line order
    rank = curves.assign(_kind=curves["spec"].map(_kind_order),
                         _sinks=curves["spec"].map(lambda spec: getattr(parse_policy(spec), "n_sink", 0)))
    return rank.sort_values(["_kind", "_sinks", "label"], kind="stable").drop(columns=["_kind", "_sinks"]) \
        .reset_index(drop=True)


def streameval_questions(run) -> pd.DataFrame:
    """Every StreamEval question of the run's setting (06), one row per question and policy, with ``part``: whether
    the question came before or past the model's trained length."""
    cfg = run.cfg
    questions = latest_curves(run, "streameval", stream_tokens=cfg.streameval_tokens, every=cfg.streameval_every)
    if questions.empty:
        return questions
    trained = cfg.trained_length()
    return questions.assign(part=np.where(questions["question_position"] < trained, f"before {trained}",
                                          f"past {trained}"))


def streameval_table(run) -> pd.DataFrame:
    """StreamEval accuracy per policy, lines back and part of the stream (before / past the trained length), with
    Wilson's 95 % interval and the mean tokens from fact to question; Dense first."""
    questions = streameval_questions(run)
    if questions.empty:
        return questions
    table = questions.groupby(["spec", "label", "part", "lines_back"], sort=False).agg(
        tokens_back=("tokens_back", "mean"), trials=("correct", "size"), correct=("correct", "sum"),
        accuracy=("correct", "mean")).reset_index()
    return _with_wilson(_in_kind_order(table, ["label", "part", "lines_back"])).drop(columns=["spec"])


def recall_turns(run) -> pd.DataFrame:
    """Every turn of the recall chat (06), one row per turn and policy, each policy's latest measurement."""
    cfg = run.cfg
    return latest_curves(run, "recall", turns=cfg.recall_turns)


def recall_table(run) -> pd.DataFrame:
    """Recall accuracy per policy and turns back, with Wilson's 95 % interval and the mean tokens from statement to
    question; then every question pooled, with the most KV the chat held."""
    turns = recall_turns(run)
    if turns.empty:
        return turns
    asked = turns[turns["kind"] == "question"].astype({"correct": bool})
    table = asked.groupby(["spec", "label", "turns_back"], sort=False).agg(
        tokens_back=("tokens_back", "mean"), trials=("correct", "size"), correct=("correct", "sum"),
        accuracy=("correct", "mean")).reset_index()
    pooled = asked.groupby(["spec", "label"], sort=False).agg(
        tokens_back=("tokens_back", "mean"), trials=("correct", "size"), correct=("correct", "sum"),
        accuracy=("correct", "mean")).reset_index().assign(turns_back="all")
    kv = turns.groupby("label")["kv_bytes"].max() / 2**20
    table = table.sort_values("turns_back").astype({"turns_back": int}).astype({"turns_back": str})
    table = _with_wilson(_in_kind_order(pd.concat([table, pooled]), ["label"])).drop(columns=["spec"])
    return table.assign(max_kv_mib=table["label"].map(kv))


def _kind_order(spec) -> int:
    """Where a policy's kind sits in tables and legends (each policy declares its ``order``; Dense first)."""
    return parse_policy(spec).order


def _in_kind_order(table: pd.DataFrame, then: list[str]) -> pd.DataFrame:
    table = table.assign(kind=table["spec"].map(_kind_order))
    return table.sort_values(["kind"] + then, kind="stable").drop(columns="kind").reset_index(drop=True)


def _with_wilson(table: pd.DataFrame) -> pd.DataFrame:
    intervals = [wilson_interval(int(k), int(n)) for k, n in zip(table["correct"], table["trials"])]
    table = table.copy()
    table["accuracy_low"], table["accuracy_high"] = _bounds(intervals)
    table[f"accuracy {CI}"] = [format_interval(iv.low, iv.high) for iv in intervals]
    table["correct"] = table["correct"].astype(int)
    return table


# ---------------------------------------------------------------------------------------------- report.md --

