"""Quantized keys and values for the bounded caches: the other axis of KV memory, bits per kept token.

KIVI (Liu et al., *KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache*, ICML 2024, arXiv 2402.02750):
asymmetric uniform quantization with a scale and a zero point per group; values grouped per token (``group``
channels of one token share them), keys per channel (one scale per channel for a block of tokens), and the most
recent tokens kept in full precision until a whole block of them can be quantized together.

The semantics every cache here follows (and ``tests/reference.py`` implements from scratch):

- The stream is cut into blocks of ``residual`` consecutive positions. A query sees the earlier tokens of its own
  block in full precision (the residual: 0 to ``residual - 1`` tokens); every older token it sees as quantized,
  then dequantized. After the step of a block's last token the block is quantized, from its tokens that step
  attended to (the cache's contents then).
- Values: per token, ``group`` channels per scale and zero point. Keys: per channel over the block (KIVI) for the
  caches that evict in stream order (StreamingLLM, Window, burst eviction), whose blocks leave in order; per token
  like the values for TOVA and H2O, which evict single tokens anywhere (a block's scales would live as long as its
  last survivor, towards one block per kept token).
- Sinks: the first ``n_sink`` tokens stay in full precision unless ``quantize_sinks``; quantized, they belong to
  block 0 like any token.
- Keys are quantized *before* rotary. With position shift a cached key's position changes at every step (its slot
  index); quantizing the unrotated key makes what is stored independent of where the key sits, so the cache moves
  it (the sinks' rotation, re-basing the frame) as exactly as a full-precision key, and the error does not depend
  on the position at which it happened to be quantized. The model hands the cache rotated keys; the cache turns them
  back by their frame position (float64 angles, an error of a few float32 ulps) before storing them.

Storage: codes of ``bits`` bits packed ``8 // bits`` to a byte per slot, scales and zero points in the model's dtype,
the residual block and the full-precision sinks unrotated in the model's dtype. Before each call a layer rebuilds its
keys (rotated to their frame positions) and values in a scratch buffer that all quantized layers of a cache share, so
between steps only the codes, scales, residual and sinks are held: the bytes :meth:`QuantizedLayer.kv_bytes` counts.
A call never crosses a block boundary (the loops cut chunks there; a longer plain call is refused).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .checks import check_bool, check_int
from .rotary import rotate, rotation_tables

BITS = (2, 4, 8)  # 16: no quantization
MAX_GROUP = 32  # KIVI's group size


@dataclass(frozen=True)
class KVQuantSpec:
    """How a cache quantizes: ``bits`` per code, blocks of ``residual`` tokens, whether keys are grouped per channel
    over a block (``key_axis="channel"``) or per token, and which sinks stay in full precision."""

    bits: int
    residual: int
    key_axis: str = "channel"
    n_sink: int = 0
    quantize_sinks: bool = False

    def __post_init__(self):
        check_bits(self.bits)
        check_int("residual", self.residual, 1)
        if self.key_axis not in ("channel", "token"):
            raise ValueError(f"key_axis must be 'channel' or 'token'; got {self.key_axis!r}")

    @property
    def levels(self) -> int:
        return 2**self.bits - 1

    @property
    def per_byte(self) -> int:
        return 8 // self.bits

    @property
    def fp_sinks(self) -> int:
        """Tokens kept in full precision at the start of the stream."""
        return 0 if self.quantize_sinks else self.n_sink

    def room(self, position: int) -> int:
        """Tokens a call starting at ``position`` may bring: up to the end of its block."""
        return self.residual - position % self.residual


def check_bits(bits) -> None:
    if isinstance(bits, bool) or bits not in (*BITS, 16):
        raise ValueError(f"bits must be one of 16 (no quantization), 8, 4 or 2; got {bits!r}")


def check_quant_fields(bits, residual, quantize_sinks=False) -> None:
    """The checks of a policy's quantization fields, naming each."""
    check_bits(bits)
    check_int("residual", residual, 1)
    check_bool("quantize_sinks", quantize_sinks)


