"""The full-precision slots a quantized layer is rebuilt into before each call (:mod:`streamlib.caches.quant_store`
holds the codes): :class:`SlotScratch`, the buffers and rotation tables the layers of a cache share, and
:class:`SlotPlan`, what one step's rebuild needs that depends on the tokens' positions alone."""

from __future__ import annotations

import math
from functools import cached_property

import torch

from ..core.rotary import rotation_tables
from .quant import full_precision


class SlotScratch:
    """The full-precision keys and values a quantized layer is rebuilt into before each call, one buffer per device and
    shape shared by every quantized layer of a cache; the table of rotations by every delta; and each step's
    :class:`SlotPlan`, which the layers of one kind share."""

    def __init__(self):
        self._buffers: dict = {}
        self._plans: dict = {}
        self._heads: dict = {}

    def __call__(self, batch, heads, slots, k_dim, v_dim, dtype, device):
        key = (batch, heads, slots, k_dim, v_dim, dtype, torch.device(device))
        if key not in self._buffers:
            self._buffers[key] = (torch.zeros(batch, heads, slots, k_dim, dtype=dtype, device=device),
                                  torch.zeros(batch, heads, slots, v_dim, dtype=dtype, device=device))
        return self._buffers[key]

    def head_tables(self, deltas: torch.Tensor, info, k_dim: int, device, pairs: bool = False):
        """cos and signed sin over the whole head (:class:`SlotPlan`) for rotating by ``deltas`` (>= 0), or with
        ``pairs`` one cos and sin per rotary pair (shape ``(*deltas.shape, rotary_ndims // 2)``), picked from a table
        of every delta up to at least the largest asked for so far (a frame's deltas stay below the rebase interval
        plus the capacity). The table grows by doubling: grown to the largest delta alone, it was made anew at every
        step of a frame whose deltas pass its size (0.3 ms a step at 4+1020)."""
        key = ("head", id(info), k_dim, torch.device(device))
        need = int(deltas.max()) + 1
        if key not in self._heads or self._heads[key][0].shape[0] < need:
            n = max(2 ** math.ceil(math.log2(need)), 1024)
            cos, sin = rotation_tables(torch.arange(n), info, device)
            r = cos.shape[-1]
            half, rest = r // 2, (n, k_dim - r)
            self._heads[key] = (torch.cat([cos, cos.new_ones(rest)], dim=-1),
                                torch.cat([-sin[..., :half], sin[..., half:], sin.new_zeros(rest)], dim=-1),
                                cos[:, :half].contiguous(), sin[:, :half].contiguous())
        cos, sin = self._heads[key][2:] if pairs else self._heads[key][:2]
        index = deltas.reshape(-1)
        return (cos.index_select(0, index).view(*deltas.shape, -1),
                sin.index_select(0, index).view(*deltas.shape, -1))

    def span_tables(self, start: int, end: int, offset: int, info, device):
        """cos and sin (:func:`~streamlib.core.rotary.rotation_tables`) of positions ``start..end-1`` in the frame
        moved back by ``offset``: what a chunk's quantized blocks are turned back and forth by, made once for all the
        layers of the call."""
        key = ("span", start, end, offset, id(info), torch.device(device))
        if key not in self._plans:
            self._plans[key] = rotation_tables(torch.arange(start, end, device=device) - offset, info, device)
        return self._plans[key]

    def plan(self, layer, position: int, store) -> "SlotPlan":
        """The :class:`SlotPlan` of ``layer``'s slots before a call at ``position``: worked out once per step for the
        layers whose slots follow the position alone (the same kind, budget and frame), per layer otherwise."""
        if not layer.slots_follow_position:
            return SlotPlan(layer, position, store)
        key = ("plan", layer.spec, position, layer.offset, getattr(layer, "held", None), torch.device(layer.device))
        if key not in self._plans:
            if len(self._plans) > 16:
                self._plans.clear()
            self._plans[key] = SlotPlan(layer, position, store)
        return self._plans[key]

    def release(self) -> None:
        """Let the buffers go (the next call makes them again)."""
        self._buffers.clear()

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for pair in self._buffers.values() for t in pair)


class SlotPlan:
    """What rebuilding a layer's slots needs that depends on the tokens' positions alone: the key-scale entry of each
    slot, the slots a query sees in full precision and where their keys and values are kept, and the rotation of
    every slot to its frame position as ``k * cos + k[partner] * sin`` over the whole head (:attr:`head`: ``cos`` 1
    and ``sin`` 0 on the channels rotary passes by, ``sin`` signed for the first half of each pair) or per rotary pair
    (:attr:`pairs`)."""

    def __init__(self, layer, position: int, store):
        q = store.quant
        positions = layer.slot_positions()
        self.shared = positions.shape[:2] == (1, 1)
        recent, sink = full_precision(q, positions, position // q.residual)
        if q.key_axis == "channel":
            self.entry = store.block_entry(positions[0, 0] // q.residual)
        if self.shared:
            slots = [mask[0, 0].nonzero()[:, 0] for mask in (recent, sink)]
            self.sources = (positions[0, 0, slots[0]] % q.residual, positions[0, 0, slots[1]])
            self.slots = tuple(slots)
        else:
            self.recent = recent.expand(store.codes.shape[:3])
            self.recent_index = (positions % q.residual).clamp(min=0).expand(store.codes.shape[:3])[..., None]
        self.deltas = (positions - layer.offset).clamp(min=0)  # an empty slot (-1) is never attended to
        self.info, self.device = layer.rotations.info, layer.device
        self.rotary = self.info.rotary_ndims
        self.half = self.rotary // 2
        self.k_dim, self.scratch = store.recent_keys.shape[-1], store.scratch

    @cached_property
    def head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin over the whole head (the eager rebuild's)."""
        return self.scratch.head_tables(self.deltas, self.info, self.k_dim, self.device)

    @cached_property
    def pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin per rotary pair (the compiled rebuild's: half the reads of the whole head's)."""
        return self.scratch.head_tables(self.deltas, self.info, self.k_dim, self.device, pairs=True)

    @property
    def tables(self):
        """cos and sin over the rotary channels (for keys rotated by :func:`~streamlib.core.rotary.rotate`)."""
        return rotation_tables(self.deltas, self.info, self.device)

    def partners(self, keys: torch.Tensor) -> torch.Tensor:
        """Each channel's partner in its rotary pair (itself where rotary passes by)."""
        half, r = self.half, self.rotary
        if r == keys.shape[-1]:
            return torch.roll(keys, half, dims=-1)
        return torch.cat([keys[..., half:r], keys[..., :half], keys[..., r:]], dim=-1)

    @cached_property
    def sources_per_slot(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Where rows share their slots: for each slot, its token's index in the current block's store and in the
        full-precision sinks' store, -1 where it is in neither (the compiled rebuild's form of :meth:`full_precision`)."""
        out = []
        for slots, source in zip(self.slots, self.sources):
            index = torch.full((self.deltas.shape[-1],), -1, dtype=torch.long, device=self.device)
            out.append(index.index_copy_(0, slots, source))
        return tuple(out)

    def full_precision(self, store):
        """(slots, keys, values, index into them) for the full-precision tokens a query sees: the current block's
        from the residual, the sinks' values from their store (their keys are the layer's own ``sink_keys``); none
        where there are none."""
        stores = ((store.recent_keys, store.recent_values), (None, store.sink_values))
        return [(slots, k, v, source) for slots, (k, v), source in zip(self.slots, stores, self.sources)
                if slots.numel()]
