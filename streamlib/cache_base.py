"""What every policy's cache shares. :class:`PolicyCache` is the one interface the loops use (feed tokens, say what
is held, count the bytes), Dense's and Recompute's included; :class:`StreamLayer` is a layer of ``slots``
preallocated slots that owns its settings (a frozen spec) and its position frame; :class:`StreamingCache` counts the
stream, re-bases the frame and feeds a stream in plain calls and chunks. See ``docs/design.md``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .handover import handover
from .rotary import Rotations, RotaryInfo, rotate


class PolicyCache:
    """What a policy's cache offers the loops of :mod:`streamlib.generation`, whatever it keeps.

    ``feed`` takes tokens and yields ``(start, logits)`` exactly as feeding them one at a time would;
    ``held_positions(layer_idx)`` says which stream positions the next query sees; ``kv_bytes`` counts the keys and
    values held; ``fixed_shape`` says whether a compiled decode step can run on it (:mod:`streamlib.compiled`).
    """

    fixed_shape = False
    why_not_compiled = "its shape changes"
    needs_handover = False  # whether the model's attention must go through streamlib.handover for it
    num_layers: int  # the model's layers, each with its own held positions

    def attender(self, layer_idx: int):
        """What runs layer ``layer_idx``'s attention in the step under way instead of the model's own (inside
        :func:`streamlib.handover.handover`), or None."""
        return None

    def feed(self, model, input_ids: torch.Tensor, chunk_size: int | None = None,
             all_logits: bool = True) -> Iterator[tuple[int, torch.Tensor]]:
        raise NotImplementedError

    def held_positions(self, layer_idx: int = 0) -> torch.Tensor:
        """Stream positions of the tokens layer ``layer_idx`` holds for the next query, shape (rows, n): one row,
        or one per kv head where heads keep different tokens (H2O)."""
        raise NotImplementedError

    def held_by_layer(self) -> list[torch.Tensor]:
        return [self.held_positions(i) for i in range(self.num_layers)]

    def kv_bytes(self) -> tuple[int, int]:
        """(bytes allocated for keys and values, bytes holding the tokens held now), over all layers."""
        raise NotImplementedError

    def ready_for_compiled_step(self) -> bool:
        return False


def as_cache(model, policy_or_cache, compile: bool = False, max_length: int | None = None) -> PolicyCache:
    """The cache a loop runs on: ``policy_or_cache`` itself when it is a cache, else the policy's cache. With
    ``compile=True``, the cache of the policy's compiled form (:meth:`~streamlib.policies.PolicyBase.compiled_form`:
    Dense becomes a preallocated cache of ``max_length`` slots)."""
    if isinstance(policy_or_cache, PolicyCache):
        return policy_or_cache
    policy = policy_or_cache.compiled_form(max_length) if compile else policy_or_cache
    return policy.make_cache(model)


def forward(model, cache, input_ids: torch.Tensor, all_logits: bool, **extra) -> torch.Tensor:
    """One call of the model on ``cache``: the logits of every token, or of the last one only. The attention goes
    through the hand-over for the call when the cache needs it, and the model is left as it was."""
    with handover(model, cache):
        return model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=0 if all_logits else 1,
                     **extra).logits


class Workspace:
    """Scratch keys and values for a chunk, shared by the layers that sit on one device (layers may be spread over
    GPUs): one buffer of the chunk's keys per device, not per layer."""

    def __init__(self):
        self._buffers: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

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


def additive_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive attention mask of a boolean ``visible``: 0 where a query sees a key, the dtype's lowest value
    elsewhere."""
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill(~visible, torch.finfo(dtype).min)


class StreamLayer(CacheLayerMixin):
    """One layer of a bounded cache: keys and values in ``spec.slots`` slots (``budget + 1`` for the ring caches: the
    incoming token takes the extra one while the oldest is still visible to it).

    The layer owns its settings (``spec``, frozen, shared with the other layers and the chunk plans), the rotation
    tables of its cache (``rotations``) and its storage: full precision in ``keys`` and ``values``, or a ``store``
    (:class:`~streamlib.quant_store.QuantizedStore`) that keeps codes and rebuilds those slots before each call. It
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
        """The tensors with one row per batch entry (what a beam reorder permutes)."""
        return [self.keys, self.values] + (self.store.tensors() if self.store is not None else [])

    def reset(self) -> None:
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