def group_size(head_dim: int) -> int:
    """Channels per value scale: the largest divisor of ``head_dim`` up to 32 (32 for head sizes 64, 128, 256; 20
    for Pythia-2.8b's 80)."""
    return max(g for g in range(1, MAX_GROUP + 1) if head_dim % g == 0)


def quant_label(bits: int, residual: int, quantize_sinks: bool = False, n_sink: int = 0) -> str:
    """What a policy's label adds for its quantization: ``" int4"``, ``" int4 R64"``, ``", sinks int4"``."""
    if bits == 16:
        return ""
    out = f" int{bits}" + (f" R{residual}" if residual != 32 else "")
    return out + (f", sinks int{bits}" if quantize_sinks and n_sink else "")


# -------------------------------------------------------------------------------------------- the arithmetic --


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def quantize(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, levels: int, dtype: torch.dtype):
    """Codes of ``x`` for the range ``[lo, hi]`` (broadcast to ``x``) and the scale and zero point, stored in
    ``dtype``; the codes are computed with the stored scale and zero, so dequantizing them is as close as it gets.
    A range of zero width gives code 0 and the value back exactly."""
    scale = ((hi - lo) / levels).to(dtype)
    zero = lo.to(dtype)
    s, z = scale.to(x.dtype), zero.to(x.dtype)
    codes = torch.where(s > 0, (x - z) / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(x))
    return codes.round().clamp(0, levels).to(torch.uint8), scale, zero


def quantize_per_token(x: torch.Tensor, bits: int, group: int, dtype: torch.dtype):
    """``x`` (..., d) in groups of ``group`` channels per token: codes (..., d), scale and zero (..., d // group)."""
    xc = x.to(compute_dtype(dtype)).unflatten(-1, (-1, group))
    codes, scale, zero = quantize(xc, xc.amin(-1, keepdim=True), xc.amax(-1, keepdim=True), 2**bits - 1, dtype)
    return codes.flatten(-2), scale[..., 0], zero[..., 0]


def dequantize_per_token(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    group = codes.shape[-1] // scale.shape[-1]
    out = codes.unflatten(-1, (-1, group)).to(scale.dtype) * scale[..., None] + zero[..., None]
    return out.flatten(-2)


def quantize_per_channel(x: torch.Tensor, members: torch.Tensor, bits: int, dtype: torch.dtype):
    """``x`` (B, H, n, d) quantized per channel over the tokens where ``members`` (broadcast to (B, H, n)) is true:
    codes (B, H, n, d) (meaningful at the members), scale and zero (B, H, d)."""
    xc = x.to(compute_dtype(dtype))
    m = members.expand(xc.shape[:-1])[..., None]
    lo = torch.where(m, xc, math.inf).amin(-2)
    hi = torch.where(m, xc, -math.inf).amax(-2)
    lo, hi = torch.where(torch.isfinite(lo), lo, 0), torch.where(torch.isfinite(hi), hi, 0)
    codes, scale, zero = quantize(xc, lo[..., None, :], hi[..., None, :], 2**bits - 1, dtype)
    return codes, scale[..., 0, :], zero[..., 0, :]


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``8 // bits`` codes to a byte along the last dim (the first code in the low bits)."""
    per = 8 // bits
    if per == 1:
        return codes
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=codes.device)
    return (codes.unflatten(-1, (-1, per)) << shifts).sum(-1, dtype=torch.uint8)


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    per = 8 // bits
    if per == 1:
        return packed
    # one shift and mask per code position (about twice as fast on a CPU as one broadcast shift)
    mask = 2**bits - 1
    return torch.stack([(packed >> (bits * j)) & mask for j in range(per)], dim=-1).flatten(-2)


