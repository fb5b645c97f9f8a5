"""Sliding window with re-computation, the StreamingLLM paper's accurate but slow baseline: every token's logits come
from a fresh forward over the last ``window`` tokens, at positions ``0..window-1``. Its "cache" holds token ids, and
is fed like every policy's cache (:class:`streamlib.caches.base.PolicyCache`)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .base import PolicyCache


class RecomputeWindow(PolicyCache):
    """What Recompute keeps between tokens: the ids of the last ``window`` tokens, no keys or values.

    :meth:`feed` takes tokens and yields their next-token logits exactly as feeding them one at a time would: while
    fewer than ``window`` tokens have been seen, one causal forward over the prefix; after that, one forward per token
    over its own window, ``batch`` windows per call (``chunk_size=1``: one window per call, prefix included).
    """

    name = "Recompute"

    def __init__(self, window: int, kv_bytes_of, num_layers: int, batch: int = 8):
        self.window = window
        self.kv_bytes_of = kv_bytes_of  # tokens -> the bytes of their keys and values in one forward
        self.num_layers = num_layers  # one window of ids serves every layer
        self.batch = batch
        self.ids: torch.Tensor | None = None  # (batch, <= window - 1): the context the next token is read with
        self.position = 0  # tokens fed so far

    @property
    def budget(self) -> int:
        return self.window

    def feed(self, model, input_ids: torch.Tensor, chunk_size: int | None = None,
             all_logits: bool = True) -> Iterator[tuple[int, torch.Tensor]]:
        """Feed ``input_ids`` (batch, n) and yield ``(start, logits)``: the next-token logits (batch, k, vocab) of
        the tokens ``start..start+k-1`` (only the last token's when ``all_logits`` is false). The window is updated
        before the first yield, so a caller may stop reading early."""
        one_at_a_time = chunk_size == 1
        w, total, fed_before = self.window, input_ids.shape[1], self.position
        ids = input_ids if self.ids is None else torch.cat([self.ids, input_ids], dim=1)
        done = ids.shape[1] - total  # tokens of ``ids`` that came from earlier calls
        self.ids = ids[:, ids.shape[1] - (w - 1):] if w > 1 else ids[:, :0]
        self.position += total
        if not all_logits:
            yield total - 1, self._last_logits(model, [ids[:, max(0, ids.shape[1] - w):]])
            return
        start = 0
        if fed_before < w and not one_at_a_time:
            # a prefix shorter than the window: one causal forward gives every prediction in it
            start = min(w - fed_before, total)
            yield 0, model(input_ids=ids[:, : done + start], use_cache=False).logits[:, done:]
        while start < total:
            n = 1 if one_at_a_time else min(self.batch, total - start)
            ends = range(done + start + 1, done + start + n + 1)
            yield start, self._last_logits(model, [ids[:, max(0, e - w) : e] for e in ends])
            start += n

    @staticmethod
    def _last_logits(model, windows: list[torch.Tensor]) -> torch.Tensor:
        """Logits of the last token of each window, shape (batch, len(windows), vocab); windows of one length go
        through the model in one call."""
        if len({x.shape[1] for x in windows}) == 1:
            batch = windows[0].shape[0]
            logits = model(input_ids=torch.cat(windows), use_cache=False, logits_to_keep=1).logits[:, -1]
            return logits.view(len(windows), batch, -1).transpose(0, 1)
        return torch.cat([model(input_ids=x, use_cache=False, logits_to_keep=1).logits for x in windows], dim=1)

    def held_positions(self, layer_idx: int = 0) -> torch.Tensor:
        """Stream positions of the tokens the next token is read with, shape (1, n): one window of ids, the same for
        every layer."""
        return torch.arange(max(0, self.position - self.window + 1), self.position)[None]

    def kv_bytes(self) -> tuple[int, int]:
        """The keys and values of one window's forward, made and dropped for every token: (allocated, resident)."""
        rows = 0 if self.ids is None else self.ids.shape[0]
        transient = self.kv_bytes_of(min(self.window, self.position)) * rows
        return transient, transient

