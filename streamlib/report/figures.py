"""The workbook's figures: one style (colour-blind Okabe-Ito palette, a marker and line style per policy so the
figures read in greyscale, fonts embedded as TrueType/Type 42), each figure saved as PDF and PNG."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from .task_figures import fig_recall, fig_retrieval, fig_streameval  # noqa: F401  (the figures, in one place)
from .style import OKABE_ITO, binned, binned_band, distinct_style, error_bars, markevery, plain_log_axis, style_of


def fig_nll_vs_position(curves: pd.DataFrame, trained_length: int | None = None, bands: bool = True):
    """Figure 1: NLL (log scale) against token position, one line per policy, with the 95 % interval of each bin's
    mean as a band. A stream longer than 16 trained lengths (the long profile's million tokens) gets a log position
    axis with bins of equal width on it, so the stretch around the trained length stays readable.
    ``curves``: label, spec, position, nll."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    end = int(curves["position"].max())
    log_x = bool(trained_length) and end > 16 * trained_length
    # one set of bins for every policy: 64 of equal width, or 96 equal on a log axis from 64 tokens on
    bins = np.unique(np.geomspace(64, end + 1, 96).astype(int)) if log_x else max(1, end // 64)
    width = f"{end // 64} tokens" if not log_x else "bin"
    for label, df in curves.groupby("label", sort=False):
        x, y = binned(df["position"].to_numpy(), df["nll"].to_numpy(), bins)
        style = style_of(df["spec"].iloc[0])
        ax.plot(x, y, label=label, markevery=markevery(len(x)), **style)
        if bands and (log_x or bins > 1):
            low, high = binned_band(df["position"].to_numpy(), df["nll"].to_numpy(), bins)
            ax.fill_between(x, low, high, color=style["color"], alpha=0.15, lw=0)
    if trained_length:
        ax.axvline(trained_length, color="grey", lw=0.8, ls=":")
        ax.text(trained_length, ax.get_ylim()[1], " trained length", va="top", fontsize=7, color="grey")
    plain_log_axis(ax)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("token position in the stream" + (" (log scale)" if log_x else ""))
    ax.set_ylabel(f"NLL (nats, mean per {width})")
    ax.set_title("Language modelling along a long stream" + (" (bands: 95 % CI)" if bands else ""))
    ax.legend(ncols=2, loc="lower right")
    return fig


def fig_trace(traces: pd.DataFrame, column: str, ylabel: str, title: str, scale: float = 1.0, log_x: bool = False):
    """Figures 2 and 3: a per-position trace (memory or latency) of each policy; ``log_x``: a log position axis (a
    million-token stream beside a Dense that stopped at 16 K)."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    seen: dict[tuple, int] = {}
    for label, df in traces.groupby("label", sort=False):
        style = distinct_style(style_of(df["spec"].iloc[0]), seen)
        ax.plot(df["position"], df[column] * scale, label=label, markevery=markevery(len(df)), **style)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("token position in the stream" + (" (log scale)" if log_x else ""))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(ncols=2)
    return fig


def fig_kv_along_stream(curves: pd.DataFrame, zoom: pd.DataFrame | None = None, measured: pd.DataFrame | None = None,
                        trained_length: int | None = None, every_layer_whole: int | None = None):
    """KV memory up to a length no trace reaches. Left: each policy's analytic bytes (``curves``: label, spec,
    position, kv_bytes) up to the trained length and, for a hybrid model, the bytes a cache would hold if
    every layer kept every token (``every_layer_whole``: bytes per token), the cost its sliding layers avoid. Right:
    the same formula over the first tokens (``zoom``) with the measured traces on it as open markers (``measured``:
    label, position, kv_resident_bytes): the check that the formula is what the caches hold."""
    panels = 2 if zoom is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.8 * panels, 3.2), squeeze=False)
    styles: dict[str, dict] = {}
    seen: dict[tuple, int] = {}
    for label, df in curves.groupby("label", sort=False):
        styles[label] = distinct_style(style_of(df["spec"].iloc[0]), seen)
    left = axes[0, 0]
    for label, df in curves.groupby("label", sort=False):
        left.plot(df["position"], df["kv_bytes"] / 2**20, label=label, markevery=markevery(len(df)), **styles[label])
    if every_layer_whole:
        end = curves["position"].max()
        left.plot([0, end], [0, every_layer_whole * end / 2**20], color="grey", ls=":", lw=1,
                  label="every layer keeps every token")
    if trained_length:
        left.axvline(trained_length, color="grey", lw=0.8, ls=":")
    left.set_title("KV cache up to the trained length")
    left.legend(ncols=2 if panels == 1 else 1)
    if zoom is not None:
        right = axes[0, 1]
        for label, df in zoom.groupby("label", sort=False):
            st = styles.get(label) or distinct_style(style_of(df["spec"].iloc[0]), seen)
            right.plot(df["position"], df["kv_bytes"] / 2**20, color=st["color"], ls=st["linestyle"])
            if measured is not None:
                m = measured[measured.label == label]
                right.plot(m["position"], m["kv_resident_bytes"] / 2**20, ls="none", marker=st["marker"], mfc="none",
                           color=st["color"], markersize=5)
        right.plot([], [], ls="none", marker="o", mfc="none", color="grey", label="measured in the traces")
        right.plot([], [], color="grey", label="formula")
        right.set_title("The first tokens: formula and measurement")
        right.legend()
    for ax in axes[0]:
        ax.set_xlabel("tokens in the stream")
    left.set_ylabel("KV cache held (MiB)")
    return fig


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Rows not dominated by another row with smaller-or-equal x and y (both minimised)."""
    ordered = points.sort_values([x, y])
    front, best = [], np.inf
    for _, row in ordered.iterrows():
        if row[y] < best:
            front.append(row)
            best = row[y]
    return pd.DataFrame(front)


def fig_tradeoff(sweep: pd.DataFrame, latency: pd.DataFrame | None = None):
    """Figure 4: perplexity (95 % interval bars) against KV-cache memory for the sweep, Pareto front marked; in a
    second panel the decode step of each timed policy against Dense's in the same round (median, IQR bars).
    ``sweep``: family, spec, kv_mib, ppl, ppl_low, ppl_high, cache_size (``report.sweep_table``);
    ``latency``: label, spec, baseline, cache_size, tpot_vs_dense and its quartiles (``report.latency_table``)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.5, 3.4))
    for name, df in sweep.groupby("family", sort=False):
        df = df.sort_values("cache_size")
        st = style_of(df["spec"].iloc[0])
        a.errorbar(df["kv_mib"], df["ppl"], yerr=error_bars(df, "ppl", "ppl_low", "ppl_high"), label=name, capsize=2, **st)
    front = pareto_front(sweep.dropna(subset=["ppl"]), "kv_mib", "ppl")
    if not front.empty:
        a.plot(front["kv_mib"], front["ppl"], color="grey", lw=4, alpha=0.25, zorder=0, label="Pareto front")
    a.set_xlabel("KV-cache memory (MiB)")
    a.set_ylabel("perplexity (bars: 95 % CI)")
    plain_log_axis(a)
    a.set_title("Quality vs memory")
    if latency is not None and not latency.empty:
        timed = latency[~latency["baseline"].astype(bool)].reset_index(drop=True)
        seen: dict[tuple, int] = {}
        for i, row in timed.iterrows():
            st = distinct_style(style_of(row["spec"]), seen)
            yerr = [[row["tpot_vs_dense"] - row["tpot_vs_dense_q1"]], [row["tpot_vs_dense_q3"] - row["tpot_vs_dense"]]]
            b.errorbar([i], [row["tpot_vs_dense"]], yerr=yerr, color=st["color"], marker=st["marker"], capsize=3,
                       linestyle="none")
        b.axhline(1.0, color="black", lw=0.8, ls=":")
        b.set_xticks(range(len(timed)), timed["label"], rotation=30, ha="right", fontsize=7)
        b.set_ylabel("TPOT / Dense's, same round")
        b.set_title("Decode step against Dense (median, IQR)")
    else:
        b.set_visible(False)
    handles, labels = a.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.05), ncols=4, frameon=False)
    return fig


def fig_bits(table: pd.DataFrame):
    """Figure 15: bits per kept token. Left: the paired change in perplexity on the same tokens against the 16-bit
    cache (95 % interval bars) against KV memory, for the same cache at fewer bits (``same tokens``) and for caches of
    equal code bytes (``equal bytes``: 4+252 at 16 bits, 4+508 at 8, 4+1020 at 4 ...), each point marked with its bits
    and tokens. Right: the paired change from quantizing the sinks too, against the same cache with full-precision
    sinks, per bit width. ``table``: :func:`streamlib.report.tables.bits_table`."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.5, 3.4), gridspec_kw={"width_ratios": [1.6, 1]})
    styles = {"same tokens": ("#0072B2", "D", "-", 6), "equal bytes": ("#D55E00", "o", "--", -10)}
    for series, (colour, marker, ls, dy) in styles.items():
        df = table[table["series"] == series].sort_values("bits", ascending=False)  # 16 bits, then fewer
        if df.empty:
            continue
        change = (df["vs"] - 1) * 100
        err = np.vstack([change - (df["vs_low"] - 1) * 100, (df["vs_high"] - 1) * 100 - change]).clip(min=0)
        a.errorbar(df["kv_mib"], change, yerr=err, color=colour, marker=marker, linestyle=ls, capsize=2,
                   label=series)
        for (_, row), y in zip(df.iterrows(), change):
            a.annotate(f"{int(row['bits'])}-bit {int(row['tokens'])}", (row["kv_mib"], y),
                       textcoords="offset points", xytext=(4, dy), fontsize=7, color=colour)
    a.axhline(0, color="black", lw=0.8, ls=":")
    a.set_xlabel("KV-cache memory (MiB: codes, scales, full-precision part)")
    reference = table["against"].iloc[0] if not table.empty else "16-bit"
    a.set_ylabel(f"perplexity vs {reference} (%)", fontsize=8)
    plain_log_axis(a, "x")
    a.set_title("Fewer bits or fewer tokens? (paired 95 % CI)", fontsize=9)
    a.legend(fontsize=8, frameon=False)
    sinks = table[table["series"] == "sinks quantized"].sort_values("bits", ascending=False)
    if sinks.empty:
        b.set_visible(False)
    else:
        x = np.arange(len(sinks))
        change = (sinks["vs"] - 1) * 100
        err = np.vstack([change - (sinks["vs_low"] - 1) * 100, (sinks["vs_high"] - 1) * 100 - change])
        b.errorbar(x, change, yerr=err, color="#0072B2", marker="D", linestyle="none", capsize=3)
        b.axhline(0, color="black", lw=0.8, ls=":")
        b.set_xticks(x, [f"{int(v)}-bit" for v in sinks["bits"]])
        b.set_ylabel("perplexity change (%)")
        b.set_title("Sinks quantized vs kept in full precision", fontsize=9)
    fig.tight_layout()
    return fig


def fig_sinks(ours: pd.DataFrame, published: pd.DataFrame | None = None):
    """Figure 5: perplexity against the number of sinks at a fixed cache size (the paper's Table 2 shape).
    ``ours``: n_sink, ppl, cache_size. ``published``: rows of the reference CSV (model, n_sink, ppl)."""
    ncols = 2 if published is not None and not published.empty else 1
    fig, axes = plt.subplots(1, ncols, figsize=(4 * ncols, 3.2), squeeze=False)
    ax = axes[0, 0]
    ax.errorbar(ours["n_sink"], ours["ppl"], yerr=error_bars(ours, "ppl", "ppl_low", "ppl_high"), capsize=3,
                **style_of(ours["spec"].iloc[0]))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("attention sinks (cache size fixed)")
    ax.set_ylabel("perplexity (bars: 95 % CI)")
    ax.set_title(f"This run, cache {int(ours['cache_size'].iloc[0])}")
    if ncols == 2:
        ax2 = axes[0, 1]
        for i, (model, df) in enumerate(published.groupby("model")):
            df = df.sort_values("n_sink")
            ax2.plot(df["n_sink"], df["ppl"], label=model, color=OKABE_ITO[(i + 5) % len(OKABE_ITO)],
                     marker="xP"[i % 2], linestyle=[":", "--"][i % 2])
        plain_log_axis(ax2)
        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.set_xlabel("attention sinks")
        ax2.set_title("Published (StreamingLLM, Table 2)")
        ax2.legend()
    return fig


def fig_speed(table: pd.DataFrame):
    """Figure 6: TTFT, TPOT and throughput, baseline vs streaming, per batch size.
    ``table``: label, spec, batch_size, ttft_ms, tpot_ms, throughput."""
    fig, axes = plt.subplots(1, 3, figsize=(9, 3))
    labels = list(dict.fromkeys(table["label"]))
    batches = sorted(table["batch_size"].unique())
    width = 0.8 / max(1, len(labels))
    hatches = ["", "//", "..", "xx"]
    for ax, (col, title) in zip(axes, [("ttft_ms", "TTFT (ms)"), ("tpot_ms", "TPOT (ms)"), ("throughput", "decode tokens/s")]):
        for i, label in enumerate(labels):
            df = table[table["label"] == label].set_index("batch_size").reindex(batches)
            st = style_of(df["spec"].dropna().iloc[0])
            name = col.split("_")[0]
            yerr = error_bars(df, col, f"{name}_q1", f"{name}_q3") if col != "throughput" else None
            ax.bar(np.arange(len(batches)) + i * width, df[col], width, label=label, color=st["color"],
                   hatch=hatches[i % len(hatches)], edgecolor="white", yerr=yerr, capsize=2)
        ax.set_xticks(np.arange(len(batches)) + width * (len(labels) - 1) / 2, [f"batch {b}" for b in batches])
        ax.set_title(title)
    # below the panels, where it covers no bar
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncols=min(4, len(labels)), frameon=False)
    return fig