def full_precision(quant: KVQuantSpec, positions: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which of ``positions`` (-1: an empty slot) a query of ``block`` sees in full precision: (in its own block, a
    full-precision sink)."""
    seen = positions >= 0
    return seen & (positions // quant.residual == block), seen & (positions < quant.fp_sinks)


def held_bytes(quant: KVQuantSpec, held: torch.Tensor, position: int, k_dim: int, v_dim: int, element: int) -> int:
    """Bytes one kv head of one layer holds for the tokens at positions ``held`` when ``position`` tokens have been
    fed: the full-precision ones (the current block, the sinks unless quantized) at ``element`` bytes a value; the
    others as codes, a value scale and zero point per group, and the key scales and zero points (per live block for
    keys per channel, per group for keys per token)."""
    recent, sink = full_precision(quant, held, position // quant.residual)
    fp = recent | sink
    quantized = held[~fp]
    per_token = (k_dim + v_dim) * quant.bits // 8 + 2 * element * v_dim // group_size(v_dim)
    if quant.key_axis == "channel":
        key_scales = 2 * element * k_dim * len(torch.unique(quantized // quant.residual))
    else:
        key_scales = 2 * element * (k_dim // group_size(k_dim)) * len(quantized)
    return int(fp.sum()) * (k_dim + v_dim) * element + len(quantized) * per_token + key_scales


# ------------------------------------------------------------------------------------------------ the storage --


class SlotScratch:
    """The full-precision keys and values a quantized layer is rebuilt into before each call, one buffer per device and
    shape shared by every quantized layer of a cache (a layer's attention is done before the next layer's update), and
    the rotation tables of a step, which the layers of one kind share."""

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


class QuantizedLayer:
    """Mixin placed before a bounded layer class (``SinkWindowLayer``, ``BurstLayer``, ``ScoredLayer``): the layer runs
    its own logic on full-precision slots rebuilt from the quantized store before each call, and the store takes the
    call's tokens after it (see the module's docstring). The layer class provides ``slot_positions()``: the stream
    position held in each slot, (1 or batch, 1 or heads, slots), -1 for an empty slot."""

    quant: KVQuantSpec
    scratch: SlotScratch

    def slot_buffers(self, batch, heads, k_dim, v_dim, dtype):
        """The slots the layer works on: the shared scratch; and the store, allocated here."""
        q, cap, dev = self.quant, self.capacity, self.device
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

    def store_tensors(self) -> list[torch.Tensor]:
        return [self.key_codes, self.value_codes, self.key_scale, self.key_zero, self.value_scale, self.value_zero,
                self.recent_keys, self.recent_values, self.sink_store_keys, self.sink_store_values]

    def slot_tensors(self) -> list[torch.Tensor]:
        """Tensors indexed by slot along dim 2, which move with their tokens (burst eviction)."""
        out = [self.keys, self.values, self.key_codes, self.value_codes, self.value_scale, self.value_zero]
        return out + ([self.key_scale, self.key_zero] if self.quant.key_axis == "token" else [])

    def block_entry(self, block: torch.Tensor) -> torch.Tensor:
        """Where a block's key scales sit: block 0 in entry 0, the others in turn in the rest."""
        return torch.where(block <= 0, 0, 1 + (block - 1) % (self.key_blocks - 1))

    # -- the call ------------------------------------------------------------------------------------------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, step=None):
        q = self.quant
        n, first = key_states.shape[-2], self.position
        if n > q.room(first):
            raise ValueError(
                f"input_ids: {n} tokens at stream position {first} cross a block of this {q.bits}-bit cache's "
                f"{q.residual}-token full-precision residual (the block is quantized after its last token); feed at "
                f"most {q.room(first)} tokens at once (streamlib's prefill and token_nll do), or pass "
                f"prefill_chunk_size={q.residual} to model.generate")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.check_batch(key_states)
        self.rebuild(first)
        frame = first - self.offset
        cos, sin = self.scratch.tables("in", -(frame + torch.arange(n)), (first, n, self.offset),
                                       self.rotations.info, self.device)
        unrotated = rotate(key_states, cos, sin)
        out = super().update(key_states, value_states, step)
        slot = first % q.residual
        self.recent_keys[:, :, slot : slot + n] = unrotated
        self.recent_values[:, :, slot : slot + n] = value_states
        if first < q.fp_sinks:
            m = min(n, q.fp_sinks - first)
            self.sink_store_keys[:, :, first : first + m] = unrotated[:, :, :m]
            self.sink_store_values[:, :, first : first + m] = value_states[:, :, :m]
        if (first + n) % q.residual == 0:
            self.quantize_block((first + n) // q.residual - 1)
        return out

    def rebuild(self, position: int) -> None:
        """Fill the scratch with every slot's key (rotated to its frame position) and value, as a query at
        ``position`` sees them; and the sinks' keys as first rotated, for the layers that keep them apart."""
        q = self.quant
        positions = self.slot_positions()
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
        if hasattr(self, "sink_keys") and self.n_sink:  # the sinks as first rotated: at their own positions, frame 0
            cos, sin = self.scratch.tables("sinks", torch.arange(self.n_sink), (self.n_sink,), self.rotations.info,
                                           self.device)
            rotate(keys[:, :, : self.n_sink], cos, sin, out=self.sink_keys)
            self.sink_delta = None  # the sink slots are rewritten below at their frame positions
        deltas = positions - self.offset
        if self.slots_follow_position:  # the same tables for every layer of the step
            cos, sin = self.scratch.tables("slots", deltas, (position, self.offset), self.rotations.info, self.device)
        else:
            cos, sin = rotation_tables(deltas, self.rotations.info, self.device)
        rotate(keys, cos, sin, out=self.keys)
        self.values.copy_(values)

    def quantize_block(self, block: int) -> None:
        """After the step of ``block``'s last token: quantize the block's tokens the cache holds (those that step
        attended to), from their full-precision copies in the residual, into their slots."""
        q = self.quant
        positions = self.slot_positions()
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
    def shift_frame(self, shift: int) -> None:
        """The store keeps keys unrotated: moving the frame moves the offset the next rebuild rotates by."""
        self.offset += shift
        if hasattr(self, "sink_delta"):
            self.sink_delta = None

    def kv_bytes(self) -> tuple[int, int]:
        """(bytes allocated for the store and the sinks' working copy, bytes holding the tokens the next query sees:
        codes, their scales and zero points, the full-precision residual and sinks). The scratch shared by the layers
        is counted once by the cache."""
        if not self.is_initialized:
            return 0, 0
        allocated = sum(t.numel() * t.element_size() for t in self.store_tensors())
        if getattr(self, "sink_keys", None) is not None:
            allocated += self.sink_keys.numel() * self.sink_keys.element_size()
        return allocated, self.resident_bytes()

    def resident_bytes(self) -> int:
        batch, heads, _, k_dim = self.recent_keys.shape
        held = self.held_positions()
        total = sum(held_bytes(self.quant, row, self.position, k_dim, self.recent_values.shape[-1],
                               self.value_scale.element_size()) for row in held)
        return total * batch * (heads // held.shape[0])

    def batch_tensors(self) -> list[torch.Tensor]:
        return super().batch_tensors() + self.store_tensors()


_QUANTIZED: dict[type, type] = {}


def layer_class(base: type, quant: KVQuantSpec | None) -> type:
    """``base``, or its quantized form when ``quant`` is given."""
    if quant is None:
        return base
    if base not in _QUANTIZED:
        _QUANTIZED[base] = type(f"Quantized{base.__name__}", (QuantizedLayer, base), {})
    return _QUANTIZED[base]


def attach(layers: list, quant: KVQuantSpec | None) -> SlotScratch | None:
    """Give the quantized layers among ``layers`` their settings and one shared scratch; returns the scratch."""
    if quant is None:
        return None
    scratch = SlotScratch()
    for layer in layers:
        if isinstance(layer, QuantizedLayer):
            layer.quant, layer.scratch = quant, scratch
    return scratch
