"""A deliberately naive StreamingLLM for GPT-NeoX, written from the semantics alone, to check the real cache against.

Token by token; every layer keeps its keys *before* rotary and rotates them at read time, at the position the
semantics give: the slot index in the cache with position shift, the original index without it. No buffers, no
chunking, no tricks.
"""

import math

import torch


def kept_indices(t: int, n_sink: int, window: int) -> list[int]:
    """Tokens of 0..t-1 that the cache holds when token t arrives: the first n_sink and the last window."""
    past = list(range(t))
    if len(past) <= n_sink + window:
        return past
    return past[:n_sink] + past[len(past) - window :]


def _rotate(x: torch.Tensor, positions: torch.Tensor, model) -> torch.Tensor:
    """Rotary for GPT-NeoX: x is (heads, n, head_dim), positions (n,)."""
    cos, sin = model.gpt_neox.rotary_emb(x, positions[None])  # (1, n, rotary_ndims)
    r = cos.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    half = r // 2
    turned = torch.cat([-x_rot[..., half:], x_rot[..., :half]], dim=-1)
    return torch.cat([x_rot * cos + turned * sin, x_pass], dim=-1)


@torch.no_grad()
def naive_streaming_nll(model, input_ids: torch.Tensor, n_sink: int, window: int, pos_shift: bool) -> torch.Tensor:
    cfg = model.config
    heads = cfg.num_attention_heads
    head_size = cfg.hidden_size // heads
    ids = input_ids[0]
    raw_keys = [[] for _ in model.gpt_neox.layers]  # per layer, per token: (heads, head_size), before rotary
    values = [[] for _ in model.gpt_neox.layers]
    nll = []
    for t in range(ids.numel() - 1):
        kept = kept_indices(t, n_sink, window)
        if pos_shift:
            key_pos = list(range(len(kept)))
            query_pos = len(kept)
        else:
            key_pos = kept
            query_pos = t
        x = model.gpt_neox.embed_in(ids[t : t + 1])  # (1, hidden)
        for li, layer in enumerate(model.gpt_neox.layers):
            att = layer.attention
            qkv = att.query_key_value(layer.input_layernorm(x)).view(heads, 3 * head_size)
            q, k, v = qkv.split(head_size, dim=-1)
            raw_keys[li].append(k)
            values[li].append(v)
            all_idx = kept + [t]
            all_pos = torch.tensor(key_pos + [query_pos], dtype=torch.long)
            keys = torch.stack([raw_keys[li][i] for i in all_idx], dim=1)  # (heads, n, hs)
            vals = torch.stack([values[li][i] for i in all_idx], dim=1)
            keys = _rotate(keys, all_pos, model)
            q = _rotate(q[:, None, :], torch.tensor([query_pos]), model)  # (heads, 1, hs)
            scores = (q @ keys.transpose(1, 2)) / math.sqrt(head_size)
            out = torch.softmax(scores.float(), dim=-1).to(vals.dtype) @ vals  # (heads, 1, hs)
            attn_out = att.dense(out.transpose(0, 1).reshape(1, -1))
            mlp_out = layer.mlp(layer.post_attention_layernorm(x))
            x = x + attn_out + mlp_out  # Pythia's parallel residual
        logits = model.lm_head(model.gpt_neox.final_layer_norm(x))
        nll.append(torch.nn.functional.cross_entropy(logits.float(), ids[t + 1 : t + 2]))
    return torch.stack(nll)


@torch.no_grad()
def naive_recompute_nll(model, input_ids: torch.Tensor, window: int) -> torch.Tensor:
    ids = input_ids[0]
    out = []
    for t in range(ids.numel() - 1):
        ctx = ids[max(0, t - window + 1) : t + 1][None]
        logits = model(input_ids=ctx, use_cache=False).logits[0, -1]
        out.append(torch.nn.functional.cross_entropy(logits[None].float(), ids[t + 1 : t + 2]))
    return torch.stack(out)
