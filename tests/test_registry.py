"""Every registered policy, the moment it exists: exact against the naive float64 reference (a policy's ``visible``
definition, or a score-based policy's rule) on GPT-NeoX, the Llama family with grouped-query attention and Gemma 3's
full layers, token by token and in chunks; its spec string round trip; its record read back; its line in a figure."""

import copy

import matplotlib
import pandas as pd
import pytest
import torch

from streamlib.experiments.records import save_figure
from streamlib.metrics.quality import token_nll
from streamlib.naive import reference_nll, tiny_model
from streamlib.policies import Dense, forms, from_params, parse_policy, registered
from streamlib.report import figures as plots

matplotlib.use("Agg")
BUDGET = 12
EXAMPLES = [p for cls in registered() for p in cls.examples(BUDGET)]
FAMILIES = ["gpt_neox", "llama", "gemma3_text"]
_models: dict = {}


def model_pair(family):
    """The family's tiny random model (sdpa for Llama, eager for the others) and its float64 copy, made once."""
    if family not in _models:
        model = tiny_model(family, "sdpa" if family == "llama" else "eager")
        _models[family] = (model, copy.deepcopy(model).double())
    return _models[family]


def test_every_policy_has_examples_a_form_and_a_style():
    names = [cls.name for cls in registered()]
    assert len(names) == len(set(names)) and {"dense", "streamingllm", "tova", "h2o", "knorm"} <= set(names)
    assert sum(cls.is_baseline for cls in registered()) == 1
    for cls in registered():
        assert cls.examples(BUDGET) and cls.spec_form().split(":")[0] == cls.name and cls.spec_form() in forms()


@pytest.mark.parametrize("policy", EXAMPLES, ids=str)
def test_spec_string_and_record_round_trip(policy):
    assert parse_policy(str(policy)) == policy
    assert parse_policy(policy.spec().upper()) == policy  # the command line is case-blind
    assert from_params(policy.params()) == policy
    legacy = {k: v for k, v in policy.params().items() if k != "spec"}  # records written before spec strings
    assert from_params(legacy) == policy
    assert policy.label() and policy.kind() and policy.family()
    if policy.budget is not None:
        assert 0 < policy.budget <= BUDGET + 1


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("policy", EXAMPLES, ids=str)
def test_exact_against_the_naive_reference(family, policy):
    model, model64 = model_pair(family)
    # no token twice: the first layer's keys of one token id differ only by their rotation, so a rule that reads
    # key norms (K-norm) would face exact ties there, which float32 rotations break either way
    ids = torch.randperm(97, generator=torch.Generator().manual_seed(7))[None, :40]
    expected, gap = reference_nll(policy, model64, ids)
    assert gap > 1e-5, f"a near tie ({gap:.2e}) that float32 rounding could decide either way"
    for mode, chunk in (("token", None), ("chunked", 7), ("chunked", 64)):
        got = token_nll(model, ids, policy, mode=mode, chunk_size=chunk)
        torch.testing.assert_close(got, expected.float(), atol=1e-4, rtol=0, msg=f"{mode} {chunk}")
    if not policy.is_baseline:  # the budget binds on this model: the policy is measurably not Dense
        assert (got - token_nll(model, ids, Dense())).abs().max() > 1e-2


def test_every_policy_draws_in_the_figures(tmp_path):
    rows = [{"label": p.label(), "spec": p.spec(), "position": x, "nll": 1.0 + 0.01 * i + 0.001 * x}
            for i, p in enumerate(EXAMPLES) for x in range(1, 200)]
    fig = plots.fig_nll_vs_position(pd.DataFrame(rows), bands=False)
    drawn = {line.get_gid() for line in fig.axes[0].get_lines()}
    assert {p.label() for p in EXAMPLES} <= drawn
    styles = {p.label(): plots.style_of(p.spec()) for p in EXAMPLES}
    assert all(set(s) >= {"color", "marker", "linestyle"} for s in styles.values())
    save_figure(fig, "all_policies", tmp_path)
    assert (tmp_path / "all_policies.png").stat().st_size > 0


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_streaming_leaves_the_model_as_it_was_given(attn):
    """Every policy, token by token, in chunks and generating: afterwards the model's attention setting is what it
    was and a plain forward gives the same logits, bit for bit."""
    from streamlib.caches.generation import stream_generate

    model = tiny_model("llama", attn)
    ids = torch.randperm(97, generator=torch.Generator().manual_seed(3))[None, :40]
    with torch.no_grad():
        before = model(ids).logits
    for policy in EXAMPLES:
        for mode in ("token", "chunked"):
            token_nll(model, ids, policy, mode=mode, chunk_size=16)
        stream_generate(model, ids, policy, 4)
        assert model.config._attn_implementation == attn, policy
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
