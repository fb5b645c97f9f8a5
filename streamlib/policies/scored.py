"""What the score-based policies share: a rule that scores every held token from what the layer holds (its keys,
values, positions, the running scores, and the step's attention when the rule asks for it), and a cache that drops
the lowest-scored token after each step. A rule of one's own is a subclass with a ``score`` method (kvpress's
``ScorerPress`` is the model: ``score(module, hidden_states, keys, values, attentions)``)."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..caches.scored import ScoredCache, ScoreView
from ..core.arch import rotary_of, sliding_layers_of
from .base import PolicyBase, check_model

__all__ = ["ScoredPolicy", "ScoreView"]


class ScoredPolicy(PolicyBase):
    """Keep ``budget`` tokens per layer (per kv head when ``per_head``): after each token the token with the lowest
    score leaves, among those older than the ``protected_recent`` most recent (ties to the earliest position).
    Tokens keep their original positions. Defined token by token, so a prompt longer than the cache is read one
    decode step per token once the cache is full."""

    per_head: ClassVar[bool] = False  # one choice per layer for all its heads, or one per kv head
    needs_attention: ClassVar[bool] = False  # the step's attention probabilities (the model's attention is handed over)
    token_mode = True
    quantizable = True
    definition = "rule"
    why_not_compiled = "it evicts by score"
    key_axis = "token"  # it evicts single tokens anywhere: a block's per-channel key scales would outlive the block

    @property
    def protected_recent(self) -> int:
        """The most recent tokens that no eviction takes: the policy's ``n_recent`` where it has one."""
        return getattr(self, "n_recent", 0)

    def score(self, view: ScoreView) -> torch.Tensor:
        """Every slot's score, (batch, rows, L): the lowest leaves once the layer holds more than ``budget``."""
        raise NotImplementedError

    def make_cache(self, model) -> ScoredCache:
        check_model(model, type(self).__name__, hand_over="reads the attention weights" if self.needs_attention else None)
        return ScoredCache(model.config.num_hidden_layers, self, rotary_of(model), sliding=sliding_layers_of(model),
                           quant=self.kv_quant())
