"""The burst-eviction cache (llama.cpp's context shift): sinks plus recent tokens in ``capacity`` slots; when an
incoming token would not fit, the oldest ``discard`` tokens after the sinks leave at once and the rest move down.
Between bursts tokens are appended, so a whole stretch between two bursts is one plain causal call."""

from __future__ import annotations

import torch

from .cache_base import SinkLayer, StreamingCache
from .rotary import RotaryInfo


class BurstLayer(SinkLayer):
    """One layer: ``n_sink`` sink slots, then the recent tokens in stream order; ``held`` slots are in use."""

    def __init__(self, owner: "BurstCache", layer_idx: int):
        super().__init__(owner, layer_idx)
        self.held = 0

    @property
    def capacity(self) -> int:
        return self.owner.capacity

    @property
    def resident(self) -> int:
        return self.held

    def held_after_burst(self, n: int) -> int:
        """The slots in use once the cache has made room for ``n`` incoming tokens."""
        return self.held - self.owner.discard if self.held + n > self.capacity else self.held

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        # keys in slot order; the offset makes the model's causal mask compare slots: query i sits in slot held + i
        held = self.held_after_burst(query_length)
        return held + query_length, self.get_seq_length() - held

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        owner = self.owner
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.check_batch(key_states)
        n, first = key_states.shape[-2], self.position
        if self.held + n > self.capacity:
            if self.held < self.capacity or n > owner.discard:
                raise ValueError(
                    f"input_ids: {n} tokens at stream position {first} cross a burst of a {owner.capacity}-slot cache "
                    f"holding {self.held}; feed at most {owner.plain_room_of(self.held)} tokens at once (streamlib's "
                    "prefill and token_nll do), or pass prefill_chunk_size=1 to model.generate")
            self._burst()
        held = self.held
        self.keys[:, :, held : held + n] = key_states
        self.values[:, :, held : held + n] = value_states
        self.store_sinks(first, key_states)
        self.held += n
        self.position += n
        self.place_sinks(owner.sink_delta(self.position - self.held, self.offset))
        return self.keys[:, :, : self.held], self.values[:, :, : self.held]

    def _burst(self) -> None:
        """The oldest ``discard`` tokens after the sinks leave; the rest move down, as the model rotated them (their
        distances to every later query are unchanged; only the sinks' change, and place_sinks sees to that)."""
        s, d, held = self.owner.n_sink, self.owner.discard, self.held
        for buffer in (self.keys, self.values):
            buffer[:, :, s : held - d] = buffer[:, :, s + d : held].clone()
        self.held -= d


class BurstCache(StreamingCache):
    """Burst eviction: ``n_sink`` sinks, at most ``capacity`` tokens in view (the incoming one included), ``discard``
    tokens evicted at once when it is full. Made by :meth:`streamlib.policies.BurstEviction.make_cache`."""

    name = "burst-eviction"
    chunkable = False  # a chunk never needs masks of its own: plain_room keeps it between two bursts

    def __init__(self, num_layers: int, n_sink: int, capacity: int, discard: int, pos_shift: bool,
                 rotary: RotaryInfo, rebase_interval: int = 256):
        self.n_sink, self.capacity, self.discard, self.pos_shift = n_sink, capacity, discard, pos_shift
        super().__init__([BurstLayer(self, i) for i in range(num_layers)], rotary, rebase_interval)

    @property
    def budget(self) -> int:
        """The most tokens held between steps."""
        return self.capacity

    def sink_delta(self, evicted: int, offset: int) -> int:
        """How far the stored sinks must rotate once ``evicted`` tokens have left: with position shift the query sits
        at its slot, so the sinks come ``evicted`` positions closer; without it they keep their positions."""
        return (evicted if self.pos_shift else 0) - offset

    def held_positions(self, layer_idx: int = 0) -> torch.Tensor:
        """Stream positions of the tokens held, shape (1, n): the sinks, then the recent tokens in stream order."""
        layer = self.layers[layer_idx]
        sinks = min(self.n_sink, layer.held)
        recent = torch.arange(layer.position - (layer.held - sinks), layer.position)
        return torch.cat([torch.arange(sinks), recent])[None]

    def plain_room_of(self, held: int) -> int:
        return self.capacity - held if held < self.capacity else self.discard

    def plain_room(self) -> int:
        """Up to the next burst: the free slots, or the ``discard`` slots a full cache is about to free."""
        return self.plain_room_of(self.layers[0].held)
