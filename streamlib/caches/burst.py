"""Burst eviction's cache (:class:`streamlib.policies.BurstEviction`): ``capacity`` slots hold the sinks and the
recent tokens; when an incoming token would not fit, the oldest ``discard`` tokens after the sinks leave at once and
the rest move down. Between bursts tokens are appended, so a whole stretch between two bursts is one plain causal
call."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.arch import RotaryInfo, SlidingLayers
from ..core.rotary import Rotations
from .base import StreamingCache
from .layers import SinkLayer, additive_mask
from .quant import KVQuantSpec
from .sink_window import build_layers


@dataclass(frozen=True)
class BurstSpec:
    """A burst-eviction cache's settings, shared by its layers."""

    name = "burst-eviction"  # a class attribute, not a field
    n_sink: int
    capacity: int  # slots per layer, and the most tokens held between steps
    discard: int
    pos_shift: bool

    budget = slots = property(lambda self: self.capacity)

    def sink_delta(self, evicted: int, offset: int) -> int:
        """How far the stored sinks must rotate once ``evicted`` tokens have left: with position shift the query sits
        at its slot, so the sinks come ``evicted`` positions closer; without it they keep their positions."""
        return (evicted if self.pos_shift else 0) - offset

    def plain_room(self, held: int) -> int:
        """Tokens one call may take with ``held`` slots in use: up to the next burst, the free slots, or the
        ``discard`` slots a full cache is about to free."""
        return self.capacity - held if held < self.capacity else self.discard


class BurstLayer(SinkLayer):
    """One layer: ``n_sink`` sink slots, then the recent tokens in stream order; ``held`` slots are in use."""

    def __init__(self, layer_idx: int, spec: BurstSpec, rotations: Rotations, store=None):
        super().__init__(layer_idx, spec, rotations, store=store)
        self.discard = spec.discard
        self.held = 0

    @property
    def resident(self) -> int:
        return self.held

    def plain_room(self) -> int:
        """Up to the next burst: the free slots, or the ``discard`` slots a full cache is about to free."""
        return self.spec.plain_room(self.held)

    def held_positions(self) -> torch.Tensor:
        """Stream positions of the tokens held, shape (1, n): the sinks, then the recent tokens in stream order."""
        sinks = min(self.n_sink, self.held)
        recent = torch.arange(self.position - (self.held - sinks), self.position)
        return torch.cat([torch.arange(sinks), recent])[None]

    def slot_positions(self) -> torch.Tensor:
        """The stream position of the token in each slot, shape (1, 1, capacity), -1 where empty."""
        out = torch.full((1, 1, self.capacity), -1, dtype=torch.long)
        out[0, :, : self.held] = self.held_positions()
        return out.to(self.device)

    def held_after_burst(self, n: int) -> int:
        """The slots in use once the cache has made room for ``n`` incoming tokens."""
        return self.held - self.discard if self.held + n > self.capacity else self.held

    def get_mask_sizes(self, query_length: int, step=None) -> tuple[int, int]:
        # keys in slot order; the offset makes the model's causal mask compare slots: query i sits in slot held + i
        held = self.held_after_burst(query_length)
        return held + query_length, self.get_seq_length() - held

    def chunk_plan(self, first: int, offset: int, n: int, dtype, device, workspace, rotate_queries: bool):
        """Within a hybrid model's chunk, a plain causal call over the slots (no plan to follow)."""
        kv_length, _ = self.get_mask_sizes(n)
        return None, additive_mask(torch.arange(kv_length)[None, :] <= (kv_length - n + torch.arange(n))[:, None],
                                   dtype)

    def place(self, key_states: torch.Tensor, value_states: torch.Tensor, step=None):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.check_batch(key_states)
        n, first = key_states.shape[-2], self.position
        if self.held + n > self.capacity:
            if self.held < self.capacity or n > self.discard:
                raise ValueError(
                    f"input_ids: {n} tokens at stream position {first} cross a burst of a {self.capacity}-slot cache "
                    f"holding {self.held}; feed at most {self.spec.plain_room(self.held)} tokens at once (streamlib's "
                    "prefill and token_nll do), or pass prefill_chunk_size=1 to model.generate")
            self._burst()
        held = self.held
        self.keys[:, :, held : held + n] = key_states
        self.values[:, :, held : held + n] = value_states
        self.store_sinks(first, key_states)
        self.held += n
        self.position += n
        self.place_sinks(self.spec.sink_delta(self.position - self.held, self.offset))
        return self.keys[:, :, : self.held], self.values[:, :, : self.held]

    def _burst(self) -> None:
        """The oldest ``discard`` tokens after the sinks leave; the rest move down, as the model rotated them (their
        distances to every later query are unchanged; only the sinks' change, and place_sinks sees to that)."""
        s, d, held = self.n_sink, self.discard, self.held
        for buffer in self.slot_tensors():
            buffer[:, :, s : held - d] = buffer[:, :, s + d : held].clone()
        self.held -= d


class BurstCache(StreamingCache):
    """Burst eviction: ``n_sink`` sinks, at most ``capacity`` tokens in view (the incoming one included), ``discard``
    tokens evicted at once when it is full. Made by :meth:`BurstEviction.make_cache`.

    Its own layers never need a chunk's masks: ``plain_room`` keeps a call between two bursts. A hybrid model's
    sliding layers do once their ring is full, so its cache is ``chunkable``: each chunk stays between two bursts
    (``chunk_room``), a plain causal call for the burst layers and a ring chunk for the sliding ones."""

    def __init__(self, num_layers: int, n_sink: int, capacity: int, discard: int, pos_shift: bool,
                 rotary: RotaryInfo, rebase_interval: int = 256, sliding: SlidingLayers | None = None,
                 quant: KVQuantSpec | None = None):
        spec = BurstSpec(n_sink, capacity, discard, pos_shift)
        rotations = Rotations(rotary)
        layers, scratch = build_layers(num_layers, BurstLayer, spec, rotations, sliding, quant)
        super().__init__(spec, layers, rotations, rebase_interval, quant, scratch,
                         sliding.layer_types if sliding is not None else None)
        self.chunkable = self.is_hybrid

    def chunk_room(self, chunk_size: int) -> int:
        """Up to the next burst: a chunk is a plain call for the burst layers."""
        return min(super().chunk_room(chunk_size),
                   *(layer.plain_room() for layer in self.leaders if layer.spec == self.spec))

    def check_chunk(self, n: int) -> None:
        """A hybrid model's chunk of ``n`` tokens (at most ``chunk_room``) once its sliding layers are full: the burst
        layers take it as a plain call (keys in slot order, query ``i`` in slot ``kv_length - n + i``), the sliding
        layers follow a ring chunk's plan."""
        if not self.is_hybrid:
            raise ValueError("a burst-eviction cache takes chunks only for a hybrid model's sliding layers; feed at "
                             f"most plain_room() = {self.plain_room()} tokens per call")
        if n > self.chunk_room(n):
            raise ValueError(f"n: a chunk must end before the next burst ({self.chunk_room(n)} tokens); got {n}")
