"""Quantized storage for a bounded cache layer (:mod:`streamlib.caches.quant` has the semantics and the arithmetic).

A layer that quantizes holds a :class:`QuantizedStore` as a part (``layer.store``), as transformers' quantized cache
layers hold their backend: between calls the store keeps codes (packed ``8 // bits`` to a byte) per slot, the value
scales per slot, the key scales per block (per slot for keys grouped per token), the current block as the model gave
it (keys at their frame positions, turned along when the frame moves) and the full-precision sinks' values. Before a
call it rebuilds every slot's key (rotated to its frame position) and value into a scratch that all quantized layers
of a cache share (a layer's attention is over before the next layer's update) and lets the layer's own ``place`` run
unchanged (the ring, the chunk plans, the bursts, the scores). After the call it keeps the new tokens and, at a
block's end, quantizes the block (its keys turned back to unrotated) into the slots that hold its tokens
(``layer.slot_positions()``). A call never crosses a block: the layer's loops cut chunks there, and a longer plain
call is refused.
On a CPU, float32 rebuilds of a shape the process has made often are compiled: :mod:`streamlib.caches.quant_fused`.
"""

from __future__ import annotations

import math

import torch

from ..core.rotary import rotate, rotation_tables
from . import quant_fused
from .quant import (SCALE_DTYPE, KVQuantSpec, compute_dtype, full_precision, group_size, held_bytes, pack,
                    quantize_per_channel, quantize_per_token, unpack)


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

    def head_tables(self, deltas: torch.Tensor, info, k_dim: int, device):
        """cos and signed sin over the whole head (:class:`SlotPlan`) for rotating by ``deltas`` (>= 0), picked from
        a table of every delta up to the largest asked for so far, made once (a frame's deltas stay below the rebase
        interval plus the capacity)."""
        key = ("head", id(info), k_dim, torch.device(device))
        need = int(deltas.max()) + 1
        if key not in self._heads or self._heads[key][0].shape[0] < need:
            n = max(need, 1024)
            cos, sin = rotation_tables(torch.arange(n), info, device)
            r = cos.shape[-1]
            half, rest = r // 2, (n, k_dim - r)
            self._heads[key] = (torch.cat([cos, cos.new_ones(rest)], dim=-1),
                                torch.cat([-sin[..., :half], sin[..., half:], sin.new_zeros(rest)], dim=-1))
        cos, sin = self._heads[key]
        index = deltas.reshape(-1)
        return (cos.index_select(0, index).view(*deltas.shape, k_dim),
                sin.index_select(0, index).view(*deltas.shape, k_dim))

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
    every slot to its frame position as ``k * cos + k[partner] * sin`` over the whole head (``cos`` 1 and ``sin`` 0
    on the channels rotary passes by; ``sin`` signed for the first half of each pair)."""

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
        self.cos, self.sin = store.scratch.head_tables(self.deltas, self.info, store.recent_keys.shape[-1],
                                                       layer.device)

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

    def full_precision(self, store):
        """(slots, keys, values, index into them) for the full-precision tokens a query sees: the current block's
        from the residual, the sinks' values from their store (their keys are the layer's own ``sink_keys``); none
        where there are none."""
        stores = ((store.recent_keys, store.recent_values), (None, store.sink_values))
        return [(slots, k, v, source) for slots, (k, v), source in zip(self.slots, stores, self.sources)
                if slots.numel()]


class QuantizedStore:
    """One layer's quantized keys and values (see the module's docstring). ``quant``: the cache's
    :class:`~streamlib.caches.quant.KVQuantSpec`; ``scratch``: the full-precision slots its quantized layers share."""

    def __init__(self, quant: KVQuantSpec, scratch: SlotScratch):
        self.quant, self.scratch = quant, scratch

    def allocate(self, layer, batch, heads, k_dim, v_dim, dtype):
        """Allocate the store for ``layer``'s slots; returns the full-precision slots it works on (the scratch)."""
        q, cap, dev = self.quant, layer.capacity, layer.device
        self.group = group_size(v_dim)
        self.key_group = group_size(k_dim)
        for dim in (k_dim, v_dim):
            if dim % q.per_byte:
                raise ValueError(f"bits: {q.bits}-bit codes pack {q.per_byte} to a byte; head size {dim} does not "
                                 "divide")
        # a slot's key and value codes packed as one vector (key channels, then value channels), so that a rebuild
        # unpacks them in one go
        self.codes = torch.zeros(batch, heads, cap, (k_dim + v_dim) // q.per_byte, dtype=torch.uint8, device=dev)
        self.value_scale = torch.zeros(batch, heads, cap, v_dim // self.group, dtype=SCALE_DTYPE, device=dev)
        self.value_zero = torch.zeros_like(self.value_scale)
        if q.key_axis == "channel":
            # one entry for block 0 (it lives as long as the quantized sinks), and enough for the blocks that the
            # slots' consecutive positions can span; entries first, so that picking one per slot is a fast gather
            self.key_blocks = 2 + math.ceil(cap / q.residual)
            self.key_scale = torch.zeros(self.key_blocks, batch, heads, k_dim, dtype=SCALE_DTYPE, device=dev)
        else:
            self.key_scale = torch.zeros(batch, heads, cap, k_dim // self.key_group, dtype=SCALE_DTYPE, device=dev)
        self.key_zero = torch.zeros_like(self.key_scale)
        self.recent_keys = torch.zeros(batch, heads, q.residual, k_dim, dtype=dtype, device=dev)
        self.recent_values = torch.zeros(batch, heads, q.residual, v_dim, dtype=dtype, device=dev)
        # the full-precision sinks' values (their keys, as the model rotated them, are the layer's sink_keys)
        self.sink_values = torch.zeros(batch, heads, q.fp_sinks, v_dim, dtype=dtype, device=dev)
        self.recent_offset = 0  # the frame the residual's keys are rotated in
        self.sinks_requantized = False  # block 0 was quantized and the quantized sinks' keys are not yet rotated
        return self.slots(layer)

    def slots(self, layer):
        """The full-precision slots this layer is rebuilt into: the scratch's buffers of its shape."""
        batch, heads, _, k_dim = self.recent_keys.shape
        return self.scratch(batch, heads, layer.capacity, k_dim, self.recent_values.shape[-1], self.recent_keys.dtype,
                            layer.device)

    def tensors(self) -> list[torch.Tensor]:
        """Everything the store holds (what a beam reorder permutes and the allocated bytes count)."""
        key_scale, key_zero = self.key_scale, self.key_zero
        if self.quant.key_axis == "channel":  # batch first, as for the others
            key_scale, key_zero = key_scale.transpose(0, 1), key_zero.transpose(0, 1)
        return [self.codes, key_scale, key_zero, self.value_scale, self.value_zero,
                self.recent_keys, self.recent_values, self.sink_values]

    def slot_tensors(self) -> list[torch.Tensor]:
        """The store's tensors indexed by slot along dim 2, which move with their tokens (burst eviction)."""
        out = [self.codes, self.value_scale, self.value_zero]
        return out + ([self.key_scale, self.key_zero] if self.quant.key_axis == "token" else [])

    def block_entry(self, block: torch.Tensor) -> torch.Tensor:
        """Where a block's key scales sit: block 0 in entry 0, the others in turn in the rest."""
        return torch.where(block <= 0, 0, 1 + (block - 1) % (self.key_blocks - 1))

    # -- the call ------------------------------------------------------------------------------------------------
    def update(self, layer, key_states: torch.Tensor, value_states: torch.Tensor, step=None):
        """``layer``'s call: rebuild its slots from the store, let it place the tokens, keep them unrotated, and
        quantize a block at its end."""
        q = self.quant
        n, first = key_states.shape[-2], layer.position
        if n > q.room(first):
            raise ValueError(
                f"input_ids: {n} tokens at stream position {first} cross a block of this {q.bits}-bit cache's "
                f"{q.residual}-token full-precision residual (the block is quantized after its last token); feed at "
                f"most {q.room(first)} tokens at once (streamlib's prefill and token_nll do), or pass "
                f"prefill_chunk_size={q.residual} to model.generate")
        if not layer.is_initialized:
            layer.lazy_initialization(key_states, value_states)
        elif layer.keys is None:  # released after the last call
            layer.keys, layer.values = self.slots(layer)
        layer.check_batch(key_states)
        self.follow_frame(layer)
        self.rebuild(layer, first)
        out = layer.place(key_states, value_states, step)
        self.follow_frame(layer)
        slot = first % q.residual
        self.recent_keys[:, :, slot : slot + n] = key_states  # as the model rotated them, at their frame positions
        self.recent_values[:, :, slot : slot + n] = value_states
        if first < q.fp_sinks:
            m = min(n, q.fp_sinks - first)
            self.sink_values[:, :, first : first + m] = value_states[:, :, :m]
        if (first + n) % q.residual == 0:
            self.quantize_block(layer, (first + n) // q.residual - 1)
        return out

    def follow_frame(self, layer) -> None:
        """Keep the residual's keys at their frame positions when the layer's frame moves (a rebase)."""
        if layer.offset != self.recent_offset:
            rotate(self.recent_keys, *layer.rotations(self.recent_offset - layer.offset, layer.device),
                   out=self.recent_keys)
            self.recent_offset = layer.offset

    @torch.no_grad()  # what is rebuilt comes from codes: rounding passes no gradient (the new tokens keep theirs)
    def rebuild(self, layer, position: int) -> None:
        """Fill ``layer``'s slots (the scratch) with every slot's key (rotated to its frame position) and value, as a
        query at ``position`` sees them; and the sinks' keys as first rotated, for the layers that keep them apart.

        Written for few operations per layer (on a CPU a decode step's cost here is the count of tensor operations
        more than their size): one unpack of the key and value codes together, one multiply-add each for keys and
        values, and the rotation as ``k * cos + k[perm] * sin`` over the whole head; what depends on the slots'
        positions alone is worked out once per step for the layers that share it (:meth:`SlotScratch.plan`)."""
        plan = self.scratch.plan(layer, position, self)
        if not quant_fused.rebuild(self, layer, plan):
            self.dequantize(layer, plan)
        if plan.shared:  # one set of slots for every row: the few full-precision ones copied over
            self.copy_full_precision(layer, plan)
        if layer.n_sink:
            layer.sink_delta = None  # the sink slots were overwritten; the layer's place rewrites them
        if layer.n_sink and position < layer.capacity:
            # while the cache fills the layer takes its sink slots as they are: the sinks as first rotated, moved to
            # the frame
            layer.place_sinks(-layer.offset)

    @torch.no_grad()
    def dequantize(self, layer, plan: SlotPlan) -> None:
        """The eager rebuild: every slot's value and rotated key from the codes, the full-precision ones where the
        rows hold their own tokens, and the freshly quantized sinks' keys as first rotated."""
        q = self.quant
        k_dim = self.recent_keys.shape[-1]
        codes = unpack(self.codes, q.bits).to(compute_dtype(layer.values.dtype))
        key_codes, value_codes = codes[..., :k_dim], codes[..., k_dim:]
        values = layer.values
        grouped = values.view(*values.shape[:-1], -1, self.group)
        if values.dtype == codes.dtype:
            torch.mul(value_codes.unflatten(-1, (-1, self.group)), self.value_scale[..., None], out=grouped)
            grouped.add_(self.value_zero[..., None])
        else:  # half-precision models: dequantized in float32
            grouped.copy_(value_codes.unflatten(-1, (-1, self.group)) * self.value_scale[..., None]
                          + self.value_zero[..., None])
        if q.key_axis == "channel":  # (entries, B, H, d) picked per slot, then as (B, H, slots, d)
            keys = torch.addcmul(self.key_zero.index_select(0, plan.entry).permute(1, 2, 0, 3), key_codes,
                                 self.key_scale.index_select(0, plan.entry).permute(1, 2, 0, 3))
        else:
            keys = key_codes.unflatten(-1, (-1, self.key_group)) * self.key_scale[..., None]
            keys = keys.add_(self.key_zero[..., None]).flatten(-2)
        if not plan.shared:  # each row (H2O's kv heads) holds its own tokens
            recent = plan.recent[..., None]
            index = plan.recent_index
            values.copy_(torch.where(recent, self.recent_values.gather(2, index.expand(-1, -1, -1, values.shape[-1])),
                                     values))
        if self.sinks_requantized:  # the quantized sinks as first rotated (at their own positions, frame 0), once
            cos, sin = rotation_tables(torch.arange(layer.n_sink), layer.rotations.info, layer.device)
            rotate(keys[:, :, : layer.n_sink], cos, sin, out=layer.sink_keys)
            self.sinks_requantized = False
        if keys.dtype == torch.float32:
            torch.mul(keys, plan.cos, out=layer.keys)
            layer.keys.addcmul_(plan.partners(keys), plan.sin)
        else:  # rotate in float32, as the model does
            cos, sin = plan.tables
            rotate(keys, cos, sin, out=layer.keys)
        if not plan.shared:  # the current block's keys, kept at their frame positions
            index = plan.recent_index.expand(-1, -1, -1, keys.shape[-1])
            layer.keys.copy_(torch.where(plan.recent[..., None], self.recent_keys.gather(2, index), layer.keys))

    def copy_full_precision(self, layer, plan: SlotPlan) -> None:
        """The slots a query sees in full precision over the rebuilt ones, where the rows share their slots: the
        current block's keys (at their frame positions) and values, the full-precision sinks' values (their keys are
        the layer's own ``sink_keys``)."""
        for slots, store_k, store_v, source in plan.full_precision(self):
            layer.values.index_copy_(2, slots, store_v.index_select(2, source))
            if store_k is not None:
                layer.keys.index_copy_(2, slots, store_k.index_select(2, source))

    def quantize_block(self, layer, block: int) -> None:
        """After the step of ``block``'s last token: quantize the block's tokens the layer holds (those that step
        attended to), from their full-precision copies in the residual, into their slots."""
        q = self.quant
        positions = layer.slot_positions()
        shape = self.codes.shape[:3]
        members = (positions >= 0) & (positions // q.residual == block) & (positions >= q.fp_sinks)
        if not bool(members.any()):
            return
        members = members.expand(shape)
        index = (positions % q.residual).clamp(min=0).expand(shape)[..., None]
        keys = self.recent_keys.gather(2, index.expand(-1, -1, -1, self.recent_keys.shape[-1]))
        keys = rotate(keys, *rotation_tables(-(positions - layer.offset).clamp(min=0), layer.rotations.info,
                                             layer.device))  # quantized unrotated
        values = self.recent_values.gather(2, index.expand(-1, -1, -1, self.recent_values.shape[-1]))
        dtype = self.value_scale.dtype
        value_codes, scale, zero = quantize_per_token(values, q.bits, self.group, dtype)
        self.value_scale[members] = scale[members]
        self.value_zero[members] = zero[members]
        if q.key_axis == "channel":
            key_codes, scale, zero = quantize_per_channel(keys, members, q.bits, dtype)
            entry = int(self.block_entry(torch.tensor(block)))
            self.key_scale[entry] = scale
            self.key_zero[entry] = zero
        else:
            key_codes, scale, zero = quantize_per_token(keys, q.bits, self.key_group, dtype)
            self.key_scale[members] = scale[members]
            self.key_zero[members] = zero[members]
        self.codes[members] = pack(torch.cat([key_codes, value_codes], dim=-1), q.bits)[members]
        if q.quantize_sinks and block * q.residual < layer.n_sink:
            self.sinks_requantized = True

    # -- what it holds ---------------------------------------------------------------------------------------------
    def kv_bytes(self, layer) -> tuple[int, int]:
        """(bytes allocated for the store and the sinks' working copy, bytes holding the tokens the next query sees:
        codes, their scales and zero points, the full-precision residual and sinks). The scratch shared by the layers
        is counted once by the cache."""
        if not layer.is_initialized:
            return 0, 0
        allocated = sum(t.numel() * t.element_size() for t in self.tensors())
        if layer.n_sink:
            allocated += layer.sink_keys.numel() * layer.sink_keys.element_size()
        batch, heads, _, k_dim = self.recent_keys.shape
        held = layer.held_positions()
        resident = sum(held_bytes(self.quant, row, layer.position, k_dim, self.recent_values.shape[-1],
                                  self.recent_values.element_size()) for row in held)
        return allocated, resident * batch * (heads // held.shape[0])
