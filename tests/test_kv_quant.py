"""Quantized KV caches (streamlib.caches.quant): exact against a naive float64 reference written from the definition
(quantize, dequantize, attend) for every bounded policy, token by token and in chunks, on GPT-NeoX, the Llama family
and Gemma 3; the bytes held against the formula; the arithmetic; names, records and errors."""

import copy

import pytest
import torch

from streamlib.caches import quant as kv_quant
from streamlib.caches import quant_fused, quant_store
from streamlib.caches.generation import stream_generate
from streamlib.metrics.quality import token_nll
from streamlib.naive import NaiveQuant, burst_kept_indices, naive_scored_nll, naive_streaming_nll
from streamlib.policies import H2O, TOVA, BurstEviction, StreamingLLM, Window, from_params, parse_policy

from conftest import RULES, make_peaky_llama, make_peaky_model

TOL = 1e-4  # float64 runs: what float32 NLLs of equal computations differ by


@pytest.fixture(scope="module")
def neox64():
    return make_peaky_model().double()


@pytest.fixture(scope="module")
def llama64():
    return make_peaky_llama().double()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 97, (1, 96), generator=torch.Generator().manual_seed(1))


def reference_quant(policy, head_dim: int = 32) -> NaiveQuant:
    fp_sinks = 0 if policy.quantize_sinks else policy.n_sink
    return NaiveQuant(policy.bits, policy.residual, kv_quant.group_size(head_dim), True, fp_sinks)


