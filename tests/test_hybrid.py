"""Hybrid models (Gemma 3): the sliding layers keep exactly their trained window, the policy governs the full layers.
Every policy exact against the naive float64 references (which know each layer's window and RoPE theta), in token
and chunked mode, both position modes; sdpa equal to eager; what each kind of layer holds; KV bytes; refusals."""

import copy

import pytest
import torch

from streamlib.caches.generation import TokenStream, forward_chunks, stream_generate
from streamlib.core import arch
from streamlib.metrics.quality import token_nll
from streamlib.naive import burst_kept_indices, naive_scored_nll, naive_streaming_nll
from streamlib.policies import H2O, TOVA, BurstEviction, Dense, GrowingWindow, StreamingLLM, Window

from conftest import RULES, make_peaky_gemma

# (n_sink, window, pos_shift): budgets above and below the sliding window of 8, so the full layers fill before or
# after the sliding ones
CASES = [(4, 16, True), (4, 16, False), (2, 3, True), (2, 3, False), (0, 6, True)]
SLIDING_WINDOW = 8


@pytest.fixture(scope="module")
def gemma_f64(peaky_gemma):
    return copy.deepcopy(peaky_gemma).double()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 97, (1, 64), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def dense_nll(peaky_gemma, ids):
    with torch.no_grad():
        logits = peaky_gemma(ids).logits[0, :-1].float()
    return torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")


def test_the_model_is_hybrid_and_the_reference_is_the_model(peaky_gemma, gemma_f64, ids, dense_nll):
    """The architecture seam reads the layer types, the trained window and a RoPE theta per type; the naive reference
    with every token in view is the model's own forward."""
    sliding = arch.sliding_layers_of(peaky_gemma)
    assert sorted(sliding.indices) == [0, 2, 3] and sliding.window == SLIDING_WINDOW
    full, local = arch.rotary_of(peaky_gemma), arch.rotary_of(peaky_gemma, "sliding_attention")
    assert float(full.inv_freq[1]) == pytest.approx(1e6 ** (-2 / 16)) and float(local.inv_freq[1]) == pytest.approx(1e4 ** (-2 / 16))
    torch.testing.assert_close(naive_streaming_nll(gemma_f64, ids, 0, 10**6, False).float(), dense_nll, atol=1e-4,
                               rtol=0)


@pytest.mark.parametrize("n_sink,window,pos_shift", CASES)
@pytest.mark.parametrize("mode,chunk", [("token", None), ("chunked", 7), ("chunked", 40)])
def test_streamingllm_on_the_full_layers_exact(peaky_gemma, gemma_f64, ids, dense_nll, n_sink, window, pos_shift,
                                               mode, chunk):
    expected = naive_streaming_nll(gemma_f64, ids, n_sink, window, pos_shift).float()
    got = token_nll(peaky_gemma, ids, StreamingLLM(n_sink, window, pos_shift), mode=mode, chunk_size=chunk)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert (got - dense_nll).abs().max() > 1e-2  # evictions in the full layers matter on this model


def test_dense_keeps_the_sliding_windows_too(peaky_gemma, ids, dense_nll):
    """Dense is transformers' own hybrid cache: everything in the full layers, the trained window in the others."""
    torch.testing.assert_close(token_nll(peaky_gemma, ids, Dense(), chunk_size=9), dense_nll, atol=1e-4, rtol=0)
    cache = Dense().make_cache(peaky_gemma)
    with torch.inference_mode():
        for _ in forward_chunks(peaky_gemma, ids, cache, chunk_size=16):
            pass
    held = cache.held_by_layer()
    assert [h.shape[-1] for h in held] == [SLIDING_WINDOW - 1, 64, SLIDING_WINDOW - 1, SLIDING_WINDOW - 1, 64]


