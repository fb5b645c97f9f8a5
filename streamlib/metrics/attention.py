"""Where attention goes: the share of attention the first tokens of a sequence receive (the attention sink).

Xiao et al. (arXiv 2309.17453, Figure 2) show that after the first two layers most heads put a large share of their
attention on the first token whatever it is. This measures that share per layer from eager attention weights.
"""

from __future__ import annotations

import pandas as pd
import torch

from ..core.arch import layer_types
from ..core.checks import check_input_ids
from .measurement import Measurement


@torch.inference_mode()
def first_token_attention(model, input_ids: torch.Tensor, n_first: int = 4, skip: int = 16) -> torch.Tensor:
    """Mean attention weight on each of the first ``n_first`` tokens, per layer: shape (layers, n_first).

    Averaged over heads and over query positions ``skip..T-1`` (early queries have few keys, so any key gets a
    large weight). For comparison, uniform attention would give a query at position ``t`` a weight ``1/(t+1)``;
    :func:`uniform_share` gives that average over the same queries.
    """
    check_input_ids(input_ids, batch_one=True, min_len=skip + 2)
    if model.config._attn_implementation != "eager":
        raise ValueError("model: attention weights need attn_implementation='eager' (load_model(..., attn_implementation='eager'))")
    device = next(model.parameters()).device
    out = model(input_ids=input_ids.to(device), output_attentions=True, use_cache=False)
    rows = [att[0, :, skip:, :n_first].float().mean(dim=(0, 1)).cpu() for att in out.attentions]
    return torch.stack(rows)


def uniform_share(length: int, skip: int = 16) -> float:
    """What uniform attention would give one key on average over queries ``skip..length-1``."""
    return float(torch.tensor([1.0 / (t + 1) for t in range(skip, length)]).mean())


def measure_first_tokens(model, input_ids: torch.Tensor, n_first: int = 4, skip: int = 16) -> Measurement:
    """:func:`first_token_attention` as a record: the curve has one row per (layer, token) with its mean weight, the
    uniform share for comparison and the layer's attention type (a hybrid model's sliding layers see only their
    window); the row ``token0_over_uniform`` is the largest ratio over layers."""
    share = first_token_attention(model, input_ids, n_first, skip)
    uniform = uniform_share(input_ids.shape[1], skip)
    types = layer_types(model)
    curve = pd.DataFrame([{"layer": layer, "token": tok, "weight": float(share[layer, tok]), "uniform": uniform,
                           "layer_type": types[layer]} for layer in range(share.shape[0]) for tok in range(share.shape[1])])
    return Measurement(rows=[("token0_over_uniform", float(share[:, 0].max()) / uniform, "")], curve=curve)
