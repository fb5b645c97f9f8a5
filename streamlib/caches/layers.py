"""A bounded cache's layers: :class:`StreamLayer`, a layer of preallocated slots that owns its settings (a frozen
spec), its position frame and its storage; :class:`SinkLayer`, one that keeps attention sinks apart; the chunk
workspace their chunks share, and the additive mask. See ``docs/design.md``."""

from __future__ import annotations

import math

import torch
from transformers.cache_utils import CacheLayerMixin

from ..core.rotary import Rotations, rotate


class Workspace:
    """Scratch keys and values for a chunk, shared by the layers that sit on one device (layers may be spread over
    GPUs): one buffer of the chunk's keys per device, not per layer."""

    def __init__(self):
        self._buffers: dict = {}  # the keys and values by device; the biases by device and dtype

    def __call__(self, batch, heads, k_dim, v_dim, length, like: torch.Tensor):
        ws = self._buffers.get(like.device)
        if ws is None or ws[0].shape[:2] != (batch, heads) or ws[0].shape[2] < length or ws[0].dtype != like.dtype \
                or ws[0].shape[3] != k_dim:
            ws = (
                torch.empty(batch, heads, length, k_dim, dtype=like.dtype, device=like.device),
                torch.empty(batch, heads, length, v_dim, dtype=like.dtype, device=like.device),
            )
            self._buffers[like.device] = ws
        return ws[0][:, :, :length], ws[1][:, :, :length]

    def bias(self, shape, dtype: torch.dtype, device) -> torch.Tensor:
        """An empty tensor of ``shape`` for a chunk's attention bias per head, from one buffer per device and dtype
        kept for the next chunk and layer (each layer's attention is over before the next builds its bias)."""
        key = ("bias", torch.device(device), dtype)
        numel = math.prod(shape)
        flat = self._buffers.get(key)
        if flat is None or flat.numel() < numel:
            flat = self._buffers[key] = torch.empty(numel, dtype=dtype, device=device)
        return flat[:numel].view(shape)


def additive_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive attention mask of a boolean ``visible``: 0 where a query sees a key, the dtype's lowest value
    elsewhere."""
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill(~visible, torch.finfo(dtype).min)


class StreamLayer(CacheLayerMixin):
    """One layer of a bounded cache: keys and values in ``spec.slots`` slots (``budget + 1`` for the ring caches: the
    incoming token takes the extra one while the oldest is still visible to it).

    The layer owns its settings (``spec``, frozen, shared with the other layers and the chunk plans), the rotation
    tables of its cache (``rotations``) and its storage: full precision in ``keys`` and ``values``, or a ``store``
    (:class:`~streamlib.caches.quant_store.QuantizedStore`) that keeps codes and rebuilds those slots before each call. It
    reads nothing of the cache that holds it. Positions: ``position`` is the absolute stream position of the next token
    (the tokens fed so far); ``offset`` is how far the position frame has been moved back, so the model's position for
    the next token is ``position - offset`` (:meth:`get_seq_length`). A layer class writes its policy's bookkeeping in
    :meth:`place`."""

    is_compileable = False
    is_sliding = False  # masks treat it as full attention; the cache decides what is visible
    slots_follow_position = True  # which token sits in which slot depends on the stream position alone
    is_croppable = False
    n_sink = 0  # attention sinks kept apart (SinkLayer)

    def __init__(self, layer_idx: int, spec, rotations: Rotations, is_sliding: bool = False, store=None):
        super().__init__()
        self.layer_idx, self.spec, self.rotations = layer_idx, spec, rotations
        self.store = store  # None: full precision
        self.is_sliding = is_sliding  # a hybrid model's sliding layer: the model builds a sliding-window mask for it
        self.capacity = spec.slots
        self.budget = spec.budget
        self.position = 0
        self.offset = 0

    @property
    def resident(self) -> int:
        """Tokens held between steps: at most ``budget``."""
        return min(self.position, self.budget)

    def plain_room(self) -> int:
        """How many tokens the next call may bring without masks of its own: those that need no eviction."""
        return self.capacity - self.position

    def held_positions(self) -> torch.Tensor:
        """Stream positions of the tokens the next query sees besides itself, shape (rows, n)."""
        raise NotImplementedError

    def attender(self, step):
        """What runs this layer's attention in the step just stored (``step``: the step's mode), or None: the model's
        own attention."""
        return None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, step=None):
        """Store the call's keys and values and return what its queries attend over: the layer's own :meth:`place`,
        through its store when it quantizes."""
        if self.store is None:
            return self.place(key_states, value_states, step)
        return self.store.update(self, key_states, value_states, step)

    def place(self, key_states: torch.Tensor, value_states: torch.Tensor, step=None):
        raise NotImplementedError

    def chunk_plan(self, first: int, offset: int, n: int, dtype, device, workspace, rotate_queries: bool):
        """How this kind of layer takes a chunk of ``n`` tokens from stream position ``first`` once some layer is full:
        (the plan its layers follow, or None for a plain causal call; the additive mask over the keys they return)."""
        raise NotImplementedError(f"a {self.spec.name} layer takes no chunks")

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, k_dim = key_states.shape
        self.device, self.batch_size = key_states.device, batch
        self.keys, self.values = self.slot_buffers(batch, heads, k_dim, value_states.shape[-1], key_states.dtype)
        self.is_initialized = True

    def slot_buffers(self, batch: int, heads: int, k_dim: int, v_dim: int, dtype: torch.dtype):
        """The keys and values of the layer's slots, (batch, heads, capacity, dim) each (a quantized layer's are a
        scratch its store rebuilds before each call)."""
        if self.store is not None:
            return self.store.allocate(self, batch, heads, k_dim, v_dim, dtype)
        return (torch.zeros(batch, heads, self.capacity, k_dim, dtype=dtype, device=self.device),
                torch.zeros(batch, heads, self.capacity, v_dim, dtype=dtype, device=self.device))

    def slot_tensors(self) -> list[torch.Tensor]:
        """The tensors indexed by slot along dim 2: what moves when tokens change slots (burst eviction)."""
        return [self.keys, self.values] + (self.store.slot_tensors() if self.store is not None else [])

    def check_batch(self, key_states: torch.Tensor) -> None:
        if key_states.shape[0] != self.keys.shape[0]:
            raise ValueError(f"input_ids: batch size {key_states.shape[0]} does not match the cache's "
                             f"{self.keys.shape[0]}; make a new cache for a new batch")

    def get_seq_length(self) -> int:
        return self.position - self.offset

    def get_max_length(self) -> int:
        return -1  # a stream has no end

    def slot_bytes(self) -> int:
        """Key and value bytes of one slot."""
        return (self.keys[:, :, :1].numel() * self.keys.element_size()
                + self.values[:, :, :1].numel() * self.values.element_size())

    def kv_bytes(self) -> tuple[int, int]:
        """(allocated, resident) key and value bytes of this layer."""
        if self.store is not None:
            return self.store.kv_bytes(self)
        if not self.is_initialized:
            return 0, 0
        return self.slot_bytes() * self.capacity + self.extra_kv_bytes(), self.slot_bytes() * self.resident

    def extra_kv_bytes(self) -> int:
        """Key or value bytes held besides the slots."""
        return 0

    def rotated_part(self) -> torch.Tensor:
        """The keys a frame shift rotates: every slot."""
        return self.keys

    def shift_frame(self, shift: int) -> None:
        """Move every position of this layer ``shift`` back (a store keeps keys unrotated: its next rebuild rotates
        them by the new offset)."""
        if self.store is None:
            keys = self.rotated_part()
            rotate(keys, *self.rotations(-shift, self.device), out=keys)
        self.offset += shift

    def batch_tensors(self) -> list[torch.Tensor]:
        """The tensors with one row per batch entry (what a beam reorder permutes); a quantized layer's are its
        store's (its slots are rebuilt from them at every call)."""
        if self.store is not None:
            return self.store.tensors()
        return [self.keys, self.values]

    def reset(self) -> None:
        if self.keys is not None:  # a quantized layer between streamlib's calls holds no slots to zero
            super().reset()
        self.position = self.offset = 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.is_initialized:
            idx = beam_idx.to(self.device)
            for t in self.batch_tensors():
                t.copy_(t.index_select(0, idx))

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(f"a {self.spec.name} cache cannot be cropped: evicted tokens are gone")


