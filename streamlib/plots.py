"""The workbook's figures: one style (colour-blind Okabe-Ito palette, a marker and line style per policy so the
figures read in greyscale, fonts embedded as TrueType/Type 42), each figure saved as PDF and PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

OKABE_ITO = ["#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7"]


def style_of(spec) -> dict:
    """Line keywords (colour, marker, line style) of the policy a spec string (a frame's ``spec`` column) names:
    each policy declares its own (:meth:`~streamlib.policies.PolicyBase.plot_style`)."""
    from .policies import parse_policy

    policy = parse_policy(spec) if isinstance(spec, str) else spec
    return policy.plot_style().kwargs()


def apply_style() -> None:
    plt.rcParams.update({
        "pdf.fonttype": 42, "ps.fonttype": 42,  # embed TrueType (Type 42), not Type 3
        "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
        "axes.prop_cycle": matplotlib.cycler(color=OKABE_ITO),
        "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 110, "savefig.dpi": 200,
        "savefig.bbox": "tight", "lines.linewidth": 1.5, "lines.markersize": 4,
    })


def plain_log_axis(ax, axis: str = "y") -> None:
    """Log scale with plain tick labels (5, 10, 20), not 5x10^0; minor labels only when the range is under a
    decade, where there would be no major tick to read."""
    which = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    which.set_major_formatter(plain)
    lo, hi = (ax.get_ylim() if axis == "y" else ax.get_xlim())
    which.set_minor_formatter(plain if hi / max(lo, 1e-12) < 10 else NullFormatter())


def mark_dry_run(fig) -> None:
    """Say across the top of a figure that it comes from a dry run (random weights: mechanics, not results)."""
    fig.text(0.5, 1.0, "DRY RUN: random weights, embedded text, scaled-down counts. Not a result.",
             ha="center", va="bottom", color="#D55E00", fontsize=10, fontweight="bold")


def save_figure(fig, name: str, *dirs: str | Path, close: bool = True) -> list[Path]:
    """Write ``name.pdf`` and ``name.png`` into each directory; returns the paths written. ``close=False`` leaves
    the figure open for a notebook to show inline."""
    written = []
    for d in dirs:
        d = Path(d)
        d.mkdir(parents=True, exist_ok=True)
        for ext in ("pdf", "png"):
            path = d / f"{name}.{ext}"
            # no creation date in the PDF, so an unchanged figure is an unchanged file
            fig.savefig(path, metadata={"CreationDate": None} if ext == "pdf" else None)
            written.append(path)
    if close:
        plt.close(fig)
    return written


def _markevery(n: int) -> int:
    return max(1, n // 12)


def _bins(x: np.ndarray, width: int | np.ndarray) -> np.ndarray:
    """The bin of each position: ``width`` positions per bin, or the bins between the sorted ``edges`` given."""
    return (x - 1) // width if np.isscalar(width) else np.searchsorted(width, x, side="right")


def _binned(x: np.ndarray, y: np.ndarray, width: int | np.ndarray):
    """Mean of y in bins of ``width`` positions (NLL per token is noisy; the paper's Figure 3 is smoothed too), or
    between ``width``'s edges."""
    idx = _bins(x, width)
    keys = np.unique(idx)
    return np.array([x[idx == k].mean() for k in keys]), np.array([y[idx == k].mean() for k in keys])


def _binned_band(x: np.ndarray, y: np.ndarray, width: int | np.ndarray):
    """Per bin: the mean's 95 % interval, a block bootstrap inside the bin (blocks of an eighth of the bin, at
    least 8 tokens)."""
    from .stats import mean_interval

    idx = _bins(x, width)
    lows, highs = [], []
    for k in np.unique(idx):
        values = y[idx == k]
        if values.size < 2:
            lows.append(values.mean()), highs.append(values.mean())
            continue
        iv = mean_interval(values, block=min(max(8, values.size // 8), values.size), resamples=200, seed=int(k))
        lows.append(iv.low), highs.append(iv.high)
    return np.array(lows), np.array(highs)


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
        x, y = _binned(df["position"].to_numpy(), df["nll"].to_numpy(), bins)
        style = style_of(df["spec"].iloc[0])
        ax.plot(x, y, label=label, markevery=_markevery(len(x)), **style)
        if bands and (log_x or bins > 1):
            low, high = _binned_band(df["position"].to_numpy(), df["nll"].to_numpy(), bins)
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
        style = _distinct(style_of(df["spec"].iloc[0]), seen)
        ax.plot(df["position"], df[column] * scale, label=label, markevery=_markevery(len(df)), **style)
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
        styles[label] = _distinct(style_of(df["spec"].iloc[0]), seen)
    left = axes[0, 0]
    for label, df in curves.groupby("label", sort=False):
        left.plot(df["position"], df["kv_bytes"] / 2**20, label=label, markevery=_markevery(len(df)), **styles[label])
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
            st = styles.get(label) or _distinct(style_of(df["spec"].iloc[0]), seen)
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


ALTERNATES = [("#56B4E9", "o", "--"), ("#009E73", "s", ":"), ("#CC79A7", "^", "-.")]


def _distinct(style: dict, seen: dict) -> dict:
    """The policy's style the first time it is used in a figure; another colour, marker and line for each further
    line of the same kind (e.g. StreamingLLM at two cache sizes)."""
    key = (style["color"], style["marker"], style["linestyle"])
    n = seen.get(key, 0)
    seen[key] = n + 1
    if n == 0:
        return style
    colour, marker, ls = ALTERNATES[(n - 1) % len(ALTERNATES)]
    return {"color": colour, "marker": marker, "linestyle": ls}


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Rows not dominated by another row with smaller-or-equal x and y (both minimised)."""
    ordered = points.sort_values([x, y])
    front, best = [], np.inf
    for _, row in ordered.iterrows():
        if row[y] < best:
            front.append(row)
            best = row[y]
    return pd.DataFrame(front)


def _yerr(df: pd.DataFrame, value: str, low: str, high: str):
    """Asymmetric error bars from interval columns, or None when the frame has none."""
    if low not in df or high not in df:
        return None
    return np.vstack([(df[value] - df[low]).clip(lower=0).to_numpy(), (df[high] - df[value]).clip(lower=0).to_numpy()])


def fig_tradeoff(sweep: pd.DataFrame, latency: pd.DataFrame | None = None):
    """Figure 4: perplexity (95 % interval bars) against KV-cache memory for the sweep, Pareto front marked; in a
    second panel the decode step of each timed policy against Dense's in the same round (median, IQR bars).
    ``sweep``: family, spec, kv_mib, ppl, ppl_low, ppl_high, cache_size (``report.sweep_table``);
    ``latency``: label, spec, baseline, cache_size, tpot_vs_dense and its quartiles (``report.latency_table``)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.5, 3.4))
    for name, df in sweep.groupby("family", sort=False):
        df = df.sort_values("cache_size")
        st = style_of(df["spec"].iloc[0])
        a.errorbar(df["kv_mib"], df["ppl"], yerr=_yerr(df, "ppl", "ppl_low", "ppl_high"), label=name, capsize=2, **st)
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
            st = _distinct(style_of(row["spec"]), seen)
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
    sinks, per bit width. ``table``: :func:`streamlib.report.bits_table`."""
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
    ax.errorbar(ours["n_sink"], ours["ppl"], yerr=_yerr(ours, "ppl", "ppl_low", "ppl_high"), capsize=3,
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
            yerr = _yerr(df, col, f"{name}_q1", f"{name}_q3") if col != "throughput" else None
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
        a.plot(df["position"], df["kv_bytes"] / 2**20, label=label, markevery=_markevery(len(df)), **st)
        x, y = _binned(df["position"].to_numpy(), df["step_s"].to_numpy() * 1e3, width)
        b.plot(x, y, label=label, markevery=_markevery(len(x)), **st)
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


def fig_retrieval(trials: pd.DataFrame, budget: int | None = None):
    """Pass-key retrieval: accuracy (left) and the share of the key's tokens still cached when the question came
    (right, mean over layers and trials) against the key's distance from the question, one line per policy. ``trials``: one row per trial with
    label, spec, distance, correct, key_cached."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4), sharex=True, sharey=True)
    from .stats import wilson_interval

    points = trials.groupby(["label", "spec", "depth", "prompt_tokens"], sort=False, as_index=False).agg(
        distance=("distance", "mean"), correct=("correct", "mean"), hits=("correct", "sum"), n=("correct", "size"),
        key_cached=("key_cached", "mean"))
    groups = list(points.groupby(["label", "spec"], sort=False))
    nudge = 0.012 * (points["distance"].max() - points["distance"].min() or 1)  # bars side by side, not on top
    seen: dict[tuple, int] = {}
    for i, ((label, spec), df) in enumerate(groups):
        df = df.sort_values("distance")
        style = _distinct(style_of(spec), seen)  # StreamingLLM keeping the prompt: a second style
        wilson = [wilson_interval(int(k), int(n)) for k, n in zip(df["hits"], df["n"])]
        yerr = np.array([[c - w.low for c, w in zip(df["correct"], wilson)],
                         [w.high - c for c, w in zip(df["correct"], wilson)]]).clip(min=0)
        a.errorbar(df["distance"] + (i - (len(groups) - 1) / 2) * nudge, df["correct"], yerr=yerr, label=label,
                   capsize=2, **style)
        b.plot(df["distance"], df["key_cached"], label=label, **style)
    for ax, title in ((a, "Pass key answered correctly (bars: Wilson 95 % CI)"),
                      (b, "Key's tokens still cached at the question (share)")):
        if budget:
            ax.axvline(budget, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("tokens from the key to the question")
        ax.set_title(title)
        ax.set_ylim(-0.05, 1.05)
    handles, labels = a.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=min(len(labels), 6), bbox_to_anchor=(0.5, -0.08))
    return fig


def _accuracy_lines(ax, rows: pd.DataFrame, x: str, group: str, log_x: bool = True) -> None:
    """Accuracy against ``x`` (the mean of each ``group``) per policy, Wilson 95 % bars. ``rows``: one per trial,
    with label, policy, correct and the columns named."""
    from .stats import wilson_interval

    seen: dict[tuple, int] = {}
    for label, df in rows.groupby("label", sort=False):
        points = df.groupby(group).agg(x=(x, "mean"), hits=("correct", "sum"), n=("correct", "size")).sort_values("x")
        wilson = [wilson_interval(int(k), int(n)) for k, n in zip(points["hits"], points["n"])]
        acc = points["hits"] / points["n"]
        yerr = np.array([[a - w.low for a, w in zip(acc, wilson)], [w.high - a for a, w in zip(acc, wilson)]])
        ax.errorbar(points["x"], acc, yerr=yerr.clip(min=0), label=label, capsize=2,
                    **_distinct(style_of(df["spec"].iloc[0]), seen))
    if log_x:
        plain_log_axis(ax, "x")
    ax.set_ylim(-0.05, 1.05)


def fig_streameval(questions: pd.DataFrame, budget: int | None = None):
    """StreamEval: accuracy against the tokens from fact to question (log scale), one line per policy, one panel per
    part of the stream (before and past the trained length). ``questions``: one row per question and policy with
    label, policy, part, lines_back, tokens_back, correct."""
    parts = list(dict.fromkeys(sorted(questions["part"], key=lambda p: p.startswith("past"))))
    fig, axes = plt.subplots(1, len(parts), figsize=(4.6 * len(parts), 3.4), sharey=True, squeeze=False)
    for ax, part in zip(axes[0], parts):
        _accuracy_lines(ax, questions[questions["part"] == part].astype({"correct": bool}), "tokens_back",
                        "lines_back")
        if budget:
            ax.axvline(budget, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("tokens from the fact to its question")
        ax.set_title(f"questions {part} tokens")
    axes[0][0].set_ylabel("answered (Wilson 95 % CI)")
    _legend_below(fig, axes[0][0])
    return fig


def _legend_below(fig, ax) -> None:
    """One legend for the figure, under its axes (a saved figure's tight box takes it in)."""
    fig.tight_layout()
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncols=min(len(labels), 4), bbox_to_anchor=(0.5, 0.0))


def fig_recall(turns: pd.DataFrame, budget: int | None = None):
    """Recall across turns: accuracy against the tokens from a fact's turn to its question (left, Wilson bars) and
    the KV cache held after each turn (right), one line per policy. ``turns``: one row per turn and policy with
    label, policy, kind, turn, turns_back, tokens_back, correct, kv_bytes."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    asked = turns[turns["kind"] == "question"].astype({"correct": bool})
    _accuracy_lines(a, asked, "tokens_back", "turns_back", log_x=False)
    if budget:
        a.axvline(budget, color="grey", lw=0.8, ls=":")
    a.set_xlabel("tokens from the fact to its question")
    a.set_title("Fact recalled (points: 1, 3, 6 ... turns back)")
    seen: dict[tuple, int] = {}
    for label, df in turns.groupby("label", sort=False):
        b.plot(df["turn"], df["kv_bytes"] / 2**20, label=label, **_distinct(style_of(df["spec"].iloc[0]), seen))
    b.set_xlabel("turn")
    b.set_ylabel("MiB")
    b.set_title("KV cache held after each turn")
    _legend_below(fig, a)
    return fig
