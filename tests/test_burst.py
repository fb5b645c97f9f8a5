"""Burst eviction (the lab's press, llama.cpp's context shift): exact against a naive reference written from the
definition, on GPT-NeoX and the Llama family, in both position modes; its memory sawtooth; its parameters."""

import copy

import pytest
import torch

from streamlib.caches.generation import forward_chunks, stream_generate
from streamlib.metrics.quality import token_nll
from streamlib.naive import burst_kept_indices, naive_streaming_nll
from streamlib.policies import BurstEviction, Dense, StreamingLLM, from_params, parse_policy

# (n_sink, capacity, discard_ratio): discards of 6, 1, 13 (all of the recent tokens) and 3 tokens
CASES = [(4, 16, 0.5), (2, 12, 0.1), (0, 13, 1.0), (1, 10, 0.35)]


def test_kept_indices_follow_the_definition():
    kept = burst_kept_indices(12, 2, 6, 2)
    assert kept[5] == [0, 1, 2, 3, 4]  # token 5 fills the 6 slots
    assert kept[6] == [0, 1, 4, 5]  # token 6 would make 7: tokens 2 and 3 leave at once before it comes in
    assert kept[7] == [0, 1, 4, 5, 6]
    assert kept[8] == [0, 1, 6, 7]  # the next burst
    assert burst_kept_indices(30, 3, 9, 1)[20] == [0, 1, 2] + list(range(15, 20))  # StreamingLLM 3 + 5


@pytest.fixture(scope="module")
def llama_f64(peaky_llama):
    return copy.deepcopy(peaky_llama).double()


def _naive(model, ids, n_sink, capacity, ratio, pos_shift):
    discard = BurstEviction(n_sink, capacity, ratio).discard
    kept = burst_kept_indices(ids.shape[1], n_sink, capacity, discard)
    return naive_streaming_nll(model, ids, n_sink, 0, pos_shift, kept=kept).float()


@pytest.mark.parametrize("family", ["gpt_neox", "llama"])
@pytest.mark.parametrize("n_sink,capacity,ratio", CASES)
@pytest.mark.parametrize("pos_shift", [True, False])
def test_exact_against_naive_reference(family, n_sink, capacity, ratio, pos_shift, peaky_model, peaky_llama,
                                       llama_f64, stream):
    model, reference = (peaky_model, peaky_model) if family == "gpt_neox" else (peaky_llama, llama_f64)
    expected = _naive(reference, stream, n_sink, capacity, ratio, pos_shift)
    policy = BurstEviction(n_sink, capacity, ratio, pos_shift)
    for mode, chunk in (("token", None), ("chunked", None), ("chunked", 5)):
        got = token_nll(model, stream, policy, mode=mode, chunk_size=chunk)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0, msg=f"{mode} {chunk}")
    assert (got - token_nll(model, stream, Dense())).abs().max() > 1e-2  # evictions matter on this model


def test_sdpa_matches_eager(peaky_model, peaky_model_sdpa, peaky_llama, peaky_llama_sdpa, stream):
    """sdpa reads the causal mask over slots (get_mask_sizes' offset) as eager does."""
    for eager, sdpa in ((peaky_model, peaky_model_sdpa), (peaky_llama, peaky_llama_sdpa)):
        for policy in (BurstEviction(4, 16, 0.5), BurstEviction(1, 10, 0.35, pos_shift=False)):
            torch.testing.assert_close(token_nll(sdpa, stream, policy), token_nll(eager, stream, policy), atol=1e-4,
                                       rtol=0)


def test_a_discard_of_one_is_streamingllm(peaky_model, peaky_llama, stream):
    for model in (peaky_model, peaky_llama):
        for pos_shift in (True, False):
            burst = token_nll(model, stream, BurstEviction(4, 21, 0.06, pos_shift))
            torch.testing.assert_close(burst, token_nll(model, stream, StreamingLLM(4, 16, pos_shift)), atol=1e-5, rtol=0)


