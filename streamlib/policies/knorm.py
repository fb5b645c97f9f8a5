"""K-norm: keep the keys of smallest L2 norm, per layer and kv head, while streaming."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..caches.quant import check_quant_fields
from ..core.checks import check_int
from .base import Style
from .scored import ScoredPolicy, ScoreView


@dataclass(frozen=True)
class KNorm(ScoredPolicy, name="knorm", title="K-norm", form="{n_low}+{n_recent}", style=Style("#009E73", "h", "-."),
            order=7):
    """Keep the ``n_recent`` most recent tokens and the ``n_low`` tokens whose keys have the smallest L2 norm, per layer
    and kv head; after each token the largest-norm key outside the recent ones leaves.

    Devoto, Zhao, Scardapane, Minervini: *A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression*,
    EMNLP 2024 (arXiv 2406.11430): a low key norm goes with high attention (the sinks' keys have the lowest), so the
    norm ranks tokens without reading a single attention weight. kvpress's ``KnormPress`` compresses a prompt once;
    here the rule evicts as the stream goes. RoPE is a rotation, so a key's norm is the same at every position (in
    the first layer one token id's keys tie exactly; the cache's float32 rotations break such ties either way).
    """

    n_low: int = 128
    n_recent: int = 128
    bits: int = 16
    residual: int = 32

    per_head = True

    def __post_init__(self):
        check_int("n_low", self.n_low, 0)
        check_int("n_recent", self.n_recent, 0)
        check_int("n_low + n_recent", self.n_low + self.n_recent, 1)
        check_quant_fields(self.bits, self.residual)

    @property
    def budget(self) -> int:
        return self.n_low + self.n_recent

    def score(self, view: ScoreView) -> torch.Tensor:
        return -view.keys.float().norm(dim=-1)  # the largest norm scores lowest and leaves first

    @classmethod
    def examples(cls, budget: int) -> list["KNorm"]:
        return [cls(budget // 2, budget - budget // 2)]

    def label(self) -> str:
        return f"K-norm {self.n_low}+{self.n_recent}" + self.quant_label()
