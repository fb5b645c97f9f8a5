"""What the bounded caches share: a layer of ``budget + 1`` preallocated slots, and a cache that counts the stream,
re-bases its position frame and reports the bytes it holds. See ``docs/design.md`` for the position frame."""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .rotary import RotaryInfo, rotate, rotation_tables


class StreamLayer(CacheLayerMixin):
    """One layer of a bounded cache: keys and values in ``budget + 1`` slots (the incoming token takes the extra one
    while the oldest is still visible to it).

    Positions: ``position`` is the absolute stream position of the next token (the tokens fed so far); ``offset`` is
    how far the position frame has been moved back, so the model's position for the next token is
    ``position - offset`` (:meth:`get_seq_length`)."""

    is_compileable = False
    is_sliding = False  # masks treat it as full attention; the cache decides what is visible
    is_croppable = False

    def __init__(self, owner: "StreamingCache", layer_idx: int):
        super().__init__()
        self.owner, self.layer_idx = owner, layer_idx
        self.position = 0
        self.offset = 0

    @property
    def capacity(self) -> int:
        return self.owner.budget + 1

    @property
    def resident(self) -> int:
        """Tokens held between steps: at most ``budget``."""
        return min(self.position, self.owner.budget)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, k_dim = key_states.shape
        self.device, self.batch_size = key_states.device, batch
        self.keys = torch.zeros(batch, heads, self.capacity, k_dim, dtype=key_states.dtype, device=self.device)
        self.values = torch.zeros(batch, heads, self.capacity, value_states.shape[-1], dtype=value_states.dtype,
                                  device=self.device)
        self.is_initialized = True

    def check_batch(self, key_states: torch.Tensor) -> None:
        if key_states.shape[0] != self.keys.shape[0]:
            raise ValueError(f"input_ids: batch size {key_states.shape[0]} does not match the cache's "
                             f"{self.keys.shape[0]}; make a new cache for a new batch")

    def get_seq_length(self) -> int:
        return self.position - self.offset

    def get_max_length(self) -> int:
        return -1  # a stream has no end

    def extra_kv_bytes(self) -> int:
        """Key or value bytes held besides the slots."""
        return 0

    def rotated_part(self) -> torch.Tensor:
        """The keys a frame shift rotates: every slot."""
        return self.keys

    def shift_frame(self, shift: int) -> None:
        """Move every position of this layer ``shift`` back."""
        keys = self.rotated_part()
        rotate(keys, *self.owner.rotation_tables(-shift, self.device), out=keys)
        self.offset += shift

    def batch_tensors(self) -> list[torch.Tensor]:
        """The tensors with one row per batch entry (what a beam reorder permutes)."""
        return [self.keys, self.values]

    def reset(self) -> None:
        super().reset()
        self.position = self.offset = 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.is_initialized:
            idx = beam_idx.to(self.device)
            for t in self.batch_tensors():
                t.copy_(t.index_select(0, idx))

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(f"a {self.owner.name} cache cannot be cropped: evicted tokens are gone")


