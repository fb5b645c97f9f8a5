"""H2O: heavy hitters plus recent tokens, per layer and head, while streaming."""

from __future__ import annotations

from dataclasses import dataclass

from ..arch import rotary_of
from ..scored_cache import H2OCache, install
from ..checks import check_int
from .base import PolicyBase, check_model


@dataclass(frozen=True)
class H2O(PolicyBase):
    """Keep the ``n_recent`` most recent tokens and ``n_heavy`` heavy hitters, per layer and head.

    Zhang et al.: *H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models*, NeurIPS
    2023 (arXiv 2306.14048). A token's score is the sum of the attention probabilities it has received from every
    query so far; when a head holds more than ``n_heavy + n_recent`` tokens it drops the lowest-scored token outside
    the recent ones (ties to the earliest). Tokens keep their original positions. ``H2O(0, w)`` is a window of ``w``
    tokens at original positions. Defined token by token.
    """

    n_heavy: int = 256
    n_recent: int = 256

    name = "h2o"

    def __post_init__(self):
        check_int("n_heavy", self.n_heavy, 0)
        check_int("n_recent", self.n_recent, 0)
        if self.n_heavy + self.n_recent < 1:
            raise ValueError(f"n_heavy + n_recent must be >= 1; got {self.n_heavy} + {self.n_recent}")

    @property
    def budget(self) -> int:
        return self.n_heavy + self.n_recent

    def make_cache(self, model) -> H2OCache:
        check_model(model, "H2O")
        install(model)
        return H2OCache(model.config.num_hidden_layers, self.n_heavy, self.n_recent, rotary_of(model))

    def label(self) -> str:
        return f"H2O {self.n_heavy}+{self.n_recent}"
