"""The attention hand-over: a thin attention function in front of the model's own (sdpa or eager), through which a
cache layer sees the queries of the step whose keys it has just stored.

The model calls ``cache.update(k, v, layer_idx)`` and then its attention function with the rotated queries. A layer
that needs those queries calls :func:`hand_over` in ``update``; the attention function below then passes the step to
the layer's ``attend(base, module, query, key, value, attention_mask, **kwargs)`` instead of running ``base`` (the
model's own attention) directly. Two users:

* score-based eviction (TOVA, H2O, :mod:`streamlib.scored_cache`): the layer runs ``base`` unchanged and reads the
  step's attention probabilities to decide what to evict;
* StreamingLLM with position shift (:mod:`streamlib.cache`), when a chunk of several tokens goes into a full cache:
  the sinks must sit at the same distance before every query, so instead of one turned copy of the sinks per query
  the layer turns each query once to the sinks' fixed distance and attends to one copy.

Layers that do not hand over, and models used with other caches, pass straight through.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from .arch import eager_attention

WRAPPED = {"sdpa": "streamlib_sdpa", "eager": "streamlib_eager"}
_waiting: list = []  # the layer whose update has run and whose attention is next (at most one)


def base_attention(base: str, module):
    """The model's own attention function for ``base`` (``"sdpa"`` or ``"eager"``); the eager one comes from the
    modeling file of ``module`` (an attention layer), as the model would pick it."""
    if base == "eager":
        return eager_attention(module)
    return AttentionInterface._global_mapping["sdpa"]


def _attention(base: str):
    def attention(module, query, key, value, attention_mask, **kwargs):
        fn = base_attention(base, module)
        if _waiting and _waiting[-1].layer_idx == getattr(module, "layer_idx", None):
            return _waiting.pop().attend(fn, module, query, key, value, attention_mask, **kwargs)
        return fn(module, query, key, value, attention_mask, **kwargs)

    return attention


for _base, _name in WRAPPED.items():
    AttentionInterface.register(_name, _attention(_base))
    AttentionMaskInterface.register(_name, sdpa_mask if _base == "sdpa" else eager_mask)


def hand_over(layer) -> None:
    """Called by a cache layer in ``update``: its ``attend`` gets this step's attention."""
    _waiting.append(layer)
    del _waiting[:-1]


def installed(model) -> bool:
    return model.config._attn_implementation in WRAPPED.values()


def base_of(implementation: str) -> str:
    """The model's own attention behind a hand-over name (``"streamlib_sdpa"`` -> ``"sdpa"``); others unchanged."""
    for base, name in WRAPPED.items():
        if implementation == name:
            return base
    return implementation


def install(model, needed_by: str = "this policy") -> None:
    """Route the model's attention through the hand-over (idempotent; sdpa and eager models)."""
    current = model.config._attn_implementation
    if current in WRAPPED.values():
        return
    if current not in WRAPPED:
        raise ValueError(f"model: {needed_by} needs attn_implementation 'sdpa' or 'eager'; got {current!r}")
    model.set_attn_implementation(WRAPPED[current])


# ------------------------------------------------------------------------------------ grouped-query attention --
# Query heads come in groups that share one key/value head (``heads = kv_heads * group``; query head ``h`` reads
# kv head ``h // group``, as transformers' ``repeat_kv`` lays them out). These kernels score and mix over the kv
# heads as stored, without a copy of the keys per query head.


def grouped_scores(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """``query @ key^T`` per head: query (B, H, n, d), key (B, KV, L, d) -> (B, H, n, L)."""
    b, heads, n, d = query.shape
    kv = key.shape[1]
    grouped = query.reshape(b, kv, (heads // kv) * n, d)
    return (grouped @ key.transpose(-1, -2)).view(b, heads, n, key.shape[2])


def grouped_mix(probs: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``probs @ value`` per head: probs (B, H, n, L), value (B, KV, L, d) -> (B, H, n, d)."""
    b, heads, n, length = probs.shape
    kv = value.shape[1]
    return (probs.reshape(b, kv, (heads // kv) * n, length) @ value).view(b, heads, n, value.shape[-1])
