"""Adaptive budgets: HeadSplit, GrowingWindow and LayerBudgets equal the policies they reduce to, hold the bytes their
formulas say, and read their retrieval heads from scores; the registry's tests hold each to the naive reference."""

import pytest
import torch

from streamlib.metrics.head_scores import map_trials, retrieval_scores, top_heads
from streamlib.metrics.quality import token_nll
from streamlib.naive import check_exact, tiny_model
from streamlib.policies import Dense, GrowingWindow, HeadSplit, LayerBudgets, StreamingLLM, forms

IDS = torch.randperm(97, generator=torch.Generator().manual_seed(5))[None, :48]


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", "sdpa")


@pytest.fixture(scope="module")
def gemma():
    return tiny_model("gemma3_text", "eager")


def test_the_forms_are_listed():
    listed = ", ".join(forms())
    for form in ("headsplit:{n_sink}+{window}:{heads}", "growing:{n_sink}:{ratio}:{min_window}-{max_window}",
                 "layers:{n_sink}+{windows}"):
        assert form in listed


@pytest.mark.parametrize("mode", ["token", "chunked"])
def test_head_split_reduces_to_dense_and_to_streamingllm(llama, mode):
    every = HeadSplit.of(torch.ones(2, 2, dtype=torch.bool), 2, 10)
    none = HeadSplit.of(torch.zeros(2, 2, dtype=torch.bool), 2, 10)
    dense = token_nll(llama, IDS, Dense(), mode=mode)
    torch.testing.assert_close(token_nll(llama, IDS, every, mode=mode, chunk_size=9), dense, atol=1e-5, rtol=0)
    torch.testing.assert_close(token_nll(llama, IDS, none, mode=mode, chunk_size=9),
                               token_nll(llama, IDS, StreamingLLM(2, 10, pos_shift=False), mode=mode, chunk_size=9),
                               atol=1e-5, rtol=0)


def test_head_split_mixed_masks_are_exact_on_gqa_and_on_a_hybrid(llama, gemma):
    mixed = HeadSplit.of(torch.tensor([[True, False], [False, True]]), 2, 8)
    assert check_exact(mixed, llama, IDS[:, :40])["max |NLL - reference|"].max() < 1e-4
    full_layer_whole = HeadSplit.of(torch.tensor([[False], [True]]), 2, 8)  # Gemma's layer 1 is its full layer
    result = check_exact(full_layer_whole, gemma, IDS[:, :40])
    assert result["max |NLL - reference|"].max() < 1e-4
    with pytest.raises(ValueError, match="heads: a mask for 2x2 heads"):
        mixed.make_cache(gemma)


@pytest.mark.parametrize("policy", [HeadSplit.of(torch.tensor([[True, False], [False, False]]), 2, 10),
                                    GrowingWindow(2, 0.5, 4, 20), LayerBudgets(2, (6, 14))], ids=str)
def test_bytes_held_equal_the_formula(llama, policy):
    for n in (9, 30, 48):
        cache = policy.make_cache(llama)
        with torch.inference_mode():
            for _ in cache.feed(llama, IDS[:, :n], chunk_size=7):
                pass
        assert cache.kv_bytes()[1] == policy.kv_bytes_held(llama.config, n, torch.float32), n


@pytest.mark.parametrize("pos_shift", [True, False])
def test_growing_window_reduces_to_streamingllm_and_to_dense(llama, pos_shift):
    fixed = GrowingWindow(2, 0.5, 10, 10, pos_shift)  # min = max: a window of 10 throughout
    streaming = StreamingLLM(2, 10, pos_shift)
    torch.testing.assert_close(token_nll(llama, IDS, fixed, chunk_size=9), token_nll(llama, IDS, streaming, chunk_size=9),
                               atol=1e-5, rtol=0)
    whole = GrowingWindow(2, 1.0, 1, 100, pos_shift)  # every earlier token, always
    torch.testing.assert_close(token_nll(llama, IDS, whole), token_nll(llama, IDS, Dense()), atol=1e-5, rtol=0)
    growing = GrowingWindow(2, 0.25, 4, 64, pos_shift)
    assert [growing.window_at(t) for t in (0, 16, 17, 40, 1000)] == [4, 4, 4, 10, 64]
    assert growing.kv_bytes_held(llama.config, 40, torch.float32) < StreamingLLM(2, 64).kv_bytes_held(
        llama.config, 40, torch.float32)


