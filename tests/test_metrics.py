"""Quality and efficiency metrics, and result records."""

import math
import os
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch

from streamlib.core.costs import flops_per_token, forward_flops
from streamlib.experiments.config import Config
from streamlib.experiments.records import Measurement, Run, config_key, load_results, read_rows
from streamlib.loading.models import load_model
from streamlib.metrics.flops import calflops_forward, stream_flops
from streamlib.metrics.quality import perplexity, token_nll
from streamlib.metrics.timing import stream_trace, time_generation
from streamlib.policies import Dense, Recompute, StreamingLLM, Window
from streamlib.report import to_latex, to_markdown
from streamlib.report.compare import comparison_table

# -------------------------------------------------------------------------------------------------- quality --

@pytest.mark.parametrize("policy", [StreamingLLM(4, 20, True), StreamingLLM(1, 12, False), Window(16), Dense()])
def test_chunked_equals_token_by_token(peaky_model, policy):
    ids = torch.randint(0, 97, (1, 160), generator=torch.Generator().manual_seed(11))
    reference = token_nll(peaky_model, ids, policy, mode="token")
    for chunk in (5, 24, 64):
        torch.testing.assert_close(token_nll(peaky_model, ids, policy, chunk_size=chunk), reference, atol=1e-4, rtol=0)


def test_perplexity_is_exp_mean_nll(peaky_model, stream):
    result = perplexity(peaky_model, stream, StreamingLLM(2, 10))
    assert result.n_tokens == stream.shape[1] - 1
    assert math.isclose(result.ppl, math.exp(float(result.nll.double().mean())), rel_tol=1e-9)
    assert 1.0 < result.ppl < 97 ** 3  # a random model is at worst a few times worse than uniform


# ---------------------------------------------------------------------------------------------------- speed --

def test_timings_positive_and_ordered(peaky_model):
    prompt = torch.randint(0, 97, (1, 48))
    result = time_generation(peaky_model, StreamingLLM(2, 16), prompt, new_tokens=12, warmup=1, repeats=3)
    assert len(result.runs) == 3
    for run in result.runs:
        assert len(run.step_s) == 11
        assert run.ttft_s > 0 and all(s > 0 for s in run.step_s)
        assert run.e2e_s == pytest.approx(run.ttft_s + sum(run.step_s))
        assert run.throughput_tok_s == pytest.approx(11 / sum(run.step_s))
    summary = result.summary()
    assert summary["tpot_p50"][0] <= summary["tpot_p90"][0]
    assert set(summary) == {"ttft", "tpot_mean", "tpot_p50", "tpot_p90", "decode_throughput", "e2e_time"}


def test_ttft_includes_the_prefill():
    model = load_model("random:pythia-70m", device="cpu")
    short = torch.randint(0, 1000, (1, 8))
    long = torch.randint(0, 1000, (1, 1024))
    t_short = time_generation(model, Dense(), short, new_tokens=2, warmup=1, repeats=2).summary()["ttft"][0]
    t_long = time_generation(model, Dense(), long, new_tokens=2, warmup=1, repeats=2).summary()["ttft"][0]
    assert t_long > 3 * t_short  # 128x the tokens to prefill


def test_batch_throughput_counts_rows(peaky_model):
    prompt = torch.randint(0, 97, (4, 16))
    run = time_generation(peaky_model, Window(8), prompt, new_tokens=6, warmup=0, repeats=1).runs[0]
    assert run.throughput_tok_s == pytest.approx(4 * 5 / sum(run.step_s))


def test_recompute_timing_runs(peaky_model):
    prompt = torch.randint(0, 97, (1, 40))
    run = time_generation(peaky_model, Recompute(16), prompt, new_tokens=5, warmup=0, repeats=1).runs[0]
    assert len(run.step_s) == 4 and run.ttft_s > 0


def test_bad_counts_are_refused(peaky_model):
    prompt = torch.randint(0, 97, (1, 8))
    with pytest.raises(ValueError, match="new_tokens"):
        time_generation(peaky_model, Dense(), prompt, new_tokens=1)
    with pytest.raises(ValueError, match="repeats"):
        time_generation(peaky_model, Dense(), prompt, new_tokens=4, repeats=0)


