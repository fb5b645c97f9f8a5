"""Quantized storage for a bounded cache layer (:mod:`streamlib.caches.quant` has the semantics and the arithmetic).

A layer that quantizes holds a :class:`QuantizedStore` as a part (``layer.store``), as transformers' quantized cache
layers hold their backend: between calls the store keeps codes (packed ``8 // bits`` to a byte) per slot, the value
scales per slot, the key scales per block (per slot for keys grouped per token), the current block as the model gave
it (keys at their frame positions, turned along when the frame moves) and the full-precision sinks' values. Before a
call it rebuilds every slot's key (rotated to its frame position) and value into a scratch that all quantized layers
of a cache share (a layer's attention is over before the next layer's update) and lets the layer's own ``place`` run
unchanged (the ring, the chunk plans, the bursts, the scores). After the call it keeps the new tokens and, at a
block's end, quantizes the block (its keys turned back to unrotated) into the slots that hold its tokens
(``layer.slot_positions()``). A plain call never crosses a block (a longer one is refused); a chunk crosses blocks
where its plan gives the later blocks' queries the earlier blocks' quantized copies (``block_keys``), which the store
writes (:meth:`QuantizedStore.quantize_crossed`); elsewhere the layer's loops cut chunks at each block. The scratch and
each step's plan of the slots are :mod:`streamlib.caches.quant_slots`.
On a CPU, float32 rebuilds of a shape the process has made often are compiled: :mod:`streamlib.caches.quant_fused`.
"""

from __future__ import annotations

import math

import torch

from ..core.rotary import rotate, rotation_tables
from . import quant_fused
from .quant import (SCALE_DTYPE, KVQuantSpec, compute_dtype, dequantize_per_token, group_size, held_bytes, pack,
                    quantize_per_channel, quantize_per_token, unpack)
