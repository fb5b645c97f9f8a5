"""The StreamingLLM cache: ``n_sink`` attention sinks plus a ring of recent tokens, per layer, as a transformers
``Cache``. How it stays exact and cheap (sinks stored once and rotated, the ring, chunks with their own masks, the
position frame) is in ``docs/design.md``."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..core.arch import SlidingLayers
from ..core.rotary import RotaryInfo, Rotations, rotate
from .base import StreamingCache
from .layers import SinkLayer, StreamLayer, additive_mask
from .quant import KVQuantSpec
from .quant_slots import SlotScratch
from .quant_store import QuantizedStore
from .ring import ChunkPlan, SinkWindowSpec, StaticState, ring_chunk_plan


class SinkWindowLayer(SinkLayer):
    """One layer's keys and values: ``n_sink`` sink slots, then a ring of ``window + 1`` recent slots. The step's
    mode comes with each call: ``None`` (a plain call), a :class:`ChunkPlan`, or a compiled step's
    :class:`StaticState`. ``own_masks``: the layer cannot share the model's mask (its window differs from the other
    layers', or changes along the stream), so its chunks and single tokens attend through the hand-over with masks of
    its own."""

    own_masks = False

    def get_mask_sizes(self, query_length: int, step=None) -> tuple[int, int]:
        if self.position + query_length <= self.capacity:
            return self.position + query_length, 0
        if query_length == 1:
            # every slot is in view; a sliding layer's mask compares positions, so the slots are numbered as the
            # last `capacity` positions up to the query's
            return self.capacity, (self.get_seq_length() + 1 - self.capacity if self.is_sliding else 0)
        return (step.kv_length if isinstance(step, ChunkPlan) else self.position + query_length), 0

    def slot_positions(self) -> torch.Tensor:
        """The stream position of the token in each slot, shape (1, 1, slots), -1 where empty: the sinks, then the
        ring's last ``window + 1`` tokens (the oldest about to leave)."""
        out = torch.full((1, 1, self.capacity), -1, dtype=torch.long)
        sinks = min(self.n_sink, self.position)
        out[..., :sinks] = torch.arange(sinks)
        ring = torch.arange(max(self.n_sink, self.position - self.spec.window - 1), max(self.n_sink, self.position))
        out[..., self.spec.ring_slot(ring)] = ring
        return out.to(self.device)

    def attender(self, step):
        """A chunk whose queries turn to the sinks, or that brings its own mask, runs its attention through its plan;
        a single token with a mask of its own, through the layer."""
        if isinstance(step, ChunkPlan):
            return step if step.rotate_queries or self.own_masks else None
        return self if self.own_masks else None

    def attend(self, base, module, query, key, value, attention_mask, **kwargs):
        """A plain call's queries over the slots they were given (token ``a`` in slot ``a`` while the ring fills),
        each hiding what its own window no longer reaches, and the empty slots."""
        n = query.shape[2]
        t = (self.position - n + torch.arange(n, device=self.device))[:, None]
        positions = self.slot_positions()[0, 0, : key.shape[-2]][None, :]
        visible = (positions >= 0) & (positions <= t) & (
            (positions < self.n_sink) | (positions >= t - self.spec.window_at(t)))
        return base(module, query, key, value, additive_mask(visible, query.dtype)[None, None], **kwargs)

    def plain_room(self) -> int:
        return self.spec.plain_until - self.position

    @property
    def resident(self) -> int:
        return min(self.position, self.n_sink + self.spec.window_at(self.position))

    def chunk_plan(self, first: int, offset: int, n: int, dtype, device, workspace, rotate_queries: bool):
        residual = self.store.quant.residual if self.store is not None else None
        return ring_chunk_plan(self.spec, first, offset, n, dtype, device, self.rotations.info, workspace,
                               rotate_queries, residual)

    def held_positions(self) -> torch.Tensor:
        """Stream positions of the tokens the next query sees besides itself, shape (1, n): the sinks and the last
        ``window`` tokens."""
        n_sink = self.n_sink
        sinks = torch.arange(min(n_sink, self.position))
        recent = torch.arange(max(n_sink, self.position - self.spec.window_at(self.position)), self.position)
        return torch.cat([sinks, recent])[None]

    # -- place ------------------------------------------------------------------------------------------------
    def place(self, key_states: torch.Tensor, value_states: torch.Tensor, step=None):
        if isinstance(step, StaticState):
            return self._update_static(key_states, value_states, step)
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.check_batch(key_states)
        n, first = key_states.shape[-2], self.position
        if first + n <= self.capacity and not isinstance(step, ChunkPlan):
            # Filling: no token of this call needs an eviction, token a sits in slot a, positions are original.
            self.keys[:, :, first : first + n] = key_states
            self.values[:, :, first : first + n] = value_states
            self.store_sinks(first, key_states)
            self.sink_delta = 0
            if n == 1 and first >= self.n_sink:  # a window that grows hides tokens before the ring is full
                self.place_sinks(self.spec.sink_delta(first, self.offset))
            self.position += n
            return self.keys[:, :, : first + n], self.values[:, :, : first + n]
        if n == 1 and (step is None or step.first != first):
            slot = self.spec.ring_slot(first)
            self.keys[:, :, slot] = key_states[:, :, 0]
            self.values[:, :, slot] = value_states[:, :, 0]
            self.place_sinks(self.spec.sink_delta(first, self.offset))
            self.position += 1
            return self.keys, self.values
        return self._update_chunk(key_states, value_states, step)

    def _update_static(self, key_states: torch.Tensor, value_states: torch.Tensor, state: "StaticState"):
        """One token with tensor-only bookkeeping, for a compiled step: the slot and the sink rotation come from device
        tensors, so the step reads no Python number that changes from step to step. Returns every slot; the step's
        mask hides the empty ones while the cache fills (token ``t >= n_sink`` then sits in slot ``t``, which the
        ring formula gives too)."""
        slot, cos, sin = state.slot_and_sink_tables(self.spec)
        if self.n_sink:
            # one scatter for the rotated sinks and the new key: a slice assignment here would make the compiler
            # rewrite the whole buffer every step
            slots = torch.cat([state.sink_slots, slot])
            self.keys.index_copy_(2, slots, torch.cat([rotate(self.sink_keys, cos, sin), key_states], dim=2))
        else:
            self.keys.index_copy_(2, slot, key_states)
        self.values.index_copy_(2, slot, value_states)
        return self.keys, self.values

    def _update_chunk(self, key_states: torch.Tensor, value_states: torch.Tensor, plan: ChunkPlan | None):
        spec, n_sink, n, first = self.spec, self.n_sink, key_states.shape[-2], self.position
        if plan is None or plan.first != first or plan.n != n:
            raise ValueError(
                f"input_ids: {n} tokens at stream position {first} do not fit a cache of {n_sink} sinks + "
                f"{spec.window} recent tokens in one plain call (each would need its own mask). Use "
                "streamlib.caches.generation.prefill(model, input_ids, cache) or streamlib.metrics.quality.token_nll, which chunk "
                "the input; with model.generate pass prefill_chunk_size=1; or feed at most "
                f"{max(self.capacity - first, 1)} tokens at once"
            )
        batch, heads, _, k_dim = key_states.shape
        if first < n_sink:  # a chunk that starts the stream brings its own sinks
            self.store_sinks(first, key_states)
            self.values[:, :, first:n_sink] = value_states[:, :, : n_sink - first]
            self.sink_delta = None  # the sink slots get their keys at the next step
        ws_k, ws_v = plan.workspace(batch, heads, k_dim, value_states.shape[-1], plan.kv_length, key_states)
        s, ring = plan.n_sink_keys, plan.ring_keys
        if n_sink:
            if plan.rotate_queries:
                # one copy of the sinks as first rotated; the plan's attend rotates the queries instead
                ws_k[:, :, :s] = self.sink_keys
                ws_v[:, :, :s] = self.values[:, :, :s]
            elif spec.pos_shift:
                # each query gets its own copy of the sinks, rotated to sit n_sink + window - j before it
                out = ws_k[:, :, :s].view(batch, heads, n, n_sink, k_dim)
                rotate(self.sink_keys.unsqueeze(2), *plan.tables_on(self.device), out=out)
                sink_values = self.values[:, :, :n_sink].unsqueeze(2)
                ws_v[:, :, :s].view(batch, heads, n, n_sink, -1).copy_(sink_values.expand(-1, -1, n, -1, -1))
            else:
                rotate(self.sink_keys, *plan.tables_on(self.device), out=ws_k[:, :, :s])
                ws_v[:, :, :s] = self.values[:, :, :n_sink]
        if ring:
            ws_k[:, :, s : s + ring] = self.keys[:, :, n_sink:]
            ws_v[:, :, s : s + ring] = self.values[:, :, n_sink:]
        ws_k[:, :, s + ring : s + ring + n] = key_states  # a quantized layer's store fills the block keys after them
        ws_v[:, :, s + ring : s + ring + n] = value_states
        ring_index = plan.ring_index.to(self.device)
        self.keys.index_copy_(2, ring_index, key_states[:, :, plan.ring_src_start :])
        self.values.index_copy_(2, ring_index, value_states[:, :, plan.ring_src_start :])
        self.position += n
        return ws_k, ws_v


