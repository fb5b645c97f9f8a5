"""The pieces of a naive forward, written from each family's definition (not from the caches): one token at a time,
keys and queries kept *before* rotary, and quantization from KIVI's definition. :mod:`streamlib.naive.references`
builds the policies' references from them."""

import math

import torch


class Naive:
    """One token's forward, written from each family's definition (not from the caches): the pieces the naive
    references need, with keys and queries kept *before* rotary.

    GPT-NeoX (Pythia): fused QKV, partial rotary, parallel residual ``x + attn(ln1(x)) + mlp(ln2(x))``.
    Llama, Mistral, Qwen2, Qwen3: separate Q, K, V projections with ``num_key_value_heads`` kv heads (query head ``h``
    reads kv head ``h // group``), Qwen3's per-head q/k norms, full rotary, sequential residual with RMSNorm.
    """

    def __init__(self, model):
        self.model, cfg = model, model.config
        self.neox = cfg.model_type == "gpt_neox"
        self.gemma = cfg.model_type == "gemma3_text"
        self.stack = model.gpt_neox if self.neox else model.model
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.group = self.heads // self.kv_heads
        # Gemma 3 scales scores by query_pre_attn_scalar^-1/2 and has two layer types, each with its own RoPE theta
        self.score_divisor = math.sqrt(cfg.query_pre_attn_scalar if self.gemma else self.head_dim)
        self.types = list(cfg.layer_types) if self.gemma else ["full_attention"] * cfg.num_hidden_layers
        self.sliding_window = cfg.sliding_window if self.gemma else None

    def sliding(self, li: int) -> bool:
        return self.types[li] == "sliding_attention"

    def sliding_view(self, t: int) -> list[int]:
        """The earlier tokens a sliding layer sees from token t: the last ``sliding_window - 1``."""
        return list(range(max(0, t - (self.sliding_window - 1)), t))

    @property
    def layers(self):
        return self.stack.layers

    def embed(self, token: torch.Tensor) -> torch.Tensor:
        return (self.stack.embed_in if self.neox else self.stack.embed_tokens)(token)  # (1, hidden)

    def qkv(self, layer, x):
        """q (heads, d), k and v (kv_heads, d), before rotary."""
        d = self.head_dim
        if self.neox:
            qkv = layer.attention.query_key_value(layer.input_layernorm(x)).view(self.heads, 3 * d)
            return qkv.split(d, dim=-1)
        att, h = layer.self_attn, layer.input_layernorm(x)
        q = att.q_proj(h).view(self.heads, d)
        k = att.k_proj(h).view(self.kv_heads, d)
        v = att.v_proj(h).view(self.kv_heads, d)
        if hasattr(att, "q_norm"):  # Qwen3 normalises each head before rotary
            q, k = att.q_norm(q), att.k_norm(k)
        return q, k, v

    def rotate(self, x: torch.Tensor, positions: torch.Tensor, li: int = 0) -> torch.Tensor:
        """RoPE on x (heads, n, d) at ``positions`` (n,): the first r channels turn in two halves (layer ``li``'s
        theta for Gemma 3, from its config)."""
        if self.gemma:
            theta = self.model.config.rope_parameters[self.types[li]]["rope_theta"]
            inv_freq = 1.0 / theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim)
            angles = positions.double()[:, None] * inv_freq
            angles = torch.cat([angles, angles], dim=-1)
            cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        else:
            cos, sin = self.stack.rotary_emb(x, positions[None])  # (1, n, r)
        r = cos.shape[-1]
        x_rot, x_pass = x[..., :r], x[..., r:]
        half = r // 2
        turned = torch.cat([-x_rot[..., half:], x_rot[..., :half]], dim=-1)
        return torch.cat([x_rot * cos + turned * sin, x_pass], dim=-1)

    def attend(self, q: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]):
        """q (heads, 1, d) rotated; keys and values per kv head, each (n_h, d), keys rotated. Returns the output
        (heads, d) and each query head's probabilities."""
        outs, probs = [], []
        for h in range(self.heads):
            kv = h // self.group
            p = torch.softmax((q[h] @ keys[kv].T)[0].double() / self.score_divisor, dim=-1)
            outs.append(p.to(values[kv].dtype) @ values[kv])
            probs.append(p)
        return torch.stack(outs), probs

    def block(self, layer, x: torch.Tensor, attention_out: torch.Tensor) -> torch.Tensor:
        """The rest of the layer after attention: output projection, MLP and residuals."""
        flat = attention_out.reshape(1, -1)
        if self.neox:
            return x + layer.attention.dense(flat) + layer.mlp(layer.post_attention_layernorm(x))
        if self.gemma:  # norms after attention and around the MLP
            x = x + layer.post_attention_layernorm(layer.self_attn.o_proj(flat))
            return x + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(x)))
        x = x + layer.self_attn.o_proj(flat)
        return x + layer.mlp(layer.post_attention_layernorm(x))

    def nll(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        norm = self.stack.final_layer_norm if self.neox else self.stack.norm
        logits = self.model.lm_head(norm(x))
        return torch.nn.functional.cross_entropy(logits.double(), target)


class NaiveQuant:
    """Quantized keys and values from the definition (KIVI's grouping, as ``streamlib.caches.quant`` states it), with
    no packing and no buffers: blocks of ``residual`` consecutive positions; a query sees the earlier tokens of its
    own block, and the first ``n_fp_sinks``, as they are; every other token as ``dequantize(quantize(x))``, where a
    block is quantized once, after the step of its last token, from its tokens that step saw (``members``). Values:
    per token, ``group`` channels per scale. Keys: per channel over the block's members (``per_channel``), or per
    token like the values. Keys are quantized before rotary. Asymmetric: scale ``(max - min) / (2^bits - 1)``, zero
    point ``min``, both stored in half precision, code ``round((x - zero) / scale)`` with the stored ones, clamped to
    the levels."""

    def __init__(self, bits: int, residual: int, group: int, per_channel: bool, n_fp_sinks: int):
        self.levels, self.residual, self.group = 2**bits - 1, residual, group
        self.per_channel, self.n_fp_sinks = per_channel, n_fp_sinks
        self.seen: dict = {}  # (layer, kv head, token) -> (key, value) as every later query of another block sees it

    def fake(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        # scale and zero point as stored: in half precision, the codes computed against them
        scale = ((hi - lo) / self.levels).half().to(x.dtype)
        lo = lo.half().to(x.dtype)
        codes = torch.where(scale > 0, (x - lo) / torch.where(scale > 0, scale, 1.0), 0.0).round().clamp(0, self.levels)
        return codes * scale + lo

    def per_token(self, x: torch.Tensor) -> torch.Tensor:
        g = x.view(-1, self.group)
        return self.fake(g, g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)).view(x.shape)

    def close_block(self, li: int, head: int, members: list[int], raw_keys, values) -> None:
        """Quantize a finished block's ``members`` (token indices) in layer ``li``, kv head ``head``."""
        members = [i for i in members if i >= self.n_fp_sinks]
        if not members:
            return
        keys = torch.stack([raw_keys[i][head] for i in members])  # (m, d)
        if self.per_channel:
            keys = self.fake(keys, keys.amin(0, keepdim=True), keys.amax(0, keepdim=True))
        else:
            keys = torch.stack([self.per_token(k) for k in keys])
        for j, i in enumerate(members):
            self.seen[li, head, i] = (keys[j], self.per_token(values[i][head]))

    def view(self, li: int, head: int, i: int, t: int, raw_keys, values):
        """Token ``i``'s key (unrotated) and value as the query at ``t`` sees them in layer ``li``, kv head ``head``."""
        if i // self.residual == t // self.residual or i < self.n_fp_sinks:
            return raw_keys[i][head], values[i][head]
        return self.seen[li, head, i]
