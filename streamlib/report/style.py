"""The figures' style, through seaborn: its theme and colour-blind palette, each policy's own line (colour from the
Okabe-Ito palette, marker and line style, so figures read in greyscale, declared in its file) handed to seaborn as
its mappings, fonts embedded as TrueType, and the helpers the figures share.

seaborn draws the points and lines; the intervals come from our own columns, drawn as bars and bands beside them.
seaborn's own error bars would bootstrap rows as if independent: token NLL is autocorrelated along a stream (a block
bootstrap is needed, ``streamlib.core.stats``), and accuracies get Wilson intervals, so its ``errorbar`` stays off."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import FuncFormatter, NullFormatter

OKABE_ITO = ["#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7"]


def style_of(spec) -> dict:
    """Line keywords (colour, marker, line style) of the policy a spec string (a frame's ``spec`` column) names:
    each policy declares its own (:meth:`~streamlib.policies.PolicyBase.plot_style`)."""
    from ..policies import parse_policy

    policy = parse_policy(spec) if isinstance(spec, str) else spec
    return policy.plot_style().kwargs()


def apply_style() -> None:
    """seaborn's white-grid theme with its colour-blind palette (what a policy does not colour itself), the sizes of
    a lab report's figures, fonts embedded."""
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", rc={
        "pdf.fonttype": 42, "ps.fonttype": 42,  # embed TrueType (Type 42), not Type 3
        "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
        "ytick.labelsize": 8, "grid.alpha": 0.5, "figure.dpi": 110, "savefig.dpi": 200, "savefig.bbox": "tight",
        "lines.linewidth": 1.5, "lines.markersize": 4,
    })


def dashes_of(linestyle) -> str | tuple:
    """A matplotlib line style as seaborn's dash code: "" (solid) or (segment, gap, ...)."""
    named = {"-": "", "solid": "", "--": (4, 1.5), "dashed": (4, 1.5), ":": (1, 1.5), "dotted": (1, 1.5),
             "-.": (4, 1.5, 1, 1.5), "dashdot": (4, 1.5, 1, 1.5)}
    return named[linestyle] if isinstance(linestyle, str) else tuple(linestyle[1])


def policy_lines(frame: pd.DataFrame, key: str = "label") -> tuple[dict, dict]:
    """seaborn's mappings for one line per value of ``key`` (in the frame's order), each from the style its policy
    declares (``spec`` column; a second line of the same kind gets another): the keywords for ``sns.lineplot`` and
    friends (hue and style by ``key``, palette, markers, dashes) and each line's own matplotlib style."""
    seen: dict[tuple, int] = {}
    styles = {}
    for value, df in frame.groupby(key, sort=False):
        styles[value] = distinct_style(style_of(df["spec"].iloc[0]), seen)
    order = list(styles)
    return ({"hue": key, "style": key, "hue_order": order, "style_order": order,
             "palette": {v: st["color"] for v, st in styles.items()},
             "markers": {v: st["marker"] for v, st in styles.items()},
             "dashes": {v: dashes_of(st["linestyle"]) for v, st in styles.items()}}, styles)


def lines(ax, data: pd.DataFrame, x: str, y: str, key: str = "label", **kwargs) -> dict:
    """One line per ``key`` through ``sns.lineplot`` in each policy's style (no seaborn interval: ours are drawn
    from their columns). The markers are set on the lines afterwards, with a quantized cache's hollow: seaborn maps
    markers only when all are filled or all line art, and the policies use both (H2O's splits). Returns the styles by
    value."""
    mapping, styles = policy_lines(data, key)
    mapping.pop("markers")
    markers = {"markersize": kwargs.pop("markersize", 5), "markeredgewidth": kwargs.pop("markeredgewidth", 0.4),
               "markevery": kwargs.pop("markevery", None)}
    before = len(ax.lines)
    sns.lineplot(data=data, x=x, y=y, ax=ax, errorbar=None, sort=False, estimator=None, **mapping, **kwargs)
    for line, value in zip(ax.lines[before:], mapping["hue_order"]):
        line.set_gid(str(value))  # which policy a line is, for whoever reads the figure back (the tests)
        _mark(line, styles[value], **markers)
    return styles


def _mark(line, style: dict, markersize: float = 5, markeredgewidth: float = 0.4, markevery=None) -> None:
    """A line's (or a legend handle's) marker in the policy's style: a thin white edge on a filled one, hollow for a
    quantized cache."""
    line.set_marker(style["marker"])
    line.set_markersize(markersize)
    line.set_markevery(markevery)
    hollow = style.get("mfc") == "none"
    line.set_markerfacecolor("none" if hollow else style["color"])
    line.set_markeredgecolor(style["color"] if hollow else "white")
    line.set_markeredgewidth(1.0 if hollow else markeredgewidth)


def marks(ax, data: pd.DataFrame, x: str, y: str, styles: dict, key: str = "label", size: float = 45) -> None:
    """One point (or set of points) per ``key`` value through ``sns.scatterplot``, in the styles given."""
    for value, df in data.groupby(key, sort=False):
        st = styles[value]
        sns.scatterplot(data=df, x=x, y=y, ax=ax, color=st["color"], marker=st["marker"], s=size, label=str(value),
                        edgecolor=st["color"] if st.get("mfc") == "none" else "none",
                        facecolor="none" if st.get("mfc") == "none" else st["color"])


def legend(ax, styles: dict | None = None, where=None, **kwargs):
    """The axes' legend without seaborn's title (the variable's name), hollow markers hollow; on ``where`` (a
    figure) instead of the axes when given."""
    handles, labels = ax.get_legend_handles_labels()
    for handle, label in zip(handles, labels):
        if styles and label in styles and hasattr(handle, "set_marker"):
            _mark(handle, styles[label])
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    return (where or ax).legend(handles, labels, **kwargs)


def interval_bars(ax, x, y, low, high, colour, **kwargs) -> None:
    """Asymmetric bars from precomputed bounds (an interval of ours, not seaborn's)."""
    x, y, low, high = (np.asarray(v, dtype=float) for v in (x, y, low, high))
    err = np.vstack([y - low, high - y]).clip(min=0)
    ax.errorbar(x, y, yerr=err, fmt="none", ecolor=colour, capsize=kwargs.pop("capsize", 2), **kwargs)


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
