"""Layers dispatched by accelerate (the path of device_map="auto" for Pythia-6.9b/12b across GPUs): with its
hooks in place, every cache gives what it gives on the plain model."""

import copy

import torch

from streamlib.caches.generation import stream_generate
from streamlib.loading.models import dispatch
from streamlib.metrics.quality import token_nll
from streamlib.policies import H2O, TOVA, Dense, StreamingLLM

from conftest import make_peaky_model


def test_caches_under_accelerate_dispatch_equal_the_plain_model():
    plain = make_peaky_model("sdpa", scale=2.0, seed=4)
    names = ["gpt_neox.embed_in", "gpt_neox.emb_dropout", "gpt_neox.rotary_emb", "gpt_neox.layers.0",
             "gpt_neox.layers.1", "gpt_neox.final_layer_norm", "lm_head"]
    spread = dispatch(copy.deepcopy(plain), {name: "cpu" for name in names}, force_hooks=True)
    assert all(hasattr(layer, "_hf_hook") for layer in spread.gpt_neox.layers)  # accelerate's hooks are in place
    ids = torch.randint(0, 97, (1, 90), generator=torch.Generator().manual_seed(12))
    for policy in (Dense(), StreamingLLM(4, 16), StreamingLLM(2, 9, pos_shift=False), TOVA(12), H2O(6, 6)):
        torch.testing.assert_close(token_nll(spread, ids, policy, chunk_size=13),
                                   token_nll(plain, ids, policy, chunk_size=13), atol=1e-5, rtol=0)
        assert torch.equal(stream_generate(spread, ids[:, :30], policy, 30), stream_generate(plain, ids[:, :30], policy, 30))


def test_load_model_takes_a_device_map():
    from streamlib.loading.models import load_model

    model = load_model("random:pythia-14m", device_map="auto")  # no GPU here: everything lands on the CPU
    assert next(model.parameters()).device.type == "cpu"
    ids = torch.randint(0, 1000, (1, 40), generator=torch.Generator().manual_seed(1))
    assert token_nll(model, ids, StreamingLLM(4, 12)).shape == (39,)
