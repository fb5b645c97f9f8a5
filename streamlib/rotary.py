"""Rotary position embedding (RoPE) as GPT-NeoX applies it, for moving cached keys to other positions.

GPT-NeoX rotates the first ``rotary_ndims`` channels of each head (25 % for Pythia) in two halves: channel ``i`` pairs
with channel ``i + rotary_ndims/2`` and the pair turns by ``position * inv_freq[i]``. Rotations compose, so a key that
the model rotated at position ``p`` is moved to ``p + delta`` by turning it by ``delta`` once more. Angles are
computed in float64 so that the turn itself adds no error that grows with ``delta``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RotaryInfo:
    rotary_ndims: int
    inv_freq: torch.Tensor  # (rotary_ndims // 2,), float64 on CPU


def gpt_neox_rotary(model) -> RotaryInfo:
    """Rotary parameters of a GPT-NeoX model, read from the model itself so they match what it applies."""
    config = model.config
    rope = getattr(config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default":
        raise ValueError(f"model: rope_type must be 'default' for the streaming caches; got {rope_type!r}")
    head_dim = config.hidden_size // config.num_attention_heads
    rotary_ndims = int(head_dim * rope.get("partial_rotary_factor", 1.0))
    base = model.get_decoder().rotary_emb if hasattr(model, "get_decoder") else None
    if base is not None and hasattr(base, "inv_freq"):
        inv_freq = base.inv_freq.detach().to("cpu", torch.float64)
    else:  # pragma: no cover - every GPT-NeoX in transformers 5 has rotary_emb
        theta = rope["rope_theta"]
        inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_ndims, 2, dtype=torch.float64) / rotary_ndims))
    return RotaryInfo(rotary_ndims=rotary_ndims, inv_freq=inv_freq)


def rotation_tables(deltas: torch.Tensor, info: RotaryInfo, device, dtype=torch.float32):
    """cos and sin of shape ``(*deltas.shape, rotary_ndims)`` for turning keys by ``deltas`` positions."""
    angles = deltas.to(torch.float64)[..., None] * info.inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(device=device, dtype=dtype), angles.sin().to(device=device, dtype=dtype)


def rotate(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Turn the rotary channels of ``keys`` (..., n, head_dim) by tables from :func:`rotation_tables`.

    Computed in float32 whatever the key dtype; the pass-through channels are copied unchanged. Writes into ``out``
    when given (it may be ``keys`` itself).
    """
    r = cos.shape[-1]
    k_rot = keys[..., :r].float()
    half = r // 2
    turned = torch.cat([-k_rot[..., half:], k_rot[..., :half]], dim=-1)
    rotated = k_rot * cos + turned * sin
    if out is None:
        out = keys.clone()
    elif out is not keys:
        out[..., r:] = keys[..., r:]
    out[..., :r] = rotated.to(out.dtype)
    return out
