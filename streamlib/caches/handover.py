"""The attention hand-over: a thin attention function in front of the model's own (sdpa or eager) through which a
cache sees the queries of the step whose keys it has just stored, and the attention kernels the caches use.

Inside ``with handover(model, cache):`` the model's attention goes through the function below: for each layer it asks
the cache for that layer's *attender* (``cache.attender(module.layer_idx)``: the layer itself, or the chunk plan it
follows, or None) and hands the step to ``attender.attend(base, module, query, key, value, attention_mask, **kwargs)``
instead of running ``base`` (the model's own attention). Users: score-based eviction that reads the step's attention
(TOVA, H2O); StreamingLLM with position shift, for a chunk fed into a full cache, rotates each query once to the sinks'
distance (``docs/design.md``).

The model is left as it was given: the block sets its attention implementation to the wrapped one and puts the old one
back when it ends (an exception included), and the cache the function asks is the block's, held in a context
variable, not on the model or on a tensor. streamlib's own loops open the block around every forward
(:func:`streamlib.caches.base.forward`); a user's own ``model.generate(..., cache=cache)`` under a policy that needs it
opens it explicitly, as kvpress's ``with press(model):``::

    cache = TOVA(256).make_cache(model)
    with handover(model, cache):
        model.generate(input_ids, cache=cache, max_new_tokens=100)
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from ..core.arch import eager_attention
from ..core.rotary import rotate

WRAPPED = {"sdpa": "streamlib_sdpa", "eager": "streamlib_eager"}
_ACTIVE: ContextVar = ContextVar("streamlib_handover_cache", default=None)  # the cache of the innermost block


def base_attention(base: str, module):
    """The model's own attention function for ``base`` (``"sdpa"`` or ``"eager"``); the eager one comes from the
    modeling file of ``module`` (an attention layer), as the model would pick it."""
    if base == "eager":
        return eager_attention(module)
    return AttentionInterface._global_mapping["sdpa"]


def _attention(base: str):
    def attention(module, query, key, value, attention_mask, **kwargs):
        fn = base_attention(base, module)
        cache = _ACTIVE.get()
        attender = cache.attender(module.layer_idx) if cache is not None else None
        if attender is not None:
            return attender.attend(fn, module, query, key, value, attention_mask, **kwargs)
        return fn(module, query, key, value, attention_mask, **kwargs)

    return attention


for _base, _name in WRAPPED.items():
    AttentionInterface.register(_name, _attention(_base))
    AttentionMaskInterface.register(_name, sdpa_mask if _base == "sdpa" else eager_mask)


def base_of(implementation: str) -> str:
    """The model's own attention behind a hand-over name (``"streamlib_sdpa"`` -> ``"sdpa"``); others unchanged."""
    for base, name in WRAPPED.items():
        if implementation == name:
            return base
    return implementation


def can_hand_over(model) -> bool:
    """Whether the model's attention can go through the hand-over: sdpa and eager can."""
    return base_of(model.config._attn_implementation) in WRAPPED


@contextmanager
def handover(model, cache):
    """For the ``with`` block, route ``model``'s attention through ``cache``'s attenders; the model's attention
    implementation is put back when the block ends. A cache that needs no hand-over (``cache.needs_handover`` false)
    changes nothing. Blocks nest: the innermost cache answers."""
    if not getattr(cache, "needs_handover", False):
        yield
        return
    current = model.config._attn_implementation
    if not can_hand_over(model):
        raise ValueError(f"model: {cache.name} needs attn_implementation 'sdpa' or 'eager'; got {current!r}")
    token = _ACTIVE.set(cache)
    switched = current in WRAPPED
    if switched:
        model.set_attn_implementation(WRAPPED[current])
    try:
        yield
    finally:
        _ACTIVE.reset(token)
        if switched:
            model.set_attn_implementation(current)


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


# ------------------------------------------------------------------------------------------ attention kernels --