from .quant_slots import SlotPlan, SlotScratch


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
        if getattr(step, "compiled", False):  # a compiled decode step: no Python number may change per step
            return self.update_static(layer, key_states, value_states, step)
        q = self.quant
        n, first = key_states.shape[-2], layer.position
        crossing = getattr(step, "block_keys", 0)
        if n > q.room(first) and not crossing:
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
        if first < q.fp_sinks:
            m = min(n, q.fp_sinks - first)
            self.sink_values[:, :, first : first + m] = value_states[:, :, :m]
        if crossing:  # the blocks before the chunk's last: quantized now, the rest as a call within one block
            done = self.quantize_crossed(layer, first, key_states, value_states, out)
            key_states, value_states = key_states[:, :, done:], value_states[:, :, done:]
            first, n = first + done, n - done
        slot = first % q.residual
        self.recent_keys[:, :, slot : slot + n] = key_states  # as the model rotated them, at their frame positions
        self.recent_values[:, :, slot : slot + n] = value_states
        if (first + n) % q.residual == 0:
            self.quantize_block(layer, (first + n) // q.residual - 1)
        return out

    def update_static(self, layer, key_states: torch.Tensor, value_states: torch.Tensor, state):
        """One token in a compiled decode step (``state``: the cache's
        :class:`~streamlib.caches.ring.StaticState`): the rebuild of :func:`~streamlib.caches.quant_fused.
        dequantized_slots` with the slots' positions, key-scale entries, rotations and full-precision sources worked
        out on the device from the stream position, the layer's own static placement, and the token kept in the
        current block. What changes the store's Python state (a block quantized at its end, the frame followed) the
        decoder does on the host around the step."""
        q = self.quant
        positions = state.slot_positions(layer.spec)
        seen = positions >= 0
        recent = torch.where(seen & (positions // q.residual == state.t // q.residual), positions % q.residual, -1)
        sink = torch.where(seen & (positions < q.fp_sinks), positions, -1)
        cos, sin = (table.index_select(0, (positions - state.offset).clamp(min=0)).view(1, 1, len(positions), -1)
                    for table in state.pair_tables(layer, self))
        entry = self.block_entry(positions // q.residual)
        quant_fused.dequantized_slots(
            self.codes, self.value_scale, self.value_zero, self.key_scale, self.key_zero, entry, cos, sin,
            self.recent_keys, self.recent_values, self.sink_values, recent, sink, layer.keys, layer.values,
            **quant_fused.static_arguments(self, layer))
        out = layer.place(key_states, value_states, state)
        slot = torch.remainder(state.t, q.residual).view(1)
        self.recent_keys.index_copy_(2, slot, key_states)
        self.recent_values.index_copy_(2, slot, value_states)
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
        if not quant_fused.rebuild(self, layer, plan):  # compiled, it writes the full-precision tokens too
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
            cos, sin = plan.head
            torch.mul(keys, cos, out=layer.keys)
            layer.keys.addcmul_(plan.partners(keys), sin)
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
        attended to), from their full-precision copies in the residual, into their slots. Where the rows share their
        slots, the block's slots alone are quantized and written (masking every slot cost 2.8 ms a block and layer
        at 4+1020, 4 % of a decode step); where each row holds its own tokens, every slot under the row's mask."""
        q = self.quant
        positions = layer.slot_positions()
        members = (positions >= 0) & (positions // q.residual == block) & (positions >= q.fp_sinks)
        if not bool(members.any()):
            return
        if positions.shape[:2] == (1, 1):
            slots = members[0, 0].nonzero()[:, 0]
            positions = positions[0, 0].index_select(0, slots)
            members = torch.ones_like(slots, dtype=torch.bool)
            keys, values = (t.index_select(2, positions % q.residual) for t in (self.recent_keys, self.recent_values))

            def put(buffer, new):
                buffer.index_copy_(2, slots, new)
        else:
            shape = self.codes.shape[:3]
            members = members.expand(shape)
            index = (positions % q.residual).clamp(min=0).expand(shape)[..., None]
            keys, values = (t.gather(2, index.expand(-1, -1, -1, t.shape[-1]))
                            for t in (self.recent_keys, self.recent_values))

            def put(buffer, new):
                buffer[members] = new[members]
        keys = rotate(keys, *rotation_tables(-(positions - layer.offset).clamp(min=0), layer.rotations.info,
                                             layer.device))  # quantized unrotated
        dtype = self.value_scale.dtype
        value_codes, scale, zero = quantize_per_token(values, q.bits, self.group, dtype)
        put(self.value_scale, scale)
        put(self.value_zero, zero)
        if q.key_axis == "channel":
            key_codes, scale, zero = quantize_per_channel(keys, members, q.bits, dtype)
            entry = int(self.block_entry(torch.tensor(block)))
            self.key_scale[entry] = scale
            self.key_zero[entry] = zero
        else:
            key_codes, scale, zero = quantize_per_token(keys, q.bits, self.key_group, dtype)
            put(self.key_scale, scale)
            put(self.key_zero, zero)
        put(self.codes, pack(torch.cat([key_codes, value_codes], dim=-1), q.bits))
        if q.quantize_sinks and block * q.residual < layer.n_sink:
            self.sinks_requantized = True

    @torch.no_grad()
    def quantize_crossed(self, layer, first: int, key_states: torch.Tensor, value_states: torch.Tensor,
                         out: tuple[torch.Tensor, torch.Tensor]) -> int:
        """A chunk from ``first`` that crosses blocks (its plan's ``block_keys``): quantize each block before its last
        as token by token it would be after the block's last token (from the residual's tokens of the first block and
        the chunk's own; every token of a block is still held then), write their dequantized copies, rotated to their
        frame positions, after the chunk's keys in ``out`` for the later blocks' queries, and keep the codes of the
        tokens the layer still holds. Returns how many of the chunk's tokens those blocks took."""
        q, r = self.quant, self.quant.residual
        start = first // r * r
        end = (first + key_states.shape[-2] - 1) // r * r
        keys = torch.cat([self.recent_keys[:, :, : first - start], key_states[:, :, : end - first]], dim=2)
        values = torch.cat([self.recent_values[:, :, : first - start], value_states[:, :, : end - first]], dim=2)
        tokens = torch.arange(start, end, device=layer.device)
        cos, sin = self.scratch.span_tables(start, end, layer.offset, layer.rotations.info, layer.device)
        keys = rotate(keys, cos, -sin)  # quantized unrotated
        dtype, compute = self.value_scale.dtype, compute_dtype(keys.dtype)
        members = (tokens >= q.fp_sinks).view(-1, r)  # a block's tokens but the full-precision sinks
        key_codes, key_scale, key_zero = quantize_per_channel(keys.unflatten(2, (-1, r)), members, q.bits, dtype)
        value_codes, value_scale, value_zero = quantize_per_token(values, q.bits, self.group, dtype)
        copies_k, copies_v = (buffer[:, :, buffer.shape[2] - (end - start) :] for buffer in out)
        copies_v.copy_(dequantize_per_token(value_codes, value_scale, value_zero, compute))
        dequantized = torch.addcmul(key_zero[..., None, :], key_codes.to(compute), key_scale[..., None, :])
        rotate(dequantized.flatten(2, 3), cos, sin, out=copies_k)
        # the codes of the tokens still held go to their slots, the last blocks' key scales to their entries
        positions = layer.slot_positions()[0, 0]
        slots = ((positions >= max(start, q.fp_sinks)) & (positions < end)).nonzero()[:, 0]
        source = positions[slots] - start
        codes = pack(torch.cat([key_codes.flatten(2, 3), value_codes], dim=-1), q.bits)
        self.codes.index_copy_(2, slots, codes.index_select(2, source))
        self.value_scale.index_copy_(2, slots, value_scale.index_select(2, source))
        self.value_zero.index_copy_(2, slots, value_zero.index_select(2, source))
        blocks = torch.arange(start // r, end // r, device=layer.device)[-(self.key_blocks - 1) :]
        entries = self.block_entry(blocks)
        kept = slice(key_scale.shape[2] - len(blocks), None)
        self.key_scale.index_copy_(0, entries, key_scale[:, :, kept].permute(2, 0, 1, 3))
        self.key_zero.index_copy_(0, entries, key_zero[:, :, kept].permute(2, 0, 1, 3))
        return end - first

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
