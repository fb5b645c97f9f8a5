"""Rotary position embedding (RoPE) as the supported families apply it, for moving cached keys to other positions.

The model rotates the first ``rotary_ndims`` channels of each head (25 % for Pythia, all of them for Llama) in two
halves: channel ``i`` pairs with channel ``i + rotary_ndims/2`` and the pair turns by ``position * inv_freq[i]``
(:class:`streamlib.core.arch.RotaryInfo`, read from the model). Rotations compose, so a key that
the model rotated at position ``p`` is moved to ``p + delta`` by rotating it by ``delta`` once more. Angles are
computed in float64 so that the rotation itself adds no error that grows with ``delta``.
"""

from __future__ import annotations

import torch

from .arch import RotaryInfo


def angle_tables(deltas: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (float32, on ``inv_freq``'s device) of shape ``(*deltas.shape, rotary_ndims)``: the one place the
    angle ``delta * inv_freq[i]`` is computed, in float64, for the eager caches and the compiled step alike."""
    angles = deltas.to(torch.float64)[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def rotation_tables(deltas: torch.Tensor, info: RotaryInfo, device, dtype=torch.float32):
    """cos and sin of shape ``(*deltas.shape, rotary_ndims)`` for rotating keys by ``deltas`` positions. ``deltas``
    may sit on the GPU (positions read from a layer's slots) while ``info.inv_freq`` stays on the CPU."""
    cos, sin = angle_tables(deltas, info.inv_freq.to(deltas.device))
    return cos.to(device=device, dtype=dtype), sin.to(device=device, dtype=dtype)


class Rotations:
    """Tables that rotate keys by a whole number of positions, kept for the deltas in use (about one per step): the
    layers of one cache share them, so a step computes its sink rotation once, not once per layer."""

    def __init__(self, info: RotaryInfo):
        self.info = info
        self._tables: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, delta: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (delta, torch.device(device))
        if key not in self._tables:
            if len(self._tables) > 64:
                self._tables.clear()
            self._tables[key] = rotation_tables(torch.tensor(float(delta)), self.info, device)
        return self._tables[key]

    def clear(self) -> None:
        self._tables.clear()


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
