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
# policy kind -> (colour, marker, linestyle)
POLICY_STYLE = {
    "dense": ("#000000", "o", "-"),
    "window": ("#E69F00", "s", "--"),
    "recompute": ("#009E73", "^", ":"),
    "streamingllm": ("#0072B2", "D", "-"),
    "streamingllm-noshift": ("#CC79A7", "v", "-."),
    "tova": ("#56B4E9", "P", "--"),
    "h2o": ("#D55E00", "X", "-"),
    "h2o-recent": ("#D55E00", "x", ":"),
    "burst": ("#F0E442", "*", "-"),
    "burst-noshift": ("#F0E442", "*", ":"),
    "published": ("#777777", "x", ":"),
}


def apply_style() -> None:
    plt.rcParams.update({
        "pdf.fonttype": 42, "ps.fonttype": 42,  # embed TrueType (Type 42), not Type 3
        "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
        "axes.prop_cycle": matplotlib.cycler(color=OKABE_ITO),
        "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 110, "savefig.dpi": 200,
        "savefig.bbox": "tight", "lines.linewidth": 1.5, "lines.markersize": 4,
    })


def kind_label(policy: str, pos_shift=True) -> str:
    """The name of a policy kind in legends: Dense, Window, StreamingLLM (no shift), Recompute, TOVA, H2O."""
    names = {"dense": "Dense", "window": "Window", "recompute": "Recompute", "streamingllm": "StreamingLLM",
             "tova": "TOVA", "h2o": "H2O", "burst": "Burst eviction"}
    shiftable = policy in ("streamingllm", "burst")
    return names.get(policy, policy) + (", no shift" if shiftable and _no_shift(pos_shift) else "")


def _no_shift(pos_shift) -> bool:
    """True only for an explicit False (numpy's too); a missing value (Dense, Window rows) means shifted."""
    if pos_shift is None or pos_shift is pd.NA or (isinstance(pos_shift, float) and pos_shift != pos_shift):
        return False
    return not bool(pos_shift)


def family_label(policy) -> str:
    """A policy's family on a sweep curve: its kind, and for H2O the heavy:recent split."""
    p = policy.params()
    if p["policy"] == "h2o":
        return "H2O, heavy = recent" if p["n_heavy"] == p["n_recent"] else "H2O, recent-heavy"
    return kind_label(p["policy"], p.get("pos_shift", True))


FAMILY_STYLE = {"H2O, recent-heavy": "h2o-recent"}


def style_for(policy: str, pos_shift=True) -> dict:
    key = f"{policy}-noshift" if policy in ("streamingllm", "burst") and _no_shift(pos_shift) else policy
    colour, marker, ls = POLICY_STYLE.get(key, ("#56B4E9", "*", "-"))
    return {"color": colour, "marker": marker, "linestyle": ls}


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


def _binned(x: np.ndarray, y: np.ndarray, width: int):
    """Mean of y in bins of ``width`` positions (NLL per token is noisy; the paper's Figure 3 is smoothed too)."""
    idx = (x - 1) // width
    keys = np.unique(idx)
    return np.array([x[idx == k].mean() for k in keys]), np.array([y[idx == k].mean() for k in keys])


def fig_nll_vs_position(curves: pd.DataFrame, trained_length: int | None = None):
    """Figure 1: NLL (log scale) against token position, one line per policy. ``curves``: label, policy,
    pos_shift, position, nll."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    width = max(1, int(curves["position"].max()) // 64)  # one bin width for every policy
    for label, df in curves.groupby("label", sort=False):
        x, y = _binned(df["position"].to_numpy(), df["nll"].to_numpy(), width)
        ax.plot(x, y, label=label, markevery=_markevery(len(x)), **style_for(df["policy"].iloc[0], df["pos_shift"].iloc[0]))
    if trained_length:
        ax.axvline(trained_length, color="grey", lw=0.8, ls=":")
        ax.text(trained_length, ax.get_ylim()[1], " trained length", va="top", fontsize=7, color="grey")
    plain_log_axis(ax)
    ax.set_xlabel("token position in the stream")
    ax.set_ylabel(f"NLL (nats, mean per {width} tokens)")
    ax.set_title("Language modelling along a long stream")
    ax.legend(ncols=2, loc="lower right")
    return fig


def fig_trace(traces: pd.DataFrame, column: str, ylabel: str, title: str, scale: float = 1.0):
    """Figures 2 and 3: a per-position trace (memory or latency) of each policy."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for label, df in traces.groupby("label", sort=False):
        ax.plot(df["position"], df[column] * scale, label=label, markevery=_markevery(len(df)),
                **style_for(df["policy"].iloc[0], df["pos_shift"].iloc[0]))
    ax.set_xlabel("token position in the stream")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(ncols=2)
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


