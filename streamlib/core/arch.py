"""What streamlib needs to know about a model family, in one place: where the backbone keeps its parts, how a layer
takes its cache, the attention shapes, the rotary embedding and the trained length.

The caches, the compiled step, the FLOP and KV-byte formulas, the loaders and the tests read a model through this
module; adding a family is one entry in :data:`FAMILIES`. Every family here rotates keys before
``cache.update(k, v, layer_idx)`` with the rotate-half RoPE on the first ``rotary_ndims`` channels of each head, which
is what lets the streaming caches keep keys as the model rotated them and rotate only the sinks.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Family:
    """The names a family's modules go by (``transformers.models.<model_type>``)."""

    model_type: str
    title: str  # for messages: "GPT-NeoX (Pythia)"
    embed: str  # the backbone's token embedding
    final_norm: str  # the backbone's last norm, before the LM head
    cache_keyword: str  # the keyword a decoder layer takes its cache by
    layer_class: str  # a decoder layer: never split across devices
    mlp_matrices: int  # 2 for a GELU MLP (up, down), 3 for SwiGLU (gate, up, down)


FAMILIES = {
    f.model_type: f
    for f in (
        Family("gpt_neox", "GPT-NeoX (Pythia)", "embed_in", "final_layer_norm", "layer_past", "GPTNeoXLayer", 2),
        Family("llama", "Llama (Llama 2/3, SmolLM2)", "embed_tokens", "norm", "cache", "LlamaDecoderLayer", 3),
        Family("mistral", "Mistral", "embed_tokens", "norm", "cache", "MistralDecoderLayer", 3),
        Family("qwen2", "Qwen2", "embed_tokens", "norm", "cache", "Qwen2DecoderLayer", 3),
        Family("qwen3", "Qwen3", "embed_tokens", "norm", "cache", "Qwen3DecoderLayer", 3),
        Family("gemma3_text", "Gemma 3 (text)", "embed_tokens", "norm", "cache", "Gemma3DecoderLayer", 3),
    )
}

# Families whose sliding-window layers streamlib keeps as the model was trained (a ring of the trained window) while
# the policy governs the full-attention layers: hybrid models, ``config.layer_types``.
HYBRID_FAMILIES = ("gemma3_text",)
SLIDING, FULL = "sliding_attention", "full_attention"

# RoPE variants whose rotation depends on the position alone (fixed inverse frequencies): a key rotated at p is moved
# to p + d by rotating it by d more. ``dynamic`` and ``longrope`` change the frequencies with the sequence length.
EXACT_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def _config(model_or_config):
    return getattr(model_or_config, "config", model_or_config)


def family_of(model_or_config, what: str = "streamlib") -> Family:
    """The :class:`Family` of a model or config; any other family is refused with the supported ones named."""
    config = _config(model_or_config)
    model_type = getattr(config, "model_type", None)
    family = FAMILIES.get(model_type)
    if family is None:
        names = ", ".join(f"{f.title} '{t}'" for t, f in FAMILIES.items())
        raise ValueError(f"model: {what} supports the model types {names}; got {model_type!r}")
    sliding = getattr(config, "sliding_window", None) is not None and (
        model_type == "mistral" or SLIDING in (getattr(config, "layer_types", None) or []))
    if sliding and model_type not in HYBRID_FAMILIES:
        raise ValueError(f"model: {what} needs full-attention layers (the cache decides what each token sees); this "
                         f"{model_type} config has sliding_window={config.sliding_window}. Set it to None")
    if getattr(config, "attn_logit_softcapping", None) is not None:
        raise ValueError(f"model: {what} needs attention without logit soft-capping (the caches' attention kernels "
                         f"do not cap); this config has attn_logit_softcapping={config.attn_logit_softcapping}")
    return family


def layer_types(model_or_config) -> list[str]:
    """Each layer's attention type: ``"full_attention"``, or ``"sliding_attention"`` for the sliding-window layers
    of a hybrid model (Gemma 3: five sliding layers to one full)."""
    config = _config(model_or_config)
    types = list(getattr(config, "layer_types", None) or [])
    if getattr(config, "sliding_window", None) is None or not types:
        return [FULL] * config.num_hidden_layers
    return types


