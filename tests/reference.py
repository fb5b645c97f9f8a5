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


def _layer_qkv(layer, x, heads, head_size):
    qkv = layer.attention.query_key_value(layer.input_layernorm(x)).view(heads, 3 * head_size)
    return qkv.split(head_size, dim=-1)  # each (heads, head_size)


@torch.no_grad()
def naive_scored_nll(model, input_ids: torch.Tensor, policy: str, budget: int, n_recent: int = 0):
    """TOVA (``policy='tova'``) or H2O (``'h2o'``, ``budget = n_heavy + n_recent``) from their definitions, token by
    token, with explicit lists of held tokens (per layer; per layer and head for H2O) at original positions.

    Returns (per-token NLL, the smallest gap seen between the lowest and second-lowest eviction candidates), so a
    test can check that no decision was a near tie that float32 rounding could flip.
    """
    cfg = model.config
    heads = cfg.num_attention_heads
    head_size = cfg.hidden_size // heads
    ids = input_ids[0]
    n_layers = len(model.gpt_neox.layers)
    raw_keys = [[] for _ in range(n_layers)]
    values = [[] for _ in range(n_layers)]
    held = [[[] for _ in range(heads)] for _ in range(n_layers)]  # per layer, per head: token indices in order
    scores = [[{} for _ in range(heads)] for _ in range(n_layers)]  # H2O: per layer, per head: token -> sum
    gaps = []
    nll = []

    def lowest(cands, key):
        ordered = sorted(cands, key=lambda i: (key(i), i))
        if len(ordered) > 1:
            gaps.append(key(ordered[1]) - key(ordered[0]))
        return ordered[0]

    for t in range(ids.numel() - 1):
        x = model.gpt_neox.embed_in(ids[t : t + 1])
        for li, layer in enumerate(model.gpt_neox.layers):
            q, k, v = _layer_qkv(layer, x, heads, head_size)
            raw_keys[li].append(k)
            values[li].append(v)
            q = _rotate(q[:, None, :], torch.tensor([t]), model)  # (heads, 1, hs)
            outs, probs_by_head = [], []
            for h in range(heads):
                held[li][h].append(t)
                idx = held[li][h]
                keys = torch.stack([raw_keys[li][i][h] for i in idx])[None]  # (1, n, hs)
                keys = _rotate(keys, torch.tensor(idx), model)[0]
                vals = torch.stack([values[li][i][h] for i in idx])
                p = torch.softmax((q[h] @ keys.T)[0] / math.sqrt(head_size), dim=-1)  # (n,)
                outs.append(p @ vals)
                probs_by_head.append(p)
            out = torch.stack(outs)  # (heads, hs)
            if policy == "tova":
                idx = held[li][0]  # every head holds the same tokens
                if len(idx) > budget:
                    mean = torch.stack(probs_by_head).mean(dim=0)
                    weight = {tok: float(mean[j]) for j, tok in enumerate(idx)}
                    victim = lowest(idx, weight.__getitem__)
                    for h in range(heads):
                        held[li][h].remove(victim)
            else:
                for h in range(heads):
                    idx = held[li][h]
                    for j, tok in enumerate(idx):
                        scores[li][h][tok] = scores[li][h].get(tok, 0.0) + float(probs_by_head[h][j])
                    if len(idx) > budget:
                        cands = [tok for tok in idx if tok <= t - n_recent]
                        victim = lowest(cands, scores[li][h].__getitem__)
                        idx.remove(victim)
            attn_out = layer.attention.dense(out.reshape(1, -1))
            mlp_out = layer.mlp(layer.post_attention_layernorm(x))
            x = x + attn_out + mlp_out
        logits = model.lm_head(model.gpt_neox.final_layer_norm(x))
        nll.append(torch.nn.functional.cross_entropy(logits.double(), ids[t + 1 : t + 2]))
    return torch.stack(nll).float(), min(gaps) if gaps else float("inf")
