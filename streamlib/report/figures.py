"""The workbook's figures, drawn with seaborn in one style (:mod:`.style`: its theme, a colour, marker and line
style per policy so the figures read in greyscale, fonts embedded as TrueType/Type 42), each interval from our own
columns (block bootstrap, Wilson, interquartile range), each figure saved as PDF and PNG."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from .task_figures import fig_recall, fig_retrieval, fig_streameval  # noqa: F401  (the figures, in one place)
from .style import (binned, binned_band, dashes_of, distinct_style, interval_bars, legend, lines, marks, markevery,
                    plain_log_axis, style_of)


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
    parts = []
    for label, df in curves.groupby("label", sort=False):
        x, y = binned(df["position"].to_numpy(), df["nll"].to_numpy(), bins)
        part = pd.DataFrame({"label": label, "spec": df["spec"].iloc[0], "position": x, "nll": y})
        if bands and (log_x or bins > 1):
            part["low"], part["high"] = binned_band(df["position"].to_numpy(), df["nll"].to_numpy(), bins)
        parts.append(part)
    points = pd.concat(parts, ignore_index=True)
    styles = lines(ax, points, "position", "nll", markevery=markevery(len(points) // len(parts)))
    if "low" in points:
        for label, part in points.groupby("label", sort=False):
            ax.fill_between(part["position"], part["low"], part["high"], color=styles[label]["color"], alpha=0.15, lw=0)
    if trained_length:
        ax.axvline(trained_length, color="grey", lw=0.8, ls=":")
        ax.text(trained_length, ax.get_ylim()[1], " trained length", va="top", fontsize=7, color="grey")
    plain_log_axis(ax)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("token position in the stream" + (" (log scale)" if log_x else ""))
    ax.set_ylabel(f"NLL (nats, mean per {width})")
    ax.set_title("Language modelling along a long stream" + (" (bands: 95 % CI)" if bands else ""))
    legend(ax, styles, ncols=2, loc="lower right")
    return fig


def fig_trace(traces: pd.DataFrame, column: str, ylabel: str, title: str, scale: float = 1.0, log_x: bool = False):
    """Figures 2 and 3: a per-position trace (memory or latency) of each policy; ``log_x``: a log position axis (a
    million-token stream beside a Dense that stopped at 16 K)."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    longest = int(traces.groupby("label").size().max()) if len(traces) else 1
    styles = lines(ax, traces.assign(value=traces[column] * scale), "position", "value", markevery=markevery(longest))
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("token position in the stream" + (" (log scale)" if log_x else ""))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    legend(ax, styles, ncols=2)
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
    left = axes[0, 0]
    longest = int(curves.groupby("label").size().max())
    styles = lines(left, curves.assign(mib=curves["kv_bytes"] / 2**20), "position", "mib", markevery=markevery(longest))
    if every_layer_whole:
        end = curves["position"].max()
        left.plot([0, end], [0, every_layer_whole * end / 2**20], color="grey", ls=":", lw=1,
                  label="every layer keeps every token")
    if trained_length:
        left.axvline(trained_length, color="grey", lw=0.8, ls=":")
    left.set_title("KV cache up to the trained length")
    legend(left, styles, ncols=2 if panels == 1 else 1)
    if zoom is not None:
        right = axes[0, 1]
        zoomed = zoom.assign(mib=zoom["kv_bytes"] / 2**20)
        sns.lineplot(data=zoomed, x="position", y="mib", hue="label", style="label", ax=right, errorbar=None,
                     estimator=None, sort=False, legend=False,
                     palette={k: st["color"] for k, st in styles.items()},
                     dashes={k: dashes_of(st["linestyle"]) for k, st in styles.items()},
                     hue_order=[k for k in styles if k in set(zoom["label"])],
                     style_order=[k for k in styles if k in set(zoom["label"])])
        for label in zoom["label"].unique():
            st = styles[label]
            if measured is not None:
                m = measured[measured.label == label]
                right.plot(m["position"], m["kv_resident_bytes"] / 2**20, ls="none", marker=st["marker"], mfc="none",
                           color=st["color"], markersize=5)
        right.plot([], [], ls="none", marker="o", mfc="none", color="grey", label="measured in the traces")
        right.plot([], [], color="grey", label="formula")
        right.set_title("The first tokens: formula and measurement")
        legend(right)
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
    points = sweep.sort_values("cache_size", kind="stable").assign(label=sweep["family"])
    styles = lines(a, points, "kv_mib", "ppl")
    for name, df in points.groupby("label", sort=False):
        if "ppl_low" in df:
            interval_bars(a, df["kv_mib"], df["ppl"], df["ppl_low"], df["ppl_high"], styles[name]["color"])
    front = pareto_front(sweep.dropna(subset=["ppl"]), "kv_mib", "ppl")
    if not front.empty:
        a.plot(front["kv_mib"], front["ppl"], color="grey", lw=4, alpha=0.25, zorder=0, label="Pareto front")
    a.set_xlabel("KV-cache memory (MiB)")
    a.set_ylabel("perplexity (bars: 95 % CI)")
    plain_log_axis(a)
    a.set_title("Quality vs memory")
    if latency is not None and not latency.empty:
        timed = latency[~latency["baseline"].astype(bool)].reset_index(drop=True).assign(x=lambda d: d.index)
        seen: dict[tuple, int] = {}
        marks_of = {row["label"]: distinct_style(style_of(row["spec"]), seen) for _, row in timed.iterrows()}
        marks(b, timed, "x", "tpot_vs_dense", marks_of)
        for _, row in timed.iterrows():
            interval_bars(b, [row["x"]], [row["tpot_vs_dense"]], [row["tpot_vs_dense_q1"]],
                          [row["tpot_vs_dense_q3"]], marks_of[row["label"]]["color"], capsize=3)
        if b.get_legend() is not None:
            b.get_legend().remove()
        b.axhline(1.0, color="black", lw=0.8, ls=":")
        b.set_xticks(range(len(timed)), timed["label"], rotation=30, ha="right", fontsize=7)
        b.set_xlabel("")
        b.set_ylabel("TPOT / Dense's, same round")
        b.set_title("Decode step against Dense (median, IQR)")
    else:
        b.set_visible(False)
    legend(a, styles, where=fig, loc="upper center", bbox_to_anchor=(0.5, -0.05), ncols=4, frameon=False)
    return fig


