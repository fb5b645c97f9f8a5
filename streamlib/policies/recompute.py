"""Sliding window with re-computation: the accurate but slow baseline of the StreamingLLM paper."""

from __future__ import annotations

from dataclasses import dataclass

from .base import PolicyBase, check_int, check_model


@dataclass(frozen=True)
class Recompute(PolicyBase):
    """Each token's logits come from a fresh forward over the previous ``window`` tokens (positions 0..window-1).

    The StreamingLLM paper's "sliding window with re-computation" baseline (arXiv 2309.17453, Figure 1c): quality
    close to the model at its trained length, cost O(window^2) per token. Evaluation only: it has no cache.
    """

    window: int = 1024

    name = "recompute"

    def __post_init__(self):
        check_int("window", self.window, 1)

    @property
    def budget(self) -> int:
        return self.window

    def make_cache(self, model):
        check_model(model, "Recompute")
        raise ValueError(
            "policy: Recompute has no cache (each token re-reads its window); use it with "
            "streamlib.quality.token_nll or the speed functions, or pick Dense, Window or StreamingLLM"
        )

    def label(self) -> str:
        return f"Recompute {self.window}"