class SinkLayer(StreamLayer):
    """A layer whose first ``n_sink`` slots hold attention sinks: the sink keys are stored once as the model first
    rotated them (``sink_keys``) and written into their slots rotated by however far the query's distance to them
    differs from the model's (``place_sinks``); the other slots are what a frame shift rotates."""

    def __init__(self, layer_idx: int, spec, rotations: Rotations, is_sliding: bool = False, store=None):
        super().__init__(layer_idx, spec, rotations, is_sliding, store)
        self.n_sink = spec.n_sink
        self.sink_keys: torch.Tensor | None = None  # the sinks as first rotated (frame offset 0)
        self.sink_delta: int | None = None  # the rotation of the sink keys now written in the buffer

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        batch, heads, _, k_dim = key_states.shape
        self.sink_keys = torch.zeros(batch, heads, self.n_sink, k_dim, dtype=key_states.dtype, device=self.device)

    def store_sinks(self, first: int, key_states: torch.Tensor) -> None:
        """Keep the keys of the stream's first ``n_sink`` tokens among ``key_states`` (tokens from ``first`` on)."""
        if first < self.n_sink:
            m = min(key_states.shape[-2], self.n_sink - first)
            self.sink_keys[:, :, first : first + m] = key_states[:, :, :m]

    def place_sinks(self, delta: int) -> None:
        """Write the sink keys, rotated by ``delta`` positions, into the buffer's sink slots."""
        if self.n_sink == 0 or delta == self.sink_delta:
            return
        sink_slots = self.keys[:, :, : self.n_sink]
        if delta == 0:
            sink_slots.copy_(self.sink_keys)
        else:
            rotate(self.sink_keys, *self.rotations(delta, self.device), out=sink_slots)
        self.sink_delta = delta

    def extra_kv_bytes(self) -> int:
        """The stored sink keys, besides the slots."""
        return self.sink_keys.numel() * self.sink_keys.element_size()

    def rotated_part(self) -> torch.Tensor:
        """A frame shift rotates the slots after the sinks; the sinks are rewritten from ``sink_keys`` at the next
        step."""
        return self.keys[:, :, self.n_sink :]

    def shift_frame(self, shift: int) -> None:
        super().shift_frame(shift)
        self.sink_delta = None

    def batch_tensors(self) -> list[torch.Tensor]:
        return super().batch_tensors() + [self.sink_keys]

    def reset(self) -> None:
        super().reset()
        if self.sink_keys is not None:
            self.sink_keys.zero_()
        self.sink_delta = None
