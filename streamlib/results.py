"""Result records: one flat row per measurement, appended to ``<run_dir>/results.jsonl`` so no run is ever lost.

Each row has the metric, value and unit, the policy and its parameters, the model and where it ran, the library
versions and git commit, the dataset and token count, a timestamp, a status (``ok`` or ``failed``) and, for failures,
the error. A row is one ``write`` of one line to a file opened for appending, flushed and fsynced: a process killed
mid-run leaves every finished row intact (at worst a torn last line, which the loader skips).

A configuration (``key``) that already has ``ok`` rows is skipped on re-run unless ``force=True``; a failure, CUDA
out-of-memory included, becomes a ``failed`` row and the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .data import repo_root

RESULTS_FILE = "results.jsonl"
COLUMNS = ["run", "key", "status", "metric", "value", "unit", "policy", "n_sink", "window", "pos_shift", "model",
           "dtype", "device", "gpu", "dataset", "n_tokens", "torch", "transformers", "git_commit", "timestamp",
           "error", "extra"]


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo_root(), capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def environment() -> dict:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "git_commit": git_commit(),
            "host": platform.node()}


def config_key(**fields) -> str:
    """A short stable hash of a configuration: the same fields in any order give the same key."""
    blob = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


class ResultsStore:
    """The results file of one run directory."""

    def __init__(self, run_dir: str | os.PathLike, context: dict | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / RESULTS_FILE
        self.context = {"run": self.run_dir.name, **environment(), **(context or {})}

    # -- writing ------------------------------------------------------------------------------------------------
    def append(self, row: dict) -> None:
        full = {**self.context, **row, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        line = (json.dumps(full, default=_jsonable) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def done_keys(self) -> set[str]:
        return {r["key"] for r in read_rows(self.path) if r.get("status") == "ok" and "key" in r}

    def measure(self, fields: dict, fn: Callable[[], Iterable[tuple[str, float, str]]], *, force: bool = False) -> str:
        """Run ``fn`` unless ``fields`` were already measured; record its ``(metric, value, unit)`` rows.

        ``fields``: the configuration (policy params, model, dataset, n_tokens, ... and anything else that makes the
        measurement distinct). Returns ``"skipped"``, ``"ok"`` or ``"failed"``; never raises for a failing ``fn``
        (``KeyboardInterrupt`` still stops the run).
        """
        key = config_key(**fields)
        if not force and key in self.done_keys():
            return "skipped"
        base = {"key": key, **_flatten(fields)}
        try:
            rows = list(fn())
        except Exception as err:  # noqa: BLE001 - any failure, CUDA OOM included, is a record, not a crash
            if isinstance(err, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            self.append({**base, "status": "failed", "metric": fields.get("group", ""), "value": None,
                         "error": f"{type(err).__name__}: {err}"[:2000],
                         "extra": {"traceback": traceback.format_exc(limit=5)}})
            return "failed"
        for metric, value, unit in rows:
            self.append({**base, "status": "ok", "metric": metric, "value": float(value), "unit": unit})
        return "ok"


def _jsonable(value):
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    if isinstance(value, (Path, torch.device)):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _flatten(fields: dict) -> dict:
    """Policy params and other dicts are spread into the row; known columns keep their names."""
    out = {}
    for name, value in fields.items():
        if isinstance(value, dict):
            out.update(value)
        else:
            out[name] = value
    return out


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
    return df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]


@dataclass
class Measurement:
    """What one measurement gives: ``(metric, value, unit)`` rows for the records and, optionally, a curve (a tidy
    DataFrame, e.g. NLL per position, or the tokens of a generation). The measuring functions of the
    package (``quality.measure_perplexity``, ``speed.measure_generation``, ...) return one; ``status`` is set by
    :meth:`streamlib.workbook.Run.measure` (``ok``, ``skipped`` when read back from an earlier run, ``failed``)."""

    rows: list[tuple[str, float, str]] = field(default_factory=list)
    curve: pd.DataFrame | None = None
    status: str = "ok"
    error: str = ""

    def __getitem__(self, metric: str) -> float:
        for name, value, _ in self.rows:
            if name == metric:
                return value
        raise KeyError(f"metric {metric!r} not measured; have {[r[0] for r in self.rows]}")

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["metric", "value", "unit"])


# ---------------------------------------------------------------------------------------------------- tables --

# Display units: what people expect to read in a table (records keep SI units: seconds and bytes).
DISPLAY_UNITS = {"s": ("ms", 1e3), "bytes": ("MiB", 1 / 2**20), "FLOP": ("GFLOP", 1e-9)}


def in_display_units(table: pd.DataFrame, value_columns=("baseline", "streamingllm", "value")) -> pd.DataFrame:
    """Seconds to ms, bytes to MiB (GiB from 1 GiB up), FLOP to GFLOP, in a table with a ``unit`` column."""
    out = table.copy()
    cols = [c for c in value_columns if c in out.columns]
    for i, unit in out["unit"].items():
        if unit not in DISPLAY_UNITS:
            continue
        new_unit, scale = DISPLAY_UNITS[unit]
        values = pd.to_numeric(out.loc[i, cols], errors="coerce")
        if unit == "bytes" and values.abs().max() >= 2**30:
            new_unit, scale = "GiB", 1 / 2**30
        out.loc[i, cols] = values * scale
        out.loc[i, "unit"] = new_unit
    return out


def metrics_wide(df: pd.DataFrame, group: str | None = None) -> pd.DataFrame:
    """One row per measurement (record key): its descriptive columns plus one column per metric. The tidy form the
    figures and tables are built from."""
    ok = df[df["status"] == "ok"]
    if group is not None:
        ok = ok[ok["group"] == group] if "group" in ok else ok.iloc[0:0]
    if ok.empty:
        return pd.DataFrame()
    drop = {"run", "metric", "value", "unit", "status", "error", "extra", "torch", "transformers", "git_commit",
            "host"}
    # ``timestamp`` stays: the time of the measurement's last row, so a table can keep the latest of equals
    described = ok.drop(columns=[c for c in ok.columns if c in drop]).sort_values("timestamp", kind="stable").groupby("key", sort=False).last()
    values = ok.sort_values("timestamp", kind="stable").pivot_table(index="key", columns="metric", values="value", aggfunc="last")
    wide = described.join(values).reset_index()
    wide = wide.dropna(axis=1, how="all")
    for col in ("n_sink", "window", "pos_shift"):  # Dense has none of them, but every frame has the columns
        if col not in wide:
            wide[col] = pd.NA
    for col in ("n_sink", "window", "batch_size", "n_tokens", "prompt_tokens", "new_tokens", "n_heavy", "n_recent", "budget"):
        if col in wide:
            wide[col] = wide[col].astype("Int64")
    if "policy" in wide:
        wide.insert(1, "label", [policy_label(r) for r in wide.to_dict("records")])
    return wide


def policy_from_row(row: dict):
    """The policy a record row (or a row of ``metrics_wide``) describes."""
    from .policies import from_params

    params = {k: (None if v is pd.NA or (isinstance(v, float) and v != v) else v) for k, v in row.items()}
    if params.get("pos_shift") is None:
        params["pos_shift"] = True
    return from_params(params)


def policy_label(row: dict) -> str:
    """The display label of the policy a record row describes."""
    try:
        return policy_from_row(row).label()
    except (ValueError, KeyError, TypeError):
        return str(row.get("policy"))




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

    ``baseline`` and ``streaming`` select rows by column values (e.g. ``{"policy": "dense"}``). For each metric the two
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


def _fmt(value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1e5 or abs(value) < 1e-2:
            return f"{value:.3g}"
        return f"{value:.2f}"
    return str(value)


def to_markdown(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in table.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            cells.append(f"{v:+.1f}%" if c == "change_%" and isinstance(v, float) and v == v else _fmt(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_latex(table: pd.DataFrame) -> str:
    cols = list(table.columns)

    def esc(s: str) -> str:
        return s.replace("_", r"\_").replace("%", r"\%")

    lines = [r"\begin{tabular}{l" + "r" * (len(cols) - 1) + "}", r"\toprule",
             " & ".join(esc(c) for c in cols) + r" \\", r"\midrule"]
    for _, row in table.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            cells.append(esc(f"{v:+.1f}%" if c == "change_%" and isinstance(v, float) and v == v else _fmt(v)))
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)
