"""Rotary position embedding (RoPE) as the supported families apply it, for moving cached keys to other positions.

The model rotates the first ``rotary_ndims`` channels of each head (25 % for Pythia, all of them for Llama) in two
halves: channel ``i`` pairs with channel ``i + rotary_ndims/2`` and the pair turns by ``position * inv_freq[i]``
(:class:`streamlib.arch.RotaryInfo`, read from the model). Rotations compose, so a key that
the model rotated at position ``p`` is moved to ``p + delta`` by rotating it by ``delta`` once more. Angles are
computed in float64 so that the rotation itself adds no error that grows with ``delta``.
"""

from __future__ import annotations

import torch

from .arch import RotaryInfo


def rotation_tables(deltas: torch.Tensor, info: RotaryInfo, device, dtype=torch.float32):
    """cos and sin of shape ``(*deltas.shape, rotary_ndims)`` for rotating keys by ``deltas`` positions."""
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
    rotated_half = torch.cat([-k_rot[..., half:], k_rot[..., :half]], dim=-1)
    rotated = k_rot * cos + rotated_half * sin
    if out is None:
        out = keys.clone()
    elif out is not keys:
        out[..., r:] = keys[..., r:]
    out[..., :r] = rotated.to(out.dtype)
    return out
