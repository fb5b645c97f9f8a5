"""The cache of budgets per head (DuoAttention's split, :class:`streamlib.policies.HeadSplit`): in each full layer the
retrieval kv heads keep every token, the streaming kv heads keep the first ``n_sink`` and the last ``window`` in a ring.
Every token keeps its original position, so one query position serves both kinds of head. The layer runs its attention
itself, through the hand-over (:mod:`.handover`): the query heads of its retrieval kv heads over every key, the others
over their ring, each with its own mask, and the two outputs are put back in head order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core.arch import SlidingLayers
from ..core.rotary import Rotations, RotaryInfo, rotate
from .base import StreamingCache
from .layers import StreamLayer, additive_mask
from .ring import SinkWindowSpec, ring_chunk_plan
from .sink_window import SinkWindowLayer, build_layers


@dataclass(frozen=True)
class HeadSplitSpec:
    """One full layer's split: the kv heads that keep every token (``retrieval``), and the sinks and window of the
    others."""

    n_sink: int
    window: int
    retrieval: tuple[int, ...]
    kv_heads: int

    name: ClassVar[str] = "HeadSplit"

    @property
    def budget(self) -> int:
        """Tokens a streaming head keeps between steps."""
        return self.n_sink + self.window

    @property
    def slots(self) -> int:
        return self.budget + 1

    @property
    def streaming(self) -> tuple[int, ...]:
        return tuple(h for h in range(self.kv_heads) if h not in self.retrieval)

    def ring_spec(self) -> SinkWindowSpec:
        return SinkWindowSpec(self.n_sink, self.window, pos_shift=False)


class HeadSplitLayer(StreamLayer):
    """One full layer: a growing store of every token for its retrieval kv heads, a ring of sinks and recent tokens
    (a :class:`~.sink_window.SinkWindowLayer` at original positions) for its streaming kv heads."""

    def __init__(self, layer_idx: int, spec: HeadSplitSpec, rotations: Rotations, is_sliding: bool = False,
                 store=None):
        super().__init__(layer_idx, spec, rotations, is_sliding, store)
        self.ring = SinkWindowLayer(layer_idx, spec.ring_spec(), rotations) if spec.streaming else None
        self.retrieval, self.streaming = torch.tensor(spec.retrieval, dtype=torch.long), \
            torch.tensor(spec.streaming, dtype=torch.long)
        self.full_keys = self.full_values = None  # (batch, retrieval heads, allocated, dim), grown by doubling
        self._call = None  # (first, n, plan, ring keys, ring values) of the call whose attention is due

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device, self.batch_size = key_states.device, key_states.shape[0]
        self.full_keys = key_states.new_zeros(self.batch_size, len(self.retrieval), 0, key_states.shape[-1])
        self.full_values = value_states.new_zeros(self.batch_size, len(self.retrieval), 0, value_states.shape[-1])
        self.is_initialized = True

    def _grow(self, length: int) -> None:
        """Room for ``length`` tokens in the retrieval heads' store (doubling: appending stays linear)."""
        if self.full_keys.shape[2] >= length:
            return
        size = max(length, 2 * self.full_keys.shape[2], 64)
        for name in ("full_keys", "full_values"):
            old = getattr(self, name)
            new = old.new_zeros(*old.shape[:2], size, old.shape[-1])
            new[:, :, : self.position] = old[:, :, : self.position]
            setattr(self, name, new)

    def place(self, key_states: torch.Tensor, value_states: torch.Tensor, step=None):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if key_states.shape[0] != self.batch_size:
            raise ValueError(f"input_ids: batch size {key_states.shape[0]} does not match the cache's "
                             f"{self.batch_size}; make a new cache for a new batch")
        n, first = key_states.shape[-2], self.position
        index = self.retrieval.to(key_states.device)
        self._grow(first + n)
        self.full_keys[:, :, first : first + n] = key_states.index_select(1, index)
        self.full_values[:, :, first : first + n] = value_states.index_select(1, index)
        ring_keys = ring_values = None
        if self.ring is not None:
            index = self.streaming.to(key_states.device)
            ring_keys, ring_values = self.ring.place(key_states.index_select(1, index),
                                                     value_states.index_select(1, index), step)
        self.position += n
        self._call = (first, n, step, ring_keys, ring_values)
        return key_states, value_states  # the attention reads the layer's own stores (attend)

    def attender(self, step):
        return self if self._call is not None else None

    def attend(self, base, module, query, key, value, attention_mask, **kwargs):
        """Each kind of head over its own keys with its own mask, with the model's own attention function."""
        first, n, plan, ring_keys, ring_values = self._call
        self._call = None
        batch, heads = query.shape[:2]
        group = heads // self.spec.kv_heads
        out = query.new_zeros(batch, n, heads, (self.full_values if ring_values is None else ring_values).shape[-1])
        causal = (first + torch.arange(n))[:, None]
        parts = [(self.retrieval, self.full_keys[:, :, : first + n], self.full_values[:, :, : first + n],
                  additive_mask(torch.arange(first + n)[None, :] <= causal, query.dtype))]
        if self.ring is not None:
            if plan is not None:  # a chunk past a full ring: the plan's mask over [sinks | ring | chunk]
                mask = plan.mask.to(query.dtype)
            else:  # a filling ring (slot a holds token a), or one token over every slot
                length = ring_keys.shape[2]
                mask = additive_mask(torch.arange(length)[None, :] <= causal - (first + n - length), query.dtype)
            parts.append((self.streaming, ring_keys, ring_values, mask))
        for kv_index, keys, values, mask in parts:
            if not len(kv_index):
                continue
            heads_index = (kv_index[:, None] * group + torch.arange(group)).flatten().to(query.device)
            result, _ = base(module, query.index_select(1, heads_index), keys, values,
                             mask[None, None].to(query.device), **kwargs)
            out[:, :, heads_index] = result
        return out, None

    def get_mask_sizes(self, query_length: int, step=None) -> tuple[int, int]:
        return self.position + query_length, 0  # the model's own mask is not used: attend makes each kind's

    def plain_room(self) -> int:
        """Tokens a call may bring without masks of its own: the ring's free slots (the retrieval heads need none)."""
        return self.ring.plain_room() if self.ring is not None else 2**31

    def chunk_plan(self, first: int, offset: int, n: int, dtype, device, workspace, rotate_queries: bool):
        causal = additive_mask(torch.arange(first + n)[None, :] <= (first + torch.arange(n))[:, None], dtype)
        if self.ring is None:
            return None, causal
        plan, _ = ring_chunk_plan(self.ring.spec, first, offset, n, dtype, device, self.rotations.info, workspace)
        return plan, causal

    def held_positions(self) -> torch.Tensor:
        """One row per kv head: every position for a retrieval head, the sinks and the last ``window`` for a
        streaming head; rows padded with -1."""
        every = torch.arange(self.position)
        ring = self.ring.held_positions()[0] if self.ring is not None else every[:0]
        rows = [every if h in self.spec.retrieval else ring for h in range(self.spec.kv_heads)]
        out = torch.full((len(rows), max(len(r) for r in rows)), -1, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out

    def kv_bytes(self) -> tuple[int, int]:
        if not self.is_initialized:
            return 0, 0
        tensors = (self.full_keys, self.full_values)
        allocated = sum(t.numel() * t.element_size() for t in tensors)
        resident = sum(t[:, :, : self.position].numel() * t.element_size() for t in tensors)
        if self.ring is not None:
            ring_allocated, ring_resident = self.ring.kv_bytes()
            allocated, resident = allocated + ring_allocated, resident + ring_resident
        return allocated, resident

    def shift_frame(self, shift: int) -> None:
        keys = self.full_keys[:, :, : self.position]
        rotate(keys, *self.rotations(-shift, self.device), out=keys)
        if self.ring is not None:
            self.ring.shift_frame(shift)
        self.offset += shift

    def batch_tensors(self) -> list[torch.Tensor]:
        return [self.full_keys, self.full_values] + (self.ring.batch_tensors() if self.ring is not None else [])

    def reset(self) -> None:
        super().reset()
        if self.ring is not None:
            self.ring.reset()
        self._call = None


class HeadSplitCache(StreamingCache):
    """Budgets per head: ``retrieval[l]`` names layer ``l``'s kv heads that keep every token; the others keep
    ``n_sink`` sinks and the last ``window`` tokens. A hybrid model's sliding layers keep their trained window."""

    def __init__(self, num_layers: int, n_sink: int, window: int, retrieval: list[tuple[int, ...]], kv_heads: int,
                 rotary: RotaryInfo, rebase_interval: int = 256, sliding: SlidingLayers | None = None):
        specs = [HeadSplitSpec(n_sink, window, tuple(r), kv_heads) for r in retrieval]
        rotations = Rotations(rotary)
        layers, _ = build_layers(num_layers, HeadSplitLayer, specs, rotations, sliding, None)
        spec = next(layer.spec for layer in layers if isinstance(layer, HeadSplitLayer))
        super().__init__(spec, layers, rotations, rebase_interval,
                         layer_types=sliding.layer_types if sliding is not None else None)
        self.needs_handover = True  # every full layer runs its own attention