def sink_rotated_attention(base, module, query, key, value, attention_mask, *, n_sink: int, cos, sin,
                           scaling: float, plain_queries: int = 0, bias_buffer=None):
    """Attention for a chunk whose keys are laid out ``[sinks | ring | chunk]`` with one copy of the sinks, each query
    seeing the sinks from the fixed slot ``n_sink + window`` of the cache (position shift).

    RoPE scores depend only on the distance, so each query is rotated once by ``cos, sin`` to that slot and scores
    the sinks; the query as the model rotated it scores the ring and the chunk. One softmax over both: with eager
    attention the two score blocks are joined; with sdpa in single precision the difference of the two sink scores
    is added to the sinks' columns of the mask (one attention of the usual width); in half precision the two queries
    are laid side by side in a head of twice the width and each key fills only its half.

    ``plain_queries``: in a chunk that starts the stream (``[sinks | chunk]``, no ring), the leading queries that
    see every chunk token before them with the sinks where they are (the cache was still filling for them). With
    sdpa they take a plain causal attention over the chunk's keys, and only the rest pay for the wide heads.

    ``bias_buffer(shape, dtype)``: an empty tensor of that shape to build the per-head mask in, kept between calls (a
    fresh one of tens of MiB a layer costs more in page faults than filling it).
    """
    d = query.shape[-1]
    if getattr(base, "__name__", "") == "eager_attention_forward":
        rotated = rotate(query, cos, sin)
        scores = torch.cat([grouped_scores(rotated, key[:, :, :n_sink]), grouped_scores(query, key[:, :, n_sink:])],
                           dim=-1) * scaling + attention_mask
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        return grouped_mix(probs, value).transpose(1, 2).contiguous(), probs
    gqa = query.shape[1] != key.shape[1]
    parts = []
    p = plain_queries
    if p:
        chunk_k, chunk_v = key[:, :, n_sink : n_sink + p], value[:, :, n_sink : n_sink + p]
        parts.append(torch.nn.functional.scaled_dot_product_attention(
            query[:, :, :p], chunk_k, chunk_v, is_causal=True, scale=scaling, enable_gqa=gqa))
    if p < query.shape[2] and query.dtype in (torch.float32, torch.float64):
        # one attention of the usual width: the sinks' columns of an additive mask, per head, turn each sink's score
        # into the rotated query's (exact up to rounding, which single precision keeps far below the tests' 1e-4)
        rest = query[:, :, p:]
        sinks = key[:, :, :n_sink]
        turn = (grouped_scores(rotate(rest, cos[p:], sin[p:]), sinks) - grouped_scores(rest, sinks)) * scaling
        mask = attention_mask[..., p:, :].expand(rest.shape[0], rest.shape[1], -1, -1)
        bias = bias_buffer(mask.shape, mask.dtype).copy_(mask) if bias_buffer else mask.clone()
        bias[..., :n_sink] += turn.to(bias.dtype)
        parts.append(torch.nn.functional.scaled_dot_product_attention(rest, key, value, attn_mask=bias, scale=scaling,
                                                                      enable_gqa=gqa))
    elif p < query.shape[2]:
        # half precision: the mask's resolution would blur the sinks' scores; lay the rotated and the unrotated query
        # side by side in a head of twice the width instead, each key filling its half
        rest = query[:, :, p:]
        wide_query = torch.cat([rest, rotate(rest, cos[p:], sin[p:])], dim=-1)
        wide_key = key.new_zeros(*key.shape[:-1], 2 * d)
        wide_key[:, :, n_sink:, :d] = key[:, :, n_sink:]
        wide_key[:, :, :n_sink, d:] = key[:, :, :n_sink]
        # values as wide as the keys (zeros after them): the fused sdpa kernels want one head width
        wide_value = torch.cat([value, torch.zeros_like(value)], dim=-1)
        out = torch.nn.functional.scaled_dot_product_attention(wide_query, wide_key, wide_value,
                                                               attn_mask=attention_mask[..., p:, :], scale=scaling,
                                                               enable_gqa=gqa)
        parts.append(out[..., :d])
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
    return out.transpose(1, 2).contiguous(), None


def attention_probs(query: torch.Tensor, keys: torch.Tensor, scaling: float, first_position: int) -> torch.Tensor:
    """Softmax probabilities (float32) of the step's queries over ``keys``, shape (B, query heads, n, L). With several
    queries (a call that fills the cache, slot ``a`` holding token ``a``), query ``i`` at ``first_position + i`` sees
    slots up to its own."""
    logits = grouped_scores(query.float(), keys.float()) * scaling
    n = query.shape[-2]
    if n > 1:
        lag = (first_position + torch.arange(n, device=query.device))[:, None] - torch.arange(keys.shape[-2],
                                                                                             device=query.device)
        logits = logits.masked_fill(lag < 0, float("-inf"))
    return logits.softmax(dim=-1)
