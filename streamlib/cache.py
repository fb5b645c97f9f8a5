"""A transformers ``Cache`` that keeps attention sinks plus a window of recent tokens (StreamingLLM).

Semantics (Xiao et al., *Efficient Streaming Language Models with Attention Sinks*, arXiv 2309.17453, and the
reference code mit-han-lab/streaming-llm): after each token the cache keeps the first ``n_sink`` tokens of the stream
and the last ``window``; the next token attends to those and to itself. With ``pos_shift`` the cached keys sit at
their slot in the cache and the query at the next slot, so positions never exceed ``n_sink + window``; without it
every token keeps its original position.

How it is made cheap and exact. The model rotates keys before ``cache.update`` and RoPE scores depend only on the
distance between query and key. Recent keys are kept as the model rotated them: in a full cache their distance to the
query is the same in both position modes. Only the sinks' distance differs, and by the same amount at every step, so
the sinks are stored once and turned to where they belong before each step (``n_sink`` keys per layer). The recent
tokens live in a ring of ``window + 1`` preallocated slots written in place; the extra slot takes the incoming token
while the oldest one is still visible to it, and is the one evicted after the step. Buffers never change shape once
the cache is full, so a decode step could later be captured in a CUDA graph.

Positions are a *frame*: the position the model gives the next token is ``get_seq_length()``. Loops that own the
positions (``streamlib.quality``, ``streamlib.generation``) call :meth:`SinkWindowCache.maybe_rebase` so that the frame
never grows past ``n_sink + window + rebase_interval``: the ring is turned back once, the frame shifts, and long
streams do not lose precision to large rotary angles. ``model.generate`` computes absolute positions itself, so under
``generate`` the cache does not re-base (nothing calls it) and positions grow as they do for any cache.

A call with several tokens is exact when no token of it needs an eviction (the prompt fits the cache). A longer
call needs a per-token mask: :meth:`SinkWindowCache.plan_chunk` returns the ``position_ids`` and 4D attention mask for
the next chunk, and the chunk's keys are laid out as ``[sinks | ring | chunk]`` in a workspace shared by the layers.
With ``pos_shift`` the sinks' distance to every query is the same, their position is not: when the model's attention
goes through :mod:`streamlib.handover` (``StreamingLLM.make_cache`` sees to it) each query is turned once to the
sinks' distance and one copy of the sinks serves all (:meth:`SinkWindowLayer.attend`); otherwise each query gets its
own turned copy, ``n_sink`` keys per query. ``streamlib.generation.prefill`` and
``streamlib.quality.token_nll`` do this chunking; ``model.generate(..., prefill_chunk_size=1)`` feeds a long prompt
one token at a time instead; a plain call that would need chunking raises an error saying so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .handover import grouped_mix, grouped_scores, hand_over
from .rotary import RotaryInfo, rotate, rotation_tables


@dataclass
class ChunkPlan:
    t0: int  # absolute index of the chunk's first token
    n: int  # chunk length
    n_sink_keys: int  # keys in the sink block of the workspace
    kv_length: int  # keys returned for the chunk
    cos: torch.Tensor | None  # turn tables: see SinkWindowCache.plan_chunk
    sin: torch.Tensor | None
    ring_index: torch.Tensor  # ring slots that receive the chunk's last tokens
    ring_src_start: int  # first chunk token that is written to the ring
    turn_queries: bool = False  # pos_shift through the hand-over: turn each query to the sinks, one sink copy
    _copies: dict | None = None  # the sink tables on each other device (layers spread over GPUs)

    def tables_on(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cos.device == torch.device(device):
            return self.cos, self.sin
        if self._copies is None:
            self._copies = {}
        key = torch.device(device)
        if key not in self._copies:
            self._copies[key] = (self.cos.to(key), self.sin.to(key))
        return self._copies[key]


class SinkWindowLayer(CacheLayerMixin):
    """One layer's keys and values: ``n_sink`` sink slots, then a ring of ``window + 1`` recent slots."""

    is_compileable = False
    is_sliding = False  # masks treat it as full attention; the cache decides what is visible
    is_croppable = False

    def __init__(self, owner: "SinkWindowCache", layer_idx: int):
        super().__init__()
        self.owner = owner
        self.layer_idx = layer_idx
        self.seen = 0  # tokens processed so far: the absolute stream position of the next token
        self.offset = 0  # how far the position frame was shifted: frame position = absolute - offset
        self.sink_keys: torch.Tensor | None = None  # the sinks as first rotated (frame offset 0)
        self._sink_delta: int | None = None  # the turn of the sink keys now written in the buffer

    # -- sizes ------------------------------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.owner.n_sink + self.owner.window + 1

    @property
    def resident(self) -> int:
        """Tokens the cache holds between steps: at most ``n_sink + window``."""
        return min(self.seen, self.owner.n_sink + self.owner.window)

    def extra_kv_bytes(self) -> int:
        """The stored sink keys, besides the slots."""
        return self.sink_keys.numel() * self.sink_keys.element_size()

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, k_dim = key_states.shape
        v_dim = value_states.shape[-1]
        self.device = key_states.device
        self.batch_size = batch
        self.keys = torch.zeros(batch, heads, self.capacity, k_dim, dtype=key_states.dtype, device=self.device)
        self.values = torch.zeros(batch, heads, self.capacity, v_dim, dtype=value_states.dtype, device=self.device)
        self.sink_keys = torch.zeros(batch, heads, self.owner.n_sink, k_dim, dtype=key_states.dtype, device=self.device)
        self.is_initialized = True

    def get_seq_length(self) -> int:
        return self.seen - self.offset

    def get_max_length(self) -> int:
        return -1  # a stream has no end

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        if self.seen + query_length <= self.capacity:
            return self.seen + query_length, 0
        if query_length == 1:
            return self.capacity, 0
        plan = self.owner._plan
        return (plan.kv_length if plan is not None else self.seen + query_length), 0

    # -- update -----------------------------------------------------------------------------------------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.owner._static is not None:
            return self._update_static(key_states, value_states, self.owner._static)
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if key_states.shape[0] != self.keys.shape[0]:
            raise ValueError(
                f"input_ids: batch size {key_states.shape[0]} does not match the cache's {self.keys.shape[0]}; "
                "make a new cache for a new batch"
            )
        n, t0 = key_states.shape[-2], self.seen
        owner = self.owner
        if t0 + n <= self.capacity:
            # Filling: no token of this call needs an eviction, token a sits in slot a, positions are original.
            self.keys[:, :, t0 : t0 + n] = key_states
            self.values[:, :, t0 : t0 + n] = value_states
            if t0 < owner.n_sink:
                m = min(n, owner.n_sink - t0)
                self.sink_keys[:, :, t0 : t0 + m] = key_states[:, :, :m]
            self._sink_delta = 0
            self.seen += n
            return self.keys[:, :, : t0 + n], self.values[:, :, : t0 + n]
        plan = owner._plan
        if n == 1 and (plan is None or plan.t0 != t0):
            slot = owner.ring_slot(t0)
            self.keys[:, :, slot] = key_states[:, :, 0]
            self.values[:, :, slot] = value_states[:, :, 0]
            self._place_sinks(owner.sink_delta(t0, self.offset))
            self.seen += 1
            return self.keys, self.values
        return self._update_chunk(key_states, value_states)

    def _place_sinks(self, delta: int) -> None:
        """Write the sink keys, turned by ``delta`` positions, into the buffer's sink slots."""
        if self.owner.n_sink == 0 or delta == self._sink_delta:
            return
        sink_slots = self.keys[:, :, : self.owner.n_sink]
        if delta == 0:
            sink_slots.copy_(self.sink_keys)
        else:
            cos, sin = self.owner.turn_tables(delta, self.device)
            rotate(self.sink_keys, cos, sin, out=sink_slots)
        self._sink_delta = delta

    def _update_static(self, key_states: torch.Tensor, value_states: torch.Tensor, state: "StaticState"):
        """One token with tensor-only bookkeeping, for a compiled step: the slot and the sink turn come from device
        tensors, so the step reads no Python number that changes from step to step. Returns every slot; the step's
        mask hides the empty ones while the cache fills (token ``t >= n_sink`` then sits in slot ``t``, which the
        ring formula gives too)."""
        slot, cos, sin = state.slot_and_sink_tables()
        if self.owner.n_sink:
            # one scatter for the turned sinks and the new key: a slice assignment here would make the compiler
            # rewrite the whole buffer every step
            slots = torch.cat([state.sink_slots, slot])
            self.keys.index_copy_(2, slots, torch.cat([rotate(self.sink_keys, cos, sin), key_states], dim=2))
        else:
            self.keys.index_copy_(2, slot, key_states)
        self.values.index_copy_(2, slot, value_states)
        return self.keys, self.values

    def _update_chunk(self, key_states: torch.Tensor, value_states: torch.Tensor):
        owner, n, t0 = self.owner, key_states.shape[-2], self.seen
        plan = owner._plan
        if plan is None or plan.t0 != t0 or plan.n != n:
            raise ValueError(
                f"input_ids: {n} tokens at stream position {t0} do not fit a cache of {owner.n_sink} sinks + "
                f"{owner.window} recent tokens in one plain call (each would need its own mask). Use "
                "streamlib.generation.prefill(model, input_ids, cache) or streamlib.quality.token_nll, which chunk "
                "the input; with model.generate pass prefill_chunk_size=1; or feed at most "
                f"{max(self.capacity - t0, 1)} tokens at once"
            )
        batch, heads, _, k_dim = key_states.shape
        ws_k, ws_v = owner.workspace(batch, heads, k_dim, value_states.shape[-1], plan.kv_length, key_states)
        s, ring = plan.n_sink_keys, owner.window + 1
        if owner.n_sink:
            if plan.turn_queries:
                # one copy of the sinks as first rotated; attend() turns the queries instead
                ws_k[:, :, :s] = self.sink_keys
                ws_v[:, :, :s] = self.values[:, :, :s]
                hand_over(self)
            elif owner.pos_shift:
                # each query gets its own copy of the sinks, turned to sit n_sink + window - j before it
                out = ws_k[:, :, :s].view(batch, heads, n, owner.n_sink, k_dim)
                rotate(self.sink_keys.unsqueeze(2), *plan.tables_on(self.device), out=out)
                sink_values = self.values[:, :, : owner.n_sink].unsqueeze(2)
                ws_v[:, :, :s].view(batch, heads, n, owner.n_sink, -1).copy_(sink_values.expand(-1, -1, n, -1, -1))
            else:
                rotate(self.sink_keys, *plan.tables_on(self.device), out=ws_k[:, :, :s])
                ws_v[:, :, :s] = self.values[:, :, : owner.n_sink]
        ws_k[:, :, s : s + ring] = self.keys[:, :, owner.n_sink :]
        ws_v[:, :, s : s + ring] = self.values[:, :, owner.n_sink :]
        ws_k[:, :, s + ring :] = key_states
        ws_v[:, :, s + ring :] = value_states
        ring_index = plan.ring_index.to(self.device)
        self.keys.index_copy_(2, ring_index, key_states[:, :, plan.ring_src_start :])
        self.values.index_copy_(2, ring_index, value_states[:, :, plan.ring_src_start :])
        self.seen += n
        return ws_k, ws_v

    def attend(self, base, module, query, key, value, attention_mask, **kwargs):
        """Attention for a chunk laid out ``[sinks | ring | chunk]`` with one copy of the sinks (position shift).

        Query ``i`` must see the sinks as if it sat at slot ``n_sink + window`` of the cache. Its rotated query is
        turned to that position once (RoPE scores depend only on the distance) and scores the sinks; the unturned
        query scores the ring and the chunk. One softmax over both, as sdpa does it: the two queries are laid side by
        side in a head of twice the width, and each key fills only its half.
        """
        s, d = self.owner.n_sink, query.shape[-1]
        scaling = kwargs.get("scaling", module.scaling)
        cos, sin = self.owner._plan.tables_on(query.device)
        turned = rotate(query, cos, sin)
        if getattr(base, "__name__", "") == "eager_attention_forward":
            scores = torch.cat([grouped_scores(turned, key[:, :, :s]), grouped_scores(query, key[:, :, s:])],
                               dim=-1) * scaling + attention_mask
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
            return grouped_mix(probs, value).transpose(1, 2).contiguous(), probs
        wide_query = torch.cat([query, turned], dim=-1)
        wide_key = key.new_zeros(*key.shape[:-1], 2 * d)
        wide_key[:, :, s:, :d] = key[:, :, s:]
        wide_key[:, :, :s, d:] = key[:, :, :s]
        # values as wide as the keys (zeros after them): the fused sdpa kernels want one head width
        wide_value = torch.cat([value, torch.zeros_like(value)], dim=-1)
        out = torch.nn.functional.scaled_dot_product_attention(wide_query, wide_key, wide_value,
                                                               attn_mask=attention_mask, scale=scaling,
                                                               enable_gqa=query.shape[1] != key.shape[1])
        return out[..., :d].transpose(1, 2).contiguous(), None

    # -- maintenance ------------------------------------------------------------------------------------------
    def shift_frame(self, shift: int) -> None:
        """Move every position of this layer ``shift`` back: turn the ring by ``-shift``."""
        ring = self.keys[:, :, self.owner.n_sink :]
        cos, sin = self.owner.turn_tables(-shift, self.device)
        rotate(ring, cos, sin, out=ring)
        self.offset += shift
        self._sink_delta = None

    def reset(self) -> None:
        super().reset()
        if self.sink_keys is not None:
            self.sink_keys.zero_()
        self.seen = self.offset = 0
        self._sink_delta = None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.is_initialized:
            idx = beam_idx.to(self.device)
            for t in (self.keys, self.values, self.sink_keys):
                t.copy_(t.index_select(0, idx))

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a StreamingLLM cache cannot be cropped: evicted tokens are gone")


