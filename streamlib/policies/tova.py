"""TOVA: token omission via attention, per layer, while streaming."""

from __future__ import annotations

from dataclasses import dataclass

from ..arch import rotary_of
from ..scored_cache import TOVACache, install
from ..checks import check_int
from .base import PolicyBase, check_model


@dataclass(frozen=True)
class TOVA(PolicyBase):
    """Keep ``budget`` tokens per layer; after each token, drop the one the current query attends to least.

    Oren, Hassid, Yarden, Adi, Schwartz: *Transformers are Multi-State RNNs*, 2024 (arXiv 2401.06104). The weight is
    the softmax probability averaged over the layer's heads; the new token is a candidate too; ties go to the
    earliest position; tokens keep their original positions. Defined token by token.
    """

    budget: int = 512

    name = "tova"

    def __post_init__(self):
        check_int("budget", self.budget, 1)

    def make_cache(self, model) -> TOVACache:
        check_model(model, "TOVA")
        install(model)
        return TOVACache(model.config.num_hidden_layers, self.budget, rotary_of(model))

    def label(self) -> str:
        return f"TOVA {self.budget}"
