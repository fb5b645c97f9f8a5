"""Feeding a stream through a model under a cache policy: chunked prefill, and a generation loop that never lets
positions grow (see :class:`streamlib.cache.SinkWindowCache` for why that matters on long streams)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from transformers import Cache

from .cache import SinkWindowCache, StreamingCache
from .handover import installed


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


def decoder_for(model, cache: Cache):
    """The compiled decoder of ``model`` for ``cache``, or a ValueError naming ``compile`` when the cache's shapes
    are not fixed (a growing Dense cache; TOVA and H2O, which choose what to evict from the data each step)."""
    from .compiled import CompiledDecoder, compiled_decoder

    if not CompiledDecoder.supports(cache):
        raise ValueError(f"compile=True covers StreamingLLM, Window, and Dense when the stream's length is known "
                         f"(stream_generate, the speed functions): their caches keep one shape. {type(cache).__name__} "
                         "does not (TOVA and H2O evict by score): use compile=False")
    return compiled_decoder(model)


def cache_for(model, policy_or_cache, compile: bool = False, max_length: int | None = None) -> Cache:
    """The cache a loop runs on. With ``compile=True`` and Dense, a preallocated one of ``max_length`` slots: a
    Window that never evicts (exactly Dense: every token at its own position), whose shape is fixed from the start,
    at the cost of attending over all its slots (the empty ones masked) from the first step."""
    from .policies import Dense, Window

    if isinstance(policy_or_cache, Cache):
        return policy_or_cache
    if compile and isinstance(policy_or_cache, Dense):
        if max_length is None:
            raise ValueError("compile=True with Dense needs the stream's maximum length (max_length) for a "
                             "preallocated cache; stream_generate and the speed functions know it")
        return Window(max_length).make_cache(model)
    return policy_or_cache.make_cache(model)


def default_chunk_size(cache: Cache, turn_queries: bool = True) -> int:
    """Tokens per forward in chunked mode: 512, where the projections run near their best and the masked-out part of
    each chunk's attention costs little beside them (a 2048-token prompt into StreamingLLM 4+252 then costs what a
    Dense prefill costs, ``bench/bench_decode.py``). With position shift but no hand-over (a model whose attention
    does not go through :mod:`streamlib.handover`) every query brings its own copy of the sinks: about the window."""
    if isinstance(cache, SinkWindowCache) and cache.pos_shift and cache.n_sink and not turn_queries:
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
    turn_queries = installed(model)
    if chunk_size is None:
        chunk_size = default_chunk_size(cache, turn_queries)
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    total = input_ids.shape[1]
    streaming = isinstance(cache, StreamingCache)
    start = 0
    while start < total:
        keep = 0 if all_logits else 1
        if streaming:
            cache.maybe_rebase()
            room = cache.budget + 1 - cache.seen_tokens
            if room > 0:  # filling: a plain causal call is exact
                n = min(room, chunk_size, total - start)
                out = model(input_ids=input_ids[:, start : start + n], cache=cache, use_cache=True, logits_to_keep=keep)
            elif chunk_size == 1 or total - start == 1 or not cache.chunkable:
                n = 1
                out = model(input_ids=input_ids[:, start : start + 1], cache=cache, use_cache=True, logits_to_keep=keep)
            else:
                n = min(chunk_size, total - start)
                position_ids, mask = cache.plan_chunk(n, model.dtype, device, turn_queries=turn_queries)
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


def next_token(logits: torch.Tensor, *, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row from ``logits`` (batch, vocab): greedy, or sampled with temperature and nucleus
    (top-p) filtering. Returns (batch, 1)."""
    if not do_sample:
        return logits.argmax(dim=-1, keepdim=True)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # keep the smallest set of tokens whose mass reaches top_p (the most likely token always stays)
        drop = sorted_p.cumsum(dim=-1) - sorted_p >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    gen_device = generator.device if generator is not None else probs.device
    return torch.multinomial(probs.to(gen_device), 1, generator=generator).to(logits.device)


def check_sampling(max_new_tokens, do_sample: bool, temperature, top_p) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1; got {max_new_tokens!r}")
    if do_sample and not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be > 0 when sampling; got {temperature!r}")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1]; got {top_p!r}")


