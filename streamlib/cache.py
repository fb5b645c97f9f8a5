"""The StreamingLLM cache: ``n_sink`` attention sinks plus a ring of recent tokens, per layer, as a transformers
``Cache``. How it stays exact and cheap (sinks stored once and rotated, the ring, chunks with their own masks, the
position frame) is in ``docs/design.md``."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch

from .arch import SlidingLayers
from .cache_base import SinkLayer, StreamingCache, StreamLayer, Workspace, additive_mask
from .handover import sink_rotated_attention
from .kv_quant import KVQuantSpec
from .quant_store import QuantizedStore, SlotScratch
from .rotary import Rotations, RotaryInfo, angle_tables, rotate, rotation_tables


@dataclass(frozen=True)
class SinkWindowSpec:
    """A StreamingLLM cache's settings, and the formulas every part of it (layers, chunk plans, the compiled step)
    takes its slots and rotations from. ``t`` may be a stream position or a tensor of them."""

    n_sink: int
    window: int
    pos_shift: bool

    name: ClassVar[str] = "StreamingLLM"

    @property
    def budget(self) -> int:
        """Tokens kept between steps: ``n_sink + window``."""
        return self.n_sink + self.window

    @property
    def slots(self) -> int:
        """Slots per layer: the sinks and a ring of ``window + 1`` (the incoming token takes the extra one)."""
        return self.budget + 1

    def ring_slot(self, t):
        """The slot of token ``t >= n_sink``: the ring after the sinks, in turn. While the cache fills it is ``t``."""
        return self.n_sink + (t - self.n_sink) % (self.window + 1)

    def sink_delta(self, t, offset):
        """How far the stored sinks (keys as the model rotated them at positions ``0..n_sink-1``) must rotate for the
        query at absolute position ``t`` in a frame moved back by ``offset``. With position shift the query sits at
        slot ``budget`` once the cache is full, so the sinks come ``t - budget`` positions closer; without it they
        keep their positions."""
        over = t - self.budget
        if not self.pos_shift:
            return 0 * over - offset
        return (over.clamp(min=0) if torch.is_tensor(over) else max(over, 0)) - offset


@dataclass
class ChunkPlan:
    """Where the keys of a chunk fed into a full cache go, and what each of its queries sees
    (:meth:`SinkWindowCache.chunk`). Every layer follows the same plan; with ``rotate_queries`` the plan also runs
    their attention (:meth:`attend`, through :mod:`streamlib.handover`)."""

    first: int  # absolute stream position of the chunk's first token
    n: int  # chunk length
    n_sink: int
    n_sink_keys: int  # keys in the sink block of the workspace
    ring_keys: int  # keys in the ring block: window + 1, or 0 for a chunk that starts the stream
    kv_length: int  # keys returned for the chunk
    cos: torch.Tensor  # rotation tables for the sinks or the queries (see SinkWindowCache.chunk)
    sin: torch.Tensor
    ring_index: torch.Tensor  # ring slots that receive the chunk's last tokens
    ring_src_start: int  # first chunk token that is written to the ring
    workspace: Workspace
    rotate_queries: bool = False  # position shift through the hand-over: rotate each query, one copy of the sinks
    plain_queries: int = 0  # leading queries that see every chunk token before them, sinks unrotated (a first chunk)
    attended: bool = False  # whether attend ran: the model's attention went through the hand-over
    _copies: dict | None = None  # the tables on each other device (layers spread over GPUs)

    def tables_on(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        device = torch.device(device)
        if self.cos.device == device:
            return self.cos, self.sin
        if self._copies is None:
            self._copies = {}
        if device not in self._copies:
            self._copies[device] = (self.cos.to(device), self.sin.to(device))
        return self._copies[device]

    def finish(self) -> None:
        """After the chunk's call: a plan that turns the queries must have run the attention."""
        if self.rotate_queries and not self.attended:
            raise RuntimeError("model: its attention did not go through streamlib's hand-over, which this chunk "
                               "needs (its sinks were not turned): call the model inside "
                               "`with streamlib.handover.handover(model, cache):`, as streamlib's loops do")

    def attend(self, base, module, query, key, value, attention_mask, **kwargs):
        """The chunk's attention with one copy of the sinks (:func:`streamlib.handover.sink_rotated_attention`)."""
        self.attended = True
        cos, sin = self.tables_on(query.device)
        return sink_rotated_attention(base, module, query, key, value, attention_mask, n_sink=self.n_sink,
                                      cos=cos, sin=sin, scaling=kwargs.get("scaling", module.scaling),
                                      plain_queries=self.plain_queries)


