"""A window that grows with the stream: memory a fixed share of what has been read, up to a ceiling."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..caches.ring import GrowingSpec
from ..caches.sink_window import SinkWindowCache
from ..core.arch import rotary_of, sliding_layers_of
from ..core.checks import check_bool, check_int
from ..core.costs import flops_per_token, held_kv_bytes
from .base import PolicyBase, Style, check_model


@dataclass(frozen=True)
class GrowingWindow(PolicyBase, name="growing", title="Growing window", form="{n_sink}:{ratio}:{min_window}-{max_window}",
                    flags={"pos_shift": "noshift"}, style=Style("#E69F00", "<", "-."), order=9):
    """The query at stream position ``t`` (``t`` tokens before it) sees the first ``n_sink`` tokens, the
    ``w(t) = min(max_window, max(min_window, floor(ratio * t)))`` tokens just before it, and itself.

    The lab report's next step, "a dynamic window strategy that adapts to the sequence length": StreamingLLM (Xiao et
    al., arXiv 2309.17453) whose window is a share ``ratio`` of what has been read, so a short stream keeps more of
    itself than a fixed window would and a long one is capped. With ``0 < ratio <= 1`` the window grows by at most
    one token a step: no evicted token comes back. ``pos_shift`` as StreamingLLM's: the kept tokens sit at their
    index, the query after them.
    """

    n_sink: int = 4
    ratio: float = 0.25
    min_window: int = 64
    max_window: int = 1020
    pos_shift: bool = True

    streams_long = True

    def __post_init__(self):
        check_int("n_sink", self.n_sink, 0)
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0 < self.ratio <= 1:
            raise ValueError(f"ratio must be a number in (0, 1]; got {self.ratio!r}")
        check_int("min_window", self.min_window, 1)
        check_int("max_window", self.max_window, self.min_window)
        check_bool("pos_shift", self.pos_shift)

    def window_at(self, t: int) -> int:
        return min(self.max_window, max(self.min_window, math.floor(self.ratio * t)))

    @property
    def budget(self) -> int:
        """The most tokens kept: ``n_sink + max_window``."""
        return self.n_sink + self.max_window

    def make_cache(self, model) -> SinkWindowCache:
        check_model(model, "GrowingWindow", hand_over="gives each query its own window")
        spec = GrowingSpec(self.n_sink, self.max_window, self.pos_shift, float(self.ratio), self.min_window)
        return SinkWindowCache(model.config.num_hidden_layers, self.n_sink, self.max_window, self.pos_shift,
                               rotary_of(model), rotate_queries=True, sliding=sliding_layers_of(model), specs=spec)

    def visible(self, t: int, layer: int = 0, kv_head: int = 0) -> list[int]:
        window = self.window_at(t)
        if t <= self.n_sink + window:
            return list(range(t))
        return list(range(self.n_sink)) + list(range(t - window, t))

    def kv_bytes_held(self, config, n_tokens: int, dtype) -> int:
        return held_kv_bytes(config, n_tokens, dtype, self.n_sink + self.window_at(n_tokens))

    def stream_flops(self, config, n_tokens: int) -> int:
        return sum(flops_per_token(config, min(t + 1, self.n_sink + self.window_at(t) + 1), t + 1)
                   for t in range(n_tokens))

    @classmethod
    def examples(cls, budget: int) -> list["GrowingWindow"]:
        return [cls(2, 0.5, 4, budget - 2), cls(2, 0.5, 4, budget - 2, pos_shift=False)]

    def label(self) -> str:
        shift = "" if self.pos_shift else ", no shift"
        return f"Growing {self.n_sink}+{self.ratio:g}t [{self.min_window}, {self.max_window}]{shift}"
