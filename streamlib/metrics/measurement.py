"""What one measurement gives, before a run records it: metric rows and, optionally, a curve."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass
class Measurement:
    """What one measurement gives: ``(metric, value, unit)`` rows for the records and, optionally, a curve (a tidy
    DataFrame, e.g. NLL per position, or the tokens of a generation). The measuring functions of the package
    (``quality.measure_perplexity``, ``timing.measure_generation``, ...) return one; ``status`` is set by
    :meth:`Run.measure` (``ok``, ``skipped`` when read back from an earlier run, ``failed``)."""

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