def test_kv_memory_flat_for_streaming_and_growing_for_dense(peaky_model):
    ids = torch.randint(0, 97, (1, 400))
    streaming = stream_trace(peaky_model, ids, StreamingLLM(4, 28), every=50)
    dense = stream_trace(peaky_model, ids, Dense(), every=50)
    s_bytes = [r["kv_bytes"] for r in streaming]
    d_bytes = [r["kv_bytes"] for r in dense]
    assert len(set(s_bytes)) == 1  # flat from the first sample on (the buffers are preallocated)
    assert all(b > a for a, b in zip(d_bytes, d_bytes[1:]))  # dense grows with every sample
    per_token = d_bytes[0] // 50
    assert d_bytes[-1] == per_token * 400
    # n_sink + window slots, one scratch slot for the incoming token, and the stored sink keys (keys only)
    assert s_bytes[0] == per_token * (4 + 28 + 1) + (per_token // 2) * 4


def test_peak_memory_reports_cpu_rss():
    """In a fresh process: in this one, memory freed by earlier tests (a float64 copy of a real model) may serve the
    transient without the resident set growing."""
    import subprocess
    import sys

    code = ("import psutil, torch; from streamlib.metrics.memory import peak_memory; "
            "before = psutil.Process().memory_info().rss; "
            "out = peak_memory(lambda: torch.ones(256 * 2**20 // 4).add_(1).sum(), 'cpu'); "  # a 256 MiB transient
            "print(out['peak_rss'] - before)")
    grown = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert grown > 200 * 2**20


# ---------------------------------------------------------------------------------------------------- flops --

@pytest.mark.parametrize("arch,tokens", [("pythia-70m", 96), ("pythia-160m", 64)])
def test_analytic_flops_match_calflops(arch, tokens):
    model = load_model(f"random:{arch}", device="cpu", attn_implementation="eager")
    ids = torch.randint(0, 1000, (1, tokens))
    measured = calflops_forward(model, ids)
    assert forward_flops(model.config, tokens) == pytest.approx(measured, rel=0.02)


def test_flops_per_token_sum_to_a_causal_forward(peaky_model):
    cfg = peaky_model.config
    total = sum(flops_per_token(cfg, t + 1) for t in range(50))
    assert total == forward_flops(cfg, 50, context_per_token=lambda i: i + 1)
    # a bounded cache stops the growth: streaming costs less than dense on a long stream, the same on a short one
    assert stream_flops(cfg, 40, StreamingLLM(4, 60)) == stream_flops(cfg, 40, Dense())
    assert stream_flops(cfg, 400, StreamingLLM(4, 60)) < stream_flops(cfg, 400, Dense())
    assert stream_flops(cfg, 400, Recompute(64)) > stream_flops(cfg, 400, StreamingLLM(4, 60))


# -------------------------------------------------------------------------------------------------- records --

def _run(path, **overrides) -> Run:
    return Run(Config.load("smoke", run_dir=str(path), **overrides))


def _rows(*rows):
    return lambda: Measurement(rows=list(rows))


def test_records_append_skip_and_fail(tmp_path):
    run = _run(tmp_path / "run1")
    policy = StreamingLLM(4, 252)
    assert run.measure("ppl", policy, _rows(("ppl", 12.5, "")), dataset="x", n_tokens=10).status == "ok"
    again = run.measure("ppl", policy, _rows(("ppl", 99.0, "")), dataset="x", n_tokens=10)
    assert again.status == "skipped" and again["ppl"] == 12.5  # read back from memory, not measured again
    forced = _run(tmp_path / "run1", force=True)
    assert forced.measure("ppl", policy, _rows(("ppl", 13.0, "")), dataset="x", n_tokens=10)["ppl"] == 13.0

    def boom():
        raise RuntimeError("CUDA out of memory (simulated)")

    failed = run.measure("ppl", policy, boom, dataset="x", n_tokens=20)
    assert failed.status == "failed" and failed.error == "RuntimeError: CUDA out of memory (simulated)"
    assert run.measure("ppl", policy, _rows(("ppl", 14.0, "")), dataset="x", n_tokens=20).status == "ok"  # a failure is not "done"
    df = load_results(tmp_path)
    assert list(df["status"]) == ["ok", "ok", "failed", "ok"]
    assert df.loc[0, "n_sink"] == 4 and df.loc[0, "window"] == 252 and df.loc[0, "policy"] == "streamingllm"
    assert "simulated" in df.loc[2, "error"]
    for col in ("torch", "transformers", "timestamp", "git_commit", "model", "dataset", "unit"):
        assert col in df.columns
    assert config_key(a=1, b=2) == config_key(b=2, a=1) != config_key(a=1, b=3)
    # a new Run on the same directory knows what is recorded without measuring it
    assert _run(tmp_path / "run1").measure("ppl", policy, boom, dataset="x", n_tokens=20)["ppl"] == 14.0


def test_records_survive_a_killed_process(tmp_path):
    script = textwrap.dedent(f"""
        import os, time
        from streamlib.experiments.config import Config
        from streamlib.policies import Dense
        from streamlib.experiments.records import Measurement, Run
        run = Run(Config.load("smoke", run_dir={str(tmp_path / 'run')!r}))
        for i in range(10_000):
            run.measure("g", Dense(), lambda: Measurement(rows=[("m", float(i), "u")]), i=i)
            if i == 20:
                print("ready", flush=True)
            time.sleep(0.001)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:  # the run prints a line per measurement; wait for the 21st
        if line.strip() == "ready":
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    path = tmp_path / "run" / "results.jsonl"
    lines = path.read_text().splitlines()
    rows = read_rows(path)
    assert len(rows) >= 21
    assert len(rows) >= len(lines) - 1  # at most a torn last line
    assert [r["value"] for r in rows] == [float(i) for i in range(len(rows))]


def test_comparison_table_formats(tmp_path):
    run = _run(tmp_path / "r")
    run.measure("ppl", Dense(), _rows(("ppl", 10.0, ""), ("tpot_mean", 0.02, "s")), dataset="d")
    run.measure("ppl", StreamingLLM(4, 252), _rows(("ppl", 11.0, ""), ("tpot_mean", 0.01, "s")), dataset="d")
    table = comparison_table(load_results(tmp_path), {"policy": "dense"}, {"policy": "streamingllm"}, ["ppl", "tpot_mean", "absent"])
    assert table.loc[0, "change_%"] == pytest.approx(10.0)
    assert table.loc[1, "change_%"] == pytest.approx(-50.0)
    assert pd.isna(table.loc[2, "baseline"])
    assert "| absent |  | – | – | – | not measured |" in to_markdown(table)
    md = to_markdown(table)
    assert "| ppl |" in md and "+10.0%" in md and "-50.0%" in md
    tex = to_latex(table)
    assert tex.startswith(r"\begin{tabular}") and r"+10.0\%" in tex


def test_whole_numbers_print_as_integers_and_headers_as_words():
    table = pd.DataFrame({"label": ["Dense", "TOVA 64"], "distance": [6.0, 250.0], "tokens_back": [8.0, float("nan")],
                          "accuracy": [0.5, 1.0], "max_kv_mib": [1.25, 0.5]})
    header, _, dense, tova = to_markdown(table).splitlines()
    assert header == "| policy | key to question (tokens) | tokens back | accuracy | most KV held (MiB) |"
    assert dense == "| Dense | 6 | 8 | 0.50 | 1.25 |" and tova == "| TOVA 64 | 250 | – | 1.00 | 0.50 |"


def test_comparison_table_pairs_like_with_like(tmp_path):
    """The smoke report's fault: Dense over 2,048 tokens (01) against StreamingLLM over 1,024 (the 03 sweep). The
    table must pair each side with a measurement of the same text and token count, even when a later record of the
    streaming policy has another token count."""
    run = _run(tmp_path / "r")
    dense, streaming = Dense(), StreamingLLM(4, 124)

    def record(policy, n_tokens, ppl):
        run.measure("ppl", policy, _rows(("ppl", ppl, "")), dataset="d", n_tokens=n_tokens)

    record(dense, 2048, 79.19)
    record(streaming, 2048, 63.33)  # 02: the like-for-like record
    record(streaming, 1024, 65.71)  # 03: the sweep, recorded last
    df = load_results(tmp_path)
    row = comparison_table(df, {"policy": "dense"}, {"policy": "streamingllm"}, ["ppl"]).iloc[0]
    assert (row["baseline"], row["streamingllm"]) == (79.19, 63.33)
    assert row["change_%"] == pytest.approx(-20.03, abs=0.01) and row["measured on"] == "d, 2048 tokens"
    # a baseline at another token count: the latest pair wins, never a mixed one
    record(dense, 1024, 80.0)
    row = comparison_table(load_results(tmp_path), {"policy": "dense"}, {"policy": "streamingllm"}, ["ppl"]).iloc[0]
    assert (row["baseline"], row["streamingllm"]) == (80.0, 65.71) and row["measured on"] == "d, 1024 tokens"


def test_comparison_table_says_when_nothing_pairs(tmp_path):
    run = _run(tmp_path / "r")
    run.measure("ppl", Dense(), _rows(("ppl", 9.0, "")), dataset="d", n_tokens=2048)
    run.measure("ppl", StreamingLLM(4, 124), _rows(("ppl", 10.0, "")), dataset="d", n_tokens=1024)
    row = comparison_table(load_results(tmp_path), {"policy": "dense"}, {"policy": "streamingllm"}, ["ppl"]).iloc[0]
    assert pd.isna(row["baseline"]) and pd.isna(row["streamingllm"]) and pd.isna(row["change_%"])
    assert row["measured on"] == "no like-for-like pair (baseline: d, 2048 tokens | streaming: d, 1024 tokens)"


def test_interleaved_timings_alternate_and_pair_each_round(peaky_model, monkeypatch):
    """Rounds start from a different policy each time (A B, B A, ...), the warm-up round is dropped, and the
    baseline's per-round ratio against itself is exactly 1."""
    import streamlib.metrics.timing as timing

    order = []
    real = timing.time_generation

    def spy(model, policy, *args, **kwargs):
        order.append(policy.label())
        return real(model, policy, *args, **kwargs)

    monkeypatch.setattr(timing, "time_generation", spy)
    prompt = torch.randint(0, 97, (1, 40))
    policies = [Dense(), StreamingLLM(2, 16)]
    out = timing.measure_interleaved(peaky_model, policies, prompt, 6, rounds=3, warmup=1)
    assert order == ["Dense", "StreamingLLM 2+16", "StreamingLLM 2+16", "Dense", "Dense", "StreamingLLM 2+16",
                     "StreamingLLM 2+16", "Dense"]
    dense, streaming = out[policies[0]], out[policies[1]]
    assert dense["ttft_vs_baseline"] == dense["ttft_vs_baseline_q1"] == dense["tpot_vs_baseline_q3"] == 1.0
    assert streaming["ttft_q1"] <= streaming["ttft"] <= streaming["ttft_q3"]
    assert streaming["tpot_vs_baseline_q1"] <= streaming["tpot_vs_baseline"] <= streaming["tpot_vs_baseline_q3"]
    assert streaming["kv_bytes_after_prompt"] < dense["kv_bytes_after_prompt"]
    with pytest.raises(ValueError, match="rounds"):
        timing.measure_interleaved(peaky_model, policies, prompt, 6, rounds=0)


def test_measure_all_records_each_policy_once_and_fails_for_all(tmp_path):
    run = Run(Config.load("smoke", run_dir=str(tmp_path)))
    policies = [Dense(), Window(8)]
    calls = []

    def compute():
        calls.append(1)
        return {p: Measurement(rows=[("ttft", 0.1 * (i + 1), "s")]) for i, p in enumerate(policies)}

    first = run.measure_all("speed", policies, compute, batch_size=1)
    again = run.measure_all("speed", policies, compute, batch_size=1)
    assert len(calls) == 1 and [m.status for m in again.values()] == ["skipped", "skipped"]
    assert again[policies[1]]["ttft"] == first[policies[1]]["ttft"] == 0.2

    def boom():
        raise RuntimeError("out of memory")

    failed = run.measure_all("speed", policies, boom, batch_size=4)
    assert {m.status for m in failed.values()} == {"failed"}
    assert len(run.metrics("speed")) == 2  # the earlier results stay


@pytest.mark.parametrize("policy", [StreamingLLM(4, 28), Window(24)])
def test_kv_bytes_of_a_budget_long_prompt_equal_any_longer_one(peaky_model, policy):
    from streamlib.metrics.timing import measure_kv
    from streamlib.policies import BurstEviction  # the burst cache preallocates its capacity too

    ids = torch.randint(0, 97, (1, 200))
    for p in (policy, BurstEviction(4, 40, 0.5)):
        assert measure_kv(peaky_model, p, ids[:, : p.budget])["kv_bytes_after_prompt"] == \
            measure_kv(peaky_model, p, ids)["kv_bytes_after_prompt"]


def test_memory_trace_in_chunks_equals_the_token_by_token_one(peaky_model):
    from streamlib.policies import BurstEviction

    ids = torch.randint(0, 97, (1, 160))
    for policy in (BurstEviction(4, 48, 0.7), StreamingLLM(4, 20), Dense()):
        timed = stream_trace(peaky_model, ids, policy, every=8)
        chunked = stream_trace(peaky_model, ids, policy, every=8, timed=False)
        keep = ["position", "kv_bytes", "kv_resident_bytes"]
        assert [{k: r[k] for k in keep} for r in chunked] == [{k: r[k] for k in keep} for r in timed]
        assert all(math.isnan(r["step_s"]) for r in chunked)
