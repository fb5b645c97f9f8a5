"""Burst eviction: sinks plus recent tokens, evicted many at a time (llama.cpp's context shift, the lab's press): the
policy, and its cache. ``capacity`` slots hold the sinks and the recent tokens; when an incoming token would not fit,
the oldest ``discard`` tokens after the sinks leave at once and the rest move down. Between bursts tokens are
appended, so a whole stretch between two bursts is one plain causal call."""

from __future__ import annotations

import math
import dataclasses
from dataclasses import dataclass

import torch

from ..arch import RotaryInfo, SlidingLayers, rotary_of, sliding_layers_of
from ..cache import build_layers
from ..cache_base import SinkLayer, StreamingCache, additive_mask
from ..checks import check_bool, check_int
from ..kv_quant import KVQuantSpec, check_quant_fields
from ..rotary import Rotations
from .base import PolicyBase, Style, check_model, int_parts, shift_part
from .streaming_llm import StreamingLLM


@dataclass(frozen=True)
class BurstEviction(PolicyBase):
    """Keep ``n_sink`` sinks and the recent tokens in ``capacity`` slots; when an incoming token would exceed
    ``capacity`` (it included), the oldest ``floor(discard_ratio * (capacity - n_sink))`` tokens after the sinks
    leave at once.

    This is llama.cpp's default context shift (``n_keep`` tokens kept, half of the rest discarded when the context is
    full, the remaining keys re-rotated to their new slots: ``pos_shift=True``) and the lab report's
    ``PythiaStreamingLLMPress(compression_ratio, n_sink, max_capacity)`` implemented to its own description (see
    :meth:`from_press`). Memory is a sawtooth between ``capacity - discard`` and ``capacity`` tokens. With a discard
    of one token it is ``StreamingLLM(n_sink, capacity - n_sink - 1)``. Xiao et al. (arXiv 2309.17453) compare
    StreamingLLM against this kind of windowed cache; the attention sinks are theirs.
    """

    name = "burst"
    title = "Burst eviction"
    forms = ("burst:S/C:R", "burst:S/C:R:noshift")
    style = Style("#F0E442", "*", "-")
    order = 3
    takes_sinks = True
    streams_long = True
    quantizable = True

    n_sink: int = 4
    capacity: int = 256
    discard_ratio: float = 0.5
    pos_shift: bool = True
    bits: int = 16  # 8, 4, 2: quantized keys and values (streamlib.kv_quant)
    residual: int = 32
    quantize_sinks: bool = False

    def __post_init__(self):
        check_int("n_sink", self.n_sink, 0)
        check_int("capacity", self.capacity, self.n_sink + 2)
        if isinstance(self.discard_ratio, bool) or not isinstance(self.discard_ratio, (int, float)) \
                or not 0 < self.discard_ratio <= 1:
            raise ValueError(f"discard_ratio must be a number in (0, 1]; got {self.discard_ratio!r}")
        check_bool("pos_shift", self.pos_shift)
        check_quant_fields(self.bits, self.residual, self.quantize_sinks)
        if self.discard < 1:
            raise ValueError(f"discard_ratio * (capacity - n_sink) must be at least 1 token; got {self.discard_ratio} * "
                             f"{self.capacity - self.n_sink} < 1")

    @classmethod
    def from_press(cls, compression_ratio: float = 0.7, n_sink: int = 4, max_capacity: int = 256,
                   pos_shift: bool = True) -> "BurstEviction":
        """The lab's parameter names: ``compression_ratio`` is the share of the tokens between the sinks and the end
        dropped at once, ``max_capacity`` the capacity."""
        return cls(n_sink=n_sink, capacity=max_capacity, discard_ratio=compression_ratio, pos_shift=pos_shift)

    @property
    def discard(self) -> int:
        """Tokens evicted at once."""
        return math.floor(self.discard_ratio * (self.capacity - self.n_sink))

    @property
    def budget(self) -> int:
        """The most tokens held between steps (the peak)."""
        return self.capacity

    @property
    def mean_resident(self) -> float:
        """Tokens in view of a query on average once the stream is long: the sawtooth from ``capacity - discard + 1``
        to ``capacity``."""
        return self.capacity - (self.discard - 1) / 2

    def with_sinks(self, n_sink: int) -> "BurstEviction":
        """The same capacity and discard ratio with ``n_sink`` sinks (fewer tokens then leave at a burst)."""
        check_int("n_sink", n_sink, 0, self.capacity - 2)
        return BurstEviction(n_sink, self.capacity, self.discard_ratio, self.pos_shift, self.bits, self.residual,
                             self.quantize_sinks)

    def make_cache(self, model) -> "BurstCache":
        check_model(model, "BurstEviction")
        return BurstCache(model.config.num_hidden_layers, self.n_sink, self.capacity, self.discard, self.pos_shift,
                          rotary_of(model), sliding=sliding_layers_of(model), quant=self.kv_quant())

    @classmethod
    def examples(cls, budget: int) -> list["BurstEviction"]:
        return [cls(2, budget, 0.5)]

    def visible(self, t: int, layer: int = 0, kv_head: int = 0) -> list[int]:
        """The tokens held when ``t`` arrives: whenever a token would make the cache hold more than ``capacity``
        (itself included), the ``discard`` oldest after the sinks leave first."""
        held = []
        for s in range(t + 1):
            if len(held) + 1 > self.capacity:
                held = held[: self.n_sink] + held[self.n_sink + self.discard :]
            if s < t:
                held.append(s)
        return held

    def spec_parts(self) -> list[str]:
        return [f"{self.n_sink}/{self.capacity}", repr(self.discard_ratio)] + ([] if self.pos_shift else ["noshift"])

    @classmethod
    def from_parts(cls, parts: list[str], **quant) -> "BurstEviction":
        if len(parts) not in (2, 3):
            raise ValueError("expected S/C, the discard ratio R and optionally noshift")
        n_sink, capacity = int_parts(parts[0], "/", "sinks/capacity such as 4/256")
        return cls(n_sink, capacity, float(parts[1]), shift_part(parts, 2), **quant)

    def label(self) -> str:
        shift = "" if self.pos_shift else ", no shift"
        return f"Burst {self.n_sink}/{self.capacity} drop {self.discard_ratio:g}{shift}{self.quant_label()}"

    def kind(self) -> str:
        return self.title + ("" if self.pos_shift else ", no shift")

    def plot_style(self) -> Style:
        style = super().plot_style()
        return style if self.pos_shift else dataclasses.replace(style, linestyle=":")


