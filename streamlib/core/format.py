"""Tables as people read them: SI units turned into ms, MiB and GFLOP, column names in words, intervals as
``[a, b]``, and the Markdown and LaTeX a report and a run's ``tables/`` are written in."""

from __future__ import annotations

import pandas as pd

# Display units: what people expect to read in a table (records keep SI units: seconds and bytes).
DISPLAY_UNITS = {"s": ("ms", 1e3), "bytes": ("MiB", 1 / 2**20), "FLOP": ("GFLOP", 1e-9)}


def plain_value(value):
    """A record field as a comparable Python value: NaN and NA become None, whole floats ints (pandas reads 252 as
    252.0), numpy scalars Python ones."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value.item() if hasattr(value, "item") else value


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


def fmt(value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1e5 or abs(value) < 1e-2:
            return f"{value:.3g}"
        return f"{value:.2f}"
    return str(value)


# Column names as a reader reads them (frames keep short names for code and plots).
READER_NAMES = {"change_%": "change", "cache_size": "cache (tokens)", "kv_mib": "KV (MiB)", "tpot_ms": "TPOT (ms)",
                "ttft_ms": "TTFT (ms)", "peak_mem_mib": "peak memory (MiB)", "throughput": "decode tokens/s",
                "batch_size": "batch", "pos_shift": "position shift", "ppl": "perplexity", "label": "policy",
                "n_sink": "sinks", "key_cached": "key still cached", "prompt_tokens": "prompt (tokens)",
                "distance": "key to question (tokens)", "compiled": "compiled", "key_held": "key wholly cached",
                "correct_when_held": "correct when cached", "lines_back": "lines back", "tokens_back": "tokens back",
                "turns_back": "turns back", "max_kv_mib": "most KV held (MiB)", "rounds": "rounds",
                "key_fully_cached": "key wholly cached", "tpot_vs_dense": "TPOT / Dense"}


def reader_names(table: pd.DataFrame) -> list[str]:
    return [READER_NAMES.get(c, c) for c in table.columns]


def format_interval(low, high, percent: bool = False) -> str:
    """``[a, b]`` for a table cell; ``percent`` shows a ratio's interval as a change in percent."""
    if any(v is None or v is pd.NA or (isinstance(v, float) and v != v) for v in (low, high)):
        return "–"
    if percent:
        return f"[{(low - 1) * 100:+.1f} %, {(high - 1) * 100:+.1f} %]"
    return f"[{fmt(float(low))}, {fmt(float(high))}]"


def to_markdown(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    lines = ["| " + " | ".join(reader_names(table)) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    counts = _count_columns(table)
    for _, row in table.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            cells.append(f"{v:+.1f}%" if c == "change_%" and isinstance(v, float) and v == v
                         else str(int(v)) if c in counts and v == v else fmt(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _count_columns(table: pd.DataFrame) -> set:
    """Float columns that hold whole numbers only (token distances, trials after a mean over equal values): printed
    as integers, not ``6.00``."""
    out = set()
    for c in table.columns:
        col = table[c]
        if pd.api.types.is_float_dtype(col) and col.notna().any():
            known = col.dropna()
            if ((known % 1) == 0).all() and (known.abs() < 1e9).all():
                out.add(c)
    return out


def to_latex(table: pd.DataFrame) -> str:
    cols = list(table.columns)

    def esc(s: str) -> str:
        return s.replace("_", r"\_").replace("%", r"\%")

    lines = [r"\begin{tabular}{l" + "r" * (len(cols) - 1) + "}", r"\toprule",
             " & ".join(esc(c) for c in reader_names(table)) + r" \\", r"\midrule"]
    for _, row in table.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            cells.append(esc(f"{v:+.1f}%" if c == "change_%" and isinstance(v, float) and v == v else fmt(v)))
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)