class TokenStream:
    """One stream that never ends: feed tokens, generate, feed more, all through one cache.

    The last generated token is kept *pending* (chosen but not yet fed to the model): the next :meth:`generate`
    step or :meth:`feed` call feeds it first, so no forward is spent on a token nobody asked to continue from.
    The cache owns the positions (it re-bases them now and then), so the stream can run for as long as wanted.
    This is the loop of a chat that never ends (``python -m streamlib generate --interactive``) and of
    :func:`stream_generate`.
    """

    def __init__(self, model, policy_or_cache, *, do_sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None, chunk_size: int | None = None, compile: bool = False,
                 max_length: int | None = None):
        check_sampling(1, do_sample, temperature, top_p)
        self.model = model
        self.cache = cache_for(model, policy_or_cache, compile, max_length)
        self.decoder = decoder_for(model, self.cache) if compile else None
        self.device = next(model.parameters()).device
        self.sampling = {"do_sample": do_sample, "temperature": temperature, "top_p": top_p}
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.chunk_size = chunk_size
        self.logits: torch.Tensor | None = None  # next-token logits after everything fed so far
        self.pending: torch.Tensor | None = None  # a generated token not yet fed
        self.position = 0  # tokens of the stream so far, pending token included

    @torch.inference_mode()
    def feed(self, input_ids: torch.Tensor) -> None:
        """Append tokens (batch, T) to the stream (the pending token goes first)."""
        check_input_ids(input_ids)
        ids = input_ids.to(self.device)
        if self.pending is not None:
            ids = torch.cat([self.pending, ids], dim=1)
            self.pending = None
            self.position -= 1
        self.logits = prefill(self.model, ids, self.cache, self.chunk_size)
        self.position += ids.shape[1]

    @torch.inference_mode()
    def step(self) -> torch.Tensor:
        """Choose the next token (batch, 1) and make it the pending one."""
        if self.pending is not None:
            if self.decoder is not None and self.decoder.can_step(self.cache):
                self.logits = self.decoder.step(self.pending, self.cache)
            else:
                if isinstance(self.cache, StreamingCache):
                    self.cache.maybe_rebase()
                self.logits = self.model(input_ids=self.pending, cache=self.cache, use_cache=True).logits[:, -1]
        if self.logits is None:
            raise ValueError("input_ids: feed a prompt of at least one token before generating")
        self.pending = next_token(self.logits, generator=self.generator, **self.sampling)
        self.position += 1
        return self.pending

    def generate(self, max_new_tokens: int, eos_token_id: int | None = None) -> Iterator[torch.Tensor]:
        """Yield up to ``max_new_tokens`` tokens, each (batch, 1), stopping after an end-of-text token."""
        check_sampling(max_new_tokens, False, 1.0, 1.0)
        for _ in range(max_new_tokens):
            token = self.step()
            yield token
            if eos_token_id is not None and bool((token == eos_token_id).all()):
                return


def stream_generate(model, input_ids: torch.Tensor, policy_or_cache, max_new_tokens: int, *,
                    do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                    eos_token_id: int | None = None, seed: int | None = None,
                    chunk_size: int | None = None, compile: bool = False) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` after ``input_ids`` under a policy (or an existing cache).

    Unlike ``model.generate`` this loop lets the cache own the positions, so a stream can go on for as long as
    wanted without rotary angles growing. With ``compile=True`` each decode step runs as one compiled graph
    (:mod:`streamlib.compiled`; the first one compiles): StreamingLLM and Window as they are, Dense on a cache
    preallocated to ``input_ids`` plus ``max_new_tokens`` (:func:`cache_for`). Returns the new tokens, shape
    (batch, n_new).
    """
    check_input_ids(input_ids)
    check_sampling(max_new_tokens, do_sample, temperature, top_p)
    stream = TokenStream(model, policy_or_cache, do_sample=do_sample, temperature=temperature, top_p=top_p,
                         seed=seed, chunk_size=chunk_size, compile=compile,
                         max_length=input_ids.shape[1] + max_new_tokens)
    stream.feed(input_ids)
    return torch.cat(list(stream.generate(max_new_tokens, eos_token_id)), dim=1)


def excerpt(tokenizer, steps, position: int, n_tokens: int = 40) -> str:
    """The text of ``n_tokens`` generated tokens from stream ``position`` on. ``steps``: a generation trace (a
    DataFrame with ``position`` and ``token`` columns, see ``speed.measure_generation_trace``)."""
    tokens = steps.loc[steps["position"] >= position, "token"].head(n_tokens).tolist()
    return tokenizer.decode(tokens) if tokens else ""
