"""What a stream costs, from the shapes alone: the forward FLOPs (a multiply-add is 2 FLOPs) and the bytes of keys
and values a cache holds. The policies count with these; :mod:`streamlib.metrics.flops` checks the FLOPs with
calflops and :mod:`streamlib.metrics.memory` measures the bytes.

Per layer, with ``q = heads * head_dim`` and ``k = kv_heads * head_dim``: Q and output projections ``2*2*h*q``, K and
V ``2*2*h*k``, MLP ``2*m*h*i`` (``m`` = 2 matrices for Pythia's GELU MLP, 3 for SwiGLU), scores and weighted sum
``2*2*context*q``; then the LM head ``2*h*V``. Norms, softmax and activations are left out (a few per cent at most).
"""

from __future__ import annotations

import torch

from .arch import SLIDING, layer_types, shapes_of


def _dense_flops_per_token(config) -> int:
    """Matmul FLOPs of one token that do not depend on the context: projections, MLP and the LM head."""
    sh = shapes_of(config)
    q_width, kv_width = sh.heads * sh.head_dim, sh.kv_heads * sh.head_dim
    projections = 2 * sh.hidden * (2 * q_width + 2 * kv_width)  # Q and output at full width, K and V per kv head
    mlp = 2 * sh.mlp_matrices * sh.hidden * sh.intermediate
    return sh.layers * (projections + mlp) + 2 * sh.hidden * sh.vocab


def _attention_flops(config, context: int, stream_context: int | None = None) -> int:
    """Scores and the weighted sum of one token over ``context`` keys, every query head, every layer; a hybrid
    model's sliding layers attend over at most their window of the ``stream_context`` tokens so far (default
    ``context``), whatever the policy keeps."""
    sh = shapes_of(config)
    per_key = 4 * sh.heads * sh.head_dim
    sliding = layer_types(config).count(SLIDING)
    if not sliding:
        return sh.layers * per_key * context
    in_window = min(context if stream_context is None else stream_context, config.sliding_window)
    return per_key * ((sh.layers - sliding) * context + sliding * in_window)


def flops_per_token(config, context: int, stream_context: int | None = None) -> int:
    """Forward FLOPs for one token attending ``context`` keys (itself included), all matmuls, LM head included. For
    Pythia (``q = k = h``) that is ``8h² + 4hi + 4·context·h`` per layer plus the LM head. A hybrid model's sliding
    layers see at most their window of the ``stream_context`` tokens so far."""
    return _dense_flops_per_token(config) + _attention_flops(config, context, stream_context)


def forward_flops(config, tokens: int, context_per_token=None) -> int:
    """FLOPs of a forward over ``tokens`` tokens, attention computed as a full ``tokens x tokens`` matmul (what
    eager attention does, masked entries included) unless ``context_per_token`` (a function of the index) is given."""
    dense = tokens * _dense_flops_per_token(config)
    if context_per_token is None:
        return dense + tokens * _attention_flops(config, tokens)
    return dense + sum(_attention_flops(config, context_per_token(i)) for i in range(tokens))


def bounded_stream_flops(config, n_tokens: int, budget: int | None) -> int:
    """FLOPs to stream ``n_tokens`` one at a time when each token attends at most ``budget`` kept tokens and itself
    (``None``: every earlier token, Dense)."""
    return sum(flops_per_token(config, (t + 1) if budget is None else min(t + 1, budget + 1), t + 1)
               for t in range(n_tokens))


def recompute_stream_flops(config, n_tokens: int, window: int) -> int:
    """FLOPs to stream ``n_tokens`` under Recompute: one causal forward over the first window, then a fresh forward
    over a whole window for every later token."""
    head = forward_flops(config, min(window, n_tokens))
    return head + max(0, n_tokens - window) * forward_flops(config, window)


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes of keys and values one token adds to a dense cache: 2 (K, V) x layers x kv heads x head_dim x element
    size (kv heads x head_dim is the hidden size for Pythia, a third of it for SmolLM2). A hybrid model's sliding
    layers stop adding once their window is full: :func:`dense_kv_bytes`."""
    sh = shapes_of(config)
    return 2 * sh.layers * sh.kv_heads * sh.head_dim * torch.finfo(dtype).bits // 8


def held_kv_bytes(config, tokens: int, dtype: torch.dtype, budget: int | None = None) -> int:
    """Bytes of keys and values a cache holds after ``tokens`` tokens, from the shapes alone: the full-attention
    layers hold every token, or at most ``budget`` of them (a bounded policy's cache size), and a hybrid model's
    sliding layers their last ``sliding_window - 1`` whatever the policy (as transformers' cache does). Burst
    eviction's sawtooth peaks at its budget; Recompute's window exists only during its forward."""
    types = layer_types(config)
    per_layer = kv_bytes_per_token(config, dtype) // len(types)
    sliding = types.count(SLIDING)
    full = tokens if budget is None else min(tokens, budget)
    kept = min(tokens, config.sliding_window - 1) if sliding else 0
    return per_layer * ((len(types) - sliding) * full + sliding * kept)


def dense_kv_bytes(config, tokens: int, dtype: torch.dtype) -> int:
    """Bytes of keys and values a dense cache holds after ``tokens`` tokens: every token in every layer, except in a
    hybrid model's sliding layers, which keep their last ``sliding_window - 1`` (as transformers' cache does)."""
    return held_kv_bytes(config, tokens, dtype)
