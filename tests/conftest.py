import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_config(attn: str = "eager", **overrides) -> GPTNeoXConfig:
    params = dict(vocab_size=97, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                  max_position_embeddings=4096, rotary_pct=0.25, use_parallel_residual=True,
                  attn_implementation=attn)
    params.update(overrides)
    return GPTNeoXConfig(**params)


def make_peaky_model(attn: str = "eager", scale: float = 4.0, seed: int = 0, **overrides):
    """A random GPT-NeoX whose attention is peaky (q/k weights scaled), so positions and evictions matter."""
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(tiny_config(attn, **overrides)).eval()
    heads = model.config.num_attention_heads
    head = model.config.hidden_size // heads
    with torch.no_grad():
        for layer in model.gpt_neox.layers:
            w = layer.attention.query_key_value.weight.view(heads, 3, head, model.config.hidden_size)
            w[:, :2] *= scale
    # random weights have no end-of-text token: let generate() run its full length
    model.generation_config.eos_token_id = None
    return model


@pytest.fixture(scope="session")
def peaky_model():
    return make_peaky_model("eager")


@pytest.fixture(scope="session")
def peaky_model_sdpa():
    return make_peaky_model("sdpa")


@pytest.fixture
def stream():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 97, (1, 96), generator=g)
