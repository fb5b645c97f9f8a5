import pytest
import torch
from transformers import (AutoModelForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, MistralConfig,
                          Qwen2Config, Qwen3Config)

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


LLAMA_FAMILY = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}


def make_peaky_llama(model_type: str = "llama", attn: str = "eager", scale: float = 4.0, seed: int = 0, **overrides):
    """A random Llama-family model with grouped-query attention (4 query heads over 2 kv heads, head_dim 32) and
    peaky attention (q/k weights scaled), so positions and evictions matter."""
    params = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, max_position_embeddings=4096,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, attn_implementation=attn)
    if model_type == "mistral":
        params["sliding_window"] = None
    params.update(overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(LLAMA_FAMILY[model_type](**params)).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight *= scale
            layer.self_attn.k_proj.weight *= scale
    model.generation_config.eos_token_id = None
    return model


@pytest.fixture(scope="session")
def peaky_llama():
    return make_peaky_llama("llama", "eager")


@pytest.fixture(scope="session")
def peaky_llama_sdpa():
    return make_peaky_llama("llama", "sdpa")


def decode_side_by_side(model, policy, prompt, steps: int):
    """Greedy decoding after ``prompt``, eager and compiled in lockstep: asserts the same token at every step and
    returns both streams and the largest logit difference seen."""
    from streamlib.caches.generation import TokenStream

    eager, compiled = TokenStream(model, policy), TokenStream(model, policy, compile=True)
    eager.feed(prompt)
    compiled.feed(prompt)
    worst = 0.0
    for step in range(steps):
        a, b = eager.step(), compiled.step()
        worst = max(worst, (eager.logits - compiled.logits).abs().max().item())
        assert torch.equal(a, b), f"tokens differ at step {step}"
    return eager, compiled, worst


GEMMA_TYPES = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention", "full_attention"]


def make_peaky_gemma(attn: str = "eager", scale: float = 3.0, seed: int = 0, **overrides):
    """A random Gemma 3 (text) model, hybrid: three sliding layers (window 8, rope theta 10K) and two full ones (theta
    1M), 4 query heads over 1 kv head, head_dim 16, q/k norms scaled so that attention is peaky and evictions
    matter."""
    from transformers import Gemma3TextConfig

    params = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=len(GEMMA_TYPES),
                  num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=8,
                  layer_types=GEMMA_TYPES, max_position_embeddings=4096, query_pre_attn_scalar=16,
                  attn_implementation=attn)
    params.update(overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(Gemma3TextConfig(**params)).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            # Gemma's RMSNorm multiplies by (1 + weight): q and k come out `scale` times larger
            layer.self_attn.q_norm.weight.fill_(scale - 1)
            layer.self_attn.k_norm.weight.fill_(scale - 1)
    model.generation_config.eos_token_id = None
    return model


@pytest.fixture(scope="session")
def peaky_gemma():
    return make_peaky_gemma("eager")


@pytest.fixture(scope="session")
def peaky_gemma_sdpa():
    return make_peaky_gemma("sdpa")


# streamlib.naive.naive_scored_nll's rule for each score-based policy it writes out independently
RULES = {"tova": "current", "h2o": "accumulated"}


# Files of a minute or more on 2 cores, longest first (``--durations``, 2026-12-04): ``make test`` deals whole files
# to its two processes in this order (``--dist loadfile --no-loadscope-reorder``), the longest first so that neither
# process is left with a long file at the end; the others follow in their usual order.
LONGEST_FIRST = ["test_workbook", "test_dry_runs_paper", "test_dry_runs", "test_smollm2", "test_gemma3",
                 "test_generation", "test_harness", "test_streameval", "test_policies", "test_compiled"]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__, len(rank)))  # stable: the rest keep their order


def check_dry_run(profile: str, tmp_path) -> None:
    """``python -m streamlib run --profile <profile> --dry-run`` runs quietly to its report, marked as a dry run in
    the report, the config and 03's output, with no failed measurement and only the dry run's model."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import nbformat

    from streamlib.experiments.records import load_results

    run_dir = tmp_path / profile
    proc = subprocess.run([sys.executable, "-m", "streamlib", "run", "--profile", profile, "--dry-run",
                           "--run-dir", str(run_dir)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "WARNING" not in proc.stdout + proc.stderr and "Warning" not in proc.stderr  # quiet runs
    assert "(dry run)" in proc.stdout
    report = (run_dir / "report.md").read_text()
    assert "DRY RUN" in report.splitlines()[2]
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["dry_run"] and cfg["profile"] == profile and not cfg["export_figures"]
    df = load_results(run_dir)
    assert (df.status == "failed").sum() == 0
    assert set(df.model) == {cfg["model"]}
    executed = nbformat.read(run_dir / "03_sweep.ipynb", as_version=4)
    assert "DRY RUN" in "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
