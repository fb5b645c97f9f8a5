"""The figures as seaborn draws them: each policy in the style its file declares, and every interval ours (the
bounds in the frame), not one seaborn computed."""

import numpy as np
import pandas as pd

from streamlib.report.figures import fig_nll_vs_position, fig_tradeoff
from streamlib.report.style import apply_style, style_of
from streamlib.report.task_figures import fig_head_map
from streamlib.policies import Dense, StreamingLLM


def _lines_by_policy(ax) -> dict:
    return {line.get_gid(): line for line in ax.get_lines() if line.get_gid()}


def test_each_policy_is_drawn_in_its_declared_style():
    apply_style()
    policies = [Dense(), StreamingLLM(4, 60), StreamingLLM(4, 60, bits=4)]
    rows = [{"label": p.label(), "spec": p.spec(), "position": x, "nll": 2.0 + 0.1 * i + 0.001 * x}
            for i, p in enumerate(policies) for x in range(1, 513)]
    fig = fig_nll_vs_position(pd.DataFrame(rows), bands=True)
    drawn = _lines_by_policy(fig.axes[0])
    assert set(drawn) == {p.label() for p in policies}
    for p in policies:
        style = style_of(p.spec())
        assert drawn[p.label()].get_color() == style["color"] and drawn[p.label()].get_marker() == style["marker"]
    quantized = drawn[policies[2].label()]
    assert quantized.get_markerfacecolor() == "none" and drawn[policies[1].label()].get_markerfacecolor() != "none"
    assert len(fig.axes[0].collections) == len(policies)  # a band per policy
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [p.label() for p in policies]  # no seaborn title entry


def test_interval_bars_are_the_frame_bounds():
    """fig4: each perplexity bar spans exactly the frame's ppl_low..ppl_high (a block bootstrap of ours), where
    seaborn's own error bar would resample the rows."""
    apply_style()
    sweep = pd.DataFrame({"family": ["StreamingLLM"] * 3, "spec": ["streamingllm:4+60", "streamingllm:4+124",
                                                                   "streamingllm:4+252"],
                          "kv_mib": [1.0, 2.0, 4.0], "ppl": [30.0, 25.0, 22.0], "ppl_low": [27.0, 23.5, 21.0],
                          "ppl_high": [34.0, 26.0, 23.5], "cache_size": [64, 128, 256]})
    fig = fig_tradeoff(sweep)
    bars = [seg for c in fig.axes[0].collections for seg in c.get_segments() if len(seg) == 2]
    spans = sorted((float(s[0][0]), float(min(s[0][1], s[1][1])), float(max(s[0][1], s[1][1]))) for s in bars)
    assert spans == list(zip([1.0, 2.0, 4.0], [27.0, 23.5, 21.0], [34.0, 26.0, 23.5]))


def test_head_map_shows_every_score():
    scores = pd.DataFrame([{"layer": layer, "kv_head": h, "score": 0.1 * layer + 0.01 * h}
                           for layer in range(4) for h in range(3)])
    fig = fig_head_map(scores)
    mesh = fig.axes[0].collections[0]
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(4, 3),
                               scores.pivot(index="layer", columns="kv_head", values="score").to_numpy())


def test_head_map_says_which_map_it_shows():
    rows = [{"layer": layer, "kv_head": 0, "score": 0.5} for layer in range(3)]
    gates = fig_head_map(pd.DataFrame([{**r, "method": "gates"} for r in rows]))
    assert "gate" in gates.axes[0].get_title() and "gate" in gates.axes[1].get_ylabel()
    legacy = fig_head_map(pd.DataFrame(rows))  # records made before the method column: retrieval scores
    assert legacy.axes[0].get_title().startswith("Retrieval score")
