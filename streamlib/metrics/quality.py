"""Streaming perplexity: the negative log-likelihood of every token given what a policy lets the model see.

Definitions (used everywhere in the workbook):

* ``token_nll[i]`` is ``-log p(x_{i+1} | context)`` in nats for ``i = 0..T-2``, where the context is what the
  policy keeps of ``x_0..x_i`` (Dense: all of it; StreamingLLM: the first ``n_sink`` and the last ``window`` of the
  tokens before ``x_i``, plus ``x_i``; Recompute: ``x_{i-window+1}..x_i`` re-encoded at positions ``0..window-1``).
* perplexity is ``exp(mean(token_nll))`` over the whole stream, so the first tokens (short context) count too, as in
  the StreamingLLM paper's evaluation.

Two modes give the same numbers: ``"token"`` feeds one token at a time (the paper's own evaluation, the reference);
``"chunked"`` feeds chunks with per-token masks (see :mod:`streamlib.caches.sink_window`) and is many times faster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch

from ..caches.generation import forward_chunks
from ..core.checks import check_input_ids, check_int
from .measurement import Measurement

MODES = ("chunked", "token")


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm  # plain text: works in a terminal, JupyterLab and papermill alike

    return tqdm(total=total, desc=desc, unit="tok", mininterval=1.0)


@torch.inference_mode()
def token_nll(model, input_ids: torch.Tensor, policy, *, mode: str = "chunked", chunk_size: int | None = None,
              progress: bool = False, after_chunk=None) -> torch.Tensor:
    """Per-token NLL (nats) of ``input_ids[0, 1:]`` under ``policy``; a float32 CPU tensor of length ``T - 1``.

    ``input_ids``: shape ``(1, T)``, integer dtype, ``T >= 2``. ``mode``: ``"chunked"`` (default) or ``"token"``.
    ``chunk_size``: tokens per forward in chunked mode (default: 512; Recompute reads 8 windows per forward).
    ``after_chunk(end, cache)``: called after each forward with the number of tokens read so far.
    """
    check_input_ids(input_ids, batch_one=True, min_len=2)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    if chunk_size is not None:
        check_int("chunk_size", chunk_size, 1)
    cache = policy.make_cache(model)
    inputs, targets = input_ids[:, :-1], input_ids[:, 1:]
    out = torch.empty(targets.shape[1], dtype=torch.float32)
    bar = _progress(inputs.shape[1], progress, policy.label())
    step = 1 if mode == "token" else chunk_size
    for start, logits in forward_chunks(model, inputs, cache, step):
        n = logits.shape[1]
        out[start : start + n] = _nll(logits, targets[:, start : start + n].to(logits.device)).cpu()
        if after_chunk is not None:
            after_chunk(start + n, cache)
        if bar is not None:
            bar.update(n)
    if bar is not None:
        bar.close()
    return out


@dataclass
class PerplexityResult:
    ppl: float
    mean_nll: float
    n_tokens: int
    nll: torch.Tensor  # per-token NLL, kept for NLL-vs-position curves


def perplexity(model, input_ids: torch.Tensor, policy, **kwargs) -> PerplexityResult:
    """Perplexity of a stream under a policy, keeping the per-token NLL. Keyword arguments go to :func:`token_nll`."""
    nll = token_nll(model, input_ids, policy, **kwargs)
    mean = float(nll.double().mean())
    return PerplexityResult(ppl=math.exp(mean), mean_nll=mean, n_tokens=int(nll.numel()), nll=nll)


def measure_perplexity(model, input_ids: torch.Tensor, policy, kv_bytes: bool = False, **kwargs) -> Measurement:
    """:func:`perplexity` as a record: rows ``ppl`` and ``mean_nll``, and the NLL per position as its curve
    (``position`` is the index of the predicted token, 1..T-1). ``kv_bytes``: the curve also has the bytes the cache
    holds after each forward, at the forward's last position (empty elsewhere): memory along the whole stream."""
    held: dict[int, int] = {}
    if kv_bytes:
        from .memory import kv_cache_bytes

        kwargs["after_chunk"] = lambda end, cache: held.__setitem__(end, kv_cache_bytes(cache))
    result = perplexity(model, input_ids, policy, **kwargs)
    curve = pd.DataFrame({"position": range(1, result.n_tokens + 1), "nll": result.nll.numpy()})
    if kv_bytes:
        curve["kv_bytes"] = curve["position"].map(held)
    return Measurement(rows=[("ppl", result.ppl, ""), ("mean_nll", result.mean_nll, "nats")], curve=curve)


@torch.inference_mode()
def windowed_perplexity(model, input_ids: torch.Tensor, seq_len: int) -> float:
    """Perplexity over consecutive, non-overlapping windows of ``seq_len`` tokens, each read from scratch (the
    usual "perplexity at the training length"; the last partial window is dropped)."""
    check_input_ids(input_ids, batch_one=True, min_len=seq_len)
    device = next(model.parameters()).device
    n = (input_ids.shape[1] // seq_len) * seq_len
    chunks = input_ids[0, :n].view(-1, seq_len).to(device)
    total = 0.0
    for c in chunks:
        logits = model(input_ids=c[None], use_cache=False).logits[0, :-1]
        total += float(torch.nn.functional.cross_entropy(logits.float(), c[1:], reduction="sum"))
    return math.exp(total / (chunks.shape[0] * (seq_len - 1)))