class StreamingCache(Cache):
    """What the streaming loops need from a bounded cache: its budget, how far the stream has gone, re-basing of the
    position frame and the bytes it holds. ``chunkable`` says whether :meth:`plan_chunk` can feed several tokens
    past a full cache in one call; when it cannot, the loops feed one token at a time once the cache is full."""

    chunkable = True

    @property
    def budget(self) -> int:
        raise NotImplementedError

    @property
    def seen_tokens(self) -> int:
        return self.layers[0].seen

    @property
    def is_full(self) -> bool:
        return self.seen_tokens >= self.budget + 1

    def resident_tokens(self) -> int:
        return self.layers[0].resident

    def maybe_rebase(self) -> bool:
        """Shift the position frame back to ``budget`` once it has grown ``rebase_interval`` past it: every layer
        turns its keys back by the same amount, which RoPE's relative scores do not see."""
        first = self.layers[0]
        frame = first.seen - first.offset
        if not self.is_full or frame - self.budget < self.rebase_interval:
            return False
        shift = frame - self.budget
        for layer in self.layers:
            layer.shift_frame(shift)
        self._tables.clear()
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


class SinkWindowCache(StreamingCache):
    """StreamingLLM cache: ``n_sink`` attention sinks plus the last ``window`` tokens, per layer and kv head.

    Made by :meth:`streamlib.policies.StreamingLLM.make_cache`; use it in ``model(input_ids=..., cache=c)`` loops or
    ``model.generate(..., past_key_values=c)``.
    """

    def __init__(self, num_layers: int, n_sink: int, window: int, pos_shift: bool, rotary: RotaryInfo,
                 rebase_interval: int = 256):
        self.n_sink, self.window, self.pos_shift = n_sink, window, pos_shift
        self.rotary = rotary
        self.rebase_interval = rebase_interval
        self._plan: ChunkPlan | None = None
        self._static_state: StaticState | None = None  # made by the first compiled decode step
        self._static: StaticState | None = None  # set only while a compiled decode step runs
        self._workspaces: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # one per device
        self._tables: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
        super().__init__(layers=[SinkWindowLayer(self, i) for i in range(num_layers)])

    # -- geometry shared by the layers ------------------------------------------------------------------------
    @property
    def budget(self) -> int:
        """Tokens kept between steps: ``n_sink + window``."""
        return self.n_sink + self.window

    def ring_slot(self, t: int) -> int:
        return self.n_sink + (t - self.n_sink) % (self.window + 1)

    def sink_delta(self, t: int, offset: int) -> int:
        """How far the stored sinks must turn for the query at absolute position ``t``."""
        shift = max(t - self.budget, 0) if self.pos_shift else 0
        return shift - offset

    def turn_tables(self, delta: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (delta, torch.device(device))
        if key not in self._tables:
            if len(self._tables) > 64:  # one entry per step and device; keep only the recent ones
                self._tables.clear()
            self._tables[key] = rotation_tables(torch.tensor(float(delta)), self.rotary, device)
        return self._tables[key]

    def workspace(self, batch, heads, k_dim, v_dim, length, like: torch.Tensor):
        """Scratch keys and values for a chunk, shared by the layers that sit on ``like``'s device."""
        ws = self._workspaces.get(like.device)
        if ws is None or ws[0].shape[:2] != (batch, heads) or ws[0].shape[2] < length or ws[0].dtype != like.dtype \
                or ws[0].shape[3] != k_dim:
            ws = (
                torch.empty(batch, heads, length, k_dim, dtype=like.dtype, device=like.device),
                torch.empty(batch, heads, length, v_dim, dtype=like.dtype, device=like.device),
            )
            self._workspaces[like.device] = ws
        return ws[0][:, :, :length], ws[1][:, :, :length]

    # -- state --------------------------------------------------------------------------------------------------
    def plan_chunk(self, n: int, dtype: torch.dtype, device, turn_queries: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """``position_ids`` and 4D additive attention mask for the next ``n`` tokens of a full cache.

        Keys of the chunk are laid out ``[sink block | ring of window+1 slots | chunk]``. Query ``i`` (absolute
        ``t = t0 + i``) sees its sinks, the ring tokens ``a`` with ``t - a <= window`` and the chunk tokens at most
        ``window`` before it, which is exactly what it would see fed token by token.

        With position shift the sinks sit at a distance from each query that is the same for all of them, but at a
        different position. ``turn_queries`` (the model's attention goes through :mod:`streamlib.handover`): one
        copy of the sinks, and each layer's :meth:`SinkWindowLayer.attend` turns the queries to the sinks' distance
        (tables ``(n, rotary_ndims)``). Otherwise each query gets its own turned copy of the sinks (tables
        ``(n, 1, rotary_ndims)``, ``n * n_sink`` sink keys).
        """
        if not self.is_full:
            raise ValueError(f"plan_chunk needs a full cache ({self.budget + 1} tokens seen); it has {self.seen_tokens}")
        first = self.layers[0]
        t0, offset, ring = first.seen, first.offset, self.window + 1
        t = t0 + torch.arange(n)
        ring_tokens = torch.arange(t0 - ring, t0)
        token_in_slot = torch.empty(ring, dtype=torch.long)
        token_in_slot[(ring_tokens - self.n_sink) % ring] = ring_tokens
        ring_visible = (t[:, None] - token_in_slot[None, :]) <= self.window
        lag = t[:, None] - t[None, :]
        chunk_visible = (lag >= 0) & (lag <= self.window)
        turn_queries = turn_queries and self.n_sink > 0 and self.pos_shift
        if turn_queries:
            sink_visible = torch.ones(n, self.n_sink, dtype=torch.bool)
            cos, sin = rotation_tables(self.budget - (t - offset), self.rotary, device)  # query -> slot n_sink+window
        elif self.n_sink and self.pos_shift:
            sink_visible = torch.eye(n, dtype=torch.bool).repeat_interleave(self.n_sink, dim=1)
            deltas = (t - self.budget) - offset
            cos, sin = rotation_tables(deltas, self.rotary, device)
            cos, sin = cos[:, None, :], sin[:, None, :]
        else:
            sink_visible = torch.ones(n, self.n_sink, dtype=torch.bool)
            cos, sin = rotation_tables(torch.tensor(float(-offset)), self.rotary, device)
        visible = torch.cat([sink_visible, ring_visible, chunk_visible], dim=1)
        mask = torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, torch.finfo(dtype).min)
        m = min(n, ring)
        new_tokens = torch.arange(t0 + n - m, t0 + n)
        self._plan = ChunkPlan(
            t0=t0, n=n, n_sink_keys=sink_visible.shape[1], kv_length=visible.shape[1], cos=cos, sin=sin,
            ring_index=(self.n_sink + (new_tokens - self.n_sink) % ring).to(device), ring_src_start=n - m,
            turn_queries=turn_queries,
        )
        position_ids = (t - offset)[None].to(device)
        return position_ids, mask[None, None].to(device)

    def end_chunk(self) -> None:
        self._plan = None


class StaticState:
    """The stream position and frame offset of a :class:`SinkWindowCache` as device tensors, for a compiled decode
    step (:mod:`streamlib.compiled`) once the cache holds its sinks. The step derives the ring slot, the query
    position, the mask and the sink turn from them and advances ``t`` in place; the host mirrors the count in the
    layers' ``seen`` without reading the device, so no step waits for the host."""

    def __init__(self, cache: SinkWindowCache, device):
        self.cache = cache
        self.t = torch.zeros((), dtype=torch.long, device=device)  # absolute position of the next token
        self.offset = torch.zeros((), dtype=torch.long, device=device)
        self.inv_freq = cache.rotary.inv_freq.to(device)  # float64, as the eager turn tables
        self.sink_slots = torch.arange(cache.n_sink, device=device)
        self.slots = torch.arange(cache.n_sink + cache.window + 1, device=device)
        self._on_device = (0, 0)  # (t, offset) as the device holds them, known without reading the device
        self.sync()

    def sync(self) -> None:
        """Bring the device tensors in line with the layers after eager work (a prompt fed, a re-base)."""
        first = self.cache.layers[0]
        if self._on_device != (first.seen, first.offset):
            self.t.fill_(first.seen)
            self.offset.fill_(first.offset)
            self._on_device = (first.seen, first.offset)

    def position(self) -> torch.Tensor:
        """Frame position of the next token, shape (1, 1)."""
        return (self.t - self.offset).view(1, 1)

    def attention_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask over the slots, shape (1, 1, 1, slots): while the cache fills, token ``t`` sits in slot
        ``t`` and the slots after it are empty; once full every slot is visible."""
        hidden = (self.slots > self.t).view(1, 1, 1, -1)
        return torch.zeros(hidden.shape, dtype=dtype, device=hidden.device).masked_fill(hidden, torch.finfo(dtype).min)

    def slot_and_sink_tables(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.cache
        slot = (c.n_sink + (self.t - c.n_sink) % (c.window + 1)).view(1)
        shift = (self.t - c.budget).clamp(min=0) if c.pos_shift else torch.zeros_like(self.t)
        angles = (shift - self.offset).to(torch.float64) * self.inv_freq
        angles = torch.cat([angles, angles])
        return slot, angles.cos().float(), angles.sin().float()

    def advance(self) -> None:
        """Inside the graph: the step is done, the next token is one further on."""
        self.t.add_(1)

    def mirror_step(self) -> None:
        """On the host, after the graph: count the step in the layers as an eager step would."""
        for layer in self.cache.layers:
            layer.seen += 1
            layer._sink_delta = None  # the sink slots now hold the graph's turn
        self._on_device = (self._on_device[0] + 1, self._on_device[1])
