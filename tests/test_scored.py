"""TOVA and H2O: exact against a naive float64 reference written from the definitions, special cases that equal
other policies, generate(), bounded buffers, long streams, batches, sdpa and eager, and bad input."""

import copy

import pytest
import torch

from streamlib.caches.generation import forward_chunks, stream_generate
from streamlib.caches.handover import handover
from streamlib.metrics.quality import token_nll
from streamlib.naive import naive_scored_nll
from streamlib.policies import H2O, TOVA, Dense, StreamingLLM, from_params, parse_policy

from conftest import RULES, make_peaky_model


@pytest.fixture(scope="module")
def soft_model():
    """Attention that is neither uniform nor so peaky that weights underflow in float32 (which would make ties)."""
    return make_peaky_model("eager", scale=2.0, seed=3)


@pytest.fixture(scope="module")
def soft_model_sdpa():
    return make_peaky_model("sdpa", scale=2.0, seed=3)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 97, (1, 80), generator=torch.Generator().manual_seed(31))


CASES = [("tova", TOVA(12), 12, 0), ("tova", TOVA(5), 5, 0), ("h2o", H2O(6, 6), 12, 6), ("h2o", H2O(3, 9), 12, 9),
         ("h2o", H2O(8, 0), 8, 0), ("h2o", H2O(4, 1), 5, 1)]


@pytest.mark.parametrize("kind,policy,budget,n_recent", CASES, ids=[c[1].label() for c in CASES])
def test_exact_against_naive_reference(soft_model, ids, kind, policy, budget, n_recent):
    reference, gap = naive_scored_nll(copy.deepcopy(soft_model).double(), ids, RULES[kind], budget, n_recent)
    assert gap > 1e-5, f"a near tie ({gap:.2e}) that float32 rounding could decide either way"
    got = token_nll(soft_model, ids, policy)
    torch.testing.assert_close(got, reference, atol=1e-4, rtol=0)
    token = token_nll(soft_model, ids, policy, mode="token")
    torch.testing.assert_close(token, got, atol=1e-5, rtol=0)
    # the budget binds: the policy is measurably not dense attention
    assert (got - token_nll(soft_model, ids, Dense())).abs().max() > 1e-2


def test_sdpa_and_eager_hand_over_the_same_weights(soft_model, soft_model_sdpa, ids):
    for policy in (TOVA(10), H2O(5, 5)):
        eager = token_nll(soft_model, ids, policy)
        sdpa = token_nll(soft_model_sdpa, ids, policy)
        torch.testing.assert_close(sdpa, eager, atol=1e-4, rtol=0)
    assert soft_model.config._attn_implementation == "eager"  # the hand-over lasted each call only
    assert soft_model_sdpa.config._attn_implementation == "sdpa"


