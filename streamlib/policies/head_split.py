"""Budgets per head: retrieval heads keep every token, streaming heads keep sinks and a window (DuoAttention)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..caches.head_split import HeadSplitCache
from ..core.arch import SLIDING, layer_types, rotary_of, shapes_of, sliding_layers_of
from ..core.checks import check_int
from ..core.costs import bounded_stream_flops, held_kv_bytes
from .base import PolicyBase, Style, check_model


@dataclass(frozen=True)
class HeadSplit(PolicyBase, name="headsplit", title="Head split", form="{n_sink}+{window}:{heads}",
                style=Style("#CC79A7", "d", "-"), order=8):
    """In every full layer the *retrieval* kv heads keep every token and the *streaming* kv heads keep the first
    ``n_sink`` tokens and the ``window`` tokens before the query; every token keeps its original position.

    Xiao et al.: *DuoAttention: Efficient Long-Context LLM Inference with Retrieval and Streaming Heads*, 2024 (arXiv
    2410.10819): few heads need the whole context, and the others are served by sinks and a recent window. ``heads``
    says which kv heads are retrieval heads: ``every<k>`` (head ``h`` of layer ``l`` when ``(l + h) % k == 0``, a
    spread without a map) or ``<layers>x<kv heads>-<hex>`` (an explicit mask, row by row, from :meth:`of`, e.g. a
    map of retrieval scores, ``scripts/head_map.py``). Grouped-query models decide per kv head; a hybrid model's
    sliding layers keep their trained window whatever the mask says.
    """

    n_sink: int = 4
    window: int = 124
    heads: str = "every2"

    def __post_init__(self):
        check_int("n_sink", self.n_sink, 0)
        check_int("window", self.window, 1)
        if not isinstance(self.heads, str) or not (self.heads.startswith("every") and self.heads[5:].isdigit()
                                                   and int(self.heads[5:]) >= 1 or "-" in self.heads):
            raise ValueError(f"heads must be 'every<k>' (k >= 1) or '<layers>x<kv heads>-<hex mask>'; got "
                             f"{self.heads!r}")

    @classmethod
    def of(cls, retrieval: torch.Tensor, n_sink: int = 4, window: int = 124) -> "HeadSplit":
        """The split whose retrieval heads are ``retrieval`` (a boolean tensor, layers x kv heads)."""
        bits = "".join("1" if b else "0" for b in retrieval.bool().flatten().tolist())
        layers, kv_heads = retrieval.shape
        return cls(n_sink, window, f"{layers}x{kv_heads}-{int('1' + bits, 2):x}")

    def retrieval_mask(self, layers: int, kv_heads: int) -> torch.Tensor:
        """The retrieval heads, a boolean tensor (layers x kv heads)."""
        if self.heads.startswith("every"):
            k = int(self.heads[5:])
            return (torch.arange(layers)[:, None] + torch.arange(kv_heads)[None, :]) % k == 0
        shape, code = self.heads.split("-")
        if shape != f"{layers}x{kv_heads}":
            raise ValueError(f"heads: a mask for {shape} heads, the model has {layers}x{kv_heads} (layers x kv heads)")
        return torch.tensor([b == "1" for b in bin(int(code, 16))[3:]]).view(layers, kv_heads)

    @property
    def budget(self) -> int:
        """What a streaming head keeps; a retrieval head keeps every token (:meth:`kv_bytes_held`)."""
        return self.n_sink + self.window

    def make_cache(self, model) -> HeadSplitCache:
        check_model(model, "HeadSplit", hand_over="runs each kind of head's attention itself")
        sh = shapes_of(model)
        mask = self.retrieval_mask(sh.layers, sh.kv_heads)
        retrieval = [tuple(row.nonzero()[:, 0].tolist()) for row in mask]
        return HeadSplitCache(sh.layers, self.n_sink, self.window, retrieval, sh.kv_heads, rotary_of(model),
                              sliding=sliding_layers_of(model))

    def is_retrieval(self, layer: int, kv_head: int) -> bool:
        if self.heads.startswith("every"):
            return (layer + kv_head) % int(self.heads[5:]) == 0
        layers, kv_heads = map(int, self.heads.split("-")[0].split("x"))
        return bool(self.retrieval_mask(layers, kv_heads)[layer, kv_head])

    def visible(self, t: int, layer: int = 0, kv_head: int = 0) -> list[int]:
        """A retrieval head: every earlier token; a streaming head: the first ``n_sink`` and the last ``window``."""
        if self.is_retrieval(layer, kv_head):
            return list(range(t))
        if t <= self.budget:
            return list(range(t))
        return list(range(self.n_sink)) + list(range(t - self.window, t))

    def full_share(self, config) -> float:
        """The share of the full layers' kv heads that keep every token."""
        sh, types = shapes_of(config), layer_types(config)
        full = torch.tensor([t != SLIDING for t in types])
        return float(self.retrieval_mask(sh.layers, sh.kv_heads)[full].float().mean())

    def kv_bytes_held(self, config, n_tokens: int, dtype) -> int:
        share = self.full_share(config)
        return round(share * held_kv_bytes(config, n_tokens, dtype)
                     + (1 - share) * held_kv_bytes(config, n_tokens, dtype, self.budget))

    def stream_flops(self, config, n_tokens: int) -> int:
        share = self.full_share(config)
        return round(share * bounded_stream_flops(config, n_tokens, None)
                     + (1 - share) * bounded_stream_flops(config, n_tokens, self.budget))

    @classmethod
    def examples(cls, budget: int) -> list["HeadSplit"]:
        return [cls(2, budget - 2, "every2")]

    def label(self) -> str:
        if self.heads.startswith("every"):
            which = "every head" if self.heads == "every1" else f"1 head in {self.heads[5:]}"
        else:
            shape, code = self.heads.split("-")
            ones, (layers, kv_heads) = bin(int(code, 16))[3:].count("1"), map(int, shape.split("x"))
            which = f"{ones}/{layers * kv_heads} heads"
        return f"HeadSplit {self.n_sink}+{self.window}, {which} full"
