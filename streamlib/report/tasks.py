"""The report's tables of the tasks (notebook 06): pass-key retrieval, StreamEval and recall across chat turns, each
accuracy with its Wilson interval, Dense (the model's own ceiling) first."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..core.format import format_interval
from ..core.stats import wilson_interval
from ..policies import parse_policy
from .compare import CI, interval_bounds, interval_pair, latest_of_each, same_setting


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
        f"{k}/{n}: " + format_interval(*interval_pair(wilson_interval(int(k), int(n)))) if n else "–"
        for k, n in zip(table["correct_when_held"], table["key_held"])]
    return table.drop(columns=["spec"])


def latest_curves(run, group: str, **setting) -> pd.DataFrame:
    """The curve rows of ``group`` measured with these field values, each policy's latest measurement only."""
    curves = run.curves(group)
    if curves.empty:
        return curves
    wide = latest_of_each(same_setting(run.metrics(group), **setting), ["label"])
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
    table["accuracy_low"], table["accuracy_high"] = interval_bounds(intervals)
    table[f"accuracy {CI}"] = [format_interval(iv.low, iv.high) for iv in intervals]
    table["correct"] = table["correct"].astype(int)
    return table


def beyond_window_table(run) -> pd.DataFrame:
    """06's pass keys beyond the window, one row per policy (Dense first): its trials, the share answered with its
    Wilson 95 % interval, the share whose key was still wholly cached, the KV cache it holds at the prompt's length
    (MiB, from the shapes); a head split's label says how many kv heads it keeps whole."""
    cfg = run.cfg
    trials = latest_curves(run, "beyond_window", context_tokens=cfg.head_split_tokens, seeds=cfg.head_split_seeds)
    if trials.empty:
        return trials
    table = trials.groupby(["spec", "label"], sort=False).agg(
        trials=("correct", "size"), correct=("correct", "sum"), accuracy=("correct", "mean"),
        key_held=("key_cached", lambda c: float((c >= 1.0).mean())), kv_mib=("kv_mib", "first")).reset_index()
    return _with_wilson(_in_kind_order(table, ["kv_mib"]))



def accuracy_grid(table: pd.DataFrame, rows: list[str], across: str, heading) -> pd.DataFrame:
    """A task table as a reader scans it: one row per ``rows`` (the policy first), one column per value of ``across``
    (a distance), each cell the accuracy with its Wilson 95 % interval and the trials behind it. ``heading(value,
    cells)`` names a column from its value and its rows of ``table`` (e.g. with their mean tokens back)."""
    if table.empty:
        return table
    cell = [f"{a:.2f} {format_interval(lo, hi)} ({int(n)})"
            for a, lo, hi, n in zip(table["accuracy"], table["accuracy_low"], table["accuracy_high"], table["trials"])]
    names = {v: heading(v, table[table[across] == v]) for v in table[across].unique()}
    grid = table.assign(cell=cell, column=table[across].map(names)) \
        .pivot_table(index=rows, columns="column", values="cell", aggfunc="first", sort=False)
    return grid.reindex(columns=list(dict.fromkeys(names.values()))).fillna("–").reset_index().rename_axis(
        columns=None)


def streameval_grid(run) -> pd.DataFrame:
    """StreamEval as report.md shows it: policy and part of the stream by lines back (mean tokens back)."""
    return accuracy_grid(streameval_table(run), ["label", "part"], "lines_back",
                         lambda v, rows: f"{int(v)} line{'s' * (int(v) != 1)} (≈{rows['tokens_back'].mean():.0f} tokens) back")


def recall_grid(run) -> pd.DataFrame:
    """Recall across chat turns as report.md shows it: policy by turns back, every question pooled last, and the
    most KV the chat held."""
    table = recall_table(run)
    if table.empty:
        return table
    grid = accuracy_grid(table, ["label"], "turns_back", lambda v, rows: "all questions" if v == "all" else
                         f"{v} turns (≈{rows['tokens_back'].mean():.0f} tokens) back")
    return grid.assign(max_kv_mib=grid["label"].map(table.groupby("label")["max_kv_mib"].first()))


def retrieval_grid(run) -> pd.DataFrame:
    """Pass keys by distance as report.md shows it: policy by tokens from the key to the question (prompt length
    in the header when there are several)."""
    table = retrieval_table(run)
    if table.empty:
        return table
    several = table["prompt_tokens"].nunique() > 1
    table = table.assign(where=[(p, round(d)) for p, d in zip(table["prompt_tokens"], table["distance"])])
    return accuracy_grid(table, ["label"], "where", lambda v, rows: f"{v[1]} tokens back"
                         + (f" of {v[0]}" if several else ""))


def harness_grid(run) -> pd.DataFrame:
    """06's pass key through lm-evaluation-harness as report.md shows it: policy by the key's depth (its mean tokens
    back), every key pooled last; each cell the harness's exact match with its Wilson 95 % interval."""
    docs = latest_curves(run, "harness", seeds=run.cfg.harness_seeds)
    if docs.empty or "tokens_back" not in docs:
        return pd.DataFrame()
    rows = pd.concat([docs.assign(depth=docs["depth"].map(lambda d: f"{d:g}")), docs.assign(depth="all")])
    table = rows.groupby(["spec", "label", "depth"], sort=False).agg(
        trials=("score", "size"), correct=("score", "sum"), accuracy=("score", "mean"),
        tokens_back=("tokens_back", "mean")).reset_index()
    table = _with_wilson(_in_kind_order(table, ["label"]))
    return accuracy_grid(table, ["label"], "depth", lambda v, rows: "all keys" if v == "all" else
                         f"{rows['tokens_back'].mean():.0f} tokens back")
