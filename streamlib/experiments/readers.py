"""Reading records back: the rows of ``results.jsonl`` files (a torn last line skipped), every row under a folder as
one frame (rows written before spec strings given theirs), and the wide form the tables and figures are built from:
one row per measurement, one column per metric."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from ..loading.data import repo_root
from ..policies import parse_policy, policy_from_row

RESULTS_FILE = "results.jsonl"
COLUMNS = ["run", "key", "status", "metric", "value", "unit", "policy", "spec", "model",
           "dtype", "device", "gpu", "dataset", "n_tokens", "torch", "transformers", "git_commit", "timestamp",
           "error", "extra"]


def read_rows(path: str | os.PathLike) -> list[dict]:
    rows = []
    p = Path(path)
    if not p.exists():
        return rows
    with open(p, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line from a killed process
    return rows


def read_appended(path: str | os.PathLike, offset: int) -> tuple[list[dict], int]:
    """The rows of the whole lines written to ``path`` past byte ``offset`` (a line still being written waits for
    the next read), and the offset after them."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], offset
    whole = data[: data.rfind(b"\n") + 1]
    rows = []
    for line in whole.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn line from a killed process
    return rows, offset + len(whole)


def load_results(*paths: str | os.PathLike) -> pd.DataFrame:
    """All rows under the given run directories, results files or roots (searched recursively), as a DataFrame."""
    files: list[Path] = []
    for p in paths or (repo_root() / "runs",):
        p = Path(p)
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files.extend(sorted(p.rglob(RESULTS_FILE)))
    rows = [r for f in files for r in read_rows(f)]
    df = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = None
    _fill_specs(df)
    return df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]


def _fill_specs(df: pd.DataFrame) -> None:
    """Give the rows of records written before spec strings their policy's ``spec``, from their fields."""
    if "policy" not in df:
        return
    missing = df["spec"].isna() & df["policy"].notna()
    if not missing.any():
        return
    fields = df.loc[missing].drop(columns=["spec"])
    for key, rows in fields.groupby("key", sort=False):
        try:
            df.loc[rows.index, "spec"] = policy_from_row(rows.iloc[0].to_dict()).spec()
        except (ValueError, TypeError):
            continue  # a policy no longer registered: its rows keep no spec


def metrics_wide(df: pd.DataFrame, group: str | None = None) -> pd.DataFrame:
    """One row per measurement (record key): its descriptive columns plus one column per metric. The tidy form the
    figures and tables are built from."""
    ok = df[df["status"] == "ok"]
    if "spec" not in ok or ok["spec"].isna().any():  # rows of records written before spec strings
        ok = ok.assign(spec=ok["spec"] if "spec" in ok else None)
        _fill_specs(ok)
    if group is not None:
        ok = ok[ok["group"] == group] if "group" in ok else ok.iloc[0:0]
    if ok.empty:
        return pd.DataFrame()
    drop = {"run", "metric", "value", "unit", "status", "error", "extra", "torch", "transformers", "git_commit",
            "host", "notebook", "session", "process"}  # provenance, not description
    # ``timestamp`` stays: the time of the measurement's last row, so a table can keep the latest of equals
    ordered = ok.sort_values("timestamp", kind="stable")
    described = ordered.drop(columns=[c for c in ok.columns if c in drop]).groupby("key", sort=False).last()
    values = ordered.pivot_table(index="key", columns="metric", values="value", aggfunc="last")
    # a field another group describes with (head_scores' ``trials``) may be a metric here: this group's rows leave it
    # empty, and the metric is what this table means by the name
    described = described.dropna(axis=1, how="all")
    described = described.drop(columns=[c for c in described.columns if c in values.columns])
    wide = described.join(values).reset_index()
    wide = wide.dropna(axis=1, how="all")
    for col in ("n_sink", "window", "batch_size", "n_tokens", "prompt_tokens", "new_tokens", "n_heavy", "n_recent",
                "budget", "capacity"):
        if col in wide:
            wide[col] = wide[col].astype("Int64")
    if "spec" in wide:
        wide.insert(1, "label", [_label(spec) for spec in wide["spec"]])
    return wide


def _label(spec) -> str:
    try:
        return parse_policy(spec).label()
    except ValueError:
        return str(spec)
