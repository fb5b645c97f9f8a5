"""KV-cache policies. Each is a small frozen dataclass; the cache-based ones make a transformers ``Cache``."""

from .base import PolicyBase
from .dense import Dense
from .recompute import Recompute
from .streaming_llm import StreamingLLM
from .window import Window

Policy = Dense | Window | StreamingLLM | Recompute

__all__ = ["Dense", "Window", "StreamingLLM", "Recompute", "Policy", "PolicyBase", "from_params"]


def from_params(params: dict) -> Policy:
    """Rebuild a policy from ``policy.params()`` (as stored in result records and notebook parameters)."""
    kind = params.get("policy")
    if kind == "dense":
        return Dense()
    if kind == "window":
        return Window(params["window"])
    if kind == "streamingllm":
        return StreamingLLM(params["n_sink"], params["window"], params.get("pos_shift", True))
    if kind == "recompute":
        return Recompute(params["window"])
    raise ValueError(f"policy must be one of 'dense', 'window', 'streamingllm', 'recompute'; got {kind!r}")