class StreamingCache(PolicyCache, Cache):
    """A bounded cache: its spec (budget, slots, the policy's settings), how far the stream has gone, re-basing of
    the position frame, the bytes it holds, and the feeding loop.

    ``chunkable``: whether :meth:`chunk` can feed several tokens past a full cache in one call; when it cannot, the
    loop feeds one token at a time once the cache is full. ``starts_in_chunk``: whether a prompt longer than the cache
    may start the stream in one chunk. The layers get the step's mode from :meth:`update` (``self.step``: ``None`` for
    a plain call, a chunk plan, a compiled step's state), never by reading the cache."""

    chunkable = True
    starts_in_chunk = False

    def __init__(self, spec, layers: list[StreamLayer], rotations: Rotations, rebase_interval: int = 256,
                 quant=None, scratch=None, layer_types: tuple | None = None, rotate_queries: bool = False):
        self.spec = spec  # the policy's settings (a hybrid model's sliding layers keep their own window)
        self.quant = quant  # a KVQuantSpec when the policy's layers store codes (streamlib.kv_quant), else None
        self.scratch = scratch  # their shared full-precision slots
        self.layer_types = layer_types  # a hybrid model's names for its kinds of layer (its masks go by them)
        self.rotate_queries = rotate_queries  # chunks turn each query to the sinks (through the hand-over)
        self._workspace = Workspace()
        if quant is not None:
            self.starts_in_chunk = False  # every call stays inside one block of the residual
            self.fixed_shape = False
            self.why_not_compiled = "its keys and values are rebuilt from codes at every step"
        self.rotations = rotations
        self.rebase_interval = rebase_interval
        self.step = None  # the mode of the call in progress, handed to each layer's update
        self._plans: dict | None = None  # a hybrid model's chunk: one plan per kind of layer (its spec), or None
        # one layer of each kind answers for all of its kind (a hybrid model has two)
        self.leaders = list({layer.spec: layer for layer in reversed(layers)}.values())
        # the frame is moved back to the largest budget, so that every layer's keys keep positions >= 0
        self.frame_floor = max(layer.budget for layer in self.leaders)
        super().__init__(layers=layers)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def rotary(self) -> RotaryInfo:
        return self.rotations.info

    @property
    def budget(self) -> int:
        return self.spec.budget

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def position(self) -> int:
        """Absolute stream position of the next token: the tokens fed so far."""
        return self.layers[0].position

    @property
    def is_full(self) -> bool:
        """Every layer holds its budget and the incoming token: the next token evicts in every layer."""
        return self.position >= self.frame_floor + 1

    @property
    def is_hybrid(self) -> bool:
        return len(self.leaders) > 1

    def resident_tokens(self) -> int:
        return self.layers[0].resident

    def _step_of(self, layer) -> object:
        return self._plans[layer.spec] if self._plans else self.step

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        layer = self.layers[layer_idx]
        return layer.update(key_states, value_states, self._step_of(layer))

    def attender(self, layer_idx: int):
        layer = self.layers[layer_idx]
        return layer.attender(self._step_of(layer))

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        layer = self.layers[layer_idx]
        return layer.get_mask_sizes(query_length, self._step_of(layer))

    def plain_room(self) -> int:
        """How many tokens the next call may hold without masks of its own: those that need no eviction in any layer
        (the cache is filling), and no more than the rest of the residual's block for a quantized cache. Zero or less
        once a layer is full."""
        room = min(layer.plain_room() for layer in self.leaders)
        return room if self.quant is None else min(room, self.quant.room(self.position))

    def chunk_room(self, chunk_size: int) -> int:
        """How many tokens the next chunk may hold: ``chunk_size``, unless a kind of layer takes less at once (a
        quantized cache: the rest of the residual's block)."""
        return chunk_size if self.quant is None else min(chunk_size, self.quant.room(self.position))

    def held_positions(self, layer_idx: int = 0) -> torch.Tensor:
        return self.layers[layer_idx].held_positions()

    def default_chunk_size(self) -> int:
        """Tokens per forward in chunked mode: 512, where the projections run near their best and the masked-out part
        of each chunk's attention costs little beside them (a 2048-token prompt into StreamingLLM 4+252 then costs
        what a Dense prefill costs, ``bench/bench_decode.py``)."""
        return 512

    def maybe_rebase(self) -> bool:
        """Shift the position frame back to ``budget`` (the largest of a hybrid model's) once it has grown
        ``rebase_interval`` past it: every layer rotates its keys back by the same amount, which RoPE's relative
        scores do not see."""
        frame = self.layers[0].get_seq_length()
        if not self.is_full or frame - self.frame_floor < self.rebase_interval:
            return False
        for layer in self.layers:
            layer.shift_frame(frame - self.frame_floor)
        self.rotations.clear()
        return True

    def kv_bytes(self) -> tuple[int, int]:
        allocated = resident = 0
        for layer in self.layers:
            a, r = layer.kv_bytes()
            allocated, resident = allocated + a, resident + r
        if self.scratch is not None:  # a quantized cache's full-precision slots, one layer's worth for all
            allocated += self.scratch.nbytes()
        return allocated, resident

    def check_chunk(self, n: int) -> None:
        """Raise when the cache cannot take a chunk of ``n`` tokens now."""

    @contextmanager
    def chunk(self, n: int, dtype: torch.dtype, device):
        """Feed the next ``n`` tokens in one call with masks of the cache's own: yields the ``position_ids`` and the
        4D additive attention mask to pass to the model (a dict by layer type for a hybrid model, whose forward takes
        one mask per kind of layer), and inside the block each layer follows its kind's plan
        (:meth:`StreamLayer.chunk_plan`)."""
        self.check_chunk(n)
        first, offset = self.layers[0].position, self.layers[0].offset
        plans, masks = {}, {}
        for leader in self.leaders:
            plan, mask = leader.chunk_plan(first, offset, n, dtype, device, self._workspace, self.rotate_queries)
            plans[leader.spec] = plan
            masks[leader.spec] = mask[None, None].to(device)
        if self.is_hybrid:
            mask = {self.layer_types[leader.layer_idx]: masks[leader.spec] for leader in self.leaders}
            self._plans = plans
        else:
            mask = masks[self.spec]
            self.step = plans[self.spec]
        try:
            yield (first + torch.arange(n) - offset)[None].to(device), mask
        finally:
            self.step = self._plans = None
        for plan in plans.values():
            if plan is not None:
                plan.finish()

    def feed(self, model, input_ids: torch.Tensor, chunk_size: int | None = None,
             all_logits: bool = True) -> Iterator[tuple[int, torch.Tensor]]:
        """Exactly the result of feeding one token at a time. ``chunk_size=1`` *is* one token at a time. Otherwise the
        cache is first filled with one plain call (no token needs an eviction yet), then each chunk gets its own
        positions and mask inside ``with self.chunk(...)``; a cache that ``starts_in_chunk`` takes a stream longer
        than itself in a chunk from the start instead, with no filling call. A cache that is not ``chunkable`` takes
        one token per call once full."""
        if chunk_size is None:
            chunk_size = self.default_chunk_size()
        total, start = input_ids.shape[1], 0
        while start < total:
            self.maybe_rebase()
            room = self.plain_room()
            first_chunk = self.position == 0 and self.starts_in_chunk and min(chunk_size, total) > room
            chunked = False
            if room > 0 and not first_chunk:  # filling: a plain causal call is exact
                n = min(room, chunk_size, total - start)
            elif chunk_size == 1 or total - start == 1 or not self.chunkable:
                n = 1
            else:  # past a full cache: a chunk with its own positions and mask
                n, chunked = min(self.chunk_room(chunk_size), total - start), True
            ids = input_ids[:, start : start + n]
            if chunked:
                with self.chunk(n, model.dtype, input_ids.device) as (position_ids, mask):
                    logits = forward(model, self, ids, all_logits, position_ids=position_ids, attention_mask=mask)
            else:
                logits = forward(model, self, ids, all_logits)
            yield start, logits
            start += n
