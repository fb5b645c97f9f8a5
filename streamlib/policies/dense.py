"""Dense attention: the full KV cache, the baseline every streaming policy is compared with."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import DynamicCache

from .base import PolicyBase, check_model


@dataclass(frozen=True)
class Dense(PolicyBase):
    """Keep every key and value (Vaswani et al., 2017). Memory and per-token cost grow with the stream; the model
    also meets positions beyond its training length, which is where its perplexity blows up."""

    name = "dense"

    def make_cache(self, model) -> DynamicCache:
        check_model(model, "Dense")
        return DynamicCache(config=model.config)

    def label(self) -> str:
        return "Dense"
