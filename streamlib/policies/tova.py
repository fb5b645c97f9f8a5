"""TOVA: token omission via attention, per layer, while streaming."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..caches.quant import check_quant_fields
from ..core.checks import check_int
from .base import Style
from .scored import ScoredPolicy, ScoreView


@dataclass(frozen=True)
class TOVA(ScoredPolicy, name="tova", title="TOVA", form="{budget}", style=Style("#56B4E9", "P", "--"), order=4):
    """Keep ``budget`` tokens per layer; after each token, drop the one the current query attends to least.

    Oren, Hassid, Yarden, Adi, Schwartz: *Transformers are Multi-State RNNs*, 2024 (arXiv 2401.06104). The weight is
    the softmax probability averaged over the layer's heads; the new token is a candidate too; ties go to the
    earliest position; tokens keep their original positions. Defined token by token.
    """

    budget: int = 512
    bits: int = 16  # 8, 4, 2: quantized keys and values, keys grouped per token (streamlib.caches.quant)
    residual: int = 32

    needs_attention = True

    def __post_init__(self):
        check_int("budget", self.budget, 1)
        check_quant_fields(self.bits, self.residual)

    def score(self, view: ScoreView) -> torch.Tensor:
        """The weight the last query gives each token, averaged over the layer's query heads: (B, 1, L)."""
        return view.attention[:, :, -1].mean(dim=1, keepdim=True)

    @classmethod
    def examples(cls, budget: int) -> list["TOVA"]:
        return [cls(budget)]

    def label(self) -> str:
        return f"TOVA {self.budget}" + self.quant_label()
