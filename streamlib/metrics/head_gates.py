"""Which heads retrieve, by DuoAttention's optimisation (Xiao et al., *DuoAttention: Efficient Long-Context LLM
Inference with Retrieval and Streaming Heads*, 2024, arXiv 2410.10819).

Every kv head of a full layer gets a gate ``g`` in [0, 1], and its query heads' output becomes ``g * full + (1 - g) *
streaming``: full attention mixed with the attention a streaming head of :class:`streamlib.policies.HeadSplit` gives
(the first ``n_sink`` tokens, the ``window`` tokens before the query and the query itself, at original positions).
The model stays frozen; the gates start at 1 (Dense) and are trained on pass-key prompts so that the last hidden
states over the answer stay those of the Dense model, while an L1 term pulls every gate toward 0 (streaming). A head
whose gate stays high is one the answer needs whole: the gates are a map for HeadSplit like the retrieval scores of
:mod:`streamlib.metrics.head_scores`, found by gradient instead of by reading attention. Gates are clamped to [0, 1]
after each step, as the paper does. A hybrid model's sliding layers keep their trained window and get no gate.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..caches.handover import handover
from ..core.arch import SLIDING, layer_types, shapes_of
from .retrieval import PassKeyTrial


def streaming_mask(n: int, n_sink: int, window: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The additive mask (n, n) of a streaming head over a whole sequence at original positions: query ``i`` sees key
    ``j <= i`` when ``j < n_sink`` or ``i - j <= window``."""
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    seen = (j <= i) & ((j < n_sink) | (i - j <= window))
    return torch.zeros(n, n, device=device, dtype=dtype).masked_fill(~seen, float("-inf"))


class GatedHeads:
    """Inside ``with handover(model, gated)``: each full layer's attention is the gated mix of full and streaming
    attention per kv head (``gates``, layers x kv heads; the rows of sliding layers are unused). For whole sequences
    fed at once without a cache and without padding, as the training below feeds them."""

    needs_handover = True
    name = "GatedHeads"

    def __init__(self, model, gates: torch.Tensor, n_sink: int, window: int):
        sh = shapes_of(model)
        if tuple(gates.shape) != (sh.layers, sh.kv_heads):
            raise ValueError(f"gates: shape must be (layers, kv heads) = {(sh.layers, sh.kv_heads)}; got "
                             f"{tuple(gates.shape)}")
        self.gates, self.n_sink, self.window, self.group = gates, n_sink, window, sh.group
        self.full = [kind != SLIDING for kind in layer_types(model)]
        self._masks: dict[tuple, torch.Tensor] = {}

    def attender(self, layer: int):
        return _GatedLayer(self, layer) if self.full[layer] else None

    def mask(self, n: int, device, dtype) -> torch.Tensor:
        key = (n, device, dtype)
        if key not in self._masks:
            self._masks[key] = streaming_mask(n, self.n_sink, self.window, device, dtype)[None, None]
        return self._masks[key]


class _GatedLayer:
    def __init__(self, heads: GatedHeads, layer: int):
        self.heads, self.layer = heads, layer

    def attend(self, base, module, query, key, value, attention_mask, **kwargs):
        if query.shape[2] != key.shape[2]:
            raise ValueError("GatedHeads: a whole sequence at once, without a cache")
        full, weights = base(module, query, key, value, attention_mask, **kwargs)  # (B, n, heads, d)
        kwargs.pop("is_causal", None)
        stream, _ = base(module, query, key, value, self.heads.mask(query.shape[2], query.device, query.dtype),
                         is_causal=False, **kwargs)
        gate = self.heads.gates[self.layer].to(full.dtype).repeat_interleave(self.heads.group)[None, None, :, None]
        return gate * full + (1 - gate) * stream, weights


def answer_ids(tokenizer, trial: PassKeyTrial) -> torch.Tensor:
    """The prompt followed by the right answer (" " + key), as the model is asked it."""
    answer = tokenizer(" " + trial.key, add_special_tokens=False).input_ids
    return torch.cat([trial.prompt_ids, torch.tensor([answer])], dim=1)


def train_gates(model, tokenizer, trials: list[PassKeyTrial], n_sink: int = 4, window: int = 124, steps: int = 60,
                lr: float = 0.05, l1: float = 0.05, log=None) -> tuple[torch.Tensor, list[dict]]:
    """DuoAttention's gates for ``model`` (frozen) over ``trials`` (cycled, one prompt per step): (layers, kv heads)
    in [0, 1], and a history of ``{step, distill, mean_gate, seconds}``. The distillation loss is the mean
    squared distance of the last hidden states over the answer's positions (the question's last token and the key's
    tokens but the last) to the Dense model's, over their mean square; ``l1`` weighs the mean gate."""
    if not trials:
        raise ValueError("trials: at least one pass-key prompt")
    if steps < 1:
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}")
    sh = shapes_of(model)
    device = next(model.parameters()).device
    frozen = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    gates = torch.ones(sh.layers, sh.kv_heads, device=device, requires_grad=True)
    heads = GatedHeads(model, gates, n_sink, window)
    full = torch.tensor(heads.full, device=device)[:, None].float()
    optimiser = torch.optim.Adam([gates], lr=lr)
    data = []
    with torch.no_grad():
        for trial in trials:
            ids = answer_ids(tokenizer, trial).to(device)
            answer = slice(trial.prompt_ids.shape[1] - 1, ids.shape[1] - 1)
            target = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states[-1][:, answer]
            data.append((ids, answer, target))
    history, start = [], time.perf_counter()
    try:
        for step in range(steps):
            ids, answer, target = data[step % len(data)]
            with handover(model, heads):
                hidden = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states[-1][:, answer]
            distill = F.mse_loss(hidden.float(), target.float()) / target.float().pow(2).mean()
            penalty = (gates * full).sum() / full.sum() / sh.kv_heads
            loss = distill + l1 * penalty
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                gates.clamp_(0.0, 1.0)
            history.append({"step": step + 1, "distill": distill.item(), "mean_gate": penalty.item(),
                            "seconds": time.perf_counter() - start})
            if log:
                log(history[-1])
    finally:
        for p, grad in zip(model.parameters(), frozen):
            p.requires_grad_(grad)
    return gates.detach().cpu() * full.cpu(), history
