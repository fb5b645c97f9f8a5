"""The score-based caches, TOVA and H2O: ``budget + 1`` preallocated slots per layer, an eviction per token chosen
from the step's attention probabilities (read through :mod:`streamlib.handover`). Their rules, as the papers define
them and as implemented here, are in ``docs/design.md``."""

from __future__ import annotations

import torch

from .cache_base import StreamingCache, StreamLayer
from .handover import WRAPPED, attention_probs, hand_over
from .handover import install as _install_handover
from .rotary import RotaryInfo

__all__ = ["WRAPPED", "H2OCache", "ScoredCache", "ScoredLayer", "TOVACache", "install"]


def install(model) -> None:
    """Route the model's attention through the hand-over (:mod:`streamlib.handover`), which these caches need."""
    _install_handover(model, "a score-based policy")


class ScoredLayer(StreamLayer):
    """One layer: ``budget + 1`` slots of keys and values, each slot's original position and (H2O) its score."""

    def __init__(self, owner: "ScoredCache", layer_idx: int):
        super().__init__(owner, layer_idx)
        self._pending: int | None = None  # the first position of the update whose weights are awaited

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        batch, heads = key_states.shape[:2]
        rows = heads if self.owner.per_head else 1
        # original position of the token in each slot (per head for H2O); -1: empty
        self.positions = torch.full((batch, rows, self.capacity), -1, dtype=torch.long, device=self.device)
        self.scores = torch.zeros(batch, rows, self.capacity, dtype=torch.float32, device=self.device)
        self.free = torch.full((batch, rows), self.capacity - 1, dtype=torch.long, device=self.device)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return min(self.position + query_length, self.capacity), 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self._pending is not None:
            raise RuntimeError(
                "model: the attention weights of the last step never reached the cache, so it cannot evict. Make the "
                "cache with policy.make_cache(model), which routes the model's attention through the hand-over")
        self.check_batch(key_states)
        n, first = key_states.shape[-2], self.position
        if first + n <= self.capacity:
            # filling: token a sits in slot a; no token but possibly the last needs an eviction
            self.keys[:, :, first : first + n] = key_states
            self.values[:, :, first : first + n] = value_states
            self.positions[:, :, first : first + n] = torch.arange(first, first + n, device=self.device)
            keys, values = self.keys[:, :, : first + n], self.values[:, :, : first + n]
        elif n == 1:
            index = self.free if self.owner.per_head else self.free.expand(-1, key_states.shape[1])
            gather = index[:, :, None, None].expand(-1, -1, 1, key_states.shape[-1])
            self.keys.scatter_(2, gather, key_states)
            self.values.scatter_(2, index[:, :, None, None].expand(-1, -1, 1, value_states.shape[-1]), value_states)
            self.positions.scatter_(2, self.free[:, :, None], first)
            self.scores.scatter_(2, self.free[:, :, None], 0.0)
            keys, values = self.keys, self.values
        else:
            raise ValueError(
                f"input_ids: {n} tokens at stream position {first} do not fit a {self.owner.name} cache of "
                f"{self.owner.budget} tokens in one call: these policies are defined token by token. Use "
                "streamlib.generation.prefill or streamlib.quality.token_nll (they feed one token at a time once the "
                f"cache is full); with model.generate pass prefill_chunk_size=1; or feed at most "
                f"{max(self.capacity - first, 1)} tokens at once")
        self._pending = first
        self.position += n
        return hand_over(self, keys), values

    def attend(self, base, module, query, key, value, attention_mask, **kwargs):
        """The model's own attention, unchanged; its probabilities go to :meth:`observe`."""
        out = base(module, query, key, value, attention_mask, **kwargs)
        self.observe(query, key, kwargs.get("scaling", module.scaling))
        return out

    def observe(self, query: torch.Tensor, keys: torch.Tensor, scaling: float) -> None:
        """This step's attention probabilities over ``keys`` (the slots returned by :meth:`update`): score, and
        evict when over budget."""
        probs = attention_probs(query, keys, scaling, self._pending)
        self._pending = None
        length = keys.shape[-2]
        self.owner.score(self, probs, length)
        if min(self.position, self.capacity) > self.owner.budget:
            self.owner.evict(self, probs, length)

    def batch_tensors(self) -> list[torch.Tensor]:
        return [self.keys, self.values, self.positions, self.scores, self.free]

    def reset(self) -> None:
        super().reset()
        if self.is_initialized:
            self.positions.fill_(-1)
            self.scores.zero_()
            self.free.fill_(self.capacity - 1)
        self._pending = None