def test_sdpa_equals_eager(peaky_gemma, ids):
    sdpa = make_peaky_gemma("sdpa")
    for policy in (StreamingLLM(4, 16), StreamingLLM(2, 3, pos_shift=False), Window(6), BurstEviction(2, 12, 0.5)):
        torch.testing.assert_close(token_nll(sdpa, ids, policy, chunk_size=11),
                                   token_nll(peaky_gemma, ids, policy, chunk_size=11), atol=1e-4, rtol=0)


BURSTS = [BurstEviction(2, 12, 0.5), BurstEviction(2, 12, 0.5, pos_shift=False), BurstEviction(3, 24, 0.3),
          BurstEviction(0, 10, 0.8)]


@pytest.mark.parametrize("policy", BURSTS, ids=lambda p: p.label())
def test_burst_eviction_on_the_full_layers_exact(peaky_gemma, gemma_f64, ids, policy):
    """Token by token and in chunks: once the sliding rings are full, a chunk stays between two bursts and is a
    plain call for the burst layers and a ring chunk for the sliding ones (capacities below and above the
    sliding window of 8)."""
    kept = burst_kept_indices(ids.shape[1], policy.n_sink, policy.capacity, policy.discard)
    expected = naive_streaming_nll(gemma_f64, ids, 0, 0, policy.pos_shift, kept=kept).float()
    for chunk_size in (1, 5, 16):
        torch.testing.assert_close(token_nll(peaky_gemma, ids, policy, chunk_size=chunk_size), expected,
                                   atol=1e-4, rtol=0)


def test_burst_chunks_of_a_hybrid_stay_between_bursts(peaky_gemma, peaky_llama, ids):
    """Past the sliding window a hybrid burst cache takes chunks, each ending at a burst at the latest; a chunk
    across a burst, or on a model with no sliding layers, is refused."""
    policy = BurstEviction(2, 12, 0.5)
    cache = policy.make_cache(peaky_gemma)
    with torch.inference_mode():
        calls = list(cache.feed(peaky_gemma, ids, chunk_size=16, all_logits=False))
    assert len(calls) < ids.shape[1] // 3  # chunks, not one token at a time
    assert cache.chunkable and cache.chunk_room(16) <= policy.discard
    with pytest.raises(ValueError, match="a chunk must end before the next burst"):
        with cache.chunk(policy.discard + 1, torch.float32, "cpu"):
            pass
    plain = policy.make_cache(peaky_llama)
    assert not plain.chunkable
    with pytest.raises(ValueError, match="takes chunks only for a hybrid model's sliding layers"):
        with plain.chunk(2, torch.float32, "cpu"):
            pass


@pytest.fixture(scope="module")
def soft_gemma():
    """Attention peaky enough that evictions matter, not so peaky that float32 weights underflow into ties."""
    return make_peaky_gemma("eager", scale=1.5)


@pytest.mark.parametrize("policy", [TOVA(10), H2O(4, 6)], ids=lambda p: p.label())
def test_score_based_eviction_on_the_full_layers_exact(soft_gemma, ids, policy):
    expected, gap = naive_scored_nll(copy.deepcopy(soft_gemma).double(), ids, RULES[policy.name], policy.budget,
                                     getattr(policy, "n_recent", 0))
    assert gap > 1e-5, f"a near tie ({gap:.2e}) that float32 rounding could decide either way"
    got = token_nll(soft_gemma, ids, policy, chunk_size=16)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert (got - token_nll(soft_gemma, ids, Dense())).abs().max() > 1e-2  # the budget binds