def trained_window_layer(layer_idx: int, sliding: SlidingLayers) -> SinkWindowLayer:
    """A hybrid model's sliding layer as it was trained: a ring of the last ``window - 1`` tokens (a query sees the
    keys in ``(t - window, t]``, as transformers' sliding masks give), no sinks, whatever the policy of the full layers.
    Its keys all sit at their own positions, so position shift means nothing to it: with no sinks, distances are the
    same in both modes."""
    spec = SinkWindowSpec(0, sliding.window - 1, True)
    return SinkWindowLayer(layer_idx, spec, Rotations(sliding.rotary), is_sliding=True)


def build_layers(num_layers: int, layer_type: type, spec, rotations: Rotations, sliding: SlidingLayers | None,
                 quant: KVQuantSpec | None) -> tuple[list[StreamLayer], SlotScratch | None]:
    """A model's cache layers by kind: a hybrid model's sliding layers as they were trained
    (:func:`trained_window_layer`, full precision), every other layer a ``layer_type`` of the policy's ``spec`` (or of
    ``spec[i]`` for layer ``i``, when the policy sets each layer apart), holding a
    :class:`~streamlib.caches.quant_store.QuantizedStore` when ``quant`` is given. Returns the layers and the scratch
    their stores share."""
    scratch = SlotScratch() if quant is not None else None
    layers = [trained_window_layer(i, sliding) if sliding is not None and i in sliding.indices
              else layer_type(i, spec[i] if isinstance(spec, (list, tuple)) else spec, rotations,
                              store=QuantizedStore(quant, scratch) if quant else None)
              for i in range(num_layers)]
    return layers, scratch


