"""Which heads retrieve: the retrieval score of every kv head from Dense runs of the pass-key task, without training
(Wu et al., *Retrieval Head Mechanistically Explains Long-Context Factuality*, 2024, arXiv 2404.15574).

While the model writes the key (teacher-forced with the right answer), a query head *retrieves* a digit when its
strongest attention lands on that digit in the key's mention in the context; its score is the share of the answer's
digits it retrieves. A kv head scores the best of its query heads (its tokens are kept or not for all of them). The
heads that score highest are the ones :class:`streamlib.policies.HeadSplit` lets keep every token."""

from __future__ import annotations

import time

import pandas as pd
import torch

from ..core.arch import SLIDING, layer_types, shapes_of
from .measurement import Measurement
from .retrieval import PassKeyTrial, passkey_trial


@torch.inference_mode()
def retrieval_scores(model, tokenizer, trials: list[PassKeyTrial]) -> torch.Tensor:
    """Every kv head's retrieval score over ``trials``: (layers, kv heads), in [0, 1]. ``model`` must attend eagerly
    (it returns its attention weights)."""
    if model.config._attn_implementation != "eager":
        raise ValueError("model: retrieval scores read the attention weights; load it with attn_implementation='eager'")
    sh = shapes_of(model)
    hits = torch.zeros(sh.layers, sh.heads)
    asked = 0
    device = next(model.parameters()).device
    for trial in trials:
        answer = tokenizer(" " + trial.key, add_special_tokens=False).input_ids
        ids = torch.cat([trial.prompt_ids, torch.tensor([answer])], dim=1).to(device)
        attentions = model(input_ids=ids, output_attentions=True, use_cache=False).attentions
        key_tokens = {p: int(ids[0, p]) for p in trial.key_positions}
        start = trial.prompt_ids.shape[1]
        for j, token in enumerate(answer):
            if not tokenizer.decode([token]).strip().isdigit():
                continue
            query = start + j - 1  # the position whose next token is this digit
            strongest = torch.stack([layer[0, :, query].argmax(-1).cpu() for layer in attentions])  # (layers, heads)
            copied = torch.tensor([[key_tokens.get(int(p), -1) == token for p in row] for row in strongest])
            hits += copied.float()
            asked += 1
    if asked == 0:
        raise ValueError("trials: no answer digit to score")
    per_query_head = hits / asked
    return per_query_head.view(sh.layers, sh.kv_heads, sh.group).amax(dim=-1)


def top_heads(scores: torch.Tensor, share: float, config) -> torch.Tensor:
    """The retrieval heads for a split: the ``share`` of the full layers' kv heads with the highest scores (ties to
    the earlier layer and head), as a boolean mask (layers x kv heads); a hybrid model's sliding layers get none."""
    if not 0 <= share <= 1:
        raise ValueError(f"share must be in [0, 1]; got {share!r}")
    full = torch.tensor([kind != SLIDING for kind in layer_types(config)])
    ranked = scores.masked_fill(~full[:, None], -1.0).flatten()
    count = round(share * int(full.sum()) * scores.shape[1])
    order = sorted(range(ranked.numel()), key=lambda i: (-float(ranked[i]), i))[:count]
    mask = torch.zeros(ranked.numel(), dtype=torch.bool)
    mask[order] = True
    return mask.view_as(scores)


def map_trials(tokenizer, tokens: int, count: int = 6, bos: bool | None = None) -> list[PassKeyTrial]:
    """The pass-key prompts a map is scored on: ``count`` keys at depths spread over a prompt of ``tokens`` tokens,
    seeds 1000 on (apart from the seeds evaluations use)."""
    return [passkey_trial(tokenizer, tokens, (i + 0.5) / count, 1000 + i, bos=bos) for i in range(count)]


def measure_head_scores(model, tokenizer, trials: list[PassKeyTrial], shipped: torch.Tensor | None = None,
                        method: str = "retrieval") -> Measurement:
    """A head map as a measurement: ``shipped`` (a model's map made by ``method``, ``streamlib.loading.head_maps``)
    when given, else the retrieval scores measured on ``trials`` (``model`` attending eagerly). The curve has a row
    per kv head, with the map's method."""
    if shipped is None and method != "retrieval":
        raise ValueError(f"method: only the retrieval score is measured here ({method!r} needs a shipped map, "
                         "scripts/head_map.py)")
    start = time.perf_counter()
    scores = shipped if shipped is not None else retrieval_scores(model, tokenizer, trials)
    curve = pd.DataFrame([{"layer": layer, "kv_head": head, "score": float(scores[layer, head]), "method": method}
                          for layer in range(scores.shape[0]) for head in range(scores.shape[1])])
    rows = [("head_score_max", float(scores.max()), ""), ("map_seconds", time.perf_counter() - start, "s"),
            ("map_shipped", float(shipped is not None), "")]
    return Measurement(rows=rows, curve=curve)

