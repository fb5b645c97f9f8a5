"""The figures' style: the colour-blind Okabe-Ito palette, each policy's own line (colour, marker, line style, so
figures read in greyscale, declared in its file), fonts embedded as TrueType, and the helpers the figures share."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, NullFormatter

OKABE_ITO = ["#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7"]


def style_of(spec) -> dict:
    """Line keywords (colour, marker, line style) of the policy a spec string (a frame's ``spec`` column) names:
    each policy declares its own (:meth:`~streamlib.policies.PolicyBase.plot_style`)."""
    from ..policies import parse_policy

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


def markevery(n: int) -> int:
    return max(1, n // 12)


def _bins(x: np.ndarray, width: int | np.ndarray) -> np.ndarray:
    """The bin of each position: ``width`` positions per bin, or the bins between the sorted ``edges`` given."""
    return (x - 1) // width if np.isscalar(width) else np.searchsorted(width, x, side="right")


def binned(x: np.ndarray, y: np.ndarray, width: int | np.ndarray):
    """Mean of y in bins of ``width`` positions (NLL per token is noisy; the paper's Figure 3 is smoothed too), or
    between ``width``'s edges."""
    idx = _bins(x, width)
    keys = np.unique(idx)
    return np.array([x[idx == k].mean() for k in keys]), np.array([y[idx == k].mean() for k in keys])


def binned_band(x: np.ndarray, y: np.ndarray, width: int | np.ndarray):
    """Per bin: the mean's 95 % interval, a block bootstrap inside the bin (blocks of an eighth of the bin, at
    least 8 tokens)."""
    from ..core.stats import mean_interval

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


ALTERNATES = [("#56B4E9", "o", "--"), ("#009E73", "s", ":"), ("#CC79A7", "^", "-.")]


def distinct_style(style: dict, seen: dict) -> dict:
    """The policy's style the first time it is used in a figure; another colour, marker and line for each further
    line of the same kind (e.g. StreamingLLM at two cache sizes)."""
    key = (style["color"], style["marker"], style["linestyle"])
    n = seen.get(key, 0)
    seen[key] = n + 1
    if n == 0:
        return style
    colour, marker, ls = ALTERNATES[(n - 1) % len(ALTERNATES)]
    return {"color": colour, "marker": marker, "linestyle": ls}


def error_bars(df: pd.DataFrame, value: str, low: str, high: str):
    """Asymmetric error bars from interval columns, or None when the frame has none."""
    if low not in df or high not in df:
        return None
    return np.vstack([(df[value] - df[low]).clip(lower=0).to_numpy(), (df[high] - df[value]).clip(lower=0).to_numpy()])
