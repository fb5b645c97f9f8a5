"""H2O: heavy hitters plus recent tokens, per layer and head, while streaming."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..caches.quant import check_quant_fields
from ..core.checks import check_int
from .base import Style
from .scored import ScoredPolicy, ScoreView


@dataclass(frozen=True)
class H2O(ScoredPolicy, name="h2o", title="H2O", form="{n_heavy}+{n_recent}", style=Style("#D55E00", "X", "-"), order=5):
    """Keep the ``n_recent`` most recent tokens and ``n_heavy`` heavy hitters, per layer and head.

    Zhang et al.: *H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models*, NeurIPS
    2023 (arXiv 2306.14048). A token's score is the sum of the attention probabilities it has received from every
    query so far; when a head holds more than ``n_heavy + n_recent`` tokens it drops the lowest-scored token outside
    the recent ones (ties to the earliest). Tokens keep their original positions. ``H2O(0, w)`` is a window of ``w``
    tokens at original positions. Defined token by token.
    """

    n_heavy: int = 256
    n_recent: int = 256
    bits: int = 16  # 8, 4, 2: quantized keys and values, keys grouped per token (streamlib.caches.quant)
    residual: int = 32

    per_head = True  # each kv head keeps its own heavy hitters
    needs_attention = True

    def __post_init__(self):
        check_int("n_heavy", self.n_heavy, 0)
        check_int("n_recent", self.n_recent, 0)
        check_quant_fields(self.bits, self.residual)
        if self.n_heavy + self.n_recent < 1:
            raise ValueError(f"n_heavy + n_recent must be >= 1; got {self.n_heavy} + {self.n_recent}")

    @property
    def budget(self) -> int:
        return self.n_heavy + self.n_recent

    def score(self, view: ScoreView) -> torch.Tensor:
        """Every token's score grows by the probabilities it received this step; a kv head's token gets the weights of
        every query head of its group (kvpress's convention for grouped-query attention)."""
        return view.scores + view.per_kv_head(view.attention)

    @classmethod
    def examples(cls, budget: int) -> list["H2O"]:
        return [cls(budget // 2, budget - budget // 2)]

    def label(self) -> str:
        return f"H2O {self.n_heavy}+{self.n_recent}" + self.quant_label()

    def family(self) -> str:
        """Two curves on a sweep: as many heavy hitters as recent tokens, and fewer."""
        split = "heavy = recent" if self.n_heavy == self.n_recent else "recent-heavy"
        return f"{self.title}, {split}"

    def plot_style(self) -> Style:
        """Fewer heavy hitters than recent tokens: a thinner line of the same colour."""
        style = super().plot_style()
        return style if self.n_heavy >= self.n_recent else dataclasses.replace(style, marker="x", linestyle=":")
