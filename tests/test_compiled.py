"""The compiled decode step (``compile=True``): the same tokens and logits as eager, one compilation for a stream of
any length, and a clear refusal for caches whose shape is not fixed. Each new cache geometry compiles once (about
10-20 s on 2 cores), so the tests share two: StreamingLLM 4+124 on the micro model and Window 16 on a tiny model."""

import pytest
import torch

from streamlib.caches.compiled import compile_count, compiled_decoder
from streamlib.caches.generation import TokenStream, stream_generate
from streamlib.loading.models import load_model
from streamlib.metrics.timing import time_generation
from streamlib.policies import TOVA, Dense, StreamingLLM, Window

from conftest import decode_side_by_side


@pytest.fixture(scope="module")
def micro():
    return load_model("micro", device="cpu")


def _prompt(n: int, vocab: int, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def test_compiled_equals_eager_past_eviction(micro):
    """Greedy decoding, 700 steps after a 64-token prompt: the first 65 fill the cache (compiled too, with the empty
    slots masked), over 600 evict. Every step's logits match eager within 1e-4 (fp32) and the tokens are the same."""
    policy = StreamingLLM(4, 124)
    prompt = _prompt(64, micro.config.vocab_size)
    eager, compiled, worst = decode_side_by_side(micro, policy, prompt, 700)
    assert compiled.cache.position - compiled.cache.budget > 600
    assert worst < 1e-4
    # the host's view of the cache follows the device's: same length, same bytes, same frame as eager
    assert compiled.cache.get_seq_length() == eager.cache.get_seq_length()
    assert compiled.cache.kv_bytes() == eager.cache.kv_bytes()


def test_one_compilation_for_a_long_stream(micro):
    """2,000 steps past eviction, the position frame re-based seven times, then a second cache of the same
    geometry: no new graph. stream_generate with compile=True returns what the eager loop returns."""
    policy = StreamingLLM(4, 124)
    prompt = _prompt(200, micro.config.vocab_size, seed=5)
    compiled_decoder(micro)
    stream_generate(micro, prompt[:, :140], policy, 4, compile=True)  # compiles this geometry if not done yet
    before = compile_count()
    stream = TokenStream(micro, policy, compile=True)
    stream.feed(prompt)
    rebases = 0
    for _ in range(2000):
        frame = stream.cache.get_seq_length()
        stream.step()
        rebases += stream.cache.get_seq_length() < frame
    assert rebases >= 7
    assert stream.cache.get_seq_length() <= policy.budget + stream.cache.rebase_interval
    tokens = stream_generate(micro, prompt, policy, 300, compile=True)
    # a prompt shorter than the sinks: eager steps until the sink slots are filled, compiled ones from then on
    short = stream_generate(micro, prompt[:, :2], policy, 200, compile=True)
    assert compile_count() == before
    assert torch.equal(tokens, stream_generate(micro, prompt, policy, 300))
    assert torch.equal(short, stream_generate(micro, prompt[:, :2], policy, 200))


def test_window_compiled_equals_eager(peaky_model_sdpa):
    """Window (no sinks) on a tiny model with peaky attention, where a misplaced slot would show at once."""
    prompt = _prompt(40, 97, seed=8)
    eager = stream_generate(peaky_model_sdpa, prompt, Window(16), 120)
    assert torch.equal(stream_generate(peaky_model_sdpa, prompt, Window(16), 120, compile=True), eager)


def test_dense_compiled_on_a_preallocated_cache_equals_eager(peaky_model_sdpa):
    """Dense with compile=True: a cache preallocated to the stream's length (a Window that never evicts)."""
    prompt = _prompt(30, 97, seed=4)
    eager = stream_generate(peaky_model_sdpa, prompt, Dense(), 90)
    assert torch.equal(stream_generate(peaky_model_sdpa, prompt, Dense(), 90, compile=True), eager)
    with pytest.raises(ValueError, match="compile=True with Dense needs the stream's maximum length"):
        TokenStream(peaky_model_sdpa, Dense(), compile=True)


def test_quantized_compiled_equals_eager(peaky_model_sdpa):
    """A 4-bit StreamingLLM cache decoded compiled: from a prompt that leaves it filling, past nine quantized blocks
    (on the host after the step of a block's last token) and a re-base of the frame in the middle of a block (a
    budget of 30: the current block's keys turn with the frame), the same tokens as the eager cache at every step and
    the same logits but for rounding; it holds what the eager cache holds. The bound is looser than full
    precision's: the compiled forward's keys differ from eager's in the last bits, and a key that sits on a rounding
    boundary then takes the neighbouring code (a misplaced slot or block moves the logits by whole units)."""
    policy = StreamingLLM(4, 26, bits=4)
    eager, compiled, worst = decode_side_by_side(peaky_model_sdpa, policy, _prompt(6, 97, seed=9), 300)
    assert compiled.cache.static_state is not None and compiled.cache.position > 30 + compiled.cache.rebase_interval
    assert worst < 1e-3
    assert compiled.cache.get_seq_length() == eager.cache.get_seq_length()
    assert compiled.cache.kv_bytes()[1] == eager.cache.kv_bytes()[1]
    with pytest.raises(ValueError, match="quantize_sinks: compile=True takes full-precision sinks"):
        TokenStream(peaky_model_sdpa, StreamingLLM(4, 28, bits=4, quantize_sinks=True), compile=True)


def test_compile_refuses_caches_without_a_fixed_shape(peaky_model_sdpa):
    with pytest.raises(ValueError, match="compile=True covers StreamingLLM, Window, and Dense when"):
        TokenStream(peaky_model_sdpa, TOVA(16), compile=True)
    with pytest.raises(ValueError, match="compile"):
        time_generation(peaky_model_sdpa, TOVA(16), _prompt(8, 97), 4, compile=True)


def test_compiled_timing_needs_a_warmup(peaky_model_sdpa):
    with pytest.raises(ValueError, match="warmup must be an integer >= 1"):
        time_generation(peaky_model_sdpa, Window(16), _prompt(8, 97), 4, warmup=0, compile=True)


def test_models_of_the_same_shape_keep_their_own_graphs():
    """Two models with the same tensor shapes but another structure (parallel residual or not) each get their own
    graph: the compiled step skips dynamo's module guards, so sharing one graph would go unnoticed but for this."""
    from conftest import make_peaky_model

    prompt = _prompt(40, 97, seed=9)
    eager = []
    for parallel in (True, False):
        model = make_peaky_model("sdpa", seed=1, use_parallel_residual=parallel)
        eager.append(stream_generate(model, prompt, Window(16), 60))
        assert torch.equal(stream_generate(model, prompt, Window(16), 60, compile=True), eager[-1])
    assert not torch.equal(eager[0], eager[1])  # the two models do write different tokens
