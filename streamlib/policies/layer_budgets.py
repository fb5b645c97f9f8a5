"""Budgets per layer: StreamingLLM with a window of its own in each layer (PyramidKV's schedule, or any other)."""

from __future__ import annotations

from dataclasses import dataclass

from ..caches.ring import SinkWindowSpec
from ..caches.sink_window import SinkWindowCache
from ..core.arch import SLIDING, layer_types, rotary_of, sliding_layers_of
from ..core.checks import check_bool, check_int, check_ints
from ..core.costs import flops_per_token, held_kv_bytes, kv_bytes_per_token
from .base import PolicyBase, Style, check_model


@dataclass(frozen=True)
class LayerBudgets(PolicyBase, name="layers", title="Budgets per layer", form="{n_sink}+{windows}",
                   flags={"pos_shift": "noshift"}, style=Style("#0072B2", ">", ":"), order=10):
    """StreamingLLM (Xiao et al., arXiv 2309.17453) with ``windows[l]`` recent tokens in layer ``l`` and the same
    ``n_sink`` sinks everywhere. :meth:`pyramid` gives PyramidKV's schedule (Cai et al., *PyramidKV: Dynamic KV Cache
    Compression based on Pyramidal Information Funneling*, 2024, arXiv 2406.02069): lower layers, whose attention is
    spread wide, keep more than the upper ones, whose attention narrows, at the same total as a uniform window. A
    hybrid model's sliding layers keep their trained window; their entries are ignored.
    """

    n_sink: int = 4
    windows: tuple = (252, 252)
    pos_shift: bool = True

    streams_long = True

    def __post_init__(self):
        check_int("n_sink", self.n_sink, 0)
        if not isinstance(self.windows, tuple) or not self.windows:
            raise ValueError(f"windows must be a non-empty tuple of integers >= 1, one per layer; got {self.windows!r}")
        check_ints("windows", list(self.windows), 1)
        check_bool("pos_shift", self.pos_shift)

    @classmethod
    def pyramid(cls, n_sink: int, window: int, layers: int, beta: float = 20.0, pos_shift: bool = True) -> "LayerBudgets":
        """PyramidKV's schedule at the total of ``window`` per layer: the top layer ``window / beta``, the bottom
        ``2 * window - top``, the layers between on the line joining them (rounded, the remainder spread from the
        bottom so the total is exact)."""
        check_int("layers", layers, 1)
        top = max(1.0, window / beta)
        bottom = 2 * window - top
        line = [bottom + (top - bottom) * i / max(1, layers - 1) for i in range(layers)]
        windows = [max(1, int(w)) for w in line]
        for i in range(window * layers - sum(windows)):
            windows[i % layers] += 1
        return cls(n_sink, tuple(windows), pos_shift)

    def params(self) -> dict:
        """The record's fields, the windows as one string (``"508,492,..."``): a record's cell holds no tuple."""
        return {**super().params(), "windows": ",".join(map(str, self.windows))}

    @classmethod
    def from_fields(cls, params: dict, accepts=None) -> "LayerBudgets":
        windows = params.get("windows")
        if isinstance(windows, str):
            params = {**params, "windows": tuple(int(w) for w in windows.split(","))}
        return super().from_fields(params, accepts)

    @property
    def budget(self) -> int:
        """The most tokens a layer keeps."""
        return self.n_sink + max(self.windows)

    def make_cache(self, model) -> SinkWindowCache:
        check_model(model, "LayerBudgets", hand_over="gives each layer its own mask")
        layers = model.config.num_hidden_layers
        if len(self.windows) != layers:
            raise ValueError(f"windows: one per layer, {layers} for this model; got {len(self.windows)}")
        specs = [SinkWindowSpec(self.n_sink, w, self.pos_shift) for w in self.windows]
        return SinkWindowCache(layers, self.n_sink, max(self.windows), self.pos_shift, rotary_of(model),
                               rotate_queries=True, sliding=sliding_layers_of(model), specs=specs)

    def visible(self, t: int, layer: int = 0, kv_head: int = 0) -> list[int]:
        window = self.windows[layer]
        if t <= self.n_sink + window:
            return list(range(t))
        return list(range(self.n_sink)) + list(range(t - window, t))

    def _full_windows(self, config) -> list[int]:
        return [w for w, kind in zip(self.windows, layer_types(config)) if kind != SLIDING]

    def kv_bytes_held(self, config, n_tokens: int, dtype) -> int:
        full = self._full_windows(config)
        per_layer = kv_bytes_per_token(config, dtype) // len(layer_types(config))
        return held_kv_bytes(config, n_tokens, dtype, 0) + per_layer * sum(min(n_tokens, self.n_sink + w) for w in full)

    def stream_flops(self, config, n_tokens: int) -> int:
        full = self._full_windows(config)
        return round(sum(flops_per_token(config, min(t + 1, self.n_sink + w + 1), t + 1)
                         for w in full for t in range(n_tokens)) / len(full))

    @classmethod
    def examples(cls, budget: int) -> list["LayerBudgets"]:
        return [cls(2, (budget - 6, budget - 2))]

    def label(self) -> str:
        shift = "" if self.pos_shift else ", no shift"
        shown = ",".join(map(str, self.windows)) if len(self.windows) <= 4 else \
            f"{min(self.windows)}-{max(self.windows)} (mean {sum(self.windows) / len(self.windows):g})"
        return f"Layers {self.n_sink}+{shown}{shift}"