class SinkLayer(StreamLayer):
    """A layer whose first ``n_sink`` slots hold attention sinks: the sink keys are stored once as the model first
    rotated them (``sink_keys``) and written into their slots rotated by however far the query's distance to them
    differs from the model's (``place_sinks``); the other slots are what a frame shift rotates."""

    def __init__(self, owner: "StreamingCache", layer_idx: int):
        super().__init__(owner, layer_idx)
        self.sink_keys: torch.Tensor | None = None  # the sinks as first rotated (frame offset 0)
        self._sink_delta: int | None = None  # the rotation of the sink keys now written in the buffer

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        batch, heads, _, k_dim = key_states.shape
        self.sink_keys = torch.zeros(batch, heads, self.owner.n_sink, k_dim, dtype=key_states.dtype, device=self.device)

    def store_sinks(self, first: int, key_states: torch.Tensor) -> None:
        """Keep the keys of the stream's first ``n_sink`` tokens among ``key_states`` (tokens from ``first`` on)."""
        if first < self.owner.n_sink:
            m = min(key_states.shape[-2], self.owner.n_sink - first)
            self.sink_keys[:, :, first : first + m] = key_states[:, :, :m]

    def place_sinks(self, delta: int) -> None:
        """Write the sink keys, rotated by ``delta`` positions, into the buffer's sink slots."""
        if self.owner.n_sink == 0 or delta == self._sink_delta:
            return
        sink_slots = self.keys[:, :, : self.owner.n_sink]
        if delta == 0:
            sink_slots.copy_(self.sink_keys)
        else:
            rotate(self.sink_keys, *self.owner.rotation_tables(delta, self.device), out=sink_slots)
        self._sink_delta = delta

    def extra_kv_bytes(self) -> int:
        """The stored sink keys, besides the slots."""
        return self.sink_keys.numel() * self.sink_keys.element_size()

    def rotated_part(self) -> torch.Tensor:
        """A frame shift rotates the slots after the sinks; the sinks are rewritten from ``sink_keys`` at the next
        step."""
        return self.keys[:, :, self.owner.n_sink :]

    def shift_frame(self, shift: int) -> None:
        super().shift_frame(shift)
        self._sink_delta = None

    def batch_tensors(self) -> list[torch.Tensor]:
        return [self.keys, self.values, self.sink_keys]

    def reset(self) -> None:
        super().reset()
        if self.sink_keys is not None:
            self.sink_keys.zero_()
        self._sink_delta = None


class StreamingCache(Cache):
    """A bounded cache: its budget, how far the stream has gone, re-basing of the position frame and the bytes it
    holds. ``chunkable``: whether :meth:`chunk` can feed several tokens past a full cache in one call; when it
    cannot, the loops feed one token at a time once the cache is full."""

    name = "streaming"
    chunkable = True

    def __init__(self, layers: list[StreamLayer], rotary: RotaryInfo, rebase_interval: int = 256):
        self.rotary = rotary
        self.rebase_interval = rebase_interval
        self._rotations: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
        super().__init__(layers=layers)

    @property
    def budget(self) -> int:
        raise NotImplementedError

    @property
    def position(self) -> int:
        """Absolute stream position of the next token: the tokens fed so far."""
        return self.layers[0].position

    @property
    def is_full(self) -> bool:
        return self.position >= self.budget + 1

    def resident_tokens(self) -> int:
        return self.layers[0].resident

    def plain_room(self) -> int:
        """How many tokens the next call may hold without masks of its own: those that need no eviction (the cache
        is filling). Zero once the cache is full."""
        return self.budget + 1 - self.position

    def rotation_tables(self, delta: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin that rotate keys by ``delta`` positions, kept for the recent deltas (one per step)."""
        key = (delta, torch.device(device))
        if key not in self._rotations:
            if len(self._rotations) > 64:
                self._rotations.clear()
            self._rotations[key] = rotation_tables(torch.tensor(float(delta)), self.rotary, device)
        return self._rotations[key]

    def maybe_rebase(self) -> bool:
        """Shift the position frame back to ``budget`` once it has grown ``rebase_interval`` past it: every layer
        rotates its keys back by the same amount, which RoPE's relative scores do not see."""
        frame = self.layers[0].get_seq_length()
        if not self.is_full or frame - self.budget < self.rebase_interval:
            return False
        for layer in self.layers:
            layer.shift_frame(frame - self.budget)
        self._rotations.clear()
        return True

    def kv_bytes(self) -> tuple[int, int]:
        """(bytes allocated for keys and values, bytes holding resident tokens) over all layers."""
        allocated = resident = 0
        for layer in self.layers:
            if layer.is_initialized:
                per_slot = (layer.keys[:, :, :1].numel() * layer.keys.element_size()
                            + layer.values[:, :, :1].numel() * layer.values.element_size())
                allocated += per_slot * layer.capacity + layer.extra_kv_bytes()
                resident += per_slot * layer.resident
        return allocated, resident