@dataclass(frozen=True)
class SlidingLayers:
    """A hybrid model's sliding-window layers: which they are, each layer's type (the names the model's masks go
    by), the trained window (a query sees the keys in ``(t - window, t]``) and their rotary embedding."""

    indices: frozenset
    layer_types: tuple
    window: int
    rotary: "RotaryInfo"


def sliding_layers_of(model) -> "SlidingLayers | None":
    """The sliding-window layers of a hybrid model, or None when every layer attends over the whole context."""
    types = layer_types(model)
    if SLIDING not in types:
        return None
    return SlidingLayers(indices=frozenset(i for i, t in enumerate(types) if t == SLIDING), layer_types=tuple(types),
                         window=int(model.config.sliding_window), rotary=rotary_of(model, SLIDING))


@dataclass(frozen=True)
class Shapes:
    """Attention and MLP shapes from a config."""

    layers: int
    heads: int  # query heads
    kv_heads: int  # key/value heads (grouped-query attention when fewer than ``heads``)
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    mlp_matrices: int
    trained_length: int  # max_position_embeddings

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.heads // self.kv_heads


def shapes_of(model_or_config) -> Shapes:
    config = _config(model_or_config)
    family = family_of(config)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return Shapes(layers=config.num_hidden_layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  hidden=config.hidden_size, intermediate=config.intermediate_size, vocab=config.vocab_size,
                  mlp_matrices=family.mlp_matrices, trained_length=config.max_position_embeddings)


def backbone(model):
    """The decoder stack under the LM head (``model.gpt_neox``, ``model.model``)."""
    return model.get_decoder()


def embed(model, input_ids: torch.Tensor) -> torch.Tensor:
    return getattr(backbone(model), family_of(model).embed)(input_ids)


def final_norm(model, hidden: torch.Tensor) -> torch.Tensor:
    return getattr(backbone(model), family_of(model).final_norm)(hidden)


def cache_keyword(model) -> str:
    return family_of(model).cache_keyword


def no_split_modules(model) -> list[str]:
    return [family_of(model).layer_class]


def eager_attention(module):
    """The eager attention function of the model ``module`` (an attention layer) belongs to: it repeats the key and
    value heads for grouped-query attention where the family needs it."""
    return sys.modules[type(module).__module__].eager_attention_forward


# ----------------------------------------------------------------------------------------------------- rotary --


@dataclass(frozen=True)
class RotaryInfo:
    """The rotation the model applies: the first ``rotary_ndims`` channels of each head rotate in two halves (channel
    ``i`` with ``i + rotary_ndims/2``) by ``position * inv_freq[i]``; ``attention_scaling`` multiplies cos and sin
    (YaRN), so it is in the keys already and a rotation by a position difference leaves it alone."""

    rotary_ndims: int
    inv_freq: torch.Tensor  # (rotary_ndims // 2,), float64 on CPU
    attention_scaling: float = 1.0


def rotary_of(model, layer_type: str = FULL) -> RotaryInfo:
    """Rotary parameters read from the model's own rotary embedding, so they match what it applies; a hybrid model
    has one per layer type (Gemma 3: theta 1M on the full layers, 10K on the sliding ones)."""
    family_of(model)
    rope = getattr(model.config, "rope_parameters", None) or {}
    rope = rope.get(layer_type, rope) if isinstance(rope.get(layer_type), dict) else rope
    rope_type = rope.get("rope_type", "default")
    if rope_type not in EXACT_ROPE_TYPES:
        raise ValueError(f"model: rope_type must be one of {list(EXACT_ROPE_TYPES)} for the streaming caches (their "
                         f"rotation depends on the position alone); got {rope_type!r}")
    rotary = backbone(model).rotary_emb
    per_type = getattr(rotary, f"{layer_type}_inv_freq", None)  # hybrid models keep one table per layer type
    inv_freq = (per_type if per_type is not None else rotary.inv_freq).detach().to("cpu", torch.float64)
    scaling = getattr(rotary, f"{layer_type}_attention_scaling", None) if per_type is not None else None
    return RotaryInfo(rotary_ndims=2 * inv_freq.numel(), inv_freq=inv_freq,
                      attention_scaling=float(scaling if scaling is not None else getattr(rotary, "attention_scaling", 1.0)))