def fig_bits(table: pd.DataFrame):
    """Figure 15: bits per kept token. Left: the paired change in perplexity on the same tokens against the 16-bit
    cache (95 % interval bars) against KV memory, for the same cache at fewer bits (``same tokens``) and for caches of
    equal code bytes (``equal bytes``: 4+252 at 16 bits, 4+508 at 8, 4+1020 at 4 ...), each point marked with its bits
    and tokens. Right: the paired change from quantizing the sinks too, against the same cache with full-precision
    sinks, per bit width. ``table``: :func:`streamlib.report.tables.bits_table`."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.5, 3.4), gridspec_kw={"width_ratios": [1.6, 1]})
    styles = {"same tokens": ("#0072B2", "D", "-", 6), "equal bytes": ("#D55E00", "o", "--", -10)}
    series = table[table["series"].isin(list(styles))].sort_values("bits", ascending=False)  # 16 bits, then fewer
    series = series.assign(change=(series["vs"] - 1) * 100, low=(series["vs_low"] - 1) * 100,
                           high=(series["vs_high"] - 1) * 100)
    if not series.empty:
        shown = [k for k in styles if k in set(series["series"])]
        sns.lineplot(data=series, x="kv_mib", y="change", hue="series", style="series", ax=a, errorbar=None,
                     estimator=None, sort=False, hue_order=shown, style_order=shown,
                     palette={k: v[0] for k, v in styles.items()}, markers={k: v[1] for k, v in styles.items()},
                     dashes={k: dashes_of(v[2]) for k, v in styles.items()})
    for name, df in series.groupby("series", sort=False):
        colour, dy = styles[name][0], styles[name][3]
        interval_bars(a, df["kv_mib"], df["change"], df["low"], df["high"], colour)
        for _, row in df.iterrows():
            a.annotate(f"{int(row['bits'])}-bit {int(row['tokens'])}", (row["kv_mib"], row["change"]),
                       textcoords="offset points", xytext=(4, dy), fontsize=7, color=colour)
    a.axhline(0, color="black", lw=0.8, ls=":")
    a.set_xlabel("KV-cache memory (MiB: codes, scales, full-precision part)")
    reference = table["against"].iloc[0] if not table.empty else "16-bit"
    a.set_ylabel(f"perplexity vs {reference} (%)", fontsize=8)
    plain_log_axis(a, "x")
    a.set_title("Fewer bits or fewer tokens? (paired 95 % CI)", fontsize=9)
    if not series.empty:
        legend(a, fontsize=8, frameon=False)
    sinks = table[table["series"] == "sinks quantized"].sort_values("bits", ascending=False)
    if sinks.empty:
        b.set_visible(False)
    else:
        x = np.arange(len(sinks))
        change = (sinks["vs"] - 1) * 100
        sns.scatterplot(x=x, y=change.to_numpy(), ax=b, color="#0072B2", marker="D", s=25)
        interval_bars(b, x, change, (sinks["vs_low"] - 1) * 100, (sinks["vs_high"] - 1) * 100, "#0072B2", capsize=3)
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
    ours = ours.assign(label="this run")
    styles = lines(ax, ours, "n_sink", "ppl", legend=False)
    if "ppl_low" in ours:
        interval_bars(ax, ours["n_sink"], ours["ppl"], ours["ppl_low"], ours["ppl_high"], styles["this run"]["color"],
                      capsize=3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("attention sinks (cache size fixed)")
    ax.set_ylabel("perplexity (bars: 95 % CI)")
    ax.set_title(f"This run, cache {int(ours['cache_size'].iloc[0])}")
    if ncols == 2:
        ax2 = axes[0, 1]
        models = sorted(published["model"].unique())
        palette = sns.color_palette("colorblind", len(models) + 5)[5:]
        sns.lineplot(data=published.sort_values("n_sink"), x="n_sink", y="ppl", hue="model", style="model", ax=ax2,
                     hue_order=models, style_order=models, palette=palette, markers=True, dashes=True,
                     errorbar=None, estimator=None, sort=False)
        plain_log_axis(ax2)
        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.set_xlabel("attention sinks")
        ax2.set_title("Published (StreamingLLM, Table 2)")
        ax2.set_ylabel("perplexity")
        legend(ax2)
    return fig


def fig_speed(table: pd.DataFrame):
    """Figure 6: TTFT, TPOT and throughput, baseline vs streaming, per batch size.
    ``table``: label, spec, batch_size, ttft_ms, tpot_ms, throughput."""
    fig, axes = plt.subplots(1, 3, figsize=(9, 3))
    labels = list(dict.fromkeys(table["label"]))
    colours = {label: style_of(table.loc[table["label"] == label, "spec"].iloc[0])["color"] for label in labels}
    hatches = ["", "//", "..", "xx"]
    bars = table.assign(batch=[f"batch {b}" for b in table["batch_size"]]).sort_values("batch_size", kind="stable")
    for ax, (col, title) in zip(axes, [("ttft_ms", "TTFT (ms)"), ("tpot_ms", "TPOT (ms)"), ("throughput", "decode tokens/s")]):
        sns.barplot(data=bars, x="batch", y=col, hue="label", hue_order=labels, palette=colours, ax=ax,
                    errorbar=None, edgecolor="white", saturation=1)
        name = col.split("_")[0]
        for i, (label, container) in enumerate(zip(labels, ax.containers)):
            rows = bars[bars["label"] == label]
            for patch in container:
                patch.set_hatch(hatches[i % len(hatches)])
            if col != "throughput" and f"{name}_q1" in rows:
                centres = [p.get_x() + p.get_width() / 2 for p in container]
                interval_bars(ax, centres, rows[col], rows[f"{name}_q1"], rows[f"{name}_q3"], "black", lw=0.8)
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.set_title(title)
    # below the panels, where it covers no bar
    for ax in axes[1:]:
        ax.get_legend().remove()
    legend(axes[0], where=fig, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncols=min(4, len(labels)), frameon=False)
    return fig


def fig_attention(share: pd.DataFrame, uniform: float | None = None):
    """Figure 7: mean attention weight on each of the first tokens, per layer. ``share``: layer, token, weight, and
    for a hybrid model layer_type, whose full-attention layers (the ones a policy governs) get a grey band."""
    fig, ax = plt.subplots(figsize=(6, 3))
    tokens = share.assign(token=[f"token {t}" for t in share["token"]])
    order = [f"token {t}" for t in sorted(share["token"].unique())]
    sns.lineplot(data=tokens, x="layer", y="weight", hue="token", style="token", hue_order=order, style_order=order,
                 markers=["o", "s", "D", "^"][: len(order)] if len(order) <= 4 else True, ax=ax, errorbar=None,
                 estimator=None, sort=False)
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
    legend(ax, ncols=2)
    return fig


def fig_generation(steps: pd.DataFrame, trained_length: int | None = None):
    """KV-cache memory and time per token along a generation, one line per policy. ``steps``: label,
    spec, position, kv_bytes, step_s (one row per generated token)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    width = max(1, len(steps) // max(1, steps["label"].nunique()) // 64)
    longest = int(steps.groupby("label").size().max())
    styles = lines(a, steps.assign(mib=steps["kv_bytes"] / 2**20), "position", "mib", markevery=markevery(longest))
    parts = []
    for label, df in steps.groupby("label", sort=False):
        x, y = binned(df["position"].to_numpy(), df["step_s"].to_numpy() * 1e3, width)
        parts.append(pd.DataFrame({"label": label, "spec": df["spec"].iloc[0], "position": x, "ms": y}))
    binned_steps = pd.concat(parts, ignore_index=True)
    lines(b, binned_steps, "position", "ms", legend=False, markevery=markevery(len(binned_steps) // len(parts)))
    for ax in (a, b):
        if trained_length:
            ax.axvline(trained_length, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("position in the stream")
    a.set_ylabel("KV cache (MiB)")
    a.set_title("Memory while generating")
    b.set_ylabel(f"time per token (ms, mean per {width})")
    b.set_title("Latency while generating")
    legend(a, styles)
    return fig
