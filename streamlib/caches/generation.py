"""Feeding a stream through a model under a policy: chunked prefill, the one decode step, and a generation loop whose
positions never grow (the cache owns them; ``docs/design.md``)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..core.checks import check_input_ids, check_sampling
from .base import PolicyCache, as_cache
from .compiled import NOT_COMPILABLE, compiled_decoder


def decoder_for(model, cache: PolicyCache):
    """The compiled decoder of ``model`` for ``cache``, or a ValueError naming ``compile`` when the cache's shape is
    not fixed (a growing Dense cache; TOVA and H2O, which choose what to evict from the data each step)."""
    if not cache.fixed_shape:
        raise ValueError(NOT_COMPILABLE.format(label=f"A {type(cache).__name__}", why=cache.why_not_compiled))
    return compiled_decoder(model)


def forward_chunks(model, input_ids: torch.Tensor, cache: PolicyCache, chunk_size: int | None = None,
                   all_logits: bool = True) -> Iterator[tuple[int, torch.Tensor]]:
    """Feed ``input_ids`` through ``model`` into ``cache``, yielding ``(start, logits)`` per forward: exactly the
    result of feeding one token at a time (``chunk_size=1`` *is* one token at a time). How each cache takes a stream
    (plain calls, chunks with their own masks, Recompute's windows) is its own ``feed``. With ``all_logits=False``
    only the last position's logits are computed."""
    device = next(model.parameters()).device
    yield from cache.feed(model, input_ids.to(device), chunk_size, all_logits)


def decode_step(model, cache: PolicyCache, token: torch.Tensor, decoder=None) -> torch.Tensor:
    """Feed one token per row (batch, 1) and return the next-token logits (batch, vocab): the step every decoding
    loop takes, compiled (``decoder``, from :func:`decoder_for`, once the cache can take a compiled step) or fed like
    any other token."""
    if decoder is not None and decoder.can_step(cache):
        return decoder.step(token, cache)
    for _, logits in cache.feed(model, token, all_logits=False):
        pass
    return logits[:, -1]


@torch.inference_mode()
def prefill(model, input_ids: torch.Tensor, cache: PolicyCache, chunk_size: int | None = None) -> torch.Tensor:
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
        self.cache = as_cache(model, policy_or_cache, compile, max_length)
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
            self.logits = decode_step(self.model, self.cache, self.pending, self.decoder)
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
    (:mod:`streamlib.caches.compiled`; the first one compiles): StreamingLLM and Window as they are, Dense on a cache
    preallocated to ``input_ids`` plus ``max_new_tokens`` (:func:`~streamlib.caches.base.as_cache`). Returns the new tokens, shape
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
    DataFrame with ``position`` and ``token`` columns, see ``timing.measure_generation_trace``)."""
    tokens = steps.loc[steps["position"] >= position, "token"].head(n_tokens).tolist()
    return tokenizer.decode(tokens) if tokens else ""
