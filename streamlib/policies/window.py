"""Window attention: only the most recent tokens, no sinks."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Style
from .streaming_llm import StreamingLLM


@dataclass(frozen=True)
class Window(StreamingLLM, name="window", title="Window", form="{window}", flags={}, style=Style("#E69F00", "s", "--"),
             order=1):
    """Keep the last ``window`` tokens (Beltagy et al., *Longformer*, 2020, as the StreamingLLM paper uses it).

    Exactly ``StreamingLLM(n_sink=0, window=window)``: with no sinks both position modes give the same distances.
    The paper shows its perplexity explodes once the first tokens leave the cache (Figure 3).
    """

    n_sink: int = 0
    window: int = 1024
    pos_shift: bool = True

    def __init__(self, window: int = 1024, bits: int = 16, residual: int = 32):
        object.__setattr__(self, "n_sink", 0)
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "pos_shift", True)
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "residual", residual)
        object.__setattr__(self, "quantize_sinks", False)
        self.__post_init__()

    def params(self) -> dict:
        return {"policy": self.name, "spec": self.spec(), "n_sink": 0, "window": self.window, "pos_shift": True,
                "bits": self.bits, "residual": self.residual}

    @classmethod
    def examples(cls, budget: int) -> list["Window"]:
        return [cls(budget)]

    @classmethod
    def from_fields(cls, params: dict, accepts=None) -> "Window":
        return super().from_fields(params, ("window", "bits", "residual"))

    def label(self) -> str:
        return f"Window {self.window}" + self.quant_label()
