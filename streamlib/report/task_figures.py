"""The figures of the tasks (notebook 06), drawn with seaborn: pass-key retrieval, StreamEval and recall across chat
turns, each accuracy with its Wilson interval (bars from our own columns, not seaborn's bootstrap)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from ..core.stats import wilson_interval
from .style import interval_bars, legend, lines, marks, plain_log_axis, policy_lines


def fig_retrieval(trials: pd.DataFrame, budget: int | None = None):
    """Pass-key retrieval: accuracy (left) and the share of the key's tokens still cached when the question came
    (right, mean over layers and trials) against the key's distance from the question, one line per policy. ``trials``: one row per trial with
    label, spec, distance, correct, key_cached."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4), sharex=True, sharey=True)
    points = trials.groupby(["label", "spec", "depth", "prompt_tokens"], sort=False, as_index=False).agg(
        distance=("distance", "mean"), correct=("correct", "mean"), hits=("correct", "sum"), n=("correct", "size"),
        key_cached=("key_cached", "mean"))
    order = list(dict.fromkeys(points["label"]))  # the legend in the trials' order, each line by distance
    points = points.assign(rank=points["label"].map(order.index)).sort_values(["rank", "distance"], kind="stable")
    nudge = 0.012 * (points["distance"].max() - points["distance"].min() or 1)  # bars side by side, not on top
    points["x"] = points["distance"] + points["label"].map({k: (i - (len(order) - 1) / 2) * nudge
                                                           for i, k in enumerate(order)})
    wilson = [wilson_interval(int(k), int(n)) for k, n in zip(points["hits"], points["n"])]
    points["low"], points["high"] = [w.low for w in wilson], [w.high for w in wilson]
    styles = lines(a, points, "x", "correct")  # StreamingLLM keeping the prompt: a second style of its kind
    for label, df in points.groupby("label", sort=False):
        interval_bars(a, df["x"], df["correct"], df["low"], df["high"], styles[label]["color"])
    lines(b, points, "distance", "key_cached", legend=False)
    for ax, title in ((a, "Pass key answered correctly (bars: Wilson 95 % CI)"),
                      (b, "Key's tokens still cached at the question (share)")):
        if budget:
            ax.axvline(budget, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("tokens from the key to the question")
        ax.set_title(title)
        ax.set_ylabel("")
        ax.set_ylim(-0.05, 1.05)
    legend(a, styles, where=fig, loc="lower center", ncols=min(len(styles), 6), bbox_to_anchor=(0.5, -0.08))
    return fig


def _accuracy_lines(ax, rows: pd.DataFrame, x: str, group: str, log_x: bool = True) -> None:
    """Accuracy against ``x`` (the mean of each ``group``) per policy, Wilson 95 % bars. ``rows``: one per trial,
    with label, policy, correct and the columns named."""
    parts = []
    for label, df in rows.groupby("label", sort=False):
        points = df.groupby(group).agg(x=(x, "mean"), hits=("correct", "sum"), n=("correct", "size")).sort_values("x")
        wilson = [wilson_interval(int(k), int(n)) for k, n in zip(points["hits"], points["n"])]
        parts.append(points.assign(label=label, spec=df["spec"].iloc[0], accuracy=points["hits"] / points["n"],
                                   low=[w.low for w in wilson], high=[w.high for w in wilson]))
    points = pd.concat(parts)
    styles = lines(ax, points, "x", "accuracy")
    for label, df in points.groupby("label", sort=False):
        interval_bars(ax, df["x"], df["accuracy"], df["low"], df["high"], styles[label]["color"])
    ax.set_ylabel("")
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
    _legend_below(fig, axes[0][0], axes[0][1:])
    return fig


def _legend_below(fig, ax, others=()) -> None:
    """One legend for the figure, under its axes (a saved figure's tight box takes it in); the other panels' own
    legends removed."""
    for other in others:
        if other.get_legend() is not None:
            other.get_legend().remove()
    fig.tight_layout()
    handles, labels = ax.get_legend_handles_labels()
    legend(ax, where=fig, loc="upper center", ncols=min(len(labels), 4), bbox_to_anchor=(0.5, 0.0))


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
    lines(b, turns.assign(mib=turns["kv_bytes"] / 2**20), "turn", "mib", legend=False)
    b.set_xlabel("turn")
    b.set_ylabel("MiB")
    b.set_title("KV cache held after each turn")
    _legend_below(fig, a)
    return fig


HEAD_MAPS = {"retrieval": ("Retrieval score per kv head", "share of the key's digits retrieved"),
             "gates": ("DuoAttention gate per kv head", "gate (1: full attention, 0: streaming)")}


def fig_head_map(scores: pd.DataFrame):
    """Figure 16: every kv head's map value (layers down, kv heads across): its retrieval score or its trained
    DuoAttention gate; a split keeps the brightest whole. ``scores``: layer, kv_head, score (and method, retrieval
    when absent: records made before the gates)."""
    method = scores["method"].iloc[0] if "method" in scores and scores["method"].notna().any() else "retrieval"
    title, label = HEAD_MAPS[method]
    table = scores.pivot(index="layer", columns="kv_head", values="score")
    fig, ax = plt.subplots(figsize=(2.2 + 0.5 * table.shape[1], 0.6 + 0.16 * table.shape[0]))
    sns.heatmap(table, ax=ax, cmap="viridis", vmin=0, vmax=max(1e-9, table.to_numpy().max()),
                cbar_kws={"label": label})
    ax.set_xlabel("kv head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    return fig


def fig_beyond_window(table: pd.DataFrame):
    """Figure 17: pass keys beyond the window, accuracy (Wilson 95 % bars) against the KV bytes each policy holds at
    the prompt's length. ``table``: :func:`streamlib.report.tasks.beyond_window_table`."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    styles = policy_lines(table)[1]
    marks(ax, table, "kv_mib", "accuracy", styles)
    for _, row in table.iterrows():
        interval_bars(ax, [row["kv_mib"]], [row["accuracy"]], [row["accuracy_low"]], [row["accuracy_high"]],
                      styles[row["label"]]["color"], capsize=3)
    ax.set_xscale("log")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("KV cache held at the prompt's length (MiB, log scale)")
    ax.set_ylabel("pass key answered (Wilson 95 % CI)")
    ax.set_title("Memory beyond the window: the key further back than the window", fontsize=9)
    _legend_below(fig, ax)
    return fig