def test_position_shift_leaves_the_sliding_layers_alone(peaky_gemma, ids):
    """A sliding layer has no sinks: its keys sit where the model put them, in both position modes (the first layer,
    upstream of every full layer, holds the very same keys), and it holds the last ``sliding_window - 1`` tokens
    whatever the policy keeps in the full layers. Without sinks the two modes are one, on every layer."""
    caches = {}
    for shift in (True, False):
        cache = caches[shift] = StreamingLLM(2, 20, pos_shift=shift).make_cache(peaky_gemma)
        with torch.inference_mode():
            for _ in forward_chunks(peaky_gemma, ids, cache, chunk_size=13):
                pass
    assert torch.equal(caches[True].layers[0].keys, caches[False].layers[0].keys)
    for i in (0, 2, 3):
        for shift in (True, False):
            assert caches[shift].held_positions(i).tolist() == [list(range(64 - SLIDING_WINDOW + 1, 64))]
    assert caches[True].held_positions(1).tolist() == [[0, 1] + list(range(44, 64))]
    torch.testing.assert_close(token_nll(peaky_gemma, ids, StreamingLLM(0, 12, pos_shift=True), chunk_size=10),
                               token_nll(peaky_gemma, ids, StreamingLLM(0, 12, pos_shift=False), chunk_size=10),
                               atol=1e-6, rtol=0)


def test_kv_bytes_by_layer_type(peaky_gemma, ids):
    """Sliding layers hold a ring of their window (8 slots), full layers the policy's budget + 1 slots (plus the
    sinks' stored keys): 1 kv head x 16 dims x 4 bytes, keys and values."""
    cache = StreamingLLM(4, 60).make_cache(peaky_gemma)
    with torch.inference_mode():
        for _ in forward_chunks(peaky_gemma, ids, cache):
            pass
    slot = 2 * 16 * 4
    allocated, resident = cache.kv_bytes()
    assert allocated == 3 * SLIDING_WINDOW * slot + 2 * (65 * slot + 4 * 16 * 4)
    assert resident == 3 * (SLIDING_WINDOW - 1) * slot + 2 * 64 * slot


def test_generation_and_refusals(peaky_gemma, ids):
    tokens = stream_generate(peaky_gemma, ids[:, :30], StreamingLLM(2, 10), 40)
    assert tokens.shape == (1, 40)
    # the compiled step takes a hybrid model's caches of fixed shape (below), not a window that grows
    with pytest.raises(ValueError, match="compile"):
        TokenStream(peaky_gemma, GrowingWindow(2, 0.5, 4, 10), compile=True)
    with pytest.raises(ValueError, match="n_sink must be below the model's sliding window"):
        StreamingLLM(8, 10).make_cache(peaky_gemma)


def test_compiled_steps_equal_eager_on_a_hybrid_model(peaky_gemma):
    """The compiled decode step on Gemma 3's mixed layers (each kind its own slots, mask and rotary): every step's
    logits within 1e-4 of eager and the same tokens, from a prompt that leaves both kinds of layer filling (compiled
    steps while the sliding ring and the full layers' fill, with their empty slots masked) through 300 steps, a
    re-base of the frame included; one graph for both streams; and with the full layers quantized."""
    from streamlib.caches.compiled import compile_count

    from conftest import decode_side_by_side

    policy = StreamingLLM(2, 10)
    prompt = torch.randint(0, 97, (1, 20), generator=torch.Generator().manual_seed(1))
    eager, compiled, worst = decode_side_by_side(peaky_gemma, policy, prompt[:, :3], 40)
    assert worst < 1e-4 and compiled.cache.static_state is not None  # the steps ran compiled
    before = compile_count()
    eager, compiled, worst = decode_side_by_side(peaky_gemma, policy, prompt, 300)
    assert worst < 1e-4 and compile_count() == before
    assert compiled.cache.position > policy.budget + compiled.cache.rebase_interval
    assert compiled.cache.get_seq_length() == eager.cache.get_seq_length()
    # quantized full layers beside the sliding ones in full precision (the bound: tests/test_compiled.py's)
    eager, compiled, worst = decode_side_by_side(peaky_gemma, StreamingLLM(2, 10, bits=8, residual=16), prompt[:, :3],
                                                 120)
    assert worst < 2e-3 and compiled.cache.static_state is not None


