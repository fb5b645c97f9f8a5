"""Quantized storage for a bounded cache layer (:mod:`streamlib.caches.quant` has the semantics and the arithmetic).

A layer that quantizes holds a :class:`QuantizedStore` as a part (``layer.store``), as transformers' quantized cache
layers hold their backend: between calls the store keeps codes (packed ``8 // bits`` to a byte) per slot, the value
scales per slot, the key scales per block (per slot for keys grouped per token), the current block unrotated and the
full-precision sinks. Before a call it rebuilds every slot's key (rotated to its frame position) and value into a
scratch that all quantized layers of a cache share (a layer's attention is over before the next layer's update) and
lets the layer's own ``place`` run unchanged (the ring, the chunk plans, the bursts, the scores). After the call it
keeps the new tokens unrotated and, at a block's end, quantizes the block into the slots that hold its tokens
(``layer.slot_positions()``). A call never crosses a block: the layer's loops cut chunks there, and a longer plain
call is refused.
"""

from __future__ import annotations

import math

import torch

from ..core.rotary import rotate, rotation_tables
from .quant import (KVQuantSpec, dequantize_per_token, full_precision, group_size, held_bytes, pack,
                    quantize_per_channel, quantize_per_token, unpack)


class SlotScratch:
    """The full-precision keys and values a quantized layer is rebuilt into before each call, one buffer per device and
    shape shared by every quantized layer of a cache, and the rotation tables of a step, which the layers of one kind
    share."""

    def __init__(self):
        self._buffers: dict = {}
        self._tables: dict = {}

    def __call__(self, batch, heads, slots, k_dim, v_dim, dtype, device):
        key = (batch, heads, slots, k_dim, v_dim, dtype, torch.device(device))
        if key not in self._buffers:
            self._buffers[key] = (torch.zeros(batch, heads, slots, k_dim, dtype=dtype, device=device),
                                  torch.zeros(batch, heads, slots, v_dim, dtype=dtype, device=device))
        return self._buffers[key]

    def tables(self, name: str, deltas: torch.Tensor, stamp: tuple, info, device):
        """Rotation tables by ``deltas``, computed once per ``stamp`` (the step) for every layer that asks."""
        key = (name, stamp, torch.device(device))
        if key not in self._tables:
            if len(self._tables) > 16:
                self._tables.clear()
            self._tables[key] = rotation_tables(deltas, info, device)
        return self._tables[key]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for pair in self._buffers.values() for t in pair)


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
        for name, dim in (("key", k_dim), ("value", v_dim)):
            if dim % q.per_byte:
                raise ValueError(f"bits: {q.bits}-bit codes pack {q.per_byte} to a byte; head size {dim} does not "
                                 "divide")
            setattr(self, f"{name}_codes", torch.zeros(batch, heads, cap, dim // q.per_byte, dtype=torch.uint8,
                                                       device=dev))
        self.value_scale = torch.zeros(batch, heads, cap, v_dim // self.group, dtype=dtype, device=dev)
        self.value_zero = torch.zeros_like(self.value_scale)
        if q.key_axis == "channel":
            # one entry for block 0 (it lives as long as the quantized sinks), and enough for the blocks that the
            # slots' consecutive positions can span
            self.key_blocks = 2 + math.ceil(cap / q.residual)
            self.key_scale = torch.zeros(batch, heads, self.key_blocks, k_dim, dtype=dtype, device=dev)
        else:
            self.key_scale = torch.zeros(batch, heads, cap, k_dim // self.key_group, dtype=dtype, device=dev)
        self.key_zero = torch.zeros_like(self.key_scale)
        self.recent_keys = torch.zeros(batch, heads, q.residual, k_dim, dtype=dtype, device=dev)
        self.recent_values = torch.zeros(batch, heads, q.residual, v_dim, dtype=dtype, device=dev)
        n = q.fp_sinks
        self.sink_store_keys = torch.zeros(batch, heads, n, k_dim, dtype=dtype, device=dev)
        self.sink_store_values = torch.zeros(batch, heads, n, v_dim, dtype=dtype, device=dev)
        return self.scratch(batch, heads, cap, k_dim, v_dim, dtype, dev)

    def tensors(self) -> list[torch.Tensor]:
        """Everything the store holds (what a beam reorder permutes and the allocated bytes count)."""
        return [self.key_codes, self.value_codes, self.key_scale, self.key_zero, self.value_scale, self.value_zero,
                self.recent_keys, self.recent_values, self.sink_store_keys, self.sink_store_values]

    def slot_tensors(self) -> list[torch.Tensor]:
        """The store's tensors indexed by slot along dim 2, which move with their tokens (burst eviction)."""
        out = [self.key_codes, self.value_codes, self.value_scale, self.value_zero]
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
        layer.check_batch(key_states)
        self.rebuild(layer, first)
        frame = first - layer.offset
        cos, sin = self.scratch.tables("in", -(frame + torch.arange(n)), (first, n, layer.offset),
                                       layer.rotations.info, layer.device)
        unrotated = rotate(key_states, cos, sin)
        out = layer.place(key_states, value_states, step)
        slot = first % q.residual
        self.recent_keys[:, :, slot : slot + n] = unrotated
        self.recent_values[:, :, slot : slot + n] = value_states
        if first < q.fp_sinks:
            m = min(n, q.fp_sinks - first)
            self.sink_store_keys[:, :, first : first + m] = unrotated[:, :, :m]
            self.sink_store_values[:, :, first : first + m] = value_states[:, :, :m]
        if (first + n) % q.residual == 0:
            self.quantize_block(layer, (first + n) // q.residual - 1)
        return out

    def rebuild(self, layer, position: int) -> None:
        """Fill ``layer``'s slots (the scratch) with every slot's key (rotated to its frame position) and value, as a
        query at ``position`` sees them; and the sinks' keys as first rotated, for the layers that keep them apart."""
        q = self.quant
        positions = layer.slot_positions()
        shape = self.key_codes.shape[:3]
        values = dequantize_per_token(unpack(self.value_codes, q.bits), self.value_scale, self.value_zero)
        key_codes = unpack(self.key_codes, q.bits)
        if q.key_axis == "channel":
            entry = self.block_entry(positions[0, 0] // q.residual)
            keys = (key_codes.to(self.key_scale.dtype) * self.key_scale.index_select(2, entry)
                    + self.key_zero.index_select(2, entry))
        else:
            keys = dequantize_per_token(key_codes, self.key_scale, self.key_zero)
        recent, sink = full_precision(q, positions, position // q.residual)
        if positions.shape[:2] == (1, 1):  # one set of slots for every row: copy the few full-precision ones
            for mask, store_k, store_v, index in ((recent, self.recent_keys, self.recent_values, q.residual),
                                                  (sink, self.sink_store_keys, self.sink_store_values, None)):
                slots = mask[0, 0].nonzero()[:, 0]
                if slots.numel():
                    source = positions[0, 0, slots] % index if index else positions[0, 0, slots]
                    keys[:, :, slots] = store_k[:, :, source]
                    values[:, :, slots] = store_v[:, :, source]
        else:  # each row (H2O's kv heads) holds its own tokens
            index = (positions % q.residual).clamp(min=0).expand(shape)[..., None]
            keys = torch.where(recent[..., None],
                               self.recent_keys.gather(2, index.expand(-1, -1, -1, keys.shape[-1])), keys)
            values = torch.where(recent[..., None],
                                 self.recent_values.gather(2, index.expand(-1, -1, -1, values.shape[-1])), values)
        if layer.n_sink:  # the sinks as first rotated: at their own positions, frame 0
            cos, sin = self.scratch.tables("sinks", torch.arange(layer.n_sink), (layer.n_sink,), layer.rotations.info,
                                           layer.device)
            rotate(keys[:, :, : layer.n_sink], cos, sin, out=layer.sink_keys)
            layer.sink_delta = None  # the sink slots are rewritten below at their frame positions
        deltas = positions - layer.offset
        if layer.slots_follow_position:  # the same tables for every layer of the step
            cos, sin = self.scratch.tables("slots", deltas, (position, layer.offset), layer.rotations.info,
                                           layer.device)
        else:
            cos, sin = rotation_tables(deltas, layer.rotations.info, layer.device)
        rotate(keys, cos, sin, out=layer.keys)
        layer.values.copy_(values)

    def quantize_block(self, layer, block: int) -> None:
        """After the step of ``block``'s last token: quantize the block's tokens the layer holds (those that step
        attended to), from their full-precision copies in the residual, into their slots."""
        q = self.quant
        positions = layer.slot_positions()
        shape = self.key_codes.shape[:3]
        members = (positions >= 0) & (positions // q.residual == block) & (positions >= q.fp_sinks)
        if not bool(members.any()):
            return
        members = members.expand(shape)
        index = (positions % q.residual).clamp(min=0).expand(shape)[..., None]
        keys = self.recent_keys.gather(2, index.expand(-1, -1, -1, self.recent_keys.shape[-1]))
        values = self.recent_values.gather(2, index.expand(-1, -1, -1, self.recent_values.shape[-1]))
        dtype = self.value_scale.dtype
        codes, scale, zero = quantize_per_token(values, q.bits, self.group, dtype)
        self._write(members, self.value_codes, pack(codes, q.bits), self.value_scale, scale, self.value_zero, zero)
        if q.key_axis == "channel":
            codes, scale, zero = quantize_per_channel(keys, members, q.bits, dtype)
            entry = int(self.block_entry(torch.tensor(block)))
            self.key_scale[:, :, entry] = scale
            self.key_zero[:, :, entry] = zero
            self.key_codes[members] = pack(codes, q.bits)[members]
        else:
            codes, scale, zero = quantize_per_token(keys, q.bits, self.key_group, dtype)
            self._write(members, self.key_codes, pack(codes, q.bits), self.key_scale, scale, self.key_zero, zero)

    @staticmethod
    def _write(members, codes_dst, codes, scale_dst, scale, zero_dst, zero) -> None:
        codes_dst[members] = codes[members]
        scale_dst[members] = scale[members]
        zero_dst[members] = zero[members]

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
                                  self.value_scale.element_size()) for row in held)
        return allocated, resident * batch * (heads // held.shape[0])
