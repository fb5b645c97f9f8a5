"""Dense attention: the full KV cache, the baseline every streaming policy is compared with."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from ..caches.base import PolicyCache, forward
from .base import PolicyBase, Style, check_model
from .window import Window


class DenseCache(PolicyCache, DynamicCache):
    """transformers' own growing cache, fed like every policy's cache: plain causal chunks, everything held (a hybrid
    model's sliding layers keep their trained window, as transformers' own layers for them do)."""

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def feed(self, model, input_ids: torch.Tensor, chunk_size: int | None = None,
             all_logits: bool = True) -> Iterator[tuple[int, torch.Tensor]]:
        chunk_size = chunk_size or 512
        for start in range(0, input_ids.shape[1], chunk_size):
            yield start, forward(model, self, input_ids[:, start : start + chunk_size], all_logits)

    def held_positions(self, layer_idx: int = 0) -> torch.Tensor:
        """Everything, or the last ``sliding_window - 1`` tokens in a hybrid model's sliding layer."""
        seen = self.get_seq_length(layer_idx)
        layer = self.layers[layer_idx]
        kept = layer.sliding_window - 1 if layer.is_sliding else seen
        return torch.arange(max(0, seen - kept), seen)[None]

    def kv_bytes(self) -> tuple[int, int]:
        total = 0
        for layer in self.layers:
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if t is not None:
                    total += t.numel() * t.element_size()
        return total, total


@dataclass(frozen=True)
class Dense(PolicyBase, name="dense", title="Dense", style=Style("#000000", "o", "-"), order=0):
    """Keep every key and value (Vaswani et al., 2017). Memory and per-token cost grow with the stream; the model
    also meets positions beyond its training length, which is where its perplexity blows up."""

    is_baseline = True

    def make_cache(self, model) -> DenseCache:
        check_model(model, "Dense")
        return DenseCache(config=model.config)

    def compiled_form(self, max_length: int | None = None) -> Window:
        """A preallocated cache of ``max_length`` slots: a Window that never evicts (exactly Dense: every token at its
        own position), whose shape is fixed from the start, at the cost of attending over all its slots (the empty
        ones masked) from the first step."""
        if max_length is None:
            raise ValueError("compile=True with Dense needs the stream's maximum length (max_length) for a "
                             "preallocated cache; stream_generate and the timing functions know it")
        return Window(max_length)

    @classmethod
    def examples(cls, budget: int) -> list["Dense"]:
        return [cls()]

    def visible(self, t: int, layer: int = 0, kv_head: int = 0) -> list[int]:
        return list(range(t))

    def label(self) -> str:
        return "Dense"