def fig_attention(share: pd.DataFrame, uniform: float | None = None):
    """Figure 7: mean attention weight on each of the first tokens, per layer. ``share``: layer, token, weight, and
    for a hybrid model layer_type, whose full-attention layers (the ones a policy governs) get a grey band."""
    fig, ax = plt.subplots(figsize=(6, 3))
    for i, (token, df) in enumerate(share.groupby("token")):
        ax.plot(df["layer"], df["weight"], label=f"token {token}", marker="osD^"[i % 4],
                linestyle=["-", "--", ":", "-."][i % 4])
    if uniform is not None:
        ax.axhline(uniform, color="grey", ls=":", lw=1, label="uniform attention")
    types = share.drop_duplicates("layer").set_index("layer").get("layer_type")
    if types is not None and (types == "sliding_attention").any():
        for n, layer in enumerate(types.index[types == "full_attention"]):
            ax.axvspan(layer - 0.4, layer + 0.4, color="grey", alpha=0.15, lw=0,
                       label="full-attention layer" if n == 0 else None)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("mean attention weight")
    ax.set_title("Where attention goes: the first tokens")
    ax.legend(ncols=2)
    return fig


def fig_generation(steps: pd.DataFrame, trained_length: int | None = None):
    """KV-cache memory and time per token along a generation, one line per policy. ``steps``: label,
    spec, position, kv_bytes, step_s (one row per generated token)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    width = max(1, len(steps) // max(1, steps["label"].nunique()) // 64)
    for label, df in steps.groupby("label", sort=False):
        st = style_of(df["spec"].iloc[0])
        a.plot(df["position"], df["kv_bytes"] / 2**20, label=label, markevery=markevery(len(df)), **st)
        x, y = binned(df["position"].to_numpy(), df["step_s"].to_numpy() * 1e3, width)
        b.plot(x, y, label=label, markevery=markevery(len(x)), **st)
    for ax in (a, b):
        if trained_length:
            ax.axvline(trained_length, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("position in the stream")
    a.set_ylabel("KV cache (MiB)")
    a.set_title("Memory while generating")
    b.set_ylabel(f"time per token (ms, mean per {width})")
    b.set_title("Latency while generating")
    a.legend()
    return fig
