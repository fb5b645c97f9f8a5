"""A transformers ``Cache`` that evicts by attention score while it streams: TOVA and H2O.

Both policies decide from the attention weights of the query being processed, so the cache must see them. The model
calls ``cache.update(k, v, layer_idx)`` and then its attention function; :func:`install` routes that through the
attention hand-over (:mod:`streamlib.handover`): the model's own attention (sdpa or eager) runs unchanged and the
waiting layer gets the softmax probabilities of the step's queries over the keys it returned, computed in float32
from the same query and keys. Models and caches without a waiting layer pass straight through, so a model keeps
working with every other policy.

Buffers are preallocated with ``budget + 1`` slots per layer: the incoming token takes the free slot, attends to
the ``budget`` held tokens and itself, and then one token leaves (its slot is the next free one). Nothing is
reallocated once the cache is full. Keys stay where the model rotated them, at their original positions, as both
papers keep them; loops that own the positions re-base the frame now and then (every held key turned back by the
same amount, which RoPE's relative scores do not see), so long streams do not lose precision to large angles.

* TOVA (Oren et al., *Transformers are Multi-State RNNs*, 2024): per layer, every row of the batch for itself. When
  the layer holds more than ``budget`` tokens, the token with the lowest weight from this query, averaged over all
  query heads, is evicted (the new token itself is a candidate). Ties go to the earliest position.
* H2O (Zhang et al., *H2O: Heavy-Hitter Oracle*, NeurIPS 2023): per layer and key/value head. Each held token carries
  the sum of the weights it received from every query so far, this step's included; under grouped-query attention a
  kv head's token sums the weights of every query head of its group (kvpress's convention). When a head holds more than
  ``n_heavy + n_recent`` tokens it evicts, among the tokens that are not the ``n_recent`` most recent, the one with
  the lowest sum. Ties go to the earliest position. Heads hold different tokens, the same number of them.

Both are defined token by token. A call with several tokens is exact when no token of it but the last needs an
eviction (``seen + n <= budget + 1``), which is how prompts fill the cache; after that the loops feed one token at a
time, and a plain multi-token call is refused with a message saying so.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import CacheLayerMixin

from .cache import StreamingCache
from .handover import WRAPPED, grouped_scores, hand_over
from .handover import install as _install_handover
from .rotary import RotaryInfo, rotate, rotation_tables

__all__ = ["WRAPPED", "H2OCache", "ScoredCache", "ScoredLayer", "TOVACache", "install"]


def install(model) -> None:
    """Route the model's attention through the hand-over (:mod:`streamlib.handover`), which these caches need."""
    _install_handover(model, "a score-based policy")


