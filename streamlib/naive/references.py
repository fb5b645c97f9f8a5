"""The naive references: each policy's NLL from its definition, token by token, with explicit lists of the tokens in
view (:mod:`streamlib.naive.forward` for the model's pieces)."""

import torch

from ..policies.scored import ScoreView
from .forward import Naive, NaiveQuant


def kept_indices(t: int, n_sink: int, window: int) -> list[int]:
    """Tokens of 0..t-1 that the cache holds when token t arrives: the first n_sink and the last window."""
    past = list(range(t))
    if len(past) <= n_sink + window:
        return past
    return past[:n_sink] + past[len(past) - window :]


def burst_kept_indices(n_tokens: int, n_sink: int, capacity: int, discard: int) -> list[list[int]]:
    """For each token t, the tokens of 0..t-1 a burst-eviction cache holds when t arrives: when t would make the
    cache hold more than ``capacity`` tokens, the ``discard`` oldest after the first ``n_sink`` leave first."""
    held, out = [], []
    for t in range(n_tokens):
        if len(held) + 1 > capacity:
            held = held[:n_sink] + held[n_sink + discard :]
        out.append(list(held))
        held.append(t)
    return out


def _view_of(quant, net, li, t, idx, raw_keys, values, heads=None):
    """Per kv head: (keys unrotated (n, d), values (n, d)) of tokens ``idx`` as the query at ``t`` sees them."""
    out = []
    for h in range(net.kv_heads) if heads is None else heads:
        if quant is None or net.sliding(li):
            pairs = [(raw_keys[i][h], values[i][h]) for i in idx]
        else:
            pairs = [quant.view(li, h, i, t, raw_keys, values) for i in idx]
        out.append((torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])))
    return out


@torch.no_grad()
def naive_streaming_nll(model, input_ids: torch.Tensor, n_sink: int, window: int, pos_shift: bool,
                        kept: list[list[int]] | None = None, quant: NaiveQuant | None = None) -> torch.Tensor:
    """StreamingLLM's NLL from its definition; ``kept`` (per token, the earlier tokens in view) replaces its rule,
    e.g. with :func:`burst_kept_indices`. With ``pos_shift`` keys sit at their index in the kept list and the query
    after them; without it every token keeps its original position. ``quant``: keys and values quantized
    (:class:`NaiveQuant`)."""
    if kept is None:
        def visible(t, li, h):
            return kept_indices(t, n_sink, window)
    else:
        def visible(t, li, h):
            return kept[t]
    return naive_view_nll(model, input_ids, visible, pos_shift, quant)