def _lowest(values: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Index of the lowest value among ``allowed`` slots along the last dim, ties to the earliest position."""
    values = values.masked_fill(~allowed, float("inf"))
    lowest = values.min(dim=-1, keepdim=True).values
    tied = allowed & (values == lowest)
    big = torch.iinfo(torch.long).max
    return positions.masked_fill(~tied, big).argmin(dim=-1)


class ScoredCache(StreamingCache):
    """Base of the score-based caches: geometry, frame re-basing, and the two hooks ``score`` and ``evict``."""

    name = "scored"
    per_head = False
    chunkable = False

    def __init__(self, num_layers: int, budget: int, rotary: RotaryInfo, rebase_interval: int = 256):
        self._budget = budget
        super().__init__([ScoredLayer(self, i) for i in range(num_layers)], rotary, rebase_interval)

    @property
    def budget(self) -> int:
        return self._budget

    def held_positions(self, layer_idx: int = 0) -> torch.Tensor:
        """Stream positions of the tokens the layer holds for the first row of the batch, one row per kv head for
        H2O (one row for TOVA), shape (rows, n); the slot freed for the next token is left out."""
        layer = self.layers[layer_idx]
        if not layer.is_initialized:
            return torch.zeros(1, 0, dtype=torch.long)
        positions = layer.positions[0].clone()  # (rows, slots)
        if layer.position > self.budget:  # full: the free slot's token has been evicted
            positions.scatter_(1, layer.free[0][:, None], -1)
        return torch.stack([row[row >= 0].sort().values for row in positions.cpu()])

    def score(self, layer: ScoredLayer, probs: torch.Tensor, length: int) -> None:
        """Add this step's weights to the slots' scores (nothing for TOVA)."""

    def evict(self, layer: ScoredLayer, probs: torch.Tensor, length: int) -> None:
        raise NotImplementedError


class TOVACache(ScoredCache):
    """TOVA: per layer, evict the token with the lowest head-averaged weight from the current query."""

    name = "TOVA"

    def evict(self, layer: ScoredLayer, probs: torch.Tensor, length: int) -> None:
        weights = probs[:, :, -1].mean(dim=1, keepdim=True)  # (B, 1, L): the last query, averaged over heads
        positions = layer.positions[:, :, :length]
        layer.free = _lowest(weights, positions, positions >= 0)  # (B, 1)


class H2OCache(ScoredCache):
    """H2O: per layer and head, accumulated weights; evict the lowest among the tokens that are not recent."""

    name = "H2O"
    per_head = True

    def __init__(self, num_layers: int, n_heavy: int, n_recent: int, rotary: RotaryInfo, rebase_interval: int = 256):
        self.n_heavy, self.n_recent = n_heavy, n_recent
        super().__init__(num_layers, n_heavy + n_recent, rotary, rebase_interval)

    def score(self, layer: ScoredLayer, probs: torch.Tensor, length: int) -> None:
        # a kv head's token gets the weights of every query head of its group (kvpress's convention for GQA)
        b, heads, n, _ = probs.shape
        kv = layer.scores.shape[1]
        layer.scores[:, :, :length] += probs.view(b, kv, heads // kv * n, length).sum(dim=2)

    def evict(self, layer: ScoredLayer, probs: torch.Tensor, length: int) -> None:
        positions = layer.positions[:, :, :length]
        newest = layer.position - 1
        candidates = (positions >= 0) & (positions <= newest - self.n_recent)
        layer.free = _lowest(layer.scores[:, :, :length], positions, candidates)