def fig_tradeoff(sweep: pd.DataFrame):
    """Figure 4: perplexity against KV-cache memory for the sweep, Pareto front marked; TPOT in a second panel.
    ``sweep``: family, policy, pos_shift, kv_mib, ppl, tpot_ms, cache_size (``workbook.sweep_table``)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.5, 3.4))
    for name, df in sweep.groupby("family", sort=False):
        df = df.sort_values("cache_size")
        first = df.iloc[0]
        st = style_for(FAMILY_STYLE.get(name, first["policy"]), first["pos_shift"])
        a.plot(df["kv_mib"], df["ppl"], label=name, **st)
        b.plot(df["cache_size"], df["tpot_ms"], label=name, **st)
    front = pareto_front(sweep.dropna(subset=["ppl"]), "kv_mib", "ppl")
    if not front.empty:
        a.plot(front["kv_mib"], front["ppl"], color="grey", lw=4, alpha=0.25, zorder=0, label="Pareto front")
    a.set_xlabel("KV-cache memory (MiB)")
    a.set_ylabel("perplexity")
    plain_log_axis(a)
    a.set_title("Quality vs memory")
    b.set_xlabel("cache size (tokens)")
    b.set_ylabel("TPOT (ms)")
    b.set_title("Latency vs cache size")
    handles, labels = a.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncols=4, frameon=False)
    return fig


def fig_sinks(ours: pd.DataFrame, published: pd.DataFrame | None = None):
    """Figure 5: perplexity against the number of sinks at a fixed cache size (the paper's Table 2 shape).
    ``ours``: n_sink, ppl, cache_size. ``published``: rows of the reference CSV (model, n_sink, ppl)."""
    ncols = 2 if published is not None and not published.empty else 1
    fig, axes = plt.subplots(1, ncols, figsize=(4 * ncols, 3.2), squeeze=False)
    ax = axes[0, 0]
    ax.plot(ours["n_sink"], ours["ppl"], **style_for("streamingllm"))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("attention sinks (cache size fixed)")
    ax.set_ylabel("perplexity")
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
    ``table``: label, policy, pos_shift, batch_size, ttft_ms, tpot_ms, throughput."""
    fig, axes = plt.subplots(1, 3, figsize=(9, 3))
    labels = list(dict.fromkeys(table["label"]))
    batches = sorted(table["batch_size"].unique())
    width = 0.8 / max(1, len(labels))
    hatches = ["", "//", "..", "xx"]
    for ax, (col, title) in zip(axes, [("ttft_ms", "TTFT (ms)"), ("tpot_ms", "TPOT (ms)"), ("throughput", "decode tokens/s")]):
        for i, label in enumerate(labels):
            df = table[table["label"] == label].set_index("batch_size").reindex(batches)
            st = style_for(df["policy"].dropna().iloc[0], df["pos_shift"].dropna().iloc[0])
            ax.bar(np.arange(len(batches)) + i * width, df[col], width, label=label, color=st["color"],
                   hatch=hatches[i % len(hatches)], edgecolor="white")
        ax.set_xticks(np.arange(len(batches)) + width * (len(labels) - 1) / 2, [f"batch {b}" for b in batches])
        ax.set_title(title)
    # below the panels, where it covers no bar
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncols=min(4, len(labels)), frameon=False)
    return fig


def fig_attention(share: pd.DataFrame, uniform: float | None = None):
    """Figure 7: mean attention weight on each of the first tokens, per layer. ``share``: layer, token, weight."""
    fig, ax = plt.subplots(figsize=(6, 3))
    for i, (token, df) in enumerate(share.groupby("token")):
        ax.plot(df["layer"], df["weight"], label=f"token {token}", marker="osD^"[i % 4],
                linestyle=["-", "--", ":", "-."][i % 4])
    if uniform is not None:
        ax.axhline(uniform, color="grey", ls=":", lw=1, label="uniform attention")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("mean attention weight")
    ax.set_title("Where attention goes: the first tokens")
    ax.legend(ncols=2)
    return fig


def fig_generation(steps: pd.DataFrame, trained_length: int | None = None):
    """KV-cache memory and time per token along a generation, one line per policy. ``steps``: label, policy,
    pos_shift, position, kv_bytes, step_s (one row per generated token)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    width = max(1, len(steps) // max(1, steps["label"].nunique()) // 64)
    for label, df in steps.groupby("label", sort=False):
        st = style_for(df["policy"].iloc[0], df["pos_shift"].iloc[0])
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
    label, policy, pos_shift, distance, correct, key_cached."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4), sharex=True, sharey=True)
    points = trials.groupby(["label", "policy", "depth", "prompt_tokens"], sort=False, as_index=False).agg(
        distance=("distance", "mean"), correct=("correct", "mean"), key_cached=("key_cached", "mean"))
    for (label, policy), df in points.groupby(["label", "policy"], sort=False):
        df = df.sort_values("distance")
        style = style_for(FAMILY_STYLE["H2O, recent-heavy"] if policy == "h2o" and _h2o_recent_heavy(label)
                          else policy)
        a.plot(df["distance"], df["correct"], label=label, **style)
        b.plot(df["distance"], df["key_cached"], label=label, **style)
    for ax, title in ((a, "Pass key answered correctly (share of trials)"),
                      (b, "Key's tokens still cached at the question (share)")):
        if budget:
            ax.axvline(budget, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("tokens from the key to the question")
        ax.set_title(title)
        ax.set_ylim(-0.05, 1.05)
    handles, labels = a.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=min(len(labels), 6), bbox_to_anchor=(0.5, -0.08))
    return fig


def _h2o_recent_heavy(label: str) -> bool:
    """``H2O 32+96``: fewer heavy hitters than recent tokens."""
    heavy, recent = (int(x) for x in label.split(" ")[1].split("+"))
    return heavy < recent
