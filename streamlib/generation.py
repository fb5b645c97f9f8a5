"""Feeding a stream through a model under a cache policy: chunked prefill, and a generation loop that never lets
positions grow (see :class:`streamlib.cache.SinkWindowCache` for why that matters on long streams)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from transformers import Cache

from .cache import SinkWindowCache


def check_input_ids(input_ids, *, batch_one: bool = False, min_len: int = 1) -> None:
    """Raise a ValueError naming ``input_ids`` unless it is a 2-D integer tensor of a usable shape."""
    if not isinstance(input_ids, torch.Tensor):
        raise ValueError(f"input_ids must be a torch.Tensor of shape (batch, T); got {type(input_ids).__name__}")
    if input_ids.dtype not in (torch.long, torch.int32):
        raise ValueError(f"input_ids must have an integer dtype (torch.long); got {input_ids.dtype}")
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must have shape (batch, T); got shape {tuple(input_ids.shape)}")
    if batch_one and input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must have shape (1, T): one stream; got shape {tuple(input_ids.shape)}")
    if input_ids.shape[1] < min_len:
        raise ValueError(f"input_ids must hold at least {min_len} tokens; got {input_ids.shape[1]}")


def default_chunk_size(cache: Cache) -> int:
    """Tokens per forward in chunked mode: about the window, so the masked-out share of each chunk stays small."""
    if isinstance(cache, SinkWindowCache):
        return max(16, min(cache.window, 512))
    return 512


def forward_chunks(model, input_ids: torch.Tensor, cache: Cache, chunk_size: int | None = None,
                   all_logits: bool = True) -> Iterator[tuple[int, torch.Tensor]]:
    """Feed ``input_ids`` through ``model`` with ``cache``, yielding ``(start, logits)`` per forward.

    Exactly the result of feeding one token at a time. ``chunk_size=1`` *is* one token at a time. Otherwise a
    streaming cache is first filled with one plain call (no token needs an eviction yet), then each chunk gets its
    own positions and mask from :meth:`SinkWindowCache.plan_chunk`; other caches take plain causal chunks. With
    ``all_logits=False`` only the last position's logits are computed.
    """
    if chunk_size is None:
        chunk_size = default_chunk_size(cache)
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    total = input_ids.shape[1]
    streaming = isinstance(cache, SinkWindowCache)
    start = 0
    while start < total:
        keep = 0 if all_logits else 1
        if streaming:
            cache.maybe_rebase()
            room = cache.budget + 1 - cache.seen_tokens
            if room > 0:  # filling: a plain causal call is exact
                n = min(room, chunk_size, total - start)
                out = model(input_ids=input_ids[:, start : start + n], cache=cache, use_cache=True, logits_to_keep=keep)
            elif chunk_size == 1 or total - start == 1:
                n = 1
                out = model(input_ids=input_ids[:, start : start + 1], cache=cache, use_cache=True, logits_to_keep=keep)
            else:
                n = min(chunk_size, total - start)
                position_ids, mask = cache.plan_chunk(n, model.dtype, device)
                try:
                    out = model(input_ids=input_ids[:, start : start + n], cache=cache, use_cache=True,
                                position_ids=position_ids, attention_mask=mask, logits_to_keep=keep)
                finally:
                    cache.end_chunk()
        else:
            n = min(chunk_size, total - start)
            out = model(input_ids=input_ids[:, start : start + n], cache=cache, use_cache=True, logits_to_keep=keep)
        yield start, out.logits
        start += n


@torch.inference_mode()
def prefill(model, input_ids: torch.Tensor, cache: Cache, chunk_size: int | None = None) -> torch.Tensor:
    """Process a prompt of any length into ``cache``; returns the logits of its last token, shape (batch, vocab)."""
    check_input_ids(input_ids)
    logits = None
    for _, logits in forward_chunks(model, input_ids, cache, chunk_size, all_logits=False):
        pass
    return logits[:, -1]


def _next_token(logits: torch.Tensor, do_sample: bool, temperature: float, generator) -> torch.Tensor:
    if not do_sample:
        return logits.argmax(dim=-1, keepdim=True)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


@torch.inference_mode()
def stream_generate(model, input_ids: torch.Tensor, policy_or_cache, max_new_tokens: int, *,
                    do_sample: bool = False, temperature: float = 1.0, eos_token_id: int | None = None,
                    generator: torch.Generator | None = None, chunk_size: int | None = None) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` after ``input_ids`` under a policy (or an existing cache).

    Unlike ``model.generate`` this loop lets the cache own the positions, so a stream can go on for as long as
    wanted without rotary angles growing. Returns the new tokens, shape (batch, n_new).
    """
    check_input_ids(input_ids)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1; got {max_new_tokens!r}")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling; got {temperature!r}")
    cache = policy_or_cache if isinstance(policy_or_cache, Cache) else policy_or_cache.make_cache(model)
    logits = prefill(model, input_ids, cache, chunk_size)
    device = logits.device
    new_tokens = []
    token = _next_token(logits, do_sample, temperature, generator)
    for step in range(max_new_tokens):
        new_tokens.append(token)
        if eos_token_id is not None and bool((token == eos_token_id).all()):
            break
        if step == max_new_tokens - 1:
            break
        if isinstance(cache, SinkWindowCache):
            cache.maybe_rebase()
        out = model(input_ids=token.to(device), cache=cache, use_cache=True)
        token = _next_token(out.logits[:, -1], do_sample, temperature, generator)
    return torch.cat(new_tokens, dim=1)
