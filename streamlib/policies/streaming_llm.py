"""StreamingLLM: attention sinks plus a window of recent tokens."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..caches.handover import can_hand_over
from ..caches.quant import check_quant_fields
from ..caches.sink_window import SinkWindowCache
from ..core.arch import rotary_of, sliding_layers_of
from ..core.checks import check_bool, check_int
from .base import PolicyBase, Style, check_model


@dataclass(frozen=True)
class StreamingLLM(PolicyBase, name="streamingllm", title="StreamingLLM", form="{n_sink}+{window}",
                   flags={"pos_shift": "noshift"}, style=Style("#0072B2", "D", "-"), order=2):
    """Keep the first ``n_sink`` tokens (the attention sinks) and the last ``window`` tokens.

    Xiao, Tian, Chen, Han, Lewis: *Efficient Streaming Language Models with Attention Sinks*, ICLR 2024
    (arXiv 2309.17453). With ``pos_shift`` (the paper's choice) positions are assigned within the cache, so the
    model never sees a position beyond ``n_sink + window``; without it every token keeps its original position.

    ``bits`` 8, 4 or 2 stores the kept keys and values quantized (KIVI's grouping, :mod:`streamlib.caches.quant`): the
    last ``residual`` tokens' block in full precision, the sinks too unless ``quantize_sinks``.
    """

    n_sink: int = 4
    window: int = 1020
    pos_shift: bool = True
    bits: int = 16
    residual: int = 32
    quantize_sinks: bool = False

    takes_sinks = True
    streams_long = True
    quantizable = True

    def __post_init__(self):
        check_int("n_sink", self.n_sink, 0)
        check_int("window", self.window, 1)
        check_bool("pos_shift", self.pos_shift)
        check_quant_fields(self.bits, self.residual, self.quantize_sinks)

    @property
    def budget(self) -> int:
        return self.n_sink + self.window

    def make_cache(self, model) -> SinkWindowCache:
        check_model(model, type(self).__name__)
        return SinkWindowCache(
            num_layers=model.config.num_hidden_layers,
            n_sink=self.n_sink,
            window=self.window,
            pos_shift=self.pos_shift,
            rotary=rotary_of(model),
            # long prompts: the cache turns each query to the sinks instead of copying the sinks per query
            rotate_queries=can_hand_over(model),
            sliding=sliding_layers_of(model),
            quant=self.kv_quant(),
        )

    def with_sinks(self, n_sink: int) -> "StreamingLLM":
        """StreamingLLM with ``n_sink`` sinks in the same budget (a Window becomes StreamingLLM): the kept prefix
        counts in the KV budget, and at least one recent token stays."""
        check_int("n_sink", n_sink, 0, self.budget - 1)
        return StreamingLLM(n_sink, self.budget - n_sink, self.pos_shift, self.bits, self.residual,
                            self.quantize_sinks)

    def compiled_form(self, max_length: int | None = None) -> "StreamingLLM":
        """Itself: its cache keeps one shape for the whole stream (a quantized one too, its sinks in full
        precision)."""
        if self.quantize_sinks and self.n_sink and self.bits != 16:
            raise ValueError(f"quantize_sinks: compile=True takes full-precision sinks; {self.label()} quantizes "
                             "them (use quantize_sinks=False, or compile=False)")
        return self

    @classmethod
    def examples(cls, budget: int) -> list["StreamingLLM"]:
        return [cls(2, budget - 2), cls(2, budget - 2, pos_shift=False)]

    def visible(self, t: int, layer: int = 0, kv_head: int = 0) -> list[int]:
        """The first ``n_sink`` tokens and the last ``window``."""
        if t <= self.budget:
            return list(range(t))
        return list(range(self.n_sink)) + list(range(t - self.window, t))

    def label(self) -> str:
        shift = "" if self.pos_shift else ", no shift"
        return f"StreamingLLM {self.n_sink}+{self.window}{shift}" + self.quant_label()

    def kind(self) -> str:
        return self.title + ("" if self.pos_shift else ", no shift")

    def plot_style(self) -> Style:
        """Without position shift, a line of its own beside the shifted one."""
        style = super().plot_style()
        if self.pos_shift:
            return style
        return dataclasses.replace(style, colour="#CC79A7", marker="v",
                                   linestyle="-." if self.bits == 16 else style.linestyle)
