"""DuoAttention's gates (streamlib.metrics.head_gates): a gate of 1 is full attention and of 0 HeadSplit's streaming
head, exactly, on grouped-query and hybrid models; training moves the gates and keeps them in [0, 1]."""

import pytest
import torch

from streamlib.caches.handover import handover
from streamlib.loading.models import load_model, load_tokenizer
from streamlib.metrics.head_gates import GatedHeads, streaming_mask, train_gates
from streamlib.metrics.head_scores import map_trials
from streamlib.metrics.quality import token_nll
from streamlib.naive import tiny_model
from streamlib.policies import Dense, HeadSplit

IDS = torch.randperm(97, generator=torch.Generator().manual_seed(5))[None, :48]


def _gated_nll(model, gates, n_sink=2, window=10) -> torch.Tensor:
    with torch.no_grad(), handover(model, GatedHeads(model, gates, n_sink, window)):
        logits = model(input_ids=IDS, use_cache=False).logits[0, :-1].float()
    return torch.nn.functional.cross_entropy(logits, IDS[0, 1:], reduction="none")


def test_the_streaming_mask_sees_sinks_the_window_and_the_query():
    seen = streaming_mask(8, 2, 3) == 0
    assert [j for j in range(8) if seen[7, j]] == [0, 1, 4, 5, 6, 7] and [j for j in range(8) if seen[2, j]] == [0, 1, 2]


@pytest.mark.parametrize("family, attn", [("llama", "sdpa"), ("llama", "eager"), ("gemma3_text", "eager")])
def test_gates_at_one_are_dense_and_at_zero_the_streaming_heads(family, attn):
    model = tiny_model(family, attn)
    layers, kv = model.config.num_hidden_layers, model.config.num_key_value_heads
    dense = token_nll(model, IDS, Dense())
    torch.testing.assert_close(_gated_nll(model, torch.ones(layers, kv)), dense, atol=1e-5, rtol=0)
    mixed = torch.zeros(layers, kv, dtype=torch.bool)
    mixed[-1, 0] = kv > 1  # one whole head in the last layer where it has two (its full layer: every head streams)
    streaming = token_nll(model, IDS, HeadSplit.of(mixed, 2, 10))
    torch.testing.assert_close(_gated_nll(model, mixed.float()), streaming, atol=1e-5, rtol=0)
    assert (streaming - dense).abs().max() > 1e-3  # the streaming heads change something
    with pytest.raises(ValueError, match="gates: shape must be"):
        GatedHeads(model, torch.ones(layers + 1, kv), 2, 10)


def test_training_moves_the_gates_within_bounds():
    tokenizer, micro = load_tokenizer("micro"), load_model("micro")
    trials = map_trials(tokenizer, 160, count=2)
    gates, history = train_gates(micro, tokenizer, trials, n_sink=4, window=16, steps=4, lr=0.2, l1=1.0)
    assert gates.shape == (micro.config.num_hidden_layers, micro.config.num_attention_heads)
    assert bool(((gates >= 0) & (gates <= 1)).all()) and gates.mean() < 1 and len(history) == 4
    assert history[0]["distill"] == pytest.approx(0.0, abs=1e-10)  # at 1 the gated model is the Dense model
    assert all(p.requires_grad for p in micro.parameters())  # the model is handed back as it came
    with pytest.raises(ValueError, match="steps must be"):
        train_gates(micro, tokenizer, trials, steps=0)


def test_shipped_maps_by_method():
    from streamlib.loading.head_maps import head_map

    gates, scores = head_map("smollm2-135m", "gates"), head_map("smollm2-135m")
    assert gates.shape == scores.shape == (30, 3) and bool(((gates >= 0) & (gates <= 1)).all())
    assert head_map("micro", "gates") is None
    with pytest.raises(ValueError, match="method must be one of"):
        head_map("smollm2-135m", "attention")
