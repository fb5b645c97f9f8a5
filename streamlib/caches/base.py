"""What every policy's cache shares. :class:`PolicyCache` is the one interface the loops use (feed tokens, say what
is held, count the bytes), Dense's and Recompute's included; :class:`StreamingCache` counts the stream, re-bases the
frame, feeds a stream in plain calls and chunks, and takes a chunk by its layers' plans. See ``docs/design.md``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers.cache_utils import Cache

from ..core.rotary import RotaryInfo, Rotations
from .handover import handover
from .layers import StreamLayer, Workspace


class PolicyCache:
    """What a policy's cache offers the loops of :mod:`streamlib.caches.generation`, whatever it keeps.

    ``feed`` takes tokens and yields ``(start, logits)`` exactly as feeding them one at a time would;
    ``held_positions(layer_idx)`` says which stream positions the next query sees; ``kv_bytes`` counts the keys and
    values held; ``fixed_shape`` says whether a compiled decode step can run on it (:mod:`streamlib.caches.compiled`).
    """

    fixed_shape = False
    why_not_compiled = "its shape changes"
    needs_handover = False  # whether the model's attention must go through streamlib.caches.handover for it
    num_layers: int  # the model's layers, each with its own held positions

    def attender(self, layer_idx: int):
        """What runs layer ``layer_idx``'s attention in the step under way instead of the model's own (inside
        :func:`streamlib.caches.handover.handover`), or None."""
        return None

    def feed(self, model, input_ids: torch.Tensor, chunk_size: int | None = None,
             all_logits: bool = True) -> Iterator[tuple[int, torch.Tensor]]:
        raise NotImplementedError

    def held_positions(self, layer_idx: int = 0) -> torch.Tensor:
        """Stream positions of the tokens layer ``layer_idx`` holds for the next query, shape (rows, n): one row,
        or one per kv head where heads keep different tokens (H2O)."""
        raise NotImplementedError

    def held_by_layer(self) -> list[torch.Tensor]:
        return [self.held_positions(i) for i in range(self.num_layers)]

    def kv_bytes(self) -> tuple[int, int]:
        """(bytes allocated for keys and values, bytes holding the tokens held now), over all layers."""
        raise NotImplementedError

    def ready_for_compiled_step(self) -> bool:
        return False


def as_cache(model, policy_or_cache, compile: bool = False, max_length: int | None = None) -> PolicyCache:
    """The cache a loop runs on: ``policy_or_cache`` itself when it is a cache, else the policy's cache. With
    ``compile=True``, the cache of the policy's compiled form (:meth:`~streamlib.policies.PolicyBase.compiled_form`:
    Dense becomes a preallocated cache of ``max_length`` slots)."""
    if isinstance(policy_or_cache, PolicyCache):
        return policy_or_cache
    policy = policy_or_cache.compiled_form(max_length) if compile else policy_or_cache
    return policy.make_cache(model)


def forward(model, cache, input_ids: torch.Tensor, all_logits: bool, **extra) -> torch.Tensor:
    """One call of the model on ``cache``: the logits of every token, or of the last one only. The attention goes
    through the hand-over for the call when the cache needs it, and the model is left as it was."""
    with handover(model, cache):
        logits = model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=0 if all_logits else 1,
                       **extra).logits
    if getattr(cache, "scratch", None) is not None:
        cache.release_scratch()  # a quantized cache holds its codes between calls, not full-precision slots
    return logits


class StreamingCache(PolicyCache, Cache):
    """A bounded cache: its spec (budget, slots, the policy's settings), how far the stream has gone, re-basing of
    the position frame, the bytes it holds, and the feeding loop.

    ``chunkable``: whether :meth:`chunk` can feed several tokens past a full cache in one call; when it cannot, the
    loop feeds one token at a time once the cache is full. ``starts_in_chunk``: whether a prompt longer than the cache
    may start the stream in one chunk. The layers get the step's mode from :meth:`update` (``self.step``: ``None`` for
    a plain call, a chunk plan, a compiled step's state), never by reading the cache."""

    chunkable = True
    starts_in_chunk = False
    crosses_blocks = False  # a quantized cache's chunks may cross its blocks (the layers' plans say how)

    def __init__(self, spec, layers: list[StreamLayer], rotations: Rotations, rebase_interval: int = 256,
                 quant=None, scratch=None, layer_types: tuple | None = None, rotate_queries: bool = False):
        self.spec = spec  # the policy's settings (a hybrid model's sliding layers keep their own window)
        self.quant = quant  # a KVQuantSpec when the policy's layers store codes (streamlib.caches.quant), else None
        self.scratch = scratch  # their shared full-precision slots
        self.layer_types = layer_types  # a hybrid model's names for its kinds of layer (its masks go by them)
        self.rotate_queries = rotate_queries  # chunks turn each query to the sinks (through the hand-over)
        self._workspace = Workspace()
        if quant is not None:
            self.starts_in_chunk = False  # unless its chunks can cross the blocks of its residual (the cache says)
        self.rotations = rotations
        self.rebase_interval = rebase_interval
        self.step = None  # the mode of the call in progress, handed to each layer's update
        self._plans: dict | None = None  # a chunk's plans: one per kind of layer (its spec), or None
        # one layer of each kind answers for all of its kind (a hybrid model has two; budgets per layer, more)
        self.leaders = list({layer.spec: layer for layer in reversed(layers)}.values())
        # the frame is moved back to the largest budget, so that every layer's keys keep positions >= 0
        self.frame_floor = max(layer.budget for layer in self.leaders)
        super().__init__(layers=layers)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def rotary(self) -> RotaryInfo:
        return self.rotations.info

    @property
    def budget(self) -> int:
        return self.spec.budget

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def position(self) -> int:
        """Absolute stream position of the next token: the tokens fed so far."""
        return self.layers[0].position

    @property
    def is_full(self) -> bool:
        """Every layer holds its budget and the incoming token: the next token evicts in every layer."""
        return self.position >= self.frame_floor + 1

    @property
    def is_hybrid(self) -> bool:
        """A hybrid model's cache: sliding layers beside the policy's (the model takes a mask per layer type)."""
        return self.layer_types is not None

    def resident_tokens(self) -> int:
        return self.layers[0].resident

    def _step_of(self, layer) -> object:
        return self._plans[layer.spec] if self._plans else self.step

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        layer = self.layers[layer_idx]
        return layer.update(key_states, value_states, self._step_of(layer))

    def attender(self, layer_idx: int):
        layer = self.layers[layer_idx]
        return layer.attender(self._step_of(layer))

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        layer = self.layers[layer_idx]
        return layer.get_mask_sizes(query_length, self._step_of(layer))

    def plain_room(self) -> int:
        """How many tokens the next call may hold without masks of its own: those that need no eviction in any layer
        (the cache is filling), and no more than the rest of the residual's block for a quantized cache. Zero or less
        once a layer is full."""
        room = min(layer.plain_room() for layer in self.leaders)
        return room if self.quant is None else min(room, self.quant.room(self.position))

    def chunk_room(self, chunk_size: int) -> int:
        """How many tokens the next chunk may hold: ``chunk_size``, unless a kind of layer takes less at once (a
        quantized cache whose chunks cannot cross its blocks: the rest of the residual's block)."""
        if self.quant is None or self.crosses_blocks:
            return chunk_size
        return min(chunk_size, self.quant.room(self.position))

    def held_positions(self, layer_idx: int = 0) -> torch.Tensor:
        return self.layers[layer_idx].held_positions()

    def default_chunk_size(self) -> int:
        """Tokens per forward in chunked mode: 512, where the projections run near their best and the masked-out part
        of each chunk's attention costs little beside them (a 2048-token prompt into StreamingLLM 4+252 then costs
        what a Dense prefill costs, ``bench/bench_decode.py``)."""
        return 512

    def maybe_rebase(self) -> bool:
        """Shift the position frame back to ``budget`` (the largest of a hybrid model's) once it has grown
        ``rebase_interval`` past it: every layer rotates its keys back by the same amount, which RoPE's relative
        scores do not see."""
        frame = self.layers[0].get_seq_length()
        if not self.is_full or frame - self.frame_floor < self.rebase_interval:
            return False
        for layer in self.layers:
            layer.shift_frame(frame - self.frame_floor)
        self.rotations.clear()
        return True

    def release_scratch(self) -> None:
        """Free the full-precision slots a quantized cache's layers are rebuilt into (each call makes them again):
        streamlib's own loops do after every call, so that between calls the cache holds codes, scales, the current
        block and the sinks. In a loop of one's own (``model.generate``) they stay, and :meth:`kv_bytes` counts
        them."""
        self.scratch.release()
        for layer in self.layers:
            if getattr(layer, "store", None) is not None:
                layer.keys = layer.values = None

    def kv_bytes(self) -> tuple[int, int]:
        allocated = resident = 0
        for layer in self.layers:
            a, r = layer.kv_bytes()
            allocated, resident = allocated + a, resident + r
        if self.scratch is not None:  # a quantized cache's full-precision slots, one layer's worth for all
            allocated += self.scratch.nbytes()
        return allocated, resident

    def check_chunk(self, n: int) -> None:
        """Raise when the cache cannot take a chunk of ``n`` tokens now."""

    def chunks_before_full(self) -> bool:
        """Whether the next call may be a chunk although the cache is not full: a stream's first, for a cache that
        ``starts_in_chunk``."""
        return self.position == 0 and self.starts_in_chunk

    @contextmanager
    def chunk(self, n: int, dtype: torch.dtype, device):
        """Feed the next ``n`` tokens in one call with masks of the cache's own: yields the ``position_ids`` and the
        4D additive attention mask to pass to the model (a dict by layer type for a hybrid model, whose forward takes
        one mask per kind of layer), and inside the block each layer follows its kind's plan
        (:meth:`StreamLayer.chunk_plan`)."""
        self.check_chunk(n)
        first, offset = self.layers[0].position, self.layers[0].offset
        plans, masks = {}, {}
        for leader in self.leaders:
            plan, mask = leader.chunk_plan(first, offset, n, dtype, device, self._workspace, self.rotate_queries)
            plans[leader.spec] = plan
            masks[leader.spec] = mask[None, None].to(device)
        # the model takes one mask per layer type; layers of one type with plans of their own (budgets per layer)
        # attend with their plan's mask through the hand-over
        if self.is_hybrid:
            mask = {self.layer_types[leader.layer_idx]: masks[leader.spec] for leader in reversed(self.leaders)}
        else:
            mask = masks[self.leaders[0].spec]
        self._plans = plans
        try:
            yield (first + torch.arange(n) - offset)[None].to(device), mask
        finally:
            self.step = self._plans = None
        for plan in plans.values():
            if plan is not None:
                plan.finish()

    def feed(self, model, input_ids: torch.Tensor, chunk_size: int | None = None,
             all_logits: bool = True) -> Iterator[tuple[int, torch.Tensor]]:
        """Exactly the result of feeding one token at a time. ``chunk_size=1`` *is* one token at a time. Otherwise the
        cache is first filled with one plain call (no token needs an eviction yet), then each chunk gets its own
        positions and mask inside ``with self.chunk(...)``; a cache that ``starts_in_chunk`` takes a stream longer
        than itself in a chunk from the start instead, with no filling call. A cache that is not ``chunkable`` takes
        one token per call once full; a quantized cache whose chunks cross blocks takes chunks while it fills too,
        where plain calls would stop at each block."""
        if chunk_size is None:
            chunk_size = self.default_chunk_size()
        total, start = input_ids.shape[1], 0
        while start < total:
            self.maybe_rebase()
            room = self.plain_room()
            early_chunk = self.chunks_before_full() and min(chunk_size, total - start) > room
            chunked = False
            if room > 0 and not early_chunk:  # filling: a plain causal call is exact
                n = min(room, chunk_size, total - start)
            elif chunk_size == 1 or total - start == 1 or not self.chunkable:
                n = 1
            else:  # past a full cache: a chunk with its own positions and mask
                n, chunked = min(self.chunk_room(chunk_size), total - start), True
            ids = input_ids[:, start : start + n]
            if chunked:
                with self.chunk(n, model.dtype, input_ids.device) as (position_ids, mask):
                    logits = forward(model, self, ids, all_logits, position_ids=position_ids, attention_mask=mask)
            else:
                logits = forward(model, self, ids, all_logits)
            yield start, logits
            start += n