@torch.inference_mode()
def test_long_stream_with_re_based_frames_stays_exact(peaky_llama, llama_f64, stream):
    """Frames re-based every few tokens (both position modes): the keys rotated back must not change a number."""
    for pos_shift in (True, False):
        cache = BurstEviction(2, 12, 0.5, pos_shift).make_cache(peaky_llama)
        cache.rebase_interval = 3
        got = torch.cat([logits[0] for _, logits in forward_chunks(peaky_llama, stream[:, :-1], cache, 1)])
        nll = torch.nn.functional.cross_entropy(got.float(), stream[0, 1:], reduction="none")
        torch.testing.assert_close(nll, _naive(llama_f64, stream, 2, 12, 0.5, pos_shift), atol=1e-4, rtol=0)
        assert cache.layers[0].offset > 20


@torch.inference_mode()
def test_memory_is_a_sawtooth_in_preallocated_buffers(peaky_model, stream):
    policy = BurstEviction(4, 16, 0.5)  # discard 6
    cache = policy.make_cache(peaky_model)
    held, pointers = [], set()
    for t in range(stream.shape[1]):
        peaky_model(input_ids=stream[:, t : t + 1], cache=cache, use_cache=True)
        held.append(cache.resident_tokens())
        pointers.add(cache.layers[0].keys.data_ptr())
    assert held[:16] == list(range(1, 17)) and max(held) == 16 and min(held[16:]) == 11
    assert held[16:24] == [11, 12, 13, 14, 15, 16, 11, 12]
    assert len(pointers) == 1 and cache.layers[0].keys.shape[2] == 16  # no reallocation, capacity slots
    allocated, resident = cache.kv_bytes()
    assert allocated > resident > 0
    assert policy.mean_resident == 16 - 5 / 2


@torch.inference_mode()
def test_generate_and_stream_generate_agree(peaky_model, peaky_llama):
    prompt = torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(3))
    for model in (peaky_model, peaky_llama):
        policy = BurstEviction(2, 14, 0.5)
        out = model.generate(prompt, cache=policy.make_cache(model), max_new_tokens=60, do_sample=False)
        assert torch.equal(out[:, 10:], stream_generate(model, prompt, policy, 60))


def test_chunk_across_a_burst_is_refused(peaky_model, stream):
    cache = BurstEviction(2, 10, 0.5).make_cache(peaky_model)
    peaky_model(input_ids=stream[:, :10], cache=cache, use_cache=True)
    with pytest.raises(ValueError, match="feed at most 4 tokens"):
        peaky_model(input_ids=stream[:, 10:16], cache=cache, use_cache=True)


def test_the_lab_configuration_and_the_forms():
    lab = BurstEviction.from_press(compression_ratio=0.7, n_sink=4, max_capacity=256)
    assert (lab.n_sink, lab.capacity, lab.discard, lab.budget) == (4, 256, 176, 256)
    assert lab.label() == "Burst 4/256 drop 0.7"
    assert parse_policy("burst:4/256:0.7") == lab
    assert parse_policy("burst:4/256:0.7:noshift") == BurstEviction(4, 256, 0.7, pos_shift=False)
    assert from_params(lab.params()) == lab
    legacy = {k: v for k, v in lab.params().items() if k != "spec"}  # a record written before spec strings
    assert from_params({**legacy, "discard_ratio": 1.0}).discard_ratio == 1.0
    assert str(BurstEviction(4, 256, 1.0)) == "burst:4/256:1.0" and parse_policy("burst:4/256:1").discard_ratio == 1


@pytest.mark.parametrize("kwargs,message", [
    (dict(n_sink=4, capacity=5, discard_ratio=0.5), "capacity must be an integer >= 6"),
    (dict(n_sink=4, capacity=64, discard_ratio=0), r"discard_ratio must be a number in \(0, 1\]"),
    (dict(n_sink=4, capacity=64, discard_ratio=1.5), r"discard_ratio must be a number in \(0, 1\]"),
    (dict(n_sink=4, capacity=8, discard_ratio=0.2), "at least 1 token"),
    (dict(n_sink=-1, capacity=8, discard_ratio=0.2), "n_sink must be an integer >= 0"),
])
def test_bad_parameters_name_themselves(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BurstEviction(**kwargs)
    with pytest.raises(ValueError, match="burst"):
        parse_policy("burst:4/256")
