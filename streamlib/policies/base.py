"""What every cache policy shares: a name, flat parameters for records, a budget, the model check, the compiled form
of its cache, and the FLOPs and KV bytes of a stream under it."""

from __future__ import annotations

from dataclasses import asdict

import torch

from ..arch import SLIDING, family_of, layer_types, shapes_of
from ..flops import bounded_stream_flops
from ..kv_quant import KVQuantSpec, held_bytes
from ..memory import held_kv_bytes

# The one answer to "can this policy's decode step be compiled": each policy's compiled_form.
NOT_COMPILABLE = ("compile=True covers StreamingLLM, Window, and Dense when the stream's length is known "
                  "(stream_generate, the timing functions): their caches keep one shape. {label} does not ({why}): "
                  "use compile=False")


def check_model(model, policy_name: str) -> None:
    """The caches are written for the families of :mod:`streamlib.arch`; anything else is refused clearly."""
    family_of(model, f"policy {policy_name}")


class PolicyBase:
    """Mixin for the policy dataclasses: a stable name and a flat parameter dict for result records.

    ``token_mode``: whether a prompt longer than the cache is read one full decode step per token (Recompute, TOVA,
    H2O), which is what sizes the token counts a run can afford for it."""

    name: str = "policy"
    token_mode = False
    takes_sinks = False  # whether with_sinks can keep a prompt prefix as its sinks
    why_not_compiled = "its cache changes shape as it evicts"

    def params(self) -> dict:
        return {"policy": self.name, **asdict(self)}

    @property
    def budget(self) -> int | None:
        """Tokens kept between steps, or None when unbounded."""
        return None

    def label(self) -> str:
        return self.name

    key_axis = "channel"  # how a quantized cache groups keys: per channel over a block (tokens leave in order)

    def kv_quant(self) -> KVQuantSpec | None:
        """The quantization of the policy's cache (its ``bits``, ``residual``, ``quantize_sinks`` fields), or None at
        16 bits (:mod:`streamlib.kv_quant`)."""
        bits = getattr(self, "bits", 16)
        if bits == 16:
            return None
        return KVQuantSpec(bits, self.residual, self.key_axis, getattr(self, "n_sink", 0),
                           getattr(self, "quantize_sinks", False))

    def check_not_quantized(self, what: str) -> None:
        if getattr(self, "bits", 16) != 16:
            raise ValueError(f"bits: {what} takes a full-precision cache; {self.label()} stores {self.bits}-bit codes "
                             "(use bits=16, or compile=False)")

    def compiled_form(self, max_length: int | None = None) -> "PolicyBase":
        """The policy whose cache a compiled decode step runs on for a stream of at most ``max_length`` tokens (None:
        not known); a ValueError naming ``compile`` when there is none."""
        raise ValueError(NOT_COMPILABLE.format(label=self.label(), why=self.why_not_compiled))

    def with_sinks(self, n_sink: int) -> "PolicyBase":
        """The same KV budget with the stream's first ``n_sink`` tokens kept as its sinks: a prompt's system header
        and instructions (llama.cpp's ``--keep``). StreamingLLM and burst eviction, whose sinks that prefix becomes."""
        raise ValueError(f"n_sink: {self.label()} keeps no sinks; keeping a prompt applies to StreamingLLM, Window "
                         "and burst eviction")

    def stream_flops(self, config, n_tokens: int) -> int:
        """Analytic FLOPs to stream ``n_tokens`` one at a time: each token attends what is kept and itself."""
        return bounded_stream_flops(config, n_tokens, self.budget)

    def kv_bytes_held(self, config, n_tokens: int, dtype) -> int:
        """Analytic bytes of keys and values held after ``n_tokens`` tokens: the full layers at most ``budget``
        tokens, a hybrid model's sliding layers their trained window (:func:`~streamlib.memory.held_kv_bytes`). A
        quantized cache's full layers: :func:`~streamlib.kv_quant.held_bytes` for the first ``n_sink`` and the most
        recent of its tokens (exact for StreamingLLM and Window; for the others, which keep other tokens, the count
        is exact and the split between blocks an estimate)."""
        quant = self.kv_quant()
        if quant is None:
            return held_kv_bytes(config, n_tokens, dtype, self.budget)
        sh = shapes_of(config)
        types = layer_types(config)
        full_layers = len(types) - types.count(SLIDING)
        sliding = held_kv_bytes(config, n_tokens, dtype, 0)  # the sliding layers alone: their window, full precision
        kept = min(n_tokens, self.budget)
        sinks = min(getattr(self, "n_sink", 0), kept)
        held = torch.cat([torch.arange(sinks), torch.arange(n_tokens - (kept - sinks), n_tokens)])
        element = torch.finfo(dtype).bits // 8
        per_head = held_bytes(quant, held, n_tokens, sh.head_dim, sh.head_dim, element)
        return sliding + full_layers * sh.kv_heads * per_head
