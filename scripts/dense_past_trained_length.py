"""Where Dense breaks past its trained length, on real weights offline: SmolLM2-135M (trained at 8,192 tokens) reads
all of ``kjv-prose`` (36,618 tokens, 4.5x that) with a dense cache and with StreamingLLM 4+252, both in chunks, and
the mean NLL of each stretch is printed with its 95 % interval and the paired ratio of perplexities on the same
tokens (the paper's Figure 3, as numbers).

    .venv/bin/python scripts/dense_past_trained_length.py [--tokens N] [--stretch 1024]

Dense's attention grows with the square of the stream: about 18 min on 2 cores for the whole text, StreamingLLM
about 3. Writes ``runs/dense-past-trained-length/nll.npz`` (the per-token NLL of both) beside the table.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from streamlib.core.stats import mean_interval, paired_ratio_interval
from streamlib.loading.data import load_stream
from streamlib.loading.models import load_model, load_tokenizer
from streamlib.metrics.quality import token_nll
from streamlib.policies import Dense, StreamingLLM

OUT = Path(__file__).resolve().parents[1] / "runs" / "dense-past-trained-length"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=None, help="tokens of kjv-prose to read (default: all)")
    parser.add_argument("--stretch", type=int, default=1024, help="tokens per row of the table")
    args = parser.parse_args()
    model = load_model("smollm2-135m", device="cpu", dtype=torch.float32)
    ids = load_stream("kjv-prose", load_tokenizer("smollm2-135m"), max_tokens=args.tokens)
    trained = model.config.max_position_embeddings
    nll = {}
    for policy in (StreamingLLM(4, 252), Dense()):
        started = time.time()
        nll[policy.label()] = token_nll(model, ids, policy).numpy()
        print(f"{policy.label()}: {ids.shape[1]} tokens in {time.time() - started:.0f} s", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez(OUT / "nll.npz", **nll)
    dense, streaming = nll["Dense"], nll["StreamingLLM 4+252"]
    print(f"\ntrained length {trained}; mean NLL per stretch [95 % CI]; Dense / StreamingLLM: ratio of perplexities "
          "on the same tokens [paired 95 % CI]")
    for start in range(0, len(dense), args.stretch):
        end = min(start + args.stretch, len(dense))
        if end - start < 256:
            break
        a, b = slice(start, end), "past" if start >= trained else "    "
        print(f"{b} {start:>6}-{end:<6} Dense {mean_interval(dense[a])}  StreamingLLM {mean_interval(streaming[a])}"
              f"  ratio {paired_ratio_interval(dense[a], streaming[a])}")


if __name__ == "__main__":
    main()
