"""The Llama family (Llama, Mistral, Qwen2, Qwen3): grouped-query attention through every policy and loop, exact
against the naive float64 references, as GPT-NeoX is in test_policies and test_scored."""

import copy

import pytest
import torch

from streamlib.caches.generation import TokenStream, prefill, stream_generate
from streamlib.caches.handover import handover
from streamlib.core import arch
from streamlib.core.costs import flops_per_token, forward_flops, kv_bytes_per_token
from streamlib.metrics.flops import calflops_forward
from streamlib.metrics.quality import token_nll
from streamlib.naive import naive_recompute_nll, naive_scored_nll, naive_streaming_nll
from streamlib.policies import H2O, TOVA, Dense, Recompute, StreamingLLM, Window

from conftest import decode_side_by_side, make_peaky_llama

CASES = [(0, 8, True), (1, 8, True), (4, 16, True), (4, 16, False), (2, 5, False)]


def _float64(model):
    return copy.deepcopy(model).double()


@pytest.fixture(scope="module")
def llama_f64(peaky_llama):
    return _float64(peaky_llama)


@pytest.fixture(scope="module")
def naive_cases(llama_f64):
    """The naive float64 NLL of each case on conftest's ``stream``, computed once for the three evaluation modes."""
    ids = torch.randint(0, 97, (1, 96), generator=torch.Generator().manual_seed(1))
    return {case: (ids, naive_streaming_nll(llama_f64, ids, *case).float()) for case in CASES}


@pytest.mark.parametrize("n_sink,window,pos_shift", CASES)
@pytest.mark.parametrize("mode,chunk", [("token", None), ("chunked", 7), ("chunked", 40)])
def test_streamingllm_exact_against_naive_float64(peaky_llama, naive_cases, stream, n_sink, window, pos_shift, mode,
                                                  chunk):
    ids, expected = naive_cases[(n_sink, window, pos_shift)]
    assert torch.equal(ids, stream)
    got = token_nll(peaky_llama, stream, StreamingLLM(n_sink, window, pos_shift), mode=mode, chunk_size=chunk)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert (got - token_nll(peaky_llama, stream, Dense())).abs().max() > 1e-2  # evictions matter on this model


def test_sdpa_with_gqa_matches_eager(peaky_llama, peaky_llama_sdpa, stream):
    for policy in (StreamingLLM(4, 16, True), StreamingLLM(2, 9, False), Window(12), Dense()):
        eager = token_nll(peaky_llama, stream, policy, chunk_size=11)
        sdpa = token_nll(peaky_llama_sdpa, stream, policy, chunk_size=11)
        torch.testing.assert_close(sdpa, eager, atol=1e-4, rtol=0)


