"""FLOPs of a stream under a policy (the policy's own count) and of one forward counted by calflops, as a check of
the analytic counts of :mod:`streamlib.core.costs`."""

from __future__ import annotations

import torch

from ..core.costs import flops_per_token, forward_flops
from .measurement import Measurement


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