def test_mistral_with_a_sliding_window_is_still_refused():
    from conftest import make_peaky_llama

    model = make_peaky_llama("mistral")
    model.config.sliding_window = 16
    with pytest.raises(ValueError, match="sliding_window=16"):
        StreamingLLM(4, 8).make_cache(model)


def test_dense_memory_and_flops_by_layer_type(peaky_gemma, ids):
    """The analytic counts know the layer types: a dense cache's bytes after 64 tokens are the full layers' 64 tokens
    and the sliding layers' 7, as the cache itself holds them; the sliding layers' attention stops growing at their
    window."""
    from streamlib.core.costs import dense_kv_bytes, flops_per_token

    cache = Dense().make_cache(peaky_gemma)
    with torch.inference_mode():
        for _ in forward_chunks(peaky_gemma, ids, cache):
            pass
    slot = 2 * 16 * 4
    assert dense_kv_bytes(peaky_gemma.config, 64, torch.float32) == cache.kv_bytes()[0] == slot * (2 * 64 + 3 * 7)
    config, per_key = peaky_gemma.config, 4 * 4 * 16
    assert flops_per_token(config, 100) - flops_per_token(config, 50) == per_key * 2 * 50  # full layers only
    assert flops_per_token(config, 5) - flops_per_token(config, 4) == per_key * 5  # every layer, inside the window


@pytest.mark.parametrize("family", ["gemma3", "llama", "gpt_neox"])
@pytest.mark.parametrize("n_tokens", [5, 40])
def test_analytic_kv_bytes_equal_what_each_cache_holds(family, n_tokens, peaky_gemma, peaky_llama, peaky_model, ids):
    """``policy.kv_bytes_held`` (the KV-memory-at-any-length figure's curves) is what each cache holds after
    ``n_tokens`` tokens, fed in chunks, before and after the budgets and the sliding window fill: Recompute's
    window serves every layer, sliding ones too. Burst eviction's sawtooth stays at or below it."""
    from streamlib.policies import Recompute

    model = {"gemma3": peaky_gemma, "llama": peaky_llama, "gpt_neox": peaky_model}[family]
    exact = [Dense(), Window(20), StreamingLLM(4, 16), StreamingLLM(2, 3, pos_shift=False), Recompute(12), TOVA(16),
             H2O(6, 10)]
    for policy in exact + [BurstEviction(2, 24, 0.5)]:
        cache = policy.make_cache(model)
        with torch.inference_mode():
            for _ in cache.feed(model, ids[:, :n_tokens], chunk_size=16, all_logits=False):
                pass
        held, analytic = cache.kv_bytes()[1], policy.kv_bytes_held(model.config, n_tokens, torch.float32)
        if policy in exact:
            assert held == analytic, policy.label()
        else:
            assert 0 < held <= analytic, policy.label()


def test_kv_along_stream_shows_the_sliding_cap(peaky_gemma):
    """Past the sliding window only the full layers grow under Dense; under StreamingLLM nothing grows past the
    budget; the rows carry a trace's columns."""
    from streamlib.core.costs import kv_bytes_per_token
    from streamlib.metrics.memory import kv_along_stream

    curve = kv_along_stream(peaky_gemma.config, [Dense(), StreamingLLM(4, 16)], torch.float32, until=1000, points=11)
    assert list(curve.columns) == ["label", "spec", "position", "kv_bytes"]
    dense = curve[curve.label == "Dense"].set_index("position").kv_bytes
    slot = 2 * 16 * 4
    assert dense[1000] - dense[500] == 2 * 500 * slot  # two full layers
    assert dense[1000] < kv_bytes_per_token(peaky_gemma.config, torch.float32) * 1000
    streaming = curve[curve.label != "Dense"].kv_bytes
    assert streaming.iloc[-1] == streaming.iloc[2] == slot * (2 * 20 + 3 * (SLIDING_WINDOW - 1))
