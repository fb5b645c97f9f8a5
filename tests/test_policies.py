"""The cache policies against a naive reference, generate(), bounds, long streams and bad input."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from streamlib.caches.generation import forward_chunks, prefill, stream_generate
from streamlib.caches.recompute import RecomputeWindow
from streamlib.caches.sink_window import SinkWindowCache
from streamlib.metrics.quality import token_nll
from streamlib.naive import kept_indices, naive_recompute_nll, naive_streaming_nll
from streamlib.policies import Dense, Recompute, StreamingLLM, Window, from_params

CASES = [(0, 8, True), (1, 8, True), (1, 8, False), (4, 16, True), (4, 16, False), (2, 5, True), (3, 1, False)]


def test_kept_indices_follow_the_semantics():
    assert kept_indices(5, 2, 4) == [0, 1, 2, 3, 4]
    assert kept_indices(10, 2, 4) == [0, 1, 6, 7, 8, 9]
    assert kept_indices(10, 0, 3) == [7, 8, 9]


@pytest.mark.parametrize("n_sink,window,pos_shift", CASES)
@pytest.mark.parametrize("mode,chunk", [("token", None), ("chunked", 7), ("chunked", 40)])
def test_exact_against_naive_reference(peaky_model, stream, n_sink, window, pos_shift, mode, chunk):
    policy = StreamingLLM(n_sink, window, pos_shift)
    expected = naive_streaming_nll(peaky_model, stream, n_sink, window, pos_shift)
    got = token_nll(peaky_model, stream, policy, mode=mode, chunk_size=chunk)
    assert got.shape == (stream.shape[1] - 1,)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    # the model is peaky enough that evictions matter: the policy is far from dense attention
    dense = token_nll(peaky_model, stream, Dense())
    assert (got - dense).abs().max() > 1e-2


def test_position_modes_differ_only_once_sinks_are_evicted_from_their_place(peaky_model, stream):
    shifted = token_nll(peaky_model, stream, StreamingLLM(4, 16, True))
    original = token_nll(peaky_model, stream, StreamingLLM(4, 16, False))
    budget = 4 + 16
    torch.testing.assert_close(shifted[: budget + 1], original[: budget + 1], atol=1e-6, rtol=0)
    assert (shifted[budget + 1 :] - original[budget + 1 :]).abs().max() > 1e-3


def test_sdpa_matches_eager(peaky_model, peaky_model_sdpa, stream):
    for policy in (StreamingLLM(4, 16, True), StreamingLLM(2, 9, False), Dense()):
        eager = token_nll(peaky_model, stream, policy, chunk_size=11)
        sdpa = token_nll(peaky_model_sdpa, stream, policy, chunk_size=11)
        torch.testing.assert_close(sdpa, eager, atol=1e-4, rtol=0)


@pytest.mark.parametrize("policy", [Window(96), StreamingLLM(4, 92), StreamingLLM(1, 200, False), Recompute(96)])
def test_large_window_equals_dense(peaky_model, stream, policy):
    dense = token_nll(peaky_model, stream, Dense(), mode="token")
    for mode in ("token", "chunked"):
        torch.testing.assert_close(token_nll(peaky_model, stream, policy, mode=mode), dense, atol=1e-5, rtol=0)


def test_window_is_streamingllm_without_sinks(peaky_model, stream):
    torch.testing.assert_close(
        token_nll(peaky_model, stream, Window(9)), token_nll(peaky_model, stream, StreamingLLM(0, 9)), atol=0, rtol=0
    )


@pytest.mark.parametrize("window", [1, 8, 30])
def test_recompute_against_naive_reference(peaky_model, stream, window):
    expected = naive_recompute_nll(peaky_model, stream, window)
    torch.testing.assert_close(token_nll(peaky_model, stream, Recompute(window)), expected, atol=1e-4, rtol=0)


def _manual_greedy(model, prompt, cache, steps):
    out = model(input_ids=prompt, cache=cache, use_cache=True)
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    tokens = [token]
    for _ in range(steps - 1):
        out = model(input_ids=token, cache=cache, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(token)
    return torch.cat(tokens, dim=1)


@pytest.mark.parametrize("policy", [StreamingLLM(4, 12, True), StreamingLLM(2, 10, False), Window(9)])
def test_generate_matches_manual_loop_past_eviction(peaky_model, policy):
    prompt = torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(3))
    steps = 40  # the cache overflows after budget + 1 tokens: evictions start well inside the run
    with torch.no_grad():
        manual = _manual_greedy(peaky_model, prompt, policy.make_cache(peaky_model), steps)
        mask = torch.ones_like(prompt)  # else generate() takes any token equal to pad_token_id for padding
        generated = peaky_model.generate(prompt, attention_mask=mask, cache=policy.make_cache(peaky_model),
                                         max_new_tokens=steps, do_sample=False, pad_token_id=0)[:, prompt.shape[1] :]
        with pytest.warns(FutureWarning, match="past_key_values"):  # the deprecated alias still works
            alias = peaky_model.generate(prompt, attention_mask=mask, past_key_values=policy.make_cache(peaky_model),
                                         max_new_tokens=steps, do_sample=False, pad_token_id=0)[:, prompt.shape[1] :]
    ours = stream_generate(peaky_model, prompt, policy, steps)
    assert torch.equal(generated, manual)
    assert torch.equal(alias, manual)
    assert torch.equal(ours, manual)
    # and it is not what dense attention generates (eviction changed the continuation)
    with torch.no_grad():
        dense = _manual_greedy(peaky_model, prompt, Dense().make_cache(peaky_model), steps)
    assert not torch.equal(dense, manual)


def test_generate_with_a_prompt_longer_than_the_cache(peaky_model):
    prompt = torch.randint(0, 97, (1, 50), generator=torch.Generator().manual_seed(9))
    policy = StreamingLLM(4, 12)
    with torch.no_grad(), pytest.raises(ValueError, match="prefill_chunk_size=1"):
        peaky_model.generate(prompt, cache=policy.make_cache(peaky_model), max_new_tokens=5, pad_token_id=0)
    with torch.no_grad():
        # an explicit mask: generate() would otherwise take every token equal to pad_token_id for padding
        generated = peaky_model.generate(prompt, attention_mask=torch.ones_like(prompt), cache=policy.make_cache(peaky_model),
                                         max_new_tokens=20, do_sample=False, pad_token_id=0, prefill_chunk_size=1)[:, 50:]
    assert torch.equal(generated, stream_generate(peaky_model, prompt, policy, 20))


def test_batch_rows_equal_batch_one(peaky_model):
    g = torch.Generator().manual_seed(4)
    batch = torch.randint(0, 97, (3, 70), generator=g)
    policy = StreamingLLM(2, 12, True)
    with torch.no_grad():
        logits_batch = torch.cat([l for _, l in forward_chunks(peaky_model, batch, policy.make_cache(peaky_model), 9)], 1)
        for row in range(3):
            single = torch.cat(
                [l for _, l in forward_chunks(peaky_model, batch[row : row + 1], policy.make_cache(peaky_model), 9)], 1
            )
            torch.testing.assert_close(logits_batch[row : row + 1], single, atol=1e-4, rtol=0)
    gen_batch = stream_generate(peaky_model, batch[:, :20], policy, 30)
    for row in range(3):
        assert torch.equal(gen_batch[row : row + 1], stream_generate(peaky_model, batch[row : row + 1, :20], policy, 30))


def test_cache_is_bounded_and_written_in_place(peaky_model):
    n_sink, window = 3, 10
    cache = StreamingLLM(n_sink, window).make_cache(peaky_model)
    ids = torch.randint(0, 97, (1, 200), generator=torch.Generator().manual_seed(5))
    pointers = None
    with torch.no_grad():
        for t in range(ids.shape[1]):
            peaky_model(input_ids=ids[:, t : t + 1], cache=cache, use_cache=True)
            assert cache.resident_tokens() == min(t + 1, n_sink + window)
            assert cache.position == t + 1
            layer = cache.layers[0]
            assert layer.keys.shape[2] == n_sink + window + 1  # one scratch slot for the incoming token
            now = [(l.keys.data_ptr(), l.values.data_ptr()) for l in cache.layers]
            pointers = pointers or now
            assert now == pointers, "the KV buffers were reallocated"
    allocated, resident = cache.kv_bytes()
    per_token = resident // (n_sink + window)
    assert resident == per_token * (n_sink + window)
    assert allocated >= resident


def _periodic_nll_gap(model, cache, period=50, repeats=1200):
    """Largest NLL gap between the same phase of a periodic stream early on and ~60K tokens later."""
    block = torch.randint(0, 97, (1, period), generator=torch.Generator().manual_seed(6))
    head = torch.randint(0, 97, (1, 4), generator=torch.Generator().manual_seed(7))
    ids = torch.cat([head, block.repeat(1, repeats)], dim=1)  # sinks that are not part of the period
    nll = torch.empty(ids.shape[1] - 1)
    with torch.no_grad():
        for start, logits in forward_chunks(model, ids[:, :-1], cache, chunk_size=64):
            n = logits.shape[1]
            nll[start : start + n] = torch.nn.functional.cross_entropy(logits[0], ids[0, start + 1 : start + n + 1], reduction="none")
    late = 100 + ((nll.numel() - 100 - period) // period) * period  # same phase of the period
    assert late > 59_000
    return (nll[late : late + period] - nll[100 : 100 + period]).abs().max().item()


def test_long_stream_does_not_drift(peaky_model):
    """A periodic stream: once the cache is full, token t and token t + k*period see identical contexts (same sinks,
    same window), so with position shift their NLLs must match however far apart they are. Rotating by ever-growing
    positions loses fp32 precision; the same run without re-basing shows the drift this test is there to catch."""
    policy = StreamingLLM(4, 16, True)
    gap = _periodic_nll_gap(peaky_model, policy.make_cache(peaky_model))
    assert gap <= 2e-6
    unbounded = policy.make_cache(peaky_model)
    unbounded.rebase_interval = 10**9  # positions grow with the stream, as under model.generate
    assert _periodic_nll_gap(peaky_model, unbounded) > 2e-6


def test_rebase_keeps_positions_bounded(peaky_model):
    policy = StreamingLLM(4, 16, True)
    cache = policy.make_cache(peaky_model)
    ids = torch.randint(0, 97, (1, 3000), generator=torch.Generator().manual_seed(8))
    frames = []
    with torch.no_grad():
        for _ in forward_chunks(peaky_model, ids, cache, chunk_size=32):
            frames.append(cache.get_seq_length())
    assert cache.position == 3000
    assert max(frames) <= policy.budget + cache.rebase_interval + 32
    assert cache.layers[0].offset > 0


def test_long_plain_call_is_refused_with_directions(peaky_model):
    cache = StreamingLLM(2, 6).make_cache(peaky_model)
    ids = torch.randint(0, 97, (1, 30))
    with pytest.raises(ValueError, match="prefill"):
        with torch.no_grad():
            peaky_model(input_ids=ids, cache=cache, use_cache=True)
    # prefill does it, and equals token-by-token
    cache_a, cache_b = StreamingLLM(2, 6).make_cache(peaky_model), StreamingLLM(2, 6).make_cache(peaky_model)
    last_a = prefill(peaky_model, ids, cache_a)
    last_b = prefill(peaky_model, ids, cache_b, chunk_size=1)
    torch.testing.assert_close(last_a, last_b, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "make,param",
    [
        (lambda: StreamingLLM(n_sink=-1), "n_sink"),
        (lambda: StreamingLLM(window=0), "window"),
        (lambda: StreamingLLM(window=2.5), "window"),
        (lambda: StreamingLLM(n_sink="4"), "n_sink"),
        (lambda: StreamingLLM(n_sink=True), "n_sink"),
        (lambda: StreamingLLM(pos_shift="yes"), "pos_shift"),
        (lambda: Window(0), "window"),
        (lambda: Window(-3), "window"),
        (lambda: Recompute(0), "window"),
        (lambda: from_params({"policy": "nope"}), "policy"),
        (lambda: from_params({"policy": "h2o", "n_heavy": 4}), "n_recent"),
    ],
)
def test_bad_parameters_name_the_parameter_and_range(make, param):
    with pytest.raises(ValueError, match=param) as err:
        make()
    assert ">=" in str(err.value) or "one of" in str(err.value) or "True or False" in str(err.value)


def test_unsupported_model_is_refused():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=64))
    for policy in (StreamingLLM(), Window(8), Dense(), Recompute(8)):
        with pytest.raises(ValueError, match="gpt_neox"):
            policy.make_cache(gpt2)


@pytest.mark.parametrize(
    "ids,match",
    [
        (torch.zeros(1, 10), "dtype"),
        (torch.zeros(10, dtype=torch.long), r"shape \(batch, T\)"),
        (torch.zeros(2, 10, dtype=torch.long), r"shape \(1, T\)"),
        (torch.zeros(1, 1, dtype=torch.long), "at least 2"),
        ([[1, 2, 3]], "torch.Tensor"),
    ],
)
def test_bad_input_ids(peaky_model, ids, match):
    with pytest.raises(ValueError, match="input_ids") as err:
        token_nll(peaky_model, ids, StreamingLLM(2, 8))
    assert err.match(match)


def test_bad_mode_and_chunk(peaky_model, stream):
    with pytest.raises(ValueError, match="mode"):
        token_nll(peaky_model, stream, Dense(), mode="fast")
    with pytest.raises(ValueError, match="chunk_size"):
        token_nll(peaky_model, stream, Dense(), chunk_size=0)


def test_policy_params_round_trip():
    for policy in (Dense(), Window(12), StreamingLLM(4, 252, False), Recompute(64)):
        assert from_params(policy.params()) == policy
    assert StreamingLLM(4, 252).budget == 256 and Window(64).budget == 64 and Dense().budget is None


def test_make_cache_types(peaky_model):
    assert isinstance(StreamingLLM(1, 4).make_cache(peaky_model), SinkWindowCache)
    assert isinstance(Window(4).make_cache(peaky_model), SinkWindowCache)
    window = Recompute(8).make_cache(peaky_model)
    assert isinstance(window, RecomputeWindow) and window.kv_bytes() == (0, 0)  # token ids only, until fed


def test_micro_model_memory_flat_over_100k_tokens():
    """100K tokens of real text through the embedded model: same buffers, same KV bytes, no RSS growth to speak of
    (a Dense cache would hold ~820 MB by the end)."""
    import psutil

    from streamlib.loading.data import kjv_text, tokenize_stream
    from streamlib.loading.models import load_model, load_tokenizer

    model, tok = load_model("micro", device="cpu"), load_tokenizer("micro")
    ids = tokenize_stream(tok, kjv_text("train"), max_tokens=100_000)
    assert ids.shape[1] == 100_000
    cache = StreamingLLM(4, 252).make_cache(model)
    proc = psutil.Process()
    marks = {}
    with torch.no_grad():
        for start, _ in forward_chunks(model, ids, cache, chunk_size=256, all_logits=False):
            if start >= 10_000 and "rss" not in marks:
                marks.update(rss=proc.memory_info().rss, kv=cache.kv_bytes(),
                             ptrs=[l.keys.data_ptr() for l in cache.layers])
    assert cache.position == 100_000 and cache.resident_tokens() == 256
    assert cache.kv_bytes() == marks["kv"]
    assert [l.keys.data_ptr() for l in cache.layers] == marks["ptrs"]
    assert proc.memory_info().rss - marks["rss"] < 50 * 2**20


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_adds_no_error_beyond_the_models_own(dtype):
    """fp16/bf16 (on CPU here; CUDA runs the same code): the streaming cache's departure from fp32 is no larger
    than dense attention's own, and its two evaluation modes agree within half-precision noise."""
    from conftest import make_peaky_model

    full = make_peaky_model("sdpa", scale=2.0)
    half = make_peaky_model("sdpa", scale=2.0).to(dtype)
    ids = torch.randint(0, 97, (1, 120), generator=torch.Generator().manual_seed(12))
    tol = 2e-3 if dtype == torch.float16 else 1e-2
    dense_dev = (token_nll(half, ids, Dense()) - token_nll(full, ids, Dense())).abs().max().item()
    for policy in (StreamingLLM(4, 16), StreamingLLM(2, 9, False)):
        chunked = token_nll(half, ids, policy, chunk_size=16)
        torch.testing.assert_close(chunked, token_nll(half, ids, policy, mode="token"), atol=tol, rtol=0)
        deviation = (chunked - token_nll(full, ids, policy)).abs().max().item()
        assert deviation <= max(2 * dense_dev, tol)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_both_sink_layouts_match_the_reference(stream, attn):
    """Position shift, a chunk into a full cache. Through the attention hand-over (what StreamingLLM.make_cache asks
    for, and the loops open around each call) each query is turned to the sinks and one copy of them serves all;
    without it (a cache made without rotate_queries) every query gets its own turned copy. Both equal the naive
    reference, and the model's attention setting is what it was."""
    from streamlib.core.arch import rotary_of

    from conftest import make_peaky_model

    model = make_peaky_model(attn)
    expected = naive_streaming_nll(model, stream, 4, 16, True)
    cache = SinkWindowCache(num_layers=2, n_sink=4, window=16, pos_shift=True, rotary=rotary_of(model))
    with torch.inference_mode():
        logits = torch.cat([lg for _, lg in forward_chunks(model, stream[:, :-1], cache, chunk_size=40)], dim=1)
    copies = torch.nn.functional.cross_entropy(logits[0].float(), stream[0, 1:], reduction="none")
    assert model.config._attn_implementation == attn
    assert StreamingLLM(4, 16).make_cache(model).needs_handover and not cache.needs_handover
    turned = token_nll(model, stream, StreamingLLM(4, 16), chunk_size=40)
    assert model.config._attn_implementation == attn
    torch.testing.assert_close(copies, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(turned, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["gpt_neox", "llama"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("n_sink,window,pos_shift", [(4, 16, True), (4, 16, False), (0, 12, True), (1, 30, True)])
def test_a_stream_longer_than_the_cache_starts_in_one_chunk(family, attn, n_sink, window, pos_shift, stream):
    """No filling call: the first chunk (longer than the cache) is one forward whose first budget + 1 queries see
    their sinks unrotated and the rest see them from the cache's last slot; equal to the naive reference."""
    from conftest import make_peaky_llama, make_peaky_model

    model = make_peaky_model(attn) if family == "gpt_neox" else make_peaky_llama("llama", attn)
    expected = naive_streaming_nll(model.double(), stream, n_sink, window, pos_shift).float()
    model.float()
    calls = []
    hook = model.register_forward_hook(lambda module, args, kwargs, out: calls.append(1), with_kwargs=True)
    got = token_nll(model, stream, StreamingLLM(n_sink, window, pos_shift), chunk_size=64)
    hook.remove()
    assert len(calls) == 2  # 95 inputs in chunks of 64: two forwards, the first one past the cache's size
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_a_chunk_into_a_cache_that_is_filling_is_refused(peaky_model):
    cache = StreamingLLM(4, 16).make_cache(peaky_model)
    prefill(peaky_model, torch.zeros(1, 5, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="empty or a full cache"):
        with cache.chunk(30, torch.float32, "cpu"):
            pass
    with pytest.raises(ValueError, match="must be longer than the cache"):
        with StreamingLLM(4, 16).make_cache(peaky_model).chunk(21, torch.float32, "cpu"):
            pass


def test_a_kept_prompt_is_streamingllm_with_more_sinks_in_the_same_budget(peaky_model, stream):
    """``with_sinks(n)``: the first n tokens kept as sinks, the budget unchanged (the prefix counts in it), exact as
    StreamingLLM with n sinks is; a Window keeping a prompt becomes StreamingLLM; a policy with no sinks, or a prefix
    that leaves no recent token, is refused naming n_sink."""
    from streamlib.policies import H2O, TOVA, BurstEviction

    kept = StreamingLLM(4, 60).with_sinks(24)
    assert kept == StreamingLLM(24, 40) and kept.budget == 64
    assert StreamingLLM(4, 60, pos_shift=False).with_sinks(10) == StreamingLLM(10, 54, pos_shift=False)
    assert Window(32).with_sinks(8) == StreamingLLM(8, 24)
    assert BurstEviction(4, 128, 0.5).with_sinks(20) == BurstEviction(20, 128, 0.5)
    assert kept.takes_sinks and Window(8).takes_sinks and not Dense().takes_sinks
    torch.testing.assert_close(token_nll(peaky_model, stream, kept, chunk_size=16),
                               naive_streaming_nll(peaky_model, stream, 24, 40, True).float(), atol=1e-4, rtol=0)
    for policy in (Dense(), TOVA(64), H2O(32, 32), Recompute(64)):
        with pytest.raises(ValueError, match=r"n_sink: .* keeps no sinks"):
            policy.with_sinks(4)
    with pytest.raises(ValueError, match=r"n_sink must be an integer in \[0, 63\]"):
        StreamingLLM(4, 60).with_sinks(64)
    with pytest.raises(ValueError, match=r"n_sink must be an integer in \[0, 126\]"):
        BurstEviction(4, 128, 0.5).with_sinks(127)
