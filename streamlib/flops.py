"""Forward FLOPs, counted analytically (a multiply-add is 2 FLOPs) and by calflops as a check.

Per layer, with ``q = heads * head_dim`` and ``k = kv_heads * head_dim``: Q and output projections ``2*2*h*q``, K and
V ``2*2*h*k``, MLP ``2*m*h*i`` (``m`` = 2 matrices for Pythia's GELU MLP, 3 for SwiGLU), scores and weighted sum
``2*2*context*q``; then the LM head ``2*h*V``. Norms, softmax and activations are left out (a few per cent at most).
"""

from __future__ import annotations

import torch

from .arch import SLIDING, layer_types, shapes_of
from .measurement import Measurement


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


def stream_flops(config, n_tokens: int, policy) -> int:
    """Analytic FLOPs to process a stream of ``n_tokens`` one token at a time under ``policy`` (its own count:
    :meth:`~streamlib.policies.PolicyBase.stream_flops`)."""
    return policy.stream_flops(config, n_tokens)


def calflops_forward(model, input_ids: torch.Tensor) -> int:
    """FLOPs of one forward over ``input_ids`` as calflops counts them (use an eager-attention model to count the
    attention matmuls; with SDPA calflops sees no attention matmul)."""
    from calflops import calculate_flops

    flops, _, _ = calculate_flops(model=model, kwargs={"input_ids": input_ids},
                                  output_as_string=False, print_results=False, print_detailed=False)
    return int(flops)


def measure_flops(config, policy, *, prompt_tokens: int, stream_tokens: int, eager_model=None,
                  calflops_tokens: int = 256) -> Measurement:
    """Analytic FLOPs: one token at the end of a prompt of ``prompt_tokens`` and the mean per token over a stream of
    ``stream_tokens``; with ``eager_model``, calflops' count of one forward of ``calflops_tokens`` tokens and the
    analytic count of the same forward beside it."""
    context = prompt_tokens + 1 if policy.budget is None else min(prompt_tokens, policy.budget) + 1
    rows = [("flops_per_token_at_prompt_end", flops_per_token(config, context, prompt_tokens + 1), "FLOP"),
            ("flops_stream_per_token", stream_flops(config, stream_tokens, policy) / stream_tokens, "FLOP")]
    if eager_model is not None:
        ids = torch.randint(0, config.vocab_size, (1, calflops_tokens), generator=torch.Generator().manual_seed(0))
        rows.append(("calflops_forward", calflops_forward(eager_model, ids.to(next(eager_model.parameters()).device)), "FLOP"))
        rows.append(("analytic_forward", forward_flops(config, calflops_tokens), "FLOP"))
    return Measurement(rows=rows)