# -- the arithmetic ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_codes_pack_into_bits_per_code_and_back(bits):
    codes = torch.randint(0, 2**bits, (3, 5, 64), dtype=torch.uint8)
    packed = kv_quant.pack(codes, bits)
    assert packed.shape == (3, 5, 64 * bits // 8) and packed.dtype == torch.uint8
    assert torch.equal(kv_quant.unpack(packed, bits), codes)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_per_token_quantization_is_within_half_a_step_and_exact_on_constant_groups(bits):
    x = torch.randn(4, 64, dtype=torch.float64)
    x[0, :32] = 1.5  # a group of one value: no range, returned exactly
    codes, scale, zero = kv_quant.quantize_per_token(x, bits, 32, torch.float64)
    assert codes.max() <= 2**bits - 1
    back = kv_quant.dequantize_per_token(codes, scale, zero)
    step = scale.repeat_interleave(32, dim=-1)
    assert ((back - x).abs() <= step / 2 + 1e-12).all()
    assert torch.equal(back[0, :32], x[0, :32])
    # the group's extremes are representable: min and max come back exactly (up to rounding of the scale)
    torch.testing.assert_close(back.view(4, 2, 32).amax(-1), x.view(4, 2, 32).amax(-1))
    torch.testing.assert_close(back.view(4, 2, 32).amin(-1), x.view(4, 2, 32).amin(-1))


def test_per_channel_quantization_reads_only_the_members():
    x = torch.randn(1, 1, 6, 8, dtype=torch.float64)
    members = torch.tensor([True, True, False, True, False, True])
    x_out = x.clone()
    x_out[0, 0, 2] = 1e6  # not a member: must not stretch the range
    _, scale, zero = kv_quant.quantize_per_channel(x_out, members, 4, torch.float64)
    m = x[0, 0, members]
    torch.testing.assert_close(zero[0, 0], m.amin(0))
    torch.testing.assert_close(scale[0, 0], (m.amax(0) - m.amin(0)) / 15)


def test_group_size_divides_every_head_size():
    assert [kv_quant.group_size(d) for d in (64, 80, 128, 256, 32, 16)] == [32, 20, 32, 32, 32, 16]


# -- exact against the reference ----------------------------------------------------------------------------------
STREAMING = [StreamingLLM(4, 24, True, 4, 8), StreamingLLM(4, 24, False, 4, 8, True), StreamingLLM(2, 30, True, 2, 16),
             StreamingLLM(4, 20, True, 4, 32)]


@pytest.mark.parametrize("family", ["neox", "llama"])
@pytest.mark.parametrize("policy", STREAMING, ids=[p.label() for p in STREAMING])
def test_streamingllm_exact_against_reference(request, family, policy, ids):
    model = request.getfixturevalue(f"{family}64")
    expected = naive_streaming_nll(model, ids, policy.n_sink, policy.window, policy.pos_shift,
                                   quant=reference_quant(policy)).float()
    full_precision = naive_streaming_nll(model, ids, policy.n_sink, policy.window, policy.pos_shift).float()
    assert (expected - full_precision).abs().max() > 100 * TOL  # quantization matters on this model
    for mode, chunk in [("token", None), ("chunked", 7), ("chunked", 40)]:
        got = token_nll(model, ids, policy, mode=mode, chunk_size=chunk)
        torch.testing.assert_close(got, expected, atol=TOL, rtol=0, msg=f"{mode} {chunk}")


def test_chunks_cross_blocks_where_each_block_is_whole(llama64, ids):
    """A chunk runs to its size across the residual's blocks (its later blocks' queries attend to the earlier blocks'
    quantized copies), from the start of the stream, while the cache fills and once it is full: exact against the
    reference (chunks from the start and past a full cache are also in test_streamingllm_exact_against_reference).
    Where the window is below the residual a block's first tokens leave before it is quantized, and chunks stop at
    each block; with quantized sinks the stream starts in plain calls within a block."""
    policy = StreamingLLM(4, 24, True, 4, 8)
    expected = naive_streaming_nll(llama64, ids, 4, 24, True, quant=reference_quant(policy)).float()
    cache = policy.make_cache(llama64)
    assert cache.crosses_blocks
    calls, nll = [], []
    for part, chunk in ((ids[:, :6], 40), (ids[:, 6:-1], 40)):  # 6 tokens in a plain call, then chunks from 6
        for start, logits in cache.feed(llama64, part, chunk_size=chunk):
            calls.append(logits.shape[1])
            nll.append(logits[0].float().log_softmax(-1))
    assert calls == [6, 40, 40, 9]  # the first chunk crosses blocks 0-5 and fills the cache (29 slots)
    targets = ids[0, 1:]
    got = -torch.cat(nll).gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)
    cut = StreamingLLM(4, 20, True, 4, 32).make_cache(llama64)
    assert not cut.crosses_blocks
    calls = [(start, logits.shape[1]) for start, logits in cut.feed(llama64, ids, chunk_size=40)]
    assert max(n for _, n in calls) == 32
    assert all(start // 32 == (start + n - 1) // 32 for start, n in calls)
    sinks_quantized = StreamingLLM(4, 24, True, 4, 8, True).make_cache(llama64)
    calls = [logits.shape[1] for _, logits in sinks_quantized.feed(llama64, ids, chunk_size=40)]
    assert calls == [8, 8, 8, 5, 40, 27]  # plain calls within a block until full, then chunks across blocks


def test_eight_bits_and_window_exact_against_reference(neox64, ids):
    """At 8 bits a code step is small enough that the model's own float32 rotary angles (which the cache turns back
    exactly) can move a key across a rounding boundary on the fully rotated Llama heads; GPT-NeoX rotates a quarter
    of each head and is exact."""
    for policy in (StreamingLLM(4, 24, True, 8, 8), Window(20, 8, 8)):
        expected = naive_streaming_nll(neox64, ids, policy.n_sink, policy.window, True,
                                       quant=reference_quant(policy)).float()
        full_precision = naive_streaming_nll(neox64, ids, policy.n_sink, policy.window, True).float()
        assert (expected - full_precision).abs().max() > 5 * TOL
        for chunk in (1, 40):
            torch.testing.assert_close(token_nll(neox64, ids, policy, chunk_size=chunk), expected, atol=TOL, rtol=0)


def test_rebasing_moves_quantized_keys_exactly(llama64):
    """Past budget + 256 tokens the frame moves back: the store keeps keys unrotated, so only the offset changes."""
    ids = torch.randint(0, 97, (1, 360), generator=torch.Generator().manual_seed(7))
    policy = StreamingLLM(4, 24, True, 4, 8)
    expected = naive_streaming_nll(llama64, ids, 4, 24, True, quant=reference_quant(policy)).float()
    cache = policy.make_cache(llama64)
    got = torch.cat([torch.nn.functional.cross_entropy(logits[0].float(), ids[0, start + 1 : start + 1 + logits.shape[1]],
                                                       reduction="none")
                     for start, logits in cache.feed(llama64, ids[:, :-1], chunk_size=8)])
    assert cache.layers[0].offset > 0  # the frame was moved
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)


