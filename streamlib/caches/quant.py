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

This module is the spec and the arithmetic (codes, scales, packing, the bytes held); the storage a quantized layer
holds is :mod:`streamlib.caches.quant_store`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.checks import check_bool, check_int

BITS = (2, 4, 8)  # 16: no quantization
MAX_GROUP = 32  # KIVI's group size
SCALE_DTYPE = torch.float16  # scales and zero points, whatever the model's dtype (KIVI keeps them in the model's fp16)
SCALE_BYTES = 2


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
    """What codes are computed and dequantized in for keys and values of ``dtype``: float64 for float64, else
    float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def quantize(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, levels: int, dtype: torch.dtype):
    """Codes of ``x`` for the range ``[lo, hi]`` (broadcast to ``x``) and the scale and zero point, stored in
    ``dtype`` (:data:`SCALE_DTYPE` in the caches); the codes are computed with the stored scale and zero, so
    dequantizing them is as close as it gets. A range of zero width (or one whose scale rounds to 0) gives code 0 and
    the zero point back."""
    scale = ((hi - lo) / levels).to(dtype)
    zero = lo.to(dtype)
    s, z = scale.to(x.dtype), zero.to(x.dtype)
    codes = torch.where(s > 0, (x - z) / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(x))
    return codes.round().clamp(0, levels).to(torch.uint8), scale, zero


def quantize_per_token(x: torch.Tensor, bits: int, group: int, dtype: torch.dtype):
    """``x`` (..., d) in groups of ``group`` channels per token: codes (..., d), scale and zero (..., d // group)."""
    xc = x.to(compute_dtype(x.dtype)).unflatten(-1, (-1, group))
    codes, scale, zero = quantize(xc, xc.amin(-1, keepdim=True), xc.amax(-1, keepdim=True), 2**bits - 1, dtype)
    return codes.flatten(-2), scale[..., 0], zero[..., 0]


def dequantize_per_token(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                         dtype: torch.dtype | None = None) -> torch.Tensor:
    """Values from codes (..., d) and their scale and zero point per group (..., d // group), in ``dtype`` (default:
    float64 for float64 scales, else float32)."""
    dtype = dtype or compute_dtype(scale.dtype)
    group = codes.shape[-1] // scale.shape[-1]
    out = codes.unflatten(-1, (-1, group)).to(dtype) * scale[..., None].to(dtype) + zero[..., None].to(dtype)
    return out.flatten(-2)


def quantize_per_channel(x: torch.Tensor, members: torch.Tensor, bits: int, dtype: torch.dtype):
    """``x`` (B, H, n, d) quantized per channel over the tokens where ``members`` (broadcast to (B, H, n)) is true:
    codes (B, H, n, d) (meaningful at the members), scale and zero (B, H, d)."""
    xc = x.to(compute_dtype(x.dtype))
    m = members.expand(xc.shape[:-1])[..., None]
    lo = torch.where(m, xc, math.inf).amin(-2)
    hi = torch.where(m, xc, -math.inf).amax(-2)
    lo, hi = torch.where(torch.isfinite(lo), lo, 0), torch.where(torch.isfinite(hi), hi, 0)
    codes, scale, zero = quantize(xc, lo[..., None, :], hi[..., None, :], 2**bits - 1, dtype)
    return codes, scale[..., 0, :], zero[..., 0, :]


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``8 // bits`` codes to a byte along the last dim, in planes: byte ``i`` of ``n / per`` holds the codes of
    channels ``i``, ``i + n/per``, ``i + 2n/per``, ... (the first in the low bits), so that unpacking writes each plane
    as one contiguous run of channels instead of interleaving them."""
    per = 8 // bits
    if per == 1:
        return codes
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=codes.device)
    return (codes.unflatten(-1, (per, -1)) << shifts[:, None]).sum(-2, dtype=torch.uint8)


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """The codes :func:`pack` packed, one plane after the other."""
    per = 8 // bits
    if per == 1:
        return packed
    mask = 2**bits - 1
    return torch.cat([packed & mask] + [(packed >> (bits * j)) & mask for j in range(1, per)], dim=-1)


def full_precision(quant: KVQuantSpec, positions: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which of ``positions`` (-1: an empty slot) a query of ``block`` sees in full precision: (in its own block, a
    full-precision sink)."""
    seen = positions >= 0
    return seen & (positions // quant.residual == block), seen & (positions < quant.fp_sinks)


def held_bytes(quant: KVQuantSpec, held: torch.Tensor, position: int, k_dim: int, v_dim: int, element: int) -> int:
    """Bytes one kv head of one layer holds for the tokens at positions ``held`` when ``position`` tokens have been
    fed: the full-precision ones (the current block, the sinks unless quantized) at ``element`` bytes a value; the
    others as codes, a value scale and zero point per group, and the key scales and zero points (per live block for
    keys per channel, per group for keys per token), each of :data:`SCALE_BYTES`."""
    recent, sink = full_precision(quant, held, position // quant.residual)
    fp = recent | sink
    quantized = held[~fp]
    per_token = (k_dim + v_dim) * quant.bits // 8 + 2 * SCALE_BYTES * v_dim // group_size(v_dim)
    if quant.key_axis == "channel":
        key_scales = 2 * SCALE_BYTES * k_dim * len(torch.unique(quantized // quant.residual))
    else:
        key_scales = 2 * SCALE_BYTES * (k_dim // group_size(k_dim)) * len(quantized)
    return int(fp.sum()) * (k_dim + v_dim) * element + len(quantized) * per_token + key_scales
