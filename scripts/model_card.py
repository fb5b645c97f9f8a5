"""Measure the embedded micro model and write its model card (MODEL_CARD.md and card.json beside the weights).

    .venv/bin/python scripts/model_card.py

Every number in the card comes from this script's run; tests/test_models.py re-measures the held-out perplexity.
"""

from __future__ import annotations

import json
import math
import time

import torch

from streamlib.loading.data import kjv_text, tokenize_stream
from streamlib.loading.models import MICRO_DIR, load_model, load_tokenizer
from streamlib.metrics.attention import first_token_attention, uniform_share
from streamlib.metrics.quality import perplexity, windowed_perplexity
from streamlib.policies import Dense, Recompute, StreamingLLM, Window

STREAM_TOKENS = 4096


def main() -> None:
    training = json.loads((MICRO_DIR / "training.json").read_text())
    seq_len = training["train_seq_len"]
    tok = load_tokenizer("micro")
    model = load_model("micro", device="cpu", dtype=torch.float32)
    heldout = tokenize_stream(tok, kjv_text("heldout"))
    card = {
        "parameters": training["parameters"],
        "train_seq_len": seq_len,
        "training_minutes": training["training_minutes"],
        "tokens_seen": training["tokens_seen"],
        "final_train_loss": training["log"][-1]["loss"],
        "heldout_tokens": heldout.shape[1],
        "heldout_ppl_at_train_len": round(windowed_perplexity(model, heldout, seq_len), 3),
        "stream_tokens": STREAM_TOKENS,
        "stream_ppl": {},
    }
    stream = heldout[:, :STREAM_TOKENS]
    policies = [Dense(), Window(256), StreamingLLM(4, 252), StreamingLLM(4, 252, pos_shift=False), Recompute(256)]
    for policy in policies:
        started = time.time()
        result = perplexity(model, stream, policy)
        card["stream_ppl"][policy.label()] = round(result.ppl, 3)
        # the same, over the part of the stream past the training length
        card["stream_ppl"][policy.label() + " (tokens > 512)"] = round(math.exp(float(result.nll[seq_len:].mean())), 3)
        print(policy.label(), card["stream_ppl"][policy.label()], f"{time.time() - started:.1f}s", flush=True)
    eager = load_model("micro", device="cpu", dtype=torch.float32, attn_implementation="eager")
    share = first_token_attention(eager, heldout[:, :seq_len], n_first=4)
    card["first_token_attention_per_layer"] = [round(float(x), 4) for x in share[:, 0]]
    card["uniform_share"] = round(uniform_share(seq_len), 4)
    (MICRO_DIR / "card.json").write_text(json.dumps(card, indent=1) + "\n")

    sp = card["stream_ppl"]
    lines = [
        "# pythia-micro: the workbook's embedded model",
        "",
        "A GPT-NeoX (Pythia-architecture) model small enough to ship in the repository and run on any CPU, so the",
        "notebook chain and the tests work with no GPU and no network. It is **not** a Pythia checkpoint and shows",
        "only part of what StreamingLLM is about; read *What it can and cannot show* before using its numbers.",
        "",
        "## How it was made",
        f"- Command: `{training['command']}`, then `python scripts/model_card.py` for this card.",
        f"- Data: {training['data']}. {training['train_tokens_available']:,} training tokens, "
        f"{heldout.shape[1]:,} held-out tokens.",
        f"- Architecture: Pythia's (partial rotary on 25 % of each head, parallel residual, untied embeddings); "
        f"{training['parameters']:,} parameters, 4 layers x 256, 4 heads, vocabulary 4096 (its own byte-level BPE).",
        f"- Training: {training['steps']} steps of 16 x {seq_len} tokens ({training['tokens_seen']:,} tokens), AdamW,"
        f" cosine schedule, {training['training_minutes']} min on 2 CPU cores (torch {training['torch']}). "
        f"Final training loss {card['final_train_loss']}; held-out loss at length {seq_len}: "
        f"{training['heldout_loss_at_train_len']} (first 40 windows, before the fp16 cast). Weights stored in fp16.",
        "",
        "## Measured (fp32 on CPU)",
        f"- Held-out perplexity at the training length ({seq_len}-token windows): **{card['heldout_ppl_at_train_len']}**.",
        f"- Streaming the first {STREAM_TOKENS} held-out tokens (8x the training length), perplexity over all tokens"
        " / over tokens past position 512:",
    ]
    for policy in policies:
        label = policy.label()
        lines.append(f"  - {label}: {sp[label]} / {sp[label + ' (tokens > 512)']}")
    lines += [
        f"- Mean attention weight on the first token, queries 16..{seq_len - 1}, per layer: "
        + ", ".join(str(x) for x in card["first_token_attention_per_layer"])
        + f" (uniform attention would give {card['uniform_share']}).",
        "",
        "## What it can and cannot show",
        "- It can show the mechanics: bounded memory and flat latency for Window and StreamingLLM against a growing",
        "  Dense cache, Dense degrading past its training length, exact equality of the fast and token-by-token",
        "  evaluations, and the whole notebook chain end to end.",
        "- It cannot show the attention-sink effect. A model this small, trained this briefly, has not learned to",
        "  park attention on the first token; compare the first-token weights above with uniform attention.",
        "  So Window attention does about as well as StreamingLLM here. Sinks come with pretraining scale: the",
        "  paper's Pythia-160M-shaped model trained on the Pile gives perplexity 27.87 without a sink and 18.05",
        "  with four (its Table 3). Use a real Pythia (`cpu` or `paper` profile) for that.",
    ]
    (MICRO_DIR / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(card, indent=1))


if __name__ == "__main__":
    main()
