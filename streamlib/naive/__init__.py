"""Deliberately naive references for every policy, written from their definitions alone, to check the real caches
against, for GPT-NeoX, the Llama family and Gemma 3 (hybrid: its sliding layers see the last ``sliding_window - 1``
tokens and themselves at their own positions, whatever the policy of the full layers).

Token by token; every layer keeps its keys *before* rotary and rotates them at read time, at the position the
semantics give: the slot index in the cache with position shift, the original index without it. No buffers, no
chunking, no tricks. Run them on a float64 copy of a model for a float64 reference. :func:`check_exact` holds a
policy's cache to its reference; the test suite runs it for every registered policy, and a notebook can run it for a
policy of one's own.
"""

from __future__ import annotations

import copy

import pandas as pd
import torch

from .forward import Naive, NaiveQuant
from .references import (burst_kept_indices, kept_indices, naive_recompute_nll, naive_rule_nll, naive_scored_nll,
                         naive_streaming_nll, naive_view_nll)

__all__ = ["Naive", "NaiveQuant", "burst_kept_indices", "check_exact", "kept_indices", "naive_recompute_nll",
           "naive_rule_nll", "naive_scored_nll", "naive_streaming_nll", "naive_view_nll", "reference_nll",
           "tiny_model"]


def reference_nll(policy, model64, ids: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The naive NLL of ``policy`` on ``ids`` (a float64 model): a score-based policy through its rule, Recompute
    through a fresh forward per token, every other policy through its ``visible`` definition; and the smallest gap
    between two eviction candidates (inf where nothing is decided by a score), below which float32 rounding could
    decide a near tie either way."""
    if policy.definition == "rule":
        return naive_rule_nll(model64, ids, policy)
    if policy.definition == "forward":
        return naive_recompute_nll(model64, ids, policy.window), float("inf")
    return naive_view_nll(model64, ids, policy.visible, getattr(policy, "pos_shift", False)), float("inf")


def check_exact(policy, model, ids: torch.Tensor, chunk_sizes=(7, 64)) -> pd.DataFrame:
    """``policy``'s cache on ``model`` against its naive float64 reference on ``ids`` (1, T), token by token and in
    chunks: one row per feeding mode with the largest difference in per-token NLL, and how far the policy is from
    Dense (the budget binds when that is large)."""
    from ..metrics.quality import token_nll
    from ..policies import Dense

    expected, gap = reference_nll(policy, copy.deepcopy(model).double(), ids)
    dense = token_nll(model, ids, Dense())
    rows = []
    for mode, chunk in [("token", None)] + [("chunked", c) for c in chunk_sizes]:
        got = token_nll(model, ids, policy, mode=mode, chunk_size=chunk)
        rows.append({"policy": policy.label(), "mode": mode if chunk is None else f"chunks of {chunk}",
                     "max |NLL - reference|": float((got - expected.float()).abs().max()),
                     "max |NLL - Dense|": float((got - dense).abs().max()), "closest tie": gap})
    return pd.DataFrame(rows)


def tiny_model(model_type: str = "llama", attn: str = "eager", seed: int = 0):
    """A random two-layer model of a family (``gpt_neox``, ``llama``, ``gemma3_text``), small enough for the naive
    reference (4 query heads; 2 kv heads for Llama, 1 for Gemma 3, whose layers are one sliding of window 8 and one
    full), its attention made peaky (query and key weights doubled) so that what a cache keeps matters. Gemma 3
    normalises each key head; its norm weights are drawn per channel, as a trained model's differ, so keys differ in
    norm."""
    from transformers import AutoConfig, AutoModelForCausalLM

    shapes = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=4096, attn_implementation=attn)
    extra = {"gpt_neox": dict(rotary_pct=0.25),
             "llama": dict(num_key_value_heads=2, head_dim=32),
             "gemma3_text": dict(num_key_value_heads=1, head_dim=16, sliding_window=8, query_pre_attn_scalar=16,
                                 layer_types=["sliding_attention", "full_attention"])}
    if model_type not in extra:
        raise ValueError(f"model_type must be one of {sorted(extra)}; got {model_type!r}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **shapes, **extra[model_type])).eval()
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if any(part in name for part in ("q_proj", "k_proj", "query_key_value")):
                weight *= 2.0
            elif "k_norm" in name:
                weight += 0.5 * torch.randn(weight.shape)
    model.generation_config.eos_token_id = None
    return model