def streaming_matches(burst: BurstEviction) -> tuple[StreamingLLM, StreamingLLM]:
    """StreamingLLM with the same sinks at the same peak memory (a query sees ``capacity`` tokens, itself included)
    and at the same mean memory (``round(mean_resident)`` tokens in view)."""
    window_at_mean = max(1, round(burst.mean_resident) - burst.n_sink - 1)
    return (StreamingLLM(burst.n_sink, burst.capacity - burst.n_sink - 1, burst.pos_shift),
            StreamingLLM(burst.n_sink, window_at_mean, burst.pos_shift))


# ------------------------------------------------------------------------------------------------- the cache --


@dataclass(frozen=True)
class BurstSpec:
    """A burst-eviction cache's settings, shared by its layers."""

    name = "burst-eviction"  # a class attribute, not a field
    n_sink: int
    capacity: int  # slots per layer, and the most tokens held between steps
    discard: int
    pos_shift: bool

    budget = slots = property(lambda self: self.capacity)

    def sink_delta(self, evicted: int, offset: int) -> int:
        """How far the stored sinks must rotate once ``evicted`` tokens have left: with position shift the query sits
        at its slot, so the sinks come ``evicted`` positions closer; without it they keep their positions."""
        return (evicted if self.pos_shift else 0) - offset

    def plain_room(self, held: int) -> int:
        """Tokens one call may take with ``held`` slots in use: up to the next burst, the free slots, or the
        ``discard`` slots a full cache is about to free."""
        return self.capacity - held if held < self.capacity else self.discard


