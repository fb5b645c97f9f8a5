"""The cache of the score-based policies (TOVA, H2O, K-norm, ...): ``budget + 1`` preallocated slots per layer, and after
each token the lowest-scored one leaves. Each policy's rule (how it scores) is in its own file beside its paper
(:mod:`streamlib.policies.tova`, :mod:`streamlib.policies.h2o`); a rule that reads the step's attention gets it through
:mod:`streamlib.caches.handover`. How the cache runs them is in ``docs/design.md``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ..core.arch import SlidingLayers
from ..core.rotary import RotaryInfo, Rotations
from .base import StreamingCache
from .handover import WRAPPED, attention_probs
from .layers import StreamLayer
from .quant import KVQuantSpec
from .sink_window import build_layers

__all__ = ["WRAPPED", "EvictionRule", "ScoreView", "ScoredCache", "ScoredLayer", "ScoredSpec", "lowest_slot"]


@dataclass(frozen=True)
class ScoreView:
    """What a rule sees of one layer after a step, every tensor over the layer's ``L`` slots in use (the order of the
    slots is the cache's; a rule scores each slot for itself):

    - ``keys``, ``values``: (batch, kv heads, L, head_dim), keys rotated at their frame positions (a rotation keeps
      norms, and dot products between keys depend on their distance only);
    - ``positions``: (batch, rows, L), each slot's stream position, -1 for an empty slot; ``rows`` is the kv heads
      for a rule that decides per head, else 1;
    - ``scores``: (batch, rows, L) float32, the scores the rule returned at the last step (0 for the newest token);
    - ``attention``: (batch, query heads, n, L) float32 probabilities of the step's ``n`` queries (query head ``h``
      reads kv head ``h // group``), or None unless the rule ``needs_attention``;
    - ``newest``: the stream position of the token just stored.
    """

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    scores: torch.Tensor
    attention: torch.Tensor | None
    newest: int

    def per_kv_head(self, attention: torch.Tensor) -> torch.Tensor:
        """Query-head weights (batch, heads, n, L) summed over the query heads of each kv head and over the queries:
        (batch, kv heads, L) (kvpress's convention for grouped-query attention)."""
        b, heads, n, length = attention.shape
        kv = self.keys.shape[1]
        return attention.reshape(b, kv, heads // kv * n, length).sum(dim=2)


class EvictionRule(Protocol):
    """What a score-based policy tells its cache (:class:`streamlib.policies.scored.ScoredPolicy`): how many tokens to
    keep, whether each kv head keeps its own, whether it reads the step's attention, how many recent tokens no
    eviction takes, and each slot's score."""

    budget: int
    per_head: bool
    needs_attention: bool
    protected_recent: int

    def score(self, view: ScoreView) -> torch.Tensor:
        """Every slot's score (B, rows, L); the lowest leaves once the layer holds more than ``budget``."""


def lowest_slot(values: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Index of the lowest value among ``allowed`` slots along the last dim, ties to the earliest position."""
    values = values.masked_fill(~allowed, float("inf"))
    lowest = values.min(dim=-1, keepdim=True).values
    tied = allowed & (values == lowest)
    big = torch.iinfo(torch.long).max
    return positions.masked_fill(~tied, big).argmin(dim=-1)


@dataclass(frozen=True)
class ScoredSpec:
    """A score-based cache's settings: the policy's rule, and the slots it keeps them in."""

    rule: EvictionRule

    @property
    def name(self) -> str:
        return type(self.rule).__name__

    @property
    def budget(self) -> int:
        return self.rule.budget

    @property
    def slots(self) -> int:
        return self.rule.budget + 1


class ScoredLayer(StreamLayer):
    """One layer: ``budget + 1`` slots of keys and values, each slot's original position and (H2O) its score. The
    layer applies its policy's rule itself, after each step's attention."""

    slots_follow_position = False  # each layer (and head) evicts by its own scores

    def __init__(self, layer_idx: int, spec: ScoredSpec, rotations: Rotations, store=None):
        super().__init__(layer_idx, spec, rotations, store=store)
        self.rule = spec.rule
        self.per_head = spec.rule.per_head
        self._pending: int | None = None  # the first position of the update whose weights are awaited

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        batch, heads = key_states.shape[:2]
        rows = heads if self.per_head else 1
        # original position of the token in each slot (per head for H2O); -1: empty
        self.positions = torch.full((batch, rows, self.capacity), -1, dtype=torch.long, device=self.device)
        self.scores = torch.zeros(batch, rows, self.capacity, dtype=torch.float32, device=self.device)
        self.free = torch.full((batch, rows), self.capacity - 1, dtype=torch.long, device=self.device)

    def get_mask_sizes(self, query_length: int, step=None) -> tuple[int, int]:
        return min(self.position + query_length, self.capacity), 0

    def place(self, key_states: torch.Tensor, value_states: torch.Tensor, step=None):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self._pending is not None:
            raise RuntimeError(
                "model: the attention weights of the last step never reached the cache, so it cannot evict. Call the "
                "model inside `with streamlib.caches.handover.handover(model, cache):` (streamlib's loops do), e.g. around "
                "model.generate(..., cache=cache)")
        self.check_batch(key_states)
        n, first = key_states.shape[-2], self.position
        if first + n <= self.capacity:
            # filling: token a sits in slot a; no token but possibly the last needs an eviction
            self.keys[:, :, first : first + n] = key_states
            self.values[:, :, first : first + n] = value_states
            self.positions[:, :, first : first + n] = torch.arange(first, first + n, device=self.device)
            keys, values = self.keys[:, :, : first + n], self.values[:, :, : first + n]
        elif n == 1:
            index = self.free if self.per_head else self.free.expand(-1, key_states.shape[1])
            gather = index[:, :, None, None].expand(-1, -1, 1, key_states.shape[-1])
            self.keys.scatter_(2, gather, key_states)
            self.values.scatter_(2, index[:, :, None, None].expand(-1, -1, 1, value_states.shape[-1]), value_states)
            self.positions.scatter_(2, self.free[:, :, None], first)
            self.scores.scatter_(2, self.free[:, :, None], 0.0)
            keys, values = self.keys, self.values
        else:
            raise ValueError(
                f"input_ids: {n} tokens at stream position {first} do not fit a {self.spec.name} cache of "
                f"{self.budget} tokens in one call: these policies are defined token by token. Use "
                "streamlib.caches.generation.prefill or streamlib.metrics.quality.token_nll (they feed one token at a time once the "
                f"cache is full); with model.generate pass prefill_chunk_size=1; or feed at most "
                f"{max(self.capacity - first, 1)} tokens at once")
        self.position += n
        if not self.rule.needs_attention:  # the rule reads what the layer holds: score now
            self.observe(None, keys, values, 1.0)
            return keys, values
        self._pending = first
        return keys, values

    def attender(self, step):
        """The layer itself, while it awaits the weights of the step it just stored."""
        return self if self._pending is not None else None

    def attend(self, base, module, query, key, value, attention_mask, **kwargs):
        """The model's own attention, unchanged; its probabilities go to :meth:`observe`."""
        out = base(module, query, key, value, attention_mask, **kwargs)
        self.observe(query, key, value, kwargs.get("scaling", module.scaling))
        return out

    def observe(self, query: torch.Tensor | None, keys: torch.Tensor, values: torch.Tensor, scaling: float) -> None:
        """Score the slots returned by :meth:`update` (``keys``, ``values``; with the step's attention probabilities
        when the rule reads them), and choose the slot to free when the layer is over budget."""
        probs = attention_probs(query, keys, scaling, self._pending) if query is not None else None
        self._pending = None
        length = keys.shape[-2]
        positions = self.positions[:, :, :length]
        view = ScoreView(keys=keys, values=values, positions=positions, scores=self.scores[:, :, :length],
                         attention=probs, newest=self.position - 1)
        self.scores[:, :, :length] = self.rule.score(view)
        if min(self.position, self.capacity) > self.budget:
            candidates = (positions >= 0) & (positions <= self.position - 1 - self.rule.protected_recent)
            self.free = lowest_slot(self.scores[:, :, :length], positions, candidates)

    def slot_positions(self) -> torch.Tensor:
        """The stream position of the token in each slot, (batch, rows, slots), -1 where empty."""
        return self.positions

    def held_positions(self) -> torch.Tensor:
        """Stream positions of the tokens the layer holds for the first row of the batch, one row per kv head for
        H2O (one row for TOVA), shape (rows, n); the slot freed for the next token is left out."""
        if not self.is_initialized:
            return torch.zeros(1, 0, dtype=torch.long)
        positions = self.positions[0].clone()  # (rows, slots)
        if self.position > self.budget:  # full: the free slot's token has been evicted
            positions.scatter_(1, self.free[0][:, None], -1)
        return torch.stack([row[row >= 0].sort().values for row in positions.cpu()])

    def batch_tensors(self) -> list[torch.Tensor]:
        return super().batch_tensors() + [self.positions, self.scores, self.free]

    def reset(self) -> None:
        super().reset()
        if self.is_initialized:
            self.positions.fill_(-1)
            self.scores.zero_()
            self.free.fill_(self.capacity - 1)
        self._pending = None


class ScoredCache(StreamingCache):
    """The cache of a score-based policy (``rule``: a :class:`~streamlib.policies.scored.ScoredPolicy` such as TOVA or
    H2O): geometry and frame re-basing; each layer evicts by the rule. Defined token by
    token, so a full cache takes one token per call. A hybrid model's sliding layers (``sliding``) keep their trained
    window instead."""

    chunkable = False

    def __init__(self, num_layers: int, rule: EvictionRule, rotary: RotaryInfo, rebase_interval: int = 256,
                 sliding: SlidingLayers | None = None, quant: KVQuantSpec | None = None):
        spec = ScoredSpec(rule)
        rotations = Rotations(rotary)
        layers, scratch = build_layers(num_layers, ScoredLayer, spec, rotations, sliding, quant)
        super().__init__(spec, layers, rotations, rebase_interval, quant, scratch,
                         sliding.layer_types if sliding is not None else None)
        self.needs_handover = rule.needs_attention

