"""TOVA: token omission via attention, per layer, while streaming."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..arch import rotary_of, sliding_layers_of
from ..checks import check_int
from ..kv_quant import check_quant_fields, quant_label
from ..scored_cache import ScoredCache, install, lowest_slot
from .base import PolicyBase, check_model


@dataclass(frozen=True)
class TOVA(PolicyBase):
    """Keep ``budget`` tokens per layer; after each token, drop the one the current query attends to least.

    Oren, Hassid, Yarden, Adi, Schwartz: *Transformers are Multi-State RNNs*, 2024 (arXiv 2401.06104). The weight is
    the softmax probability averaged over the layer's heads; the new token is a candidate too; ties go to the
    earliest position; tokens keep their original positions. Defined token by token.
    """

    budget: int = 512
    bits: int = 16  # 8, 4, 2: quantized keys and values, keys grouped per token (streamlib.kv_quant)
    residual: int = 32

    name = "tova"
    per_head = False  # one choice per layer, for all its heads
    token_mode = True
    why_not_compiled = "it evicts by score"
    key_axis = "token"  # it evicts single tokens anywhere: a block's per-channel key scales would outlive the block

    def __post_init__(self):
        check_int("budget", self.budget, 1)
        check_quant_fields(self.bits, self.residual)

    def make_cache(self, model) -> ScoredCache:
        check_model(model, "TOVA")
        install(model)
        return ScoredCache(model.config.num_hidden_layers, self, rotary_of(model), sliding=sliding_layers_of(model),
                           quant=self.kv_quant())

    # -- the rule, as the layers of its cache apply it after each step's attention ------------------------------
    def score(self, scores: torch.Tensor, probs: torch.Tensor) -> None:
        """TOVA keeps no score: each choice reads the current query alone."""

    def evict(self, probs: torch.Tensor, positions: torch.Tensor, scores: torch.Tensor, newest: int) -> torch.Tensor:
        """The slot whose token the last query weighs least, averaged over the layer's heads: (B, 1)."""
        weights = probs[:, :, -1].mean(dim=1, keepdim=True)  # (B, 1, L)
        return lowest_slot(weights, positions, positions >= 0)

    def label(self) -> str:
        return f"TOVA {self.budget}" + quant_label(self.bits, self.residual)
