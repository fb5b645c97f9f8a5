"""Burst eviction: sinks plus recent tokens, evicted many at a time (llama.cpp's context shift, the lab's press): the
policy, and its cache. ``capacity`` slots hold the sinks and the recent tokens; when an incoming token would not fit,
the oldest ``discard`` tokens after the sinks leave at once and the rest move down. Between bursts tokens are
appended, so a whole stretch between two bursts is one plain causal call."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..caches.burst import BurstCache
from ..caches.quant import check_quant_fields
from ..core.arch import rotary_of, sliding_layers_of
from ..core.checks import check_bool, check_int
from .base import PolicyBase, Style, check_model
from .streaming_llm import StreamingLLM


@dataclass(frozen=True)
class BurstEviction(PolicyBase, name="burst", title="Burst eviction", form="{n_sink}/{capacity}:{discard_ratio}",
                    flags={"pos_shift": "noshift"}, style=Style("#F0E442", "*", "-"), order=3):
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

    takes_sinks = True
    streams_long = True
    quantizable = True

    n_sink: int = 4
    capacity: int = 256
    discard_ratio: float = 0.5
    pos_shift: bool = True
    bits: int = 16  # 8, 4, 2: quantized keys and values (streamlib.caches.quant)
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