def test_h2o_without_heavy_hitters_is_a_window_at_original_positions(soft_model, ids):
    torch.testing.assert_close(token_nll(soft_model, ids, H2O(0, 9)),
                               token_nll(soft_model, ids, StreamingLLM(0, 9, pos_shift=False)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("policy", [TOVA(79), TOVA(200), H2O(40, 39), H2O(0, 100)])
def test_budget_at_least_the_stream_equals_dense(soft_model, ids, policy):
    torch.testing.assert_close(token_nll(soft_model, ids, policy), token_nll(soft_model, ids, Dense()), atol=1e-5,
                               rtol=0)


def test_other_policies_after_a_scored_run_equal_a_fresh_model(soft_model, ids):
    token_nll(soft_model, ids, TOVA(8))
    plain = make_peaky_model("eager", scale=2.0, seed=3)
    for policy in (Dense(), StreamingLLM(2, 9)):
        torch.testing.assert_close(token_nll(soft_model, ids, policy), token_nll(plain, ids, policy), atol=0, rtol=0)


@pytest.mark.parametrize("policy", [TOVA(9), H2O(4, 5)])
def test_generate_matches_the_manual_loop(soft_model, policy):
    prompt = torch.randint(0, 97, (1, 6), generator=torch.Generator().manual_seed(5))
    steps = 40
    cache = policy.make_cache(soft_model)
    with handover(soft_model, cache):  # a user's own generate: the explicit step these caches need
        generated = soft_model.generate(prompt, cache=cache, max_new_tokens=steps, do_sample=False,
                                        attention_mask=torch.ones_like(prompt))[:, prompt.shape[1]:]
    assert soft_model.config._attn_implementation == "eager"
    assert torch.equal(generated, stream_generate(soft_model, prompt, policy, steps))
    cache = policy.make_cache(soft_model)
    with handover(soft_model, cache):
        out = soft_model(input_ids=prompt, cache=cache, use_cache=True)
        token, manual = out.logits[:, -1].argmax(-1, keepdim=True), []
        for _ in range(steps):
            manual.append(token)
            token = soft_model(input_ids=token, cache=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
    assert torch.equal(generated, torch.cat(manual, dim=1))
    # without the hand-over the cache cannot evict, and says what to do
    with pytest.raises(RuntimeError, match="handover"):
        soft_model.generate(prompt, cache=policy.make_cache(soft_model), max_new_tokens=steps, do_sample=False,
                            attention_mask=torch.ones_like(prompt))


def test_long_prompt_in_one_plain_call_is_refused_with_directions(soft_model):
    cache = TOVA(8).make_cache(soft_model)
    with pytest.raises(ValueError, match="prefill_chunk_size=1"):
        soft_model(input_ids=torch.zeros(1, 20, dtype=torch.long), cache=cache, use_cache=True)


@pytest.mark.parametrize("policy", [TOVA(16), H2O(8, 8)])
def test_buffers_are_preallocated_and_memory_bounded(soft_model, policy):
    ids = torch.randint(0, 97, (1, 400), generator=torch.Generator().manual_seed(8))
    cache = policy.make_cache(soft_model)
    pointers = None
    for start, _ in forward_chunks(soft_model, ids, cache, chunk_size=1, all_logits=False):
        if start == policy.budget + 1:
            pointers = [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in cache.layers]
            kv = cache.kv_bytes()
    assert [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in cache.layers] == pointers
    assert cache.kv_bytes() == kv and cache.layers[0].keys.shape[2] == policy.budget + 1
    assert cache.layers[0].offset > 0  # the frame was re-based along the way


@pytest.mark.parametrize("policy", [TOVA(12), H2O(6, 6)])
def test_rebasing_the_frame_changes_nothing(soft_model, policy):
    ids = torch.randint(0, 97, (1, 150), generator=torch.Generator().manual_seed(9))
    expected = token_nll(soft_model, ids, policy)  # rebase interval 256: never re-based over 150 tokens
    cache = policy.make_cache(soft_model)
    cache.rebase_interval = 5
    logits = torch.cat([lg for _, lg in forward_chunks(soft_model, ids[:, :-1], cache, chunk_size=1)], dim=1)
    got = torch.nn.functional.cross_entropy(logits[0].float(), ids[0, 1:], reduction="none")
    assert cache.layers[0].offset > 100
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("policy", [TOVA(10), H2O(5, 5)])
def test_each_row_of_a_batch_evicts_for_itself(soft_model, policy):
    batch = torch.randint(0, 97, (3, 30), generator=torch.Generator().manual_seed(10))
    together = stream_generate(soft_model, batch, policy, 25)
    for row in range(3):
        assert torch.equal(together[row : row + 1], stream_generate(soft_model, batch[row : row + 1], policy, 25))


def test_heads_hold_different_tokens_under_h2o(peaky_model):
    # with softer attention every head's heavy hitters are the first tokens (they have had the most queries);
    # peakier heads pick different ones
    ids = torch.randint(0, 97, (1, 60), generator=torch.Generator().manual_seed(11))
    cache = H2O(4, 4).make_cache(peaky_model)
    for _ in forward_chunks(peaky_model, ids, cache, chunk_size=1, all_logits=False):
        pass
    layer = cache.layers[1]
    held = [set(layer.positions[0, h].tolist()) - {int(layer.positions[0, h, layer.free[0, h]])}
            for h in range(layer.positions.shape[1])]  # the free slot holds the token just evicted
    assert len({tuple(sorted(h)) for h in held}) > 1
    assert all(len(h) == 8 and set(range(56, 60)) <= h for h in held)  # the 4 most recent are kept by every head


def test_bad_parameters_name_themselves():
    with pytest.raises(ValueError, match="budget"):
        TOVA(0)
    with pytest.raises(ValueError, match="n_heavy"):
        H2O(-1, 4)
    with pytest.raises(ValueError, match="n_recent"):
        H2O(4, 2.5)
    with pytest.raises(ValueError, match="n_heavy \\+ n_recent"):
        H2O(0, 0)
    assert from_params(TOVA(7).params()) == TOVA(7) and from_params(H2O(3, 4).params()) == H2O(3, 4)
    assert parse_policy("tova:64") == TOVA(64) and parse_policy("h2o:32+32") == H2O(32, 32)
