"""Sliding window with re-computation: the accurate but slow baseline of the StreamingLLM paper."""

from __future__ import annotations

from dataclasses import dataclass

from ..caches.recompute import RecomputeWindow
from ..core.checks import check_int
from ..core.costs import dense_kv_bytes, recompute_stream_flops
from .base import PolicyBase, Style, check_model


@dataclass(frozen=True)
class Recompute(PolicyBase, name="recompute", title="Recompute", form="{window}", style=Style("#009E73", "^", ":"),
                order=6):
    """Each token's logits come from a fresh forward over the last ``window`` tokens (positions 0..window-1).

    The StreamingLLM paper's "sliding window with re-computation" baseline (arXiv 2309.17453, Figure 1c): quality
    close to the model at its trained length, cost O(window^2) per token. It keeps token ids, not keys and values:
    :class:`~streamlib.caches.recompute.RecomputeWindow`.
    """

    window: int = 1024

    token_mode = True
    definition = "forward"  # it keeps no keys: a fresh forward over a window per token
    why_not_compiled = "it runs a fresh forward over a window per token"

    def __post_init__(self):
        check_int("window", self.window, 1)

    @property
    def budget(self) -> int:
        return self.window

    def make_cache(self, model) -> RecomputeWindow:
        check_model(model, "Recompute")
        dtype = next(model.parameters()).dtype
        return RecomputeWindow(self.window, lambda tokens: dense_kv_bytes(model.config, tokens, dtype),
                               model.config.num_hidden_layers)

    def stream_flops(self, config, n_tokens: int) -> int:
        return recompute_stream_flops(config, n_tokens, self.window)

    def kv_bytes_held(self, config, n_tokens: int, dtype) -> int:
        """Every layer, sliding ones included, sees only the last ``window`` tokens' keys and values, for the length
        of one forward."""
        return dense_kv_bytes(config, min(n_tokens, self.window), dtype)

    @classmethod
    def examples(cls, budget: int) -> list["Recompute"]:
        return [cls(budget)]

    def label(self) -> str:
        return f"Recompute {self.window}"
