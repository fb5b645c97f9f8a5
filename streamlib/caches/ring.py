"""The ring of sinks and recent tokens: its spec (the formulas of slots and sink rotations), a chunk's plan and mask
(:func:`ring_chunk_plan`), and the device-side state of a compiled step (:class:`StaticState`). How it stays exact
and cheap is in ``docs/design.md``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import torch

from ..core.rotary import RotaryInfo, angle_tables, rotation_tables
from .handover import sink_rotated_attention
from .layers import Workspace, additive_mask


@dataclass(frozen=True)
class SinkWindowSpec:
    """A StreamingLLM cache's settings, and the formulas every part of it (layers, chunk plans, the compiled step)
    takes its slots and rotations from. ``t`` may be a stream position or a tensor of them."""

    n_sink: int
    window: int
    pos_shift: bool

    name: ClassVar[str] = "StreamingLLM"
    varies: ClassVar[bool] = False  # whether the window changes along the stream (each query then has its own)

    @property
    def budget(self) -> int:
        """The most tokens kept between steps: ``n_sink + window``."""
        return self.n_sink + self.window

    def window_at(self, t):
        """The recent tokens the query at ``t`` sees besides the sinks (a tensor for a tensor of positions)."""
        return self.window + 0 * t if torch.is_tensor(t) else self.window

    @property
    def plain_until(self) -> int:
        """The first position whose query would not see every token before it: plain calls end before it."""
        return self.slots

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
        over = t - self.n_sink - self.window_at(t)
        if not self.pos_shift:
            return 0 * over - offset
        return (over.clamp(min=0) if torch.is_tensor(over) else max(over, 0)) - offset


@dataclass(frozen=True)
class GrowingSpec(SinkWindowSpec):
    """A window that grows with the stream: the query at ``t`` sees the sinks and the ``w(t) = min(window, max(
    min_window, floor(ratio * t)))`` tokens before it (``window`` is the ceiling, the ring's size). With ``ratio <= 1``
    the window grows by at most one token a step, so no token that left comes back."""

    ratio: float
    min_window: int

    name: ClassVar[str] = "GrowingWindow"
    varies: ClassVar[bool] = True

    def window_at(self, t):
        if torch.is_tensor(t):
            return (t.double() * self.ratio).floor().long().clamp(min=self.min_window, max=self.window)
        return min(self.window, max(self.min_window, math.floor(self.ratio * t)))

    @cached_property
    def plain_until(self) -> int:
        t = self.n_sink + self.min_window + 1
        while t < self.slots and t <= self.n_sink + self.window_at(t):
            t += 1
        return t


@dataclass
class ChunkPlan:
    """Where the keys of a chunk fed into a full cache go, and what each of its queries sees
    (:meth:`SinkWindowCache.chunk`). Every layer follows the same plan; with ``rotate_queries`` the plan also runs
    their attention (:meth:`attend`, through :mod:`streamlib.caches.handover`)."""

    first: int  # absolute stream position of the chunk's first token
    n: int  # chunk length
    n_sink: int
    n_sink_keys: int  # keys in the sink block of the workspace
    ring_keys: int  # keys in the ring block: window + 1, or 0 for a chunk that starts the stream
    kv_length: int  # keys returned for the chunk: the sink block, the ring, the chunk and its blocks' keys
    block_keys: int  # keys after the chunk's own: a quantized layer's view of the blocks the chunk completes
    cos: torch.Tensor  # rotation tables for the sinks or the queries (see SinkWindowCache.chunk)
    sin: torch.Tensor
    ring_index: torch.Tensor  # ring slots that receive the chunk's last tokens
    ring_src_start: int  # first chunk token that is written to the ring
    workspace: Workspace
    mask: torch.Tensor | None = None  # the additive mask (n, kv_length) of the chunk's queries over its keys
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
                               "`with streamlib.caches.handover.handover(model, cache):`, as streamlib's loops do")

    def attend(self, base, module, query, key, value, attention_mask, **kwargs):
        """The chunk's attention with the plan's own mask (layers of one model may follow different plans), and with
        one copy of the sinks when the queries turn to them (:func:`streamlib.caches.handover.sink_rotated_attention`)."""
        self.attended = True
        if self._copies is None:
            self._copies = {}
        mask = self._copies.setdefault(("mask", query.device), self.mask[None, None].to(query.device))
        if not self.rotate_queries:
            return base(module, query, key, value, mask, **kwargs)
        cos, sin = self.tables_on(query.device)
        return sink_rotated_attention(base, module, query, key, value, mask, n_sink=self.n_sink,
                                      cos=cos, sin=sin, scaling=kwargs.get("scaling", module.scaling),
                                      plain_queries=self.plain_queries,
                                      bias_buffer=lambda shape, dtype: self.workspace.bias(shape, dtype, query.device))


def ring_chunk_plan(spec: SinkWindowSpec, first: int, offset: int, n: int, dtype: torch.dtype, device,
                    rotary: RotaryInfo, workspace: Workspace, rotate_queries: bool = False,
                    residual: int | None = None) -> tuple[ChunkPlan | None, torch.Tensor]:
    """The plan and the additive mask (n, keys) of a chunk of ``n`` tokens from stream position ``first`` for the
    sink-and-ring layers of ``spec`` (see :meth:`SinkWindowCache.chunk`). Their ring may be still filling (a hybrid
    model's other layers are full): its empty slots are hidden, and a chunk that fits what is left of it is a plain
    causal call for these layers (no plan to follow).

    ``residual``: the layers quantize in blocks of that many positions (:mod:`streamlib.caches.quant`), and a query
    sees the tokens of its own block in full precision and those of earlier blocks quantized. A chunk that crosses a
    block then brings every token from the start of its first block to the start of its last twice: in full precision
    (the ring's and the chunk's keys, for the queries of the token's own block) and as the block's quantized copy,
    which the layers' store puts after the chunk's keys (``block_keys`` of them) for the later blocks' queries."""
    empty, ring = first == 0, spec.window + 1
    t = first + torch.arange(n)
    window = spec.window_at(t)[:, None]  # each query's own (one for all unless the window varies)
    crosses = residual is not None and (first + n - 1) // residual > first // residual
    if first + n <= spec.plain_until and not crosses:
        return None, additive_mask(torch.arange(first + n)[None, :] <= t[:, None], dtype)
    if empty:
        ring_visible = torch.zeros(n, 0, dtype=torch.bool)
    else:
        ring_tokens = torch.arange(max(spec.n_sink, first - ring), first)
        token_in_slot = torch.full((ring,), -1, dtype=torch.long)  # -1: an empty slot
        token_in_slot[spec.ring_slot(ring_tokens) - spec.n_sink] = ring_tokens
        ring_visible = (token_in_slot[None, :] >= 0) & ((t[:, None] - token_in_slot[None, :]) <= window)
    lag = t[:, None] - t[None, :]
    # the sinks are seen through the sink block only
    chunk_visible = (lag >= 0) & (lag <= window) & (t[None, :] >= spec.n_sink)
    copies = torch.zeros(n, 0, dtype=torch.bool)
    plain_queries = min(n, spec.plain_until) if empty else 0
    if crosses:
        start, block = first // residual * residual, t // residual
        copied = torch.arange(start, block[-1] * residual)  # the blocks before the chunk's last, from the first's start
        if not empty:
            ring_visible &= (token_in_slot[None, :] < start) | (token_in_slot[None, :] // residual == block[:, None])
        chunk_visible &= t[None, :] // residual == block[:, None]
        copies = ((copied[None, :] // residual < block[:, None]) & (t[:, None] - copied[None, :] <= window)
                  & (copied[None, :] >= spec.n_sink))  # full-precision sinks: the sink block's
        plain_queries = min(plain_queries, residual)  # a query past the first block sees it quantized
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
    visible = torch.cat([sink_visible, ring_visible, chunk_visible, copies], dim=1)
    mask = additive_mask(visible, dtype)
    m = min(n, ring)
    new_tokens = torch.arange(first + n - m, first + n)
    plan = ChunkPlan(
        first=first, n=n, n_sink=spec.n_sink, n_sink_keys=sink_visible.shape[1],
        ring_keys=ring_visible.shape[1], kv_length=visible.shape[1], block_keys=copies.shape[1], cos=cos, sin=sin,
        ring_index=spec.ring_slot(new_tokens).to(device), ring_src_start=n - m, workspace=workspace,
        mask=mask, rotate_queries=rotate_queries, plain_queries=plain_queries,
    )
    return plan, mask


class StaticState:
    """The stream position and frame offset of a :class:`SinkWindowCache` as device tensors, for a compiled decode
    step (:mod:`streamlib.caches.compiled`) once the cache holds its sinks. The step derives each layer's ring slot, the
    query position, the masks and the sink rotation from them (the spec's formulas; a hybrid model's sliding layers
    follow their own spec) and advances ``t`` in place; the host mirrors the count in the layers' ``position`` without
    reading the device, so no step waits for the host."""

    compiled = True  # what a layer's update tells this step from a chunk's plan by

    def __init__(self, cache, device):  # a SinkWindowCache
        self.cache = cache
        self.spec = cache.spec
        self.t = torch.zeros((), dtype=torch.long, device=device)  # absolute position of the next token
        self.offset = torch.zeros((), dtype=torch.long, device=device)
        self.inv_freq = cache.rotary.inv_freq.to(device)  # float64, as the eager rotation tables
        self.sink_slots = torch.arange(self.spec.n_sink, device=device)
        # each kind of layer's slots (one kind, or a hybrid model's sliding and full layers)
        self.slots = {spec: torch.arange(spec.slots, device=device) for spec in dict.fromkeys(
            layer.spec for layer in cache.layers)}
        self._on_device = (0, 0)  # (t, offset) as the device holds them, known without reading the device
        self._pair_tables = None  # a quantized cache's rotation tables, made here: not while the step is traced
        for layer in cache.layers:
            if layer.store is not None:
                self.pair_tables(layer, layer.store)
                break
        self.sync()

    def tensors(self) -> list[torch.Tensor]:
        """The device tensors a step reads (a CUDA graph captures them in place)."""
        out = [self.t, self.offset, self.inv_freq, self.sink_slots, *self.slots.values()]
        for layer in self.cache.layers:
            out += [layer.keys, layer.values] + ([layer.sink_keys] if layer.n_sink else [])
            if layer.store is not None:  # its codes, scales, current block and sinks, as the graph reads them
                out += [t for t in vars(layer.store).values() if torch.is_tensor(t)]
                out += list(self.pair_tables(layer, layer.store))
        return out

    def pair_tables(self, layer, store) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin per rotary pair for every delta a frame reaches (below the frame floor plus the re-base
        interval, as the cache re-bases before each step), made once (the quantized layers share one rotary): a
        quantized layer's rebuild picks its slots' rotations from them."""
        if self._pair_tables is None:
            n = self.cache.frame_floor + self.cache.rebase_interval + 1
            self._pair_tables = store.scratch.head_tables(torch.arange(n, device=self.t.device), layer.rotations.info,
                                                          store.recent_keys.shape[-1], self.t.device, pairs=True)
        return self._pair_tables

    def slot_positions(self, spec: SinkWindowSpec) -> torch.Tensor:
        """The stream position of the token in each of ``spec``'s slots before the step's token is placed, -1 where
        empty (the layer's ``slot_positions`` as a formula of ``t``, for a quantized layer's rebuild): the sinks,
        then in ring slot ``j`` the last token before ``t`` whose slot it is."""
        slots = self.slots[spec]
        ring = slots - spec.n_sink
        last = self.t - 1 - torch.remainder(self.t - 1 - spec.n_sink - ring, spec.window + 1)
        return torch.where(ring < 0, slots, torch.where(last >= spec.n_sink, last, -1))

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

    def attention_mask(self, dtype: torch.dtype, spec: SinkWindowSpec | None = None) -> torch.Tensor:
        """Additive mask over the slots of ``spec``'s layers (default: the cache's), shape (1, 1, 1, slots): while the
        cache fills, token ``t`` sits in slot ``t`` and the slots after it are empty; once full every slot is
        visible."""
        return additive_mask((self.slots[spec or self.spec] <= self.t).view(1, 1, 1, -1), dtype)

    def slot_and_sink_tables(self, spec: SinkWindowSpec | None = None):
        """The new token's slot in ``spec``'s layers (default: the cache's) and, where they keep sinks, the tables
        that rotate them to the query's distance (None where they keep none)."""
        spec = spec or self.spec
        slot = spec.ring_slot(self.t).view(1)
        if not spec.n_sink:
            return slot, None, None
        cos, sin = angle_tables(spec.sink_delta(self.t, self.offset), self.inv_freq)
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