def test_layer_budgets_reduce_to_streamingllm_and_pyramid_keeps_the_total(llama):
    torch.testing.assert_close(token_nll(llama, IDS, LayerBudgets(2, (10, 10)), chunk_size=9),
                               token_nll(llama, IDS, StreamingLLM(2, 10), chunk_size=9), atol=1e-5, rtol=0)
    pyramid = LayerBudgets.pyramid(4, 124, 30)
    assert sum(pyramid.windows) == 124 * 30 and pyramid.windows[0] > pyramid.windows[-1] >= 1
    assert list(pyramid.windows) == sorted(pyramid.windows, reverse=True)
    with pytest.raises(ValueError, match="windows: one per layer, 2 for this model"):
        LayerBudgets(2, (4, 4, 4)).make_cache(llama)
    with pytest.raises(ValueError, match="windows must"):
        LayerBudgets(2, [4, 4])


def test_bad_parameters_name_themselves():
    for make, name in [(lambda: GrowingWindow(2, 1.5), "ratio"), (lambda: GrowingWindow(2, 0.5, 8, 4), "max_window"),
                       (lambda: HeadSplit(2, 10, "most"), "heads"), (lambda: HeadSplit(2, 0), "window")]:
        with pytest.raises(ValueError, match=name):
            make()


def test_top_heads_and_retrieval_scores():
    from streamlib.loading.models import load_model, load_tokenizer

    scores = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.0, 0.7]])
    config = tiny_model("llama").config
    config.num_hidden_layers = 3
    assert top_heads(scores, 0.5, config).tolist() == [[True, False], [True, False], [False, True]]
    assert top_heads(scores, 0.0, config).sum() == 0 and top_heads(scores, 1.0, config).all()
    with pytest.raises(ValueError, match="share"):
        top_heads(scores, 1.5, config)
    tokenizer, micro = load_tokenizer("micro"), load_model("micro", attn_implementation="eager")
    trials = map_trials(tokenizer, 128, count=2)
    found = retrieval_scores(micro, tokenizer, trials)
    layers, heads = micro.config.num_hidden_layers, micro.config.num_attention_heads
    assert found.shape == (layers, heads) and bool(((found >= 0) & (found <= 1)).all())
    with pytest.raises(ValueError, match="eager"):
        retrieval_scores(load_model("micro"), tokenizer, trials)


def test_beyond_window_grid_compares_at_equal_bytes(llama, gemma):
    from streamlib.experiments.config import Config
    from streamlib.experiments.grids import head_split_grid

    cfg = Config.load("smoke", retrieval_cache=16, head_split_shares=[0.25], head_split_tokens=64)
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    grid = head_split_grid(cfg, scores, llama.config)
    assert [type(p).__name__ for p in grid] == ["Dense", "StreamingLLM", "HeadSplit", "StreamingLLM", "LayerBudgets"]
    split, uniform, pyramid = grid[2:]
    assert split.retrieval_mask(2, 2).tolist() == [[True, False], [False, False]]
    held = [p.kv_bytes_held(llama.config, 64, torch.float32) for p in (split, uniform, pyramid)]
    assert held[1] == held[2] and abs(held[0] - held[1]) <= held[0] / 64  # equal bytes, up to a token's rounding
    assert pyramid.windows[0] > pyramid.windows[-1]  # PyramidKV: more below
    # Gemma 3's sliding layers keep their own window: a pyramid over every layer would not hold the same bytes
    gemma_grid = head_split_grid(Config.load("smoke", retrieval_cache=16, head_split_shares=[1.0], head_split_tokens=64),
                                 torch.tensor([[0.0], [0.9]]), gemma.config)
    assert "LayerBudgets" not in [type(p).__name__ for p in gemma_grid]