class SinkWindowCache(StreamingCache):
    """StreamingLLM cache: ``n_sink`` attention sinks plus the last ``window`` tokens, per layer and kv head.

    Made by :meth:`streamlib.policies.StreamingLLM.make_cache`; use it in ``model(input_ids=..., cache=c)`` loops or
    ``model.generate(..., cache=c)``. ``rotate_queries``: chunks with position shift turn each query to the sinks (one
    copy of the sinks for all; the model's attention goes through :mod:`streamlib.caches.handover` for such a chunk, which
    streamlib's loops see to) instead of giving each query its own rotated copy of them.
    """

    starts_in_chunk = True  # a prompt longer than the cache can start the stream in one chunk (no filling call)

    def __init__(self, num_layers: int, n_sink: int, window: int, pos_shift: bool, rotary: RotaryInfo,
                 rebase_interval: int = 256, rotate_queries: bool = False, sliding: SlidingLayers | None = None,
                 quant: KVQuantSpec | None = None, specs=None):
        # ``specs``: the layers' own (a window per layer, or one that grows), in place of n_sink + window
        spec = specs or SinkWindowSpec(n_sink, window, pos_shift)
        if sliding is not None and n_sink >= sliding.window:
            raise ValueError(f"n_sink must be below the model's sliding window ({sliding.window}); got {n_sink}")
        rotations = Rotations(rotary)
        layers, scratch = build_layers(num_layers, SinkWindowLayer, spec, rotations, sliding, quant)
        kinds = {layer.spec for layer in layers if not layer.is_sliding}
        own_masks = len(kinds) > 1 or any(kind.varies for kind in kinds)
        for layer in layers:
            layer.own_masks = own_masks and not layer.is_sliding
        super().__init__(max(kinds, key=lambda kind: kind.budget) if kinds else spec, layers, rotations, rebase_interval, quant, scratch,
                         sliding.layer_types if sliding is not None else None,
                         rotate_queries=rotate_queries and n_sink > 0 and pos_shift)
        self.needs_handover = self.rotate_queries or own_masks
        # a chunk crosses blocks where each block's tokens are all still held when it is quantized (a window of at
        # least residual - 1) and one plan serves the quantized layers
        self.crosses_blocks = (quant is not None and not own_masks and quant.key_axis == "channel"
                               and all(kind.window >= quant.residual - 1 for kind in kinds))
        # and from the start, where the sinks stay in full precision (quantized, a query would need them both ways)
        self.starts_in_chunk = quant is None or (self.crosses_blocks and not quant.quantize_sinks)
        self.static_state: StaticState | None = None  # made by the first compiled decode step
        # one shape for the whole stream: a compiled decode step can run on it (a hybrid model's sliding layers with
        # their own slots and mask)
        quantized_sinks = quant is not None and quant.quantize_sinks and quant.n_sink > 0
        self.fixed_shape = not own_masks and not quantized_sinks
        if quantized_sinks:
            self.why_not_compiled = ("its sinks are quantized: once their block is, the eager rebuild turns their "
                                     "codes to the sinks' first rotation, which the compiled step does not")
        if own_masks:
            self.why_not_compiled = ("its layers' windows differ or change along the stream, so each query has a "
                                     "mask of its own")

    def default_chunk_size(self) -> int:
        """512 (:meth:`StreamingCache.default_chunk_size`); with position shift but no hand-over every query brings
        its own copy of the sinks: about the window."""
        spec = self.spec
        if spec.pos_shift and spec.n_sink and not self.rotate_queries:
            return max(16, min(spec.window, 512))
        return 512

    def chunks_before_full(self) -> bool:
        """A stream's first chunk (:attr:`starts_in_chunk`); for a quantized cache whose chunks cross blocks, any
        chunk once the sinks are in (:meth:`check_chunk`), where plain calls would stop at each block."""
        if self.position == 0 or not self.crosses_blocks:
            return super().chunks_before_full()
        return self.starts_in_chunk and self.position >= self.spec.n_sink

    def ready_for_compiled_step(self) -> bool:
        """Whether the next step can be a compiled one: the buffers exist (a prompt was fed) and hold the sinks."""
        return self.layers[0].is_initialized and self.position >= self.spec.n_sink

    # -- the two modes of a step, each for the length of a `with` block -----------------------------------------
    def check_chunk(self, n: int) -> None:
        """A chunk feeds the next ``n`` tokens of a full cache, or the first ``n`` of the stream (more than fit), in
        one call (:meth:`StreamingCache.chunk`, each layer following :func:`ring_chunk_plan`).

        Keys of the chunk are laid out ``[sink block | ring of window+1 slots | chunk]``. Query ``i`` (absolute
        ``t = first + i``) sees its sinks, the ring tokens ``a`` with ``t - a <= window`` and the chunk tokens at
        most ``window`` before it, which is exactly what it would see fed token by token. With position shift the
        sinks sit at the same distance from every query but at a different position: with ``rotate_queries`` (the
        model's attention goes through :mod:`streamlib.caches.handover`) one copy of the sinks serves all and each query is
        rotated to the sinks' distance (tables ``(n, rotary_ndims)``); otherwise each query gets its own rotated copy
        of the sinks (tables ``(n, 1, rotary_ndims)``, ``n * n_sink`` sink keys).

        A chunk that starts the stream (an empty cache) has no ring block: its own first ``n_sink`` tokens fill the
        sink block (and are hidden in the chunk block, so no query counts them twice), and its queries up to
        ``budget`` see their sinks where they are, as a filling cache shows them. Its prompt then costs one forward,
        not a filling call and a chunk (each reads every weight once).
        """
        empty = self.position == 0
        if not (empty or self.plain_room() <= 0 or self.chunks_before_full()):
            raise ValueError(f"a chunk needs an empty or a full cache ({self.spec.slots} tokens seen); it has "
                             f"{self.position}")
        if empty and n <= self.plain_room():
            raise ValueError(f"n: a chunk that starts the stream must be longer than the cache "
                             f"({self.plain_room()} slots); {n} tokens fit one plain call")

    def before_compiled_step(self) -> None:
        """On the host before a compiled step (after a re-base): each quantized layer's slots at hand and its current
        block's keys in the frame (:meth:`QuantizedStore.follow_frame`)."""
        for layer in self.layers:
            if layer.store is not None:
                if layer.keys is None:
                    layer.keys, layer.values = layer.store.slots(layer)
                layer.store.follow_frame(layer)

    def after_compiled_step(self) -> None:
        """On the host after a compiled step: the block that step's token ended quantized, as an eager call would."""
        if self.quant is not None and self.position % self.quant.residual == 0:
            for layer in self.layers:
                if layer.store is not None:
                    layer.store.quantize_block(layer, self.position // self.quant.residual - 1)

    def release_scratch(self) -> None:
        """As :meth:`StreamingCache.release_scratch`, until a compiled step has run: from then on the scratch stays
        where the compiled graph (a CUDA graph: at fixed addresses) took it."""
        if self.static_state is None:
            super().release_scratch()

    @contextmanager
    def compiled_step(self, state: "StaticState"):
        """Inside the block the layers take one token with the device-side bookkeeping of ``state``
        (:mod:`streamlib.caches.compiled`)."""
        self.step = state
        try:
            yield
        finally:
            self.step = None