class ScoredLayer(CacheLayerMixin):
    """One layer: ``budget + 1`` slots of keys and values, each slot's original position and (H2O) its score."""

    is_compileable = False
    is_sliding = False
    is_croppable = False

    def __init__(self, owner: "ScoredCache", layer_idx: int):
        super().__init__()
        self.owner, self.layer_idx = owner, layer_idx
        self.seen = 0
        self.offset = 0
        self._pending: tuple[int, int] | None = None  # (t0, n) of the update whose weights are awaited

    @property
    def capacity(self) -> int:
        return self.owner.budget + 1

    @property
    def resident(self) -> int:
        return min(self.seen, self.owner.budget)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, k_dim = key_states.shape
        self.device, self.batch_size = key_states.device, batch
        self.keys = torch.zeros(batch, heads, self.capacity, k_dim, dtype=key_states.dtype, device=self.device)
        self.values = torch.zeros(batch, heads, self.capacity, value_states.shape[-1], dtype=value_states.dtype,
                                  device=self.device)
        rows = heads if self.owner.per_head else 1
        # original position of the token in each slot (per head for H2O); -1: empty
        self.positions = torch.full((batch, rows, self.capacity), -1, dtype=torch.long, device=self.device)
        self.scores = torch.zeros(batch, rows, self.capacity, dtype=torch.float32, device=self.device)
        self.free = torch.full((batch, rows), self.capacity - 1, dtype=torch.long, device=self.device)
        self.is_initialized = True

    def get_seq_length(self) -> int:
        return self.seen - self.offset

    def get_max_length(self) -> int:
        return -1

    def extra_kv_bytes(self) -> int:
        return 0  # positions and scores are bookkeeping (a few bytes per slot), not keys or values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return min(self.seen + query_length, self.capacity), 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self._pending is not None:
            raise RuntimeError(
                "model: the attention weights of the last step never reached the cache, so it cannot evict. Make the "
                "cache with policy.make_cache(model), which routes the model's attention through the hand-over")
        if key_states.shape[0] != self.keys.shape[0]:
            raise ValueError(f"input_ids: batch size {key_states.shape[0]} does not match the cache's "
                             f"{self.keys.shape[0]}; make a new cache for a new batch")
        n, t0 = key_states.shape[-2], self.seen
        if t0 + n <= self.capacity:
            # filling: token a sits in slot a; no token but possibly the last needs an eviction
            self.keys[:, :, t0 : t0 + n] = key_states
            self.values[:, :, t0 : t0 + n] = value_states
            self.positions[:, :, t0 : t0 + n] = torch.arange(t0, t0 + n, device=self.device)
            keys, values = self.keys[:, :, : t0 + n], self.values[:, :, : t0 + n]
        elif n == 1:
            index = self.free if self.owner.per_head else self.free.expand(-1, key_states.shape[1])
            gather = index[:, :, None, None].expand(-1, -1, 1, key_states.shape[-1])
            self.keys.scatter_(2, gather, key_states)
            self.values.scatter_(2, index[:, :, None, None].expand(-1, -1, 1, value_states.shape[-1]), value_states)
            self.positions.scatter_(2, self.free[:, :, None], t0)
            self.scores.scatter_(2, self.free[:, :, None], 0.0)
            keys, values = self.keys, self.values
        else:
            raise ValueError(
                f"input_ids: {n} tokens at stream position {t0} do not fit a {self.owner.name} cache of "
                f"{self.owner.budget} tokens in one call: these policies are defined token by token. Use "
                "streamlib.generation.prefill or streamlib.quality.token_nll (they feed one token at a time once the "
                f"cache is full); with model.generate pass prefill_chunk_size=1; or feed at most "
                f"{max(self.capacity - t0, 1)} tokens at once")
        self._pending = (t0, n)
        hand_over(self)
        self.seen += n
        return keys, values

    def attend(self, base, module, query, key, value, attention_mask, **kwargs):
        """The model's own attention, unchanged; its probabilities go to :meth:`observe`."""
        out = base(module, query, key, value, attention_mask, **kwargs)
        self.observe(query, key, kwargs.get("scaling", module.scaling))
        return out

    def observe(self, query: torch.Tensor, keys: torch.Tensor, scaling: float) -> None:
        """This step's attention probabilities over ``keys`` (the slots returned by :meth:`update`): score, and
        evict when over budget."""
        t0, n = self._pending
        self._pending = None
        logits = grouped_scores(query.float(), keys.float()) * scaling  # (B, query heads, n, L)
        if n > 1:  # filling call: query i sees slots 0..t0+i (slot a holds token a)
            lag = (t0 + torch.arange(n, device=query.device))[:, None] - torch.arange(keys.shape[-2], device=query.device)
            logits = logits.masked_fill(lag < 0, float("-inf"))
        probs = logits.softmax(dim=-1)
        length = keys.shape[-2]
        held = min(self.seen, self.capacity)
        self.owner.score(self, probs, length)
        if held > self.owner.budget:
            self.owner.evict(self, probs, length)

    def shift_frame(self, shift: int) -> None:
        cos, sin = self.owner.turn_tables(-shift, self.device)
        rotate(self.keys, cos, sin, out=self.keys)
        self.offset += shift

    def reset(self) -> None:
        super().reset()
        if self.is_initialized:
            self.positions.fill_(-1)
            self.scores.zero_()
            self.free.fill_(self.capacity - 1)
        self.seen = self.offset = 0
        self._pending = None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.is_initialized:
            idx = beam_idx.to(self.device)
            for t in (self.keys, self.values, self.positions, self.scores, self.free):
                t.copy_(t.index_select(0, idx))

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(f"a {self.owner.name} cache cannot be cropped: evicted tokens are gone")


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
        self.rotary = rotary
        self.rebase_interval = rebase_interval
        self._tables: dict = {}
        super().__init__(layers=[ScoredLayer(self, i) for i in range(num_layers)])

    @property
    def budget(self) -> int:
        return self._budget

    def turn_tables(self, delta: int, device):
        key = (delta, torch.device(device))
        if key not in self._tables:
            self._tables = {key: rotation_tables(torch.tensor(float(delta)), self.rotary, device)}
        return self._tables[key]

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
        newest = layer.seen - 1
        candidates = (positions >= 0) & (positions <= newest - self.n_recent)
        layer.free = _lowest(layer.scores[:, :, :length], positions, candidates)