class BurstLayer(SinkLayer):
    """One layer: ``n_sink`` sink slots, then the recent tokens in stream order; ``held`` slots are in use."""

    def __init__(self, layer_idx: int, spec: BurstSpec, rotations: Rotations, store=None):
        super().__init__(layer_idx, spec, rotations, store=store)
        self.discard = spec.discard
        self.held = 0

    @property
    def resident(self) -> int:
        return self.held

    def plain_room(self) -> int:
        """Up to the next burst: the free slots, or the ``discard`` slots a full cache is about to free."""
        return self.spec.plain_room(self.held)

    def held_positions(self) -> torch.Tensor:
        """Stream positions of the tokens held, shape (1, n): the sinks, then the recent tokens in stream order."""
        sinks = min(self.n_sink, self.held)
        recent = torch.arange(self.position - (self.held - sinks), self.position)
        return torch.cat([torch.arange(sinks), recent])[None]

    def slot_positions(self) -> torch.Tensor:
        """The stream position of the token in each slot, shape (1, 1, capacity), -1 where empty."""
        out = torch.full((1, 1, self.capacity), -1, dtype=torch.long)
        out[0, :, : self.held] = self.held_positions()
        return out.to(self.device)

    def held_after_burst(self, n: int) -> int:
        """The slots in use once the cache has made room for ``n`` incoming tokens."""
        return self.held - self.discard if self.held + n > self.capacity else self.held

    def get_mask_sizes(self, query_length: int, step=None) -> tuple[int, int]:
        # keys in slot order; the offset makes the model's causal mask compare slots: query i sits in slot held + i
        held = self.held_after_burst(query_length)
        return held + query_length, self.get_seq_length() - held

    def chunk_plan(self, first: int, offset: int, n: int, dtype, device, workspace, rotate_queries: bool):
        """Within a hybrid model's chunk, a plain causal call over the slots (no plan to follow)."""
        kv_length, _ = self.get_mask_sizes(n)
        return None, additive_mask(torch.arange(kv_length)[None, :] <= (kv_length - n + torch.arange(n))[:, None],
                                   dtype)

    def place(self, key_states: torch.Tensor, value_states: torch.Tensor, step=None):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.check_batch(key_states)
        n, first = key_states.shape[-2], self.position
        if self.held + n > self.capacity:
            if self.held < self.capacity or n > self.discard:
                raise ValueError(
                    f"input_ids: {n} tokens at stream position {first} cross a burst of a {self.capacity}-slot cache "
                    f"holding {self.held}; feed at most {self.spec.plain_room(self.held)} tokens at once (streamlib's "
                    "prefill and token_nll do), or pass prefill_chunk_size=1 to model.generate")
            self._burst()
        held = self.held
        self.keys[:, :, held : held + n] = key_states
        self.values[:, :, held : held + n] = value_states
        self.store_sinks(first, key_states)
        self.held += n
        self.position += n
        self.place_sinks(self.spec.sink_delta(self.position - self.held, self.offset))
        return self.keys[:, :, : self.held], self.values[:, :, : self.held]

    def _burst(self) -> None:
        """The oldest ``discard`` tokens after the sinks leave; the rest move down, as the model rotated them (their
        distances to every later query are unchanged; only the sinks' change, and place_sinks sees to that)."""
        s, d, held = self.n_sink, self.discard, self.held
        for buffer in self.slot_tensors():
            buffer[:, :, s : held - d] = buffer[:, :, s + d : held].clone()
        self.held -= d


class BurstCache(StreamingCache):
    """Burst eviction: ``n_sink`` sinks, at most ``capacity`` tokens in view (the incoming one included), ``discard``
    tokens evicted at once when it is full. Made by :meth:`BurstEviction.make_cache`.

    Its own layers never need a chunk's masks: ``plain_room`` keeps a call between two bursts. A hybrid model's
    sliding layers do once their ring is full, so its cache is ``chunkable``: each chunk stays between two bursts
    (``chunk_room``), a plain causal call for the burst layers and a ring chunk for the sliding ones."""

    def __init__(self, num_layers: int, n_sink: int, capacity: int, discard: int, pos_shift: bool,
                 rotary: RotaryInfo, rebase_interval: int = 256, sliding: SlidingLayers | None = None,
                 quant: KVQuantSpec | None = None):
        spec = BurstSpec(n_sink, capacity, discard, pos_shift)
        rotations = Rotations(rotary)
        layers, scratch = build_layers(num_layers, BurstLayer, spec, rotations, sliding, quant)
        super().__init__(spec, layers, rotations, rebase_interval, quant, scratch,
                         sliding.layer_types if sliding is not None else None)
        self.chunkable = self.is_hybrid

    def chunk_room(self, chunk_size: int) -> int:
        """Up to the next burst: a chunk is a plain call for the burst layers."""
        return min(super().chunk_room(chunk_size),
                   *(layer.plain_room() for layer in self.leaders if layer.spec == self.spec))

    def check_chunk(self, n: int) -> None:
        """A hybrid model's chunk of ``n`` tokens (at most ``chunk_room``) once its sliding layers are full: the burst
        layers take it as a plain call (keys in slot order, query ``i`` in slot ``kv_length - n + i``), the sliding
        layers follow a ring chunk's plan."""
        if not self.is_hybrid:
            raise ValueError("a burst-eviction cache takes chunks only for a hybrid model's sliding layers; feed at "
                             f"most plain_room() = {self.plain_room()} tokens per call")
        if n > self.chunk_room(n):
            raise ValueError(f"n: a chunk must end before the next burst ({self.chunk_room(n)} tokens); got {n}")