def test_dense_at_fewer_bits_is_a_window_that_never_evicts(llama64, ids):
    policy = Window(ids.shape[1], 4, 16)
    expected = naive_streaming_nll(llama64, ids, 0, 10**6, False, quant=reference_quant(policy)).float()
    torch.testing.assert_close(token_nll(llama64, ids, policy, chunk_size=512), expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("family", ["neox", "llama"])
def test_burst_eviction_exact_against_reference(request, family, ids):
    model = request.getfixturevalue(f"{family}64")
    policy = BurstEviction(2, 24, 0.5, True, 4, 8)
    kept = burst_kept_indices(ids.shape[1], 2, 24, policy.discard)
    expected = naive_streaming_nll(model, ids, 2, 0, True, kept=kept, quant=reference_quant(policy)).float()
    for mode in ("token", "chunked"):
        torch.testing.assert_close(token_nll(model, ids, policy, mode=mode, chunk_size=7), expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("kind,policy,budget,n_recent", [("tova", TOVA(12, 4, 8), 12, 0),
                                                          ("h2o", H2O(6, 6, 4, 8), 12, 6),
                                                          ("h2o", H2O(8, 12, 2, 16), 20, 12)])
def test_tova_and_h2o_exact_against_reference(kind, policy, budget, n_recent):
    model = make_peaky_model("eager", scale=2.0, seed=3).double()
    # a stream without near ties in the reference's eviction order (seed 31 has one at 7e-7 for TOVA once scales are
    # stored in half precision)
    ids = torch.randint(0, 97, (1, 80), generator=torch.Generator().manual_seed(35))
    quant = NaiveQuant(policy.bits, policy.residual, 32, False, 0)  # keys per token: these evict anywhere
    expected, gap = naive_scored_nll(model, ids, RULES[kind], budget, n_recent, quant=quant)
    assert gap > 1e-5, f"a near tie ({gap:.2e}) that rounding could decide either way"
    full_precision, _ = naive_scored_nll(model, ids, RULES[kind], budget, n_recent)
    assert (expected - full_precision).abs().max() > 10 * TOL
    torch.testing.assert_close(token_nll(model, ids, policy), expected, atol=TOL, rtol=0)


def test_hybrid_model_quantizes_its_full_layers_only(peaky_gemma):
    """Gemma 3's sliding layers keep their trained window in full precision; the full layers follow the policy."""
    model = copy.deepcopy(peaky_gemma).double()
    ids = torch.randint(0, 97, (1, 64), generator=torch.Generator().manual_seed(1))
    policy = StreamingLLM(4, 16, True, 4, 8)
    expected = naive_streaming_nll(model, ids, 4, 16, True, quant=reference_quant(policy, head_dim=16)).float()
    for chunk in (1, 7):
        torch.testing.assert_close(token_nll(model, ids, policy, chunk_size=chunk), expected, atol=TOL, rtol=0)
    cache = policy.make_cache(model)
    assert sum(layer.store is not None for layer in cache.layers) == 2  # of 6: 4 sliding


def test_float32_chunks_equal_tokens_and_generation_runs(peaky_llama, ids):
    policy = StreamingLLM(4, 40, True, 4, 16)
    token = token_nll(peaky_llama, ids, policy, mode="token")
    torch.testing.assert_close(token_nll(peaky_llama, ids, policy, chunk_size=512), token, atol=1e-5, rtol=0)
    new = stream_generate(peaky_llama, ids[:, :50], policy, 30)
    assert new.shape == (1, 30)


# -- bytes held ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [8, 4, 2])
def test_bytes_held_match_the_formula(peaky_llama, bits):
    """2 layers x 2 kv heads x head_dim 32, float32; StreamingLLM 4+60 at ``bits``, residual 16, after 200 tokens."""
    stream = torch.randint(0, 97, (1, 200), generator=torch.Generator().manual_seed(5))
    cache = StreamingLLM(4, 60, True, bits, 16).make_cache(peaky_llama)
    for _ in cache.feed(peaky_llama, stream, chunk_size=16):
        pass
    layers, heads, d, e, s = 2, 2, 32, 4, 2  # float32 keys and values, float16 scales and zero points
    # the next query (position 200, block 12 from 192) sees: 4 sinks in full precision, 192..199 in full precision,
    # 140..191 quantized (52 tokens in blocks 8..11)
    fp_tokens, quantized, key_blocks = 4 + 8, 52, 4
    per_head = (fp_tokens * 2 * d * e  # full-precision keys and values
                + quantized * 2 * d * bits // 8  # codes, keys and values
                + quantized * 2 * s * (d // 32)  # value scale and zero point per token (one group of 32)
                + key_blocks * 2 * s * d)  # key scale and zero point per channel per block
    allocated, resident = cache.kv_bytes()
    assert resident == layers * heads * per_head
    assert StreamingLLM(4, 60, True, bits, 16).kv_bytes_held(peaky_llama.config, 200, torch.float32) == resident
    slots = 65
    store = (2 * slots * d * bits // 8 + 2 * slots * s * (d // 32)  # codes, value scales
             + (2 + 5) * 2 * s * d  # key scale tables: block 0 and ceil(65 / 16) + 1 more
             + 16 * 2 * d * e + 4 * d * e  # residual block and the full-precision sinks' values
             + 4 * d * e)  # the sinks' keys as the model rotated them (the layer's own)
    assert allocated == layers * heads * store  # streamlib's loops free the full-precision slots after each call
    with torch.no_grad():  # a loop of one's own keeps them until the next call, and they count
        peaky_llama(input_ids=stream[:, :1], cache=cache, use_cache=True)
    scratch = heads * slots * 2 * d * e  # one layer's full-precision slots, shared
    assert cache.kv_bytes()[0] == layers * heads * store + scratch
    # measured from the cache's own tensors: the codes are what the formula says
    codes = cache.layers[0].store.codes
    assert codes.dtype == torch.uint8 and codes.shape == (1, heads, slots, 2 * d * bits // 8)
    fp = StreamingLLM(4, 60).make_cache(peaky_llama)
    for _ in fp.feed(peaky_llama, stream):
        pass
    assert fp.kv_bytes()[1] == layers * heads * 64 * 2 * d * e
    assert resident < fp.kv_bytes()[1]


def test_h2o_counts_each_heads_tokens(peaky_llama, ids):
    cache = H2O(10, 10, 8, 8).make_cache(peaky_llama)
    for _ in cache.feed(peaky_llama, ids):
        pass
    d, e, s = 32, 4, 2  # float32 keys and values, float16 scales and zero points
    resident = 0
    for layer in cache.layers:
        held = layer.held_positions()
        assert held.shape == (2, 20)
        fp = int((held // 8 == 96 // 8).sum())  # position 96 opens block 12: nothing of it is held yet
        q = held.numel() - fp
        resident += fp * 2 * d * e + q * (2 * d + 2 * s + 2 * s)  # 8-bit codes, value and key scales per token
    assert fp == 0 and cache.kv_bytes()[1] == resident


# -- names, records, errors ----------------------------------------------------------------------------------------
def test_policy_strings_and_records_round_trip():
    cases = {"streamingllm:4+1020:int4": StreamingLLM(4, 1020, True, 4),
             "streamingllm:4+252:noshift:int8:r64": StreamingLLM(4, 252, False, 8, 64),
             "streamingllm:4+252:int4:qsinks": StreamingLLM(4, 252, True, 4, 32, True),
             "window:256:int2": Window(256, 2), "burst:4/256:0.7:int4": BurstEviction(4, 256, 0.7, True, 4),
             "tova:64:int8": TOVA(64, 8), "h2o:32+32:int4": H2O(32, 32, 4)}
    for text, policy in cases.items():
        assert parse_policy(text) == policy
        assert from_params(policy.params()) == policy
        assert policy.params()["bits"] == policy.bits
    assert StreamingLLM(4, 1020, True, 4).label() == "StreamingLLM 4+1020 int4"
    assert StreamingLLM(4, 252, True, 4, 32, True).label() == "StreamingLLM 4+252 int4, sinks int4"
    assert from_params({"policy": "streamingllm", "n_sink": 4, "window": 252}).bits == 16  # older records


@pytest.mark.parametrize("make,match", [
    (lambda: StreamingLLM(4, 60, True, 3), "bits must be one of 16"),
    (lambda: StreamingLLM(4, 60, True, 4, 0), "residual must be an integer >= 1"),
    (lambda: TOVA(8, 5), "bits must be one of 16"),
    (lambda: BurstEviction(4, 64, 0.5, True, 4, 16, "yes"), "quantize_sinks must be True or False"),
    (lambda: parse_policy("dense:int4"), "dense takes no quantization"),
    (lambda: parse_policy("recompute:64:int8"), "recompute takes no quantization"),
])
def test_bad_settings_name_the_parameter(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_compiling_and_long_plain_calls_are_refused_with_directions(peaky_llama, ids):
    with pytest.raises(ValueError, match="quantize_sinks: compile=True takes full-precision sinks"):
        StreamingLLM(4, 60, True, 4, quantize_sinks=True).compiled_form()
    cache = StreamingLLM(4, 60, True, 4, 16).make_cache(peaky_llama)
    with pytest.raises(ValueError, match="cross a block .* feed at most 16 tokens .* prefill_chunk_size=16"):
        peaky_llama(input_ids=ids[:, :20], cache=cache)
    with pytest.raises(ValueError, match="head size 30 does not divide"):
        model = make_peaky_llama(head_dim=30, hidden_size=60)
        token_nll(model, ids[:, :10], StreamingLLM(4, 60, True, 2))


@pytest.mark.parametrize("policy", [StreamingLLM(4, 28, bits=4), TOVA(32, bits=8)], ids=str)
def test_compiled_rebuild_equals_the_eager_one(policy, ids, monkeypatch):
    """The rebuild inductor compiles for hot shapes (float32 on a CPU) gives every slot the key and value the eager
    rebuild gives from the same codes (float32 rounding apart), keys per channel (StreamingLLM, GPT-NeoX's partial
    rotary) and per token (TOVA); the shape is compiled only after FUSED_AFTER eager rebuilds of it."""
    monkeypatch.setattr(quant_fused, "FUSED", quant_fused.FusedRebuilds())
    monkeypatch.setattr(quant_fused, "FUSED_AFTER", 0)
    eager_rebuild = quant_store.QuantizedStore.rebuild
    worst, compared = [0.0], []

    def both(store, layer, position):
        monkeypatch.setattr(quant_fused, "FUSED_AFTER", None)
        eager_rebuild(store, layer, position)
        keys, values = layer.keys.clone(), layer.values.clone()
        monkeypatch.setattr(quant_fused, "FUSED_AFTER", 0)
        eager_rebuild(store, layer, position)
        worst[0] = max(worst[0], (keys - layer.keys).abs().max().item(), (values - layer.values).abs().max().item())
        compared.append(position)

    monkeypatch.setattr(quant_store.QuantizedStore, "rebuild", both)
    model = make_peaky_model()
    layers = model.config.num_hidden_layers
    token_nll(model, ids, policy, mode="token")  # a call per token but the last
    assert len(quant_fused.FUSED.compiled) == 1 and len(compared) == (ids.shape[1] - 1) * layers
    assert worst[0] < 1e-5

    monkeypatch.setattr(quant_store.QuantizedStore, "rebuild", eager_rebuild)
    monkeypatch.setattr(quant_fused, "FUSED", quant_fused.FusedRebuilds())
    monkeypatch.setattr(quant_fused, "FUSED_AFTER", 100)
    token_nll(model, ids[:, :20], policy, mode="token")  # 19 calls a layer: eager
    assert not quant_fused.FUSED.compiled and max(quant_fused.FUSED.calls.values()) == 19 * layers


def test_a_rebuild_that_does_not_compile_stays_eager(ids, monkeypatch):
    """Where inductor cannot compile the rebuild (no C++ compiler, say), the cache warns once and rebuilds eagerly from
    then on, with the eager rebuild's numbers."""
    import torch._inductor

    def refuse(*args, **kwargs):
        raise RuntimeError("no compiler here")

    policy, model = StreamingLLM(4, 28, bits=4), make_peaky_model()
    monkeypatch.setattr(quant_fused, "FUSED_AFTER", None)
    eager = token_nll(model, ids[:, :40], policy, mode="token")
    monkeypatch.setattr(quant_fused, "FUSED", quant_fused.FusedRebuilds())
    monkeypatch.setattr(quant_fused, "FUSED_AFTER", 0)
    monkeypatch.setattr(torch._inductor, "compile", refuse)
    with pytest.warns(RuntimeWarning, match="stay eager.*no compiler here") as caught:
        nll = token_nll(model, ids[:, :40], policy, mode="token")
    assert quant_fused.FUSED.failed and not quant_fused.FUSED.compiled
    assert len([w for w in caught if "stay eager" in str(w.message)]) == 1
    assert torch.equal(nll, eager)
