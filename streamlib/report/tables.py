"""The report's tables of speed, sweeps, bit widths and burst eviction, each from a run's records, like for like,
with the intervals of :mod:`streamlib.core.stats`."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from ..core.format import format_interval
from ..experiments.grids import sweep_grid, sweep_reference
from ..policies import parse_policy
from .compare import (CI, interval_bounds, interval_pair, latest_of_each, nll_curves, paired_interval, ppl_interval,
                      resolved_change, same_setting)


def speed_table(run) -> pd.DataFrame:
    """TTFT, TPOT (ms), decode throughput (tok/s), peak memory and KV cache (MiB) per policy and batch size, all on
    the run's prompt and generation lengths."""
    cfg = run.cfg
    wide = same_setting(run.metrics("speed"), prompt_tokens=cfg.speed_prompt_tokens, new_tokens=cfg.speed_new_tokens)
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
    """Interleaved timings of ``group`` (e.g. 03's ``sweep_speed``): per policy its budget, the prompt it was given,
    TTFT and TPOT (ms, median and IQR over rounds) and TPOT against Dense in the same round (median and IQR of the
    per-round ratios). TTFT is shown only for a prompt of the run's timing length (Dense's): a policy timed after a
    shorter prompt (a token-mode policy reads a long prompt one token at a time) has its TTFT cell left empty, so
    no row sits under a prompt it was not given."""
    cfg = run.cfg
    wide = same_setting(run.metrics(group), new_tokens=new_tokens)
    if wide.empty or "prompt_tokens" not in wide:
        return pd.DataFrame()
    wide = latest_of_each(wide[wide["prompt_tokens"] <= cfg.speed_prompt_tokens], ["label"])
    if wide.empty or "tpot_vs_baseline" not in wide:
        return pd.DataFrame()
    policies = [parse_policy(spec) for spec in wide["spec"]]
    same_prompt = (wide["prompt_tokens"] == cfg.speed_prompt_tokens).to_numpy()
    out = pd.DataFrame({"label": wide["label"].to_numpy(), "spec": wide["spec"].to_numpy(),
                        "baseline": [p.is_baseline for p in policies],
                        "cache_size": pd.array([p.budget for p in policies], dtype="Int64"),
                        "prompt_tokens": wide["prompt_tokens"].astype(int).to_numpy()})
    for name, metric in (("ttft", "ttft"), ("tpot", "tpot_mean")):
        shown = same_prompt if name == "ttft" else np.ones(len(wide), bool)
        out[f"{name}_ms"] = np.where(shown, wide[metric] * 1e3, np.nan)
        out[f"{name.upper()} IQR (ms)"] = [
            format_interval(a * 1e3, b * 1e3) if ok else f"(after a {n}-token prompt)"
            for ok, a, b, n in zip(shown, wide[f"{metric}_q1"], wide[f"{metric}_q3"], out["prompt_tokens"])]
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
    wide = same_setting(run.metrics("decode_modes"), prompt_tokens=cfg.speed_prompt_tokens,
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
    """One row per policy of 03's grid (:func:`streamlib.experiments.grids.sweep_grid`): perplexity on the sweep stream with
    its 95 % interval (``ppl_low``, ``ppl_high``), the paired ratio against StreamingLLM with 4 sinks at the same cache
    size on the same tokens (``vs_streamingllm``, ``vs_low``, ``vs_high``; 1 for itself), KV bytes after the prompt
    (MiB) and the cache size in tokens; ``sweep`` says whether the row belongs to the cache-size sweep, the sink sweep
    or both."""
    cfg = run.cfg
    ppl = latest_of_each(same_setting(run.metrics("ppl"), n_tokens=cfg.sweep_tokens, dataset=cfg.datasets[0]),
                         ["label"])
    kv = latest_of_each(same_setting(run.metrics("sweep_kv"), prompt_tokens=cfg.speed_prompt_tokens), ["label"])
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
    out["ppl_low"], out["ppl_high"] = interval_bounds([ppl_interval(nll, label) for label in out["label"]])
    references = [sweep_reference(size) for size in out["cache_size"]]
    paired = [paired_interval(nll, label, ref.label()) if ref else None for label, ref in zip(out["label"], references)]
    out["vs_streamingllm"] = [iv.value if iv else np.nan for iv in paired]
    out["vs_low"], out["vs_high"] = interval_bounds(paired)
    return out.drop(columns=["kv_bytes_after_prompt", "key"])


def bits_table(run) -> pd.DataFrame:
    """Notebook 03's bit widths (``cfg.quant_policies()``) on the ``quant_tokens`` stream: one row per series and
    policy, with its bits, tokens kept, KV bytes after a prompt of its budget (MiB), perplexity and its 95 % interval,
    and the paired ratio on the same tokens against its reference (``against``): the 16-bit cache of
    ``quant_budget`` tokens, or for ``sinks quantized`` the same cache with its sinks in full precision."""
    cfg = run.cfg
    ppl = latest_of_each(same_setting(run.metrics("ppl"), n_tokens=cfg.quant_tokens, dataset=cfg.datasets[0]),
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
    out[f"change {CI}"] = [resolved_change(v, a, b) for v, a, b in zip(table["vs"], table["vs_low"], table["vs_high"])]
    return out


def sweep_report(sweep: pd.DataFrame) -> pd.DataFrame:
    """The sweep as report.md shows it: perplexity and its 95 % CI, the paired change against StreamingLLM with 4
    sinks at the same size (and its 95 % CI; "not resolved" where it includes zero), KV memory."""
    out = sweep[["label", "cache_size", "ppl"]].copy()
    out[f"ppl {CI}"] = [format_interval(a, b) for a, b in zip(sweep["ppl_low"], sweep["ppl_high"])]
    out["vs StreamingLLM 4 sinks"] = [f"{(v - 1) * 100:+.1f} %" if v == v else "–" for v in sweep["vs_streamingllm"]]
    out[f"vs StreamingLLM {CI}"] = [resolved_change(v, a, b) for v, a, b in zip(sweep["vs_streamingllm"], sweep["vs_low"],
                                                                          sweep["vs_high"])]
    out["kv_mib"] = sweep["kv_mib"]
    return out


# The lab report's speed claims for its press (0.7, 4, 256) against its baseline on Pythia-2.8b, 1,024-token tests.
LAB_CLAIMS = {"gen_peak_mem": "-10 %", "decode_throughput": "+21.6 %", "ttft": "-39 %", "tpot_mean": "-18 %"}


def burst_table(run) -> pd.DataFrame:
    """Each burst-eviction configuration of the run beside StreamingLLM at its peak and at its mean memory, and
    Dense: perplexity on 03's burst stream (the longest one recorded up to ``burst_tokens``) with the burst's 95 %
    interval, and the paired change of burst eviction against each StreamingLLM match on the same tokens."""
    from ..policies import streaming_matches

    cfg = run.cfg
    wide = same_setting(run.metrics("ppl"), dataset=cfg.datasets[0])
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
               "ppl": ppl.get(burst.label()), f"ppl {CI}": format_interval(*interval_pair(ppl_interval(nll, burst.label()))),
               "StreamingLLM, equal peak": ppl.get(peak.label()), "StreamingLLM, equal mean": ppl.get(mean.label()),
               "Dense": ppl.get("Dense")}
        for name, match in (("equal peak", peak), ("equal mean", mean)):
            iv = paired_interval(nll, burst.label(), match.label())
            row[f"burst vs {name}"] = f"{(iv.value - 1) * 100:+.1f} %" if iv else "–"
            row[f"vs {name} {CI}"] = resolved_change(iv.value, iv.low, iv.high) if iv else "–"
        row["tokens"] = int(lengths.max())
        rows.append(row)
    return pd.DataFrame(rows)


def burst_speed_table(run) -> pd.DataFrame:
    """The lab's five speed metrics on our implementation: Dense, the lab's configuration and StreamingLLM at its
    peak memory, greedy generation of ``burst_new_tokens`` at batch 1, timed in turns (medians over rounds; TPOT
    also as p90 over every step), with the change against Dense (TTFT and TPOT: the median of the per-round ratios
    and their IQR) and the lab report's claim beside it."""
    cfg = run.cfg
    wide = latest_of_each(same_setting(run.metrics("burst_speed"), prompt_tokens=cfg.speed_prompt_tokens,
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
