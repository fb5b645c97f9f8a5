"""H2O: heavy hitters plus recent tokens, per layer and head, while streaming."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..arch import rotary_of, sliding_layers_of
from ..checks import check_int
from ..kv_quant import check_quant_fields, quant_label
from ..scored_cache import ScoredCache, install, lowest_slot
from .base import PolicyBase, check_model


@dataclass(frozen=True)
class H2O(PolicyBase):
    """Keep the ``n_recent`` most recent tokens and ``n_heavy`` heavy hitters, per layer and head.

    Zhang et al.: *H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models*, NeurIPS
    2023 (arXiv 2306.14048). A token's score is the sum of the attention probabilities it has received from every
    query so far; when a head holds more than ``n_heavy + n_recent`` tokens it drops the lowest-scored token outside
    the recent ones (ties to the earliest). Tokens keep their original positions. ``H2O(0, w)`` is a window of ``w``
    tokens at original positions. Defined token by token.
    """

    n_heavy: int = 256
    n_recent: int = 256
    bits: int = 16  # 8, 4, 2: quantized keys and values, keys grouped per token (streamlib.kv_quant)
    residual: int = 32

    name = "h2o"
    per_head = True  # each kv head keeps its own heavy hitters
    token_mode = True
    why_not_compiled = "it evicts by score"
    key_axis = "token"  # it evicts single tokens anywhere: a block's per-channel key scales would outlive the block

    def __post_init__(self):
        check_int("n_heavy", self.n_heavy, 0)
        check_int("n_recent", self.n_recent, 0)
        check_quant_fields(self.bits, self.residual)
        if self.n_heavy + self.n_recent < 1:
            raise ValueError(f"n_heavy + n_recent must be >= 1; got {self.n_heavy} + {self.n_recent}")

    @property
    def budget(self) -> int:
        return self.n_heavy + self.n_recent

    def make_cache(self, model) -> ScoredCache:
        check_model(model, "H2O")
        install(model)
        return ScoredCache(model.config.num_hidden_layers, self, rotary_of(model), sliding=sliding_layers_of(model),
                           quant=self.kv_quant())

    # -- the rule, as the layers of its cache apply it after each step's attention ------------------------------
    def score(self, scores: torch.Tensor, probs: torch.Tensor) -> None:
        """Every token's score grows by the probabilities it received; a kv head's token gets the weights of every
        query head of its group (kvpress's convention for grouped-query attention)."""
        b, heads, n, length = probs.shape
        kv = scores.shape[1]
        scores += probs.view(b, kv, heads // kv * n, length).sum(dim=2)

    def evict(self, probs: torch.Tensor, positions: torch.Tensor, scores: torch.Tensor, newest: int) -> torch.Tensor:
        """Per kv head, the lowest-scored slot among those not in the ``n_recent`` most recent: (B, kv heads)."""
        candidates = (positions >= 0) & (positions <= newest - self.n_recent)
        return lowest_slot(scores, positions, candidates)

    def label(self) -> str:
        return f"H2O {self.n_heavy}+{self.n_recent}" + quant_label(self.bits, self.residual)