def test_dense_window_recompute_exact(peaky_llama, llama_f64, stream):
    dense = token_nll(peaky_llama, stream, Dense())
    torch.testing.assert_close(dense, naive_streaming_nll(llama_f64, stream, 0, 10**6, False).float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(token_nll(peaky_llama, stream, Window(12)),
                               naive_streaming_nll(llama_f64, stream, 0, 12, True).float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(token_nll(peaky_llama, stream, Recompute(10)),
                               naive_recompute_nll(llama_f64, stream, 10).float(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("policy", [TOVA(12), H2O(6, 6), H2O(3, 9)])
def test_scored_policies_exact_against_naive_float64(peaky_llama_sdpa, llama_f64, stream, policy):
    ids = stream[:, :64]
    if isinstance(policy, TOVA):
        expected, gap = naive_scored_nll(llama_f64, ids, "current", policy.budget)
    else:
        expected, gap = naive_scored_nll(llama_f64, ids, "accumulated", policy.budget, policy.n_recent)
    assert gap > 1e-5  # no eviction was a near tie that rounding could flip
    torch.testing.assert_close(token_nll(peaky_llama_sdpa, ids, policy), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("model_type", ["mistral", "qwen2", "qwen3"])
def test_other_families_fit_the_same_spec(model_type, stream):
    model = make_peaky_llama(model_type, "sdpa", seed=1)
    reference = _float64(model)
    for policy in (StreamingLLM(4, 16, True), StreamingLLM(2, 9, False)):
        expected = naive_streaming_nll(reference, stream, policy.n_sink, policy.window, policy.pos_shift).float()
        torch.testing.assert_close(token_nll(model, stream, policy, chunk_size=13), expected, atol=1e-4, rtol=0)
    expected, _ = naive_scored_nll(reference, stream[:, :48], "accumulated", 12, 6)
    torch.testing.assert_close(token_nll(model, stream[:, :48], H2O(6, 6)), expected, atol=1e-4, rtol=0)


def test_unsupported_family_and_sliding_window_are_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="supports the model types .*'gpt_neox'.*'llama'.*'qwen3'.*got 'gpt2'"):
        StreamingLLM(4, 12).make_cache(gpt2)
    sliding = make_peaky_llama("mistral", sliding_window=64)
    with pytest.raises(ValueError, match="sliding_window=64"):
        StreamingLLM(4, 12).make_cache(sliding)
    dynamic = make_peaky_llama(rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})
    with pytest.raises(ValueError, match="rope_type must be one of"):
        StreamingLLM(4, 12).make_cache(dynamic)


def test_llama3_rope_rotates_exactly(stream):
    """Llama 3's rope_type only rescales the inverse frequencies, so the sink turn is exact under it too."""
    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    model = make_peaky_llama(rope_parameters=rope, seed=2)
    assert not torch.allclose(arch.rotary_of(model).inv_freq, arch.rotary_of(make_peaky_llama()).inv_freq)
    expected = naive_streaming_nll(_float64(model), stream, 4, 16, True).float()
    torch.testing.assert_close(token_nll(model, stream, StreamingLLM(4, 16), chunk_size=9), expected, atol=1e-4, rtol=0)


def test_generate_and_streams_past_eviction(peaky_llama):
    prompt = torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(3))
    for policy in (StreamingLLM(4, 12), StreamingLLM(2, 10, False), Window(9), TOVA(12), H2O(6, 6)):
        ours = stream_generate(peaky_llama, prompt, policy, 40)
        cache = policy.make_cache(peaky_llama)
        with torch.no_grad(), handover(peaky_llama, cache):  # TOVA and H2O read the weights through it
            generated = peaky_llama.generate(prompt, attention_mask=torch.ones_like(prompt), cache=cache,
                                             max_new_tokens=40, do_sample=False, pad_token_id=0,
                                             prefill_chunk_size=1)[:, 10:]
        assert torch.equal(ours, generated), policy
        stream = TokenStream(peaky_llama, policy)
        stream.feed(prompt)
        assert torch.equal(torch.cat(list(stream.generate(40)), dim=1), ours), policy


def test_long_prompt_prefill_equals_token_by_token(peaky_llama_sdpa):
    ids = torch.randint(0, 97, (1, 90), generator=torch.Generator().manual_seed(4))
    for policy in (StreamingLLM(4, 12), StreamingLLM(4, 12, False)):
        chunked, single = policy.make_cache(peaky_llama_sdpa), policy.make_cache(peaky_llama_sdpa)
        torch.testing.assert_close(prefill(peaky_llama_sdpa, ids, chunked), prefill(peaky_llama_sdpa, ids, single, chunk_size=1),
                                   atol=1e-4, rtol=0)


def test_kv_bytes_count_kv_heads_only(peaky_llama):
    sh = arch.shapes_of(peaky_llama)
    assert (sh.heads, sh.kv_heads, sh.head_dim, sh.group) == (4, 2, 32, 2)
    cache = StreamingLLM(4, 12).make_cache(peaky_llama)
    prefill(peaky_llama, torch.randint(0, 97, (1, 40)), cache)
    allocated, resident = cache.kv_bytes()
    per_slot = 2 * sh.layers * sh.kv_heads * sh.head_dim * 4
    assert resident == per_slot * 16
    assert allocated == per_slot * 17 + sh.layers * 4 * sh.kv_heads * sh.head_dim * 4  # + the stored sink keys
    assert kv_bytes_per_token(peaky_llama.config, torch.float32) == per_slot


def test_flops_match_calflops_on_llama_shapes():
    model = make_peaky_llama(hidden_size=256, intermediate_size=704, num_attention_heads=8, num_key_value_heads=2,
                             head_dim=32, vocab_size=512)
    ids = torch.randint(0, 512, (1, 64))
    analytic = forward_flops(model.config, 64)
    counted = calflops_forward(model, ids)
    assert abs(analytic - counted) / counted < 0.02, (analytic, counted)
    # one token over a context: the SwiGLU MLP's three matrices and narrow K, V projections
    sh = arch.shapes_of(model)
    per_layer = 2 * 256 * (2 * 256 + 2 * 64) + 3 * 2 * 256 * 704 + 4 * 100 * 256
    assert flops_per_token(model.config, 100) == sh.layers * per_layer + 2 * 256 * 512


def test_compiled_equals_eager_past_eviction():
    """Compiled decoding on a Llama with GQA: 680 greedy steps after a 24-token prompt, over 600 past eviction, the
    same tokens as eager and every step's logits within 1e-4."""
    model = make_peaky_llama("llama", "sdpa", scale=2.0, seed=5)
    policy = StreamingLLM(4, 60)
    prompt = torch.randint(0, 97, (1, 24), generator=torch.Generator().manual_seed(6))
    eager, compiled, worst = decode_side_by_side(model, policy, prompt, 680)
    assert compiled.cache.position - compiled.cache.budget > 600 and worst < 1e-4
    assert compiled.cache.kv_bytes() == eager.cache.kv_bytes()