class SinkWindowLayer(SinkLayer):
    """One layer's keys and values: ``n_sink`` sink slots, then a ring of ``window + 1`` recent slots. The step's
    mode comes with each call: ``None`` (a plain call), a :class:`ChunkPlan`, or a compiled step's
    :class:`StaticState`."""

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
        """A chunk whose queries turn to the sinks runs its attention through its plan."""
        return step if isinstance(step, ChunkPlan) and step.rotate_queries else None

    def chunk_plan(self, first: int, offset: int, n: int, dtype, device, workspace, rotate_queries: bool):
        return ring_chunk_plan(self.spec, first, offset, n, dtype, device, self.rotations.info, workspace,
                               rotate_queries)

    def held_positions(self) -> torch.Tensor:
        """Stream positions of the tokens the next query sees besides itself, shape (1, n): the sinks and the last
        ``window`` tokens."""
        n_sink = self.n_sink
        sinks = torch.arange(min(n_sink, self.position))
        return torch.cat([sinks, torch.arange(max(n_sink, self.position - self.spec.window), self.position)])[None]

    # -- place ------------------------------------------------------------------------------------------------
    def place(self, key_states: torch.Tensor, value_states: torch.Tensor, step=None):
        if isinstance(step, StaticState):
            return self._update_static(key_states, value_states, step)
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.check_batch(key_states)
        n, first = key_states.shape[-2], self.position
        if first + n <= self.capacity:
            # Filling: no token of this call needs an eviction, token a sits in slot a, positions are original.
            self.keys[:, :, first : first + n] = key_states
            self.values[:, :, first : first + n] = value_states
            self.store_sinks(first, key_states)
            self.sink_delta = 0
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
        slot, cos, sin = state.slot_and_sink_tables()
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
                "streamlib.generation.prefill(model, input_ids, cache) or streamlib.quality.token_nll, which chunk "
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
        ws_k[:, :, s + ring :] = key_states
        ws_v[:, :, s + ring :] = value_states
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
    (:func:`trained_window_layer`, full precision), every other layer a ``layer_type`` of the policy's ``spec``,
    holding a :class:`~streamlib.quant_store.QuantizedStore` when ``quant`` is given. Returns the layers and the
    scratch their stores share."""
    scratch = SlotScratch() if quant is not None else None
    layers = [trained_window_layer(i, sliding) if sliding is not None and i in sliding.indices
              else layer_type(i, spec, rotations, store=QuantizedStore(quant, scratch) if quant else None)
              for i in range(num_layers)]
    return layers, scratch


def ring_chunk_plan(spec: SinkWindowSpec, first: int, offset: int, n: int, dtype: torch.dtype, device,
                    rotary: RotaryInfo, workspace: Workspace,
                    rotate_queries: bool = False) -> tuple[ChunkPlan | None, torch.Tensor]:
    """The plan and the additive mask (n, keys) of a chunk of ``n`` tokens from stream position ``first`` for the
    sink-and-ring layers of ``spec`` (see :meth:`SinkWindowCache.chunk`). Their ring may be still filling (a hybrid
    model's other layers are full): its empty slots are hidden, and a chunk that fits what is left of it is a plain
    causal call for these layers (no plan to follow)."""
    empty, ring = first == 0, spec.window + 1
    t = first + torch.arange(n)
    if first + n <= spec.slots:
        return None, additive_mask(torch.arange(first + n)[None, :] <= t[:, None], dtype)
    if empty:
        ring_visible = torch.zeros(n, 0, dtype=torch.bool)
    else:
        ring_tokens = torch.arange(max(spec.n_sink, first - ring), first)
        token_in_slot = torch.full((ring,), -1, dtype=torch.long)  # -1: an empty slot
        token_in_slot[spec.ring_slot(ring_tokens) - spec.n_sink] = ring_tokens
        ring_visible = (token_in_slot[None, :] >= 0) & ((t[:, None] - token_in_slot[None, :]) <= spec.window)
    lag = t[:, None] - t[None, :]
    # the sinks are seen through the sink block only
    chunk_visible = (lag >= 0) & (lag <= spec.window) & (t[None, :] >= spec.n_sink)
    sink_seen = torch.arange(spec.n_sink)[None, :] <= t[:, None]  # all of them once the stream is past them
    rotate_queries = rotate_queries and spec.n_sink > 0 and spec.pos_shift
    if rotate_queries:
        sink_visible = sink_seen
        # each query turned the other way to where it sees the sinks from: slot n_sink + window once full
        cos, sin = rotation_tables(-spec.sink_delta(t, offset), rotary, device)
    elif spec.n_sink and spec.pos_shift:
        sink_visible = torch.eye(n, dtype=torch.bool).repeat_interleave(spec.n_sink, dim=1) \
            & sink_seen.repeat(1, n)
        cos, sin = rotation_tables(spec.sink_delta(t, offset), rotary, device)
        cos, sin = cos[:, None, :], sin[:, None, :]
    else:
        sink_visible = sink_seen
        cos, sin = rotation_tables(torch.tensor(float(spec.sink_delta(first, offset))), rotary, device)
    visible = torch.cat([sink_visible, ring_visible, chunk_visible], dim=1)
    mask = additive_mask(visible, dtype)
    m = min(n, ring)
    new_tokens = torch.arange(first + n - m, first + n)
    plan = ChunkPlan(
        first=first, n=n, n_sink=spec.n_sink, n_sink_keys=sink_visible.shape[1],
        ring_keys=ring_visible.shape[1], kv_length=visible.shape[1], cos=cos, sin=sin,
        ring_index=spec.ring_slot(new_tokens).to(device), ring_src_start=n - m, workspace=workspace,
        rotate_queries=rotate_queries, plain_queries=min(n, spec.slots) if empty else 0,
    )
    return plan, mask


class SinkWindowCache(StreamingCache):
    """StreamingLLM cache: ``n_sink`` attention sinks plus the last ``window`` tokens, per layer and kv head.

    Made by :meth:`streamlib.policies.StreamingLLM.make_cache`; use it in ``model(input_ids=..., cache=c)`` loops or
    ``model.generate(..., cache=c)``. ``rotate_queries``: chunks with position shift turn each query to the sinks (one
    copy of the sinks for all; the model's attention goes through :mod:`streamlib.handover` for such a chunk, which
    streamlib's loops see to) instead of giving each query its own rotated copy of them.
    """

    starts_in_chunk = True  # a prompt longer than the cache can start the stream in one chunk (no filling call)

    def __init__(self, num_layers: int, n_sink: int, window: int, pos_shift: bool, rotary: RotaryInfo,
                 rebase_interval: int = 256, rotate_queries: bool = False, sliding: SlidingLayers | None = None,
                 quant: KVQuantSpec | None = None):
        spec = SinkWindowSpec(n_sink, window, pos_shift)
        if sliding is not None and n_sink >= sliding.window:
            raise ValueError(f"n_sink must be below the model's sliding window ({sliding.window}); got {n_sink}")
        rotations = Rotations(rotary)
        layers, scratch = build_layers(num_layers, SinkWindowLayer, spec, rotations, sliding, quant)
        super().__init__(spec, layers, rotations, rebase_interval, quant, scratch,
                         sliding.layer_types if sliding is not None else None,
                         rotate_queries=rotate_queries and n_sink > 0 and pos_shift)
        self.needs_handover = self.rotate_queries
        self.static_state: StaticState | None = None  # made by the first compiled decode step
        # one shape for the whole stream: a compiled decode step can run on it (one kind of layer, for now)
        self.fixed_shape = not self.is_hybrid and quant is None
        if self.is_hybrid:
            self.why_not_compiled = "a hybrid model's cache; the compiled step takes one kind of layer"

    def default_chunk_size(self) -> int:
        """512 (:meth:`StreamingCache.default_chunk_size`); with position shift but no hand-over every query brings
        its own copy of the sinks: about the window."""
        spec = self.spec
        if spec.pos_shift and spec.n_sink and not self.rotate_queries:
            return max(16, min(spec.window, 512))
        return 512

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
        model's attention goes through :mod:`streamlib.handover`) one copy of the sinks serves all and each query is
        rotated to the sinks' distance (tables ``(n, rotary_ndims)``); otherwise each query gets its own rotated copy
        of the sinks (tables ``(n, 1, rotary_ndims)``, ``n * n_sink`` sink keys).

        A chunk that starts the stream (an empty cache) has no ring block: its own first ``n_sink`` tokens fill the
        sink block (and are hidden in the chunk block, so no query counts them twice), and its queries up to
        ``budget`` see their sinks where they are, as a filling cache shows them. Its prompt then costs one forward,
        not a filling call and a chunk (each reads every weight once).
        """
        empty = self.position == 0
        if not (empty or self.plain_room() <= 0):
            raise ValueError(f"a chunk needs an empty or a full cache ({self.spec.slots} tokens seen); it has "
                             f"{self.position}")
        if empty and n <= self.plain_room():
            raise ValueError(f"n: a chunk that starts the stream must be longer than the cache "
                             f"({self.plain_room()} slots); {n} tokens fit one plain call")

    @contextmanager
    def compiled_step(self, state: "StaticState"):
        """Inside the block the layers take one token with the device-side bookkeeping of ``state``
        (:mod:`streamlib.compiled`)."""
        self.step = state
        try:
            yield
        finally:
            self.step = None


class StaticState:
    """The stream position and frame offset of a :class:`SinkWindowCache` as device tensors, for a compiled decode
    step (:mod:`streamlib.compiled`) once the cache holds its sinks. The step derives the ring slot, the query
    position, the mask and the sink rotation from them (the spec's formulas) and advances ``t`` in place; the host
    mirrors the count in the layers' ``position`` without reading the device, so no step waits for the host."""

    def __init__(self, cache: SinkWindowCache, device):
        self.cache = cache
        self.spec = cache.spec
        self.t = torch.zeros((), dtype=torch.long, device=device)  # absolute position of the next token
        self.offset = torch.zeros((), dtype=torch.long, device=device)
        self.inv_freq = cache.rotary.inv_freq.to(device)  # float64, as the eager rotation tables
        self.sink_slots = torch.arange(self.spec.n_sink, device=device)
        self.slots = torch.arange(self.spec.slots, device=device)
        self._on_device = (0, 0)  # (t, offset) as the device holds them, known without reading the device
        self.sync()

    def sync(self) -> None:
        """Bring the device tensors in line with the layers after eager work (a prompt fed, a re-base)."""
        first = self.cache.layers[0]
        if self._on_device != (first.position, first.offset):
            self.t.fill_(first.position)
            self.offset.fill_(first.offset)
            self._on_device = (first.position, first.offset)

    def frame_position(self) -> torch.Tensor:
        """Frame position of the next token, shape (1, 1)."""
        return (self.t - self.offset).view(1, 1)

    def attention_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask over the slots, shape (1, 1, 1, slots): while the cache fills, token ``t`` sits in slot
        ``t`` and the slots after it are empty; once full every slot is visible."""
        return additive_mask((self.slots <= self.t).view(1, 1, 1, -1), dtype)

    def slot_and_sink_tables(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        slot = self.spec.ring_slot(self.t).view(1)
        cos, sin = angle_tables(self.spec.sink_delta(self.t, self.offset), self.inv_freq)
        return slot, cos, sin

    def advance(self) -> None:
        """Inside the graph: the step is done, the next token is one further on."""
        self.t.add_(1)

    def mirror_step(self) -> None:
        """On the host, after the graph: count the step in the layers as an eager step would."""
        for layer in self.cache.layers:
            layer.position += 1
            layer.sink_delta = None  # the sink slots now hold the graph's rotation
        self._on_device = (self._on_device[0] + 1, self._on_device[1])