@torch.no_grad()
def naive_view_nll(model, input_ids: torch.Tensor, visible, pos_shift: bool,
                   quant: NaiveQuant | None = None) -> torch.Tensor:
    """The NLL of a policy whose query at ``t`` sees, in full layer ``li`` and kv head ``h``, the earlier tokens
    ``visible(t, li, h)`` and itself. With ``pos_shift`` the keys sit at their index in that list and the query after
    them; without it every token keeps its original position. A hybrid model's sliding layers see their trained
    window at original positions. ``quant``: keys and values quantized (:class:`NaiveQuant`)."""
    net = Naive(model)
    ids = input_ids[0]
    raw_keys = [[] for _ in net.layers]  # per layer, per token: (kv_heads, d), before rotary
    values = [[] for _ in net.layers]
    nll = []
    for t in range(ids.numel() - 1):
        x = net.embed(ids[t : t + 1])
        for li, layer in enumerate(net.layers):
            q, k, v = net.qkv(layer, x)
            raw_keys[li].append(k)
            values[li].append(v)
            keys, vals, query_pos = [], [], []
            for h in range(net.kv_heads):
                sliding = net.sliding(li)
                in_view = net.sliding_view(t) if sliding else list(visible(t, li, h))
                shifted = pos_shift and not sliding
                all_idx = in_view + [t]
                all_pos = torch.tensor(list(range(len(all_idx))) if shifted else all_idx, dtype=torch.long)
                (raw, val), = _view_of(quant, net, li, t, all_idx, raw_keys[li], values[li], heads=[h])
                keys.append(net.rotate(raw[None], all_pos, li)[0])
                vals.append(val)
                query_pos.append(int(all_pos[-1]))
                if quant is not None and not sliding and (t + 1) % quant.residual == 0:
                    block = [i for i in all_idx if i // quant.residual == t // quant.residual]
                    quant.close_block(li, h, block, raw_keys[li], values[li])
            # each query head sits where its kv head's view puts it
            q = torch.stack([net.rotate(q[qh][None, None], torch.tensor([query_pos[qh // net.group]]), li)[0, 0]
                             for qh in range(net.heads)])[:, None]
            out, _ = net.attend(q, keys, vals)
            x = net.block(layer, x, out)
        nll.append(net.nll(x, ids[t + 1 : t + 2]))
    return torch.stack(nll).to(next(model.parameters()).dtype)


@torch.no_grad()
def naive_recompute_nll(model, input_ids: torch.Tensor, window: int) -> torch.Tensor:
    ids = input_ids[0]
    out = []
    for t in range(ids.numel() - 1):
        ctx = ids[max(0, t - window + 1) : t + 1][None]
        logits = model(input_ids=ctx, use_cache=False).logits[0, -1]
        out.append(torch.nn.functional.cross_entropy(logits[None].float(), ids[t + 1 : t + 2]))
    return torch.stack(out)


def _store_token(net, layer, x, t: int, li: int, raw_keys, values) -> torch.Tensor:
    """Keep token ``t``'s key (before rotary) and value in layer ``li``; its query rotated at ``t``, (heads, 1, d)."""
    q, k, v = net.qkv(layer, x)
    raw_keys[li].append(k)
    values[li].append(v)
    return net.rotate(q[:, None, :], torch.tensor([t]), li)


@torch.no_grad()
def naive_scored_nll(model, input_ids: torch.Tensor, rule: str, budget: int, n_recent: int = 0,
                     quant: NaiveQuant | None = None):
    """TOVA (``rule='current'``: the current query's weights) or H2O (``'accumulated'``: every query's weights summed,
    ``budget = n_heavy + n_recent``) from their definitions, written here independently of the policies' own rules,
    token by token, with explicit lists of held tokens (per layer; per layer and kv head for H2O) at original positions.
    TOVA averages the weights over every query head; H2O credits a kv head's token with the weights of every query
    head of its group.

    Returns (per-token NLL, the smallest gap seen between the lowest and second-lowest eviction candidates), so a
    test can check that no decision was a near tie that float32 rounding could flip.
    """
    net = Naive(model)
    ids = input_ids[0]
    n_layers, kv_heads = len(net.layers), net.kv_heads
    raw_keys = [[] for _ in range(n_layers)]
    values = [[] for _ in range(n_layers)]
    held = [[[] for _ in range(kv_heads)] for _ in range(n_layers)]  # per layer, per kv head: token indices in order
    scores = [[{} for _ in range(kv_heads)] for _ in range(n_layers)]  # H2O: per layer, per kv head: token -> sum
    gaps = []
    nll = []

    def lowest(cands, key):
        ordered = sorted(cands, key=lambda i: (key(i), i))
        if len(ordered) > 1:
            gaps.append(key(ordered[1]) - key(ordered[0]))
        return ordered[0]

    for t in range(ids.numel() - 1):
        x = net.embed(ids[t : t + 1])
        for li, layer in enumerate(net.layers):
            q = _store_token(net, layer, x, t, li, raw_keys, values)
            keys, vals = [], []
            for h in range(kv_heads):
                if net.sliding(li):  # a hybrid model's sliding layer keeps its trained window, no scores
                    held[li][h] = net.sliding_view(t)
                held[li][h].append(t)
                idx = held[li][h]
                if quant is None or net.sliding(li):
                    raw = torch.stack([raw_keys[li][i][h] for i in idx])
                    vals.append(torch.stack([values[li][i][h] for i in idx]))
                else:
                    pairs = [quant.view(li, h, i, t, raw_keys[li], values[li]) for i in idx]
                    raw = torch.stack([p[0] for p in pairs])
                    vals.append(torch.stack([p[1] for p in pairs]))
                keys.append(net.rotate(raw[None], torch.tensor(idx), li)[0])
                if quant is not None and not net.sliding(li) and (t + 1) % quant.residual == 0:
                    quant.close_block(li, h, [i for i in idx if i // quant.residual == t // quant.residual],
                                      raw_keys[li], values[li])
            out, probs = net.attend(q, keys, vals)
            if net.sliding(li):
                pass
            elif rule == "current":
                idx = held[li][0]  # every head holds the same tokens
                if len(idx) > budget:
                    mean = torch.stack(probs).mean(dim=0)
                    weight = {tok: float(mean[j]) for j, tok in enumerate(idx)}
                    victim = lowest(idx, weight.__getitem__)
                    for h in range(kv_heads):
                        held[li][h].remove(victim)
            else:
                for h in range(kv_heads):
                    idx = held[li][h]
                    group = sum(probs[qh] for qh in range(h * net.group, (h + 1) * net.group))
                    for j, tok in enumerate(idx):
                        scores[li][h][tok] = scores[li][h].get(tok, 0.0) + float(group[j])
                    if len(idx) > budget:
                        cands = [tok for tok in idx if tok <= t - n_recent]
                        victim = lowest(cands, scores[li][h].__getitem__)
                        idx.remove(victim)
            x = net.block(layer, x, out)
        nll.append(net.nll(x, ids[t + 1 : t + 2]))
    return torch.stack(nll).float(), min(gaps) if gaps else float("inf")


@torch.no_grad()
def naive_rule_nll(model, input_ids: torch.Tensor, policy, quant: NaiveQuant | None = None):
    """Any score-based policy (:class:`streamlib.policies.scored.ScoredPolicy`) from its definition: explicit lists
    of held tokens per layer (per layer and kv head when the rule decides per head) at original positions; after each
    token's attention the rule scores the held tokens from what a layer holds (keys rotated at their positions,
    values, positions, its last scores, the step's probabilities) and, over budget, the lowest-scored token older than
    the ``protected_recent`` most recent leaves (ties to the earliest). The rule's own ``score`` is the one piece
    shared with the cache: what is tested is everything around it.

    Returns (per-token NLL, the smallest gap seen between the lowest and second-lowest candidates)."""
    net = Naive(model)
    ids = input_ids[0]
    n_layers, kv_heads = len(net.layers), net.kv_heads
    rows = kv_heads if policy.per_head else 1
    raw_keys = [[] for _ in range(n_layers)]
    values = [[] for _ in range(n_layers)]
    held = [[[] for _ in range(rows)] for _ in range(n_layers)]  # per layer and row: token indices
    scores = [[{} for _ in range(rows)] for _ in range(n_layers)]  # per layer and row: token -> last score
    gaps, nll = [], []
    for t in range(ids.numel() - 1):
        x = net.embed(ids[t : t + 1])
        for li, layer in enumerate(net.layers):
            q = _store_token(net, layer, x, t, li, raw_keys, values)
            sliding = net.sliding(li)
            if not sliding:
                for row in held[li]:
                    row.append(t)
            keys, vals, index = [], [], []
            for h in range(kv_heads):
                idx = net.sliding_view(t) + [t] if sliding else held[li][h if policy.per_head else 0]
                (raw, val), = _view_of(None if sliding else quant, net, li, t, idx, raw_keys[li], values[li], [h])
                keys.append(net.rotate(raw[None], torch.tensor(idx), li)[0])
                vals.append(val)
                index.append(idx)
                if quant is not None and not sliding and (t + 1) % quant.residual == 0:
                    quant.close_block(li, h, [i for i in idx if i // quant.residual == t // quant.residual],
                                      raw_keys[li], values[li])
            out, probs = net.attend(q, keys, vals)
            x = net.block(layer, x, out)
            if sliding:
                continue
            positions = torch.tensor([index[h if policy.per_head else 0] for h in range(rows)])[None]
            last = torch.tensor([[scores[li][r].get(i, 0.0) for i in held[li][r]] for r in range(rows)],
                                dtype=torch.float64)[None]
            view = ScoreView(keys=torch.stack(keys)[None], values=torch.stack(vals)[None], positions=positions,
                             scores=last, attention=torch.stack(probs)[None, :, None] if policy.needs_attention
                             else None, newest=t)
            new = policy.score(view)[0].double()
            for r in range(rows):
                scores[li][r] = dict(zip(held[li][r], new[r].tolist()))
                if len(held[li][r]) > policy.budget:
                    cands = sorted((i for i in held[li][r] if i <= t - policy.protected_recent),
                                   key=lambda i: (scores[li][r][i], i))
                    if len(cands) > 1:
                        gaps.append(scores[li][r][cands[1]] - scores[li][r][cands[0]])
                    held[li][r].remove(cands[0])
        nll.append(net.nll(x, ids[t + 1 : t + 2]))
    return torch.stack(nll).float(), min(gaps) if gaps else float("inf")
