"""The notebook chain: papermill parameters, the smoke profile end to end, non-profile parameters, failures, and the
Run that records measurements (the dry runs of the other profiles: tests/test_dry_runs.py)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import papermill as pm
import pytest
import torch
import yaml

from streamlib.cli.run import notebook_sources, read_notebook, run_chain
from streamlib.experiments.config import PROFILES_DIR, Config, dry_run_values
from streamlib.experiments.records import Measurement, Run, load_results, metrics_wide
from streamlib.loading.models import load_tokenizer
from streamlib.metrics.retrieval import passkey_trial
from streamlib.policies import Dense, StreamingLLM, Window
from streamlib.report import CAPTIONS, in_display_units
from streamlib.report.compare import comparison
from streamlib.report.tables import decode_modes_table, speed_table

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
FIGURES = [f for f in CAPTIONS if f != "fig14_recall"]  # the recall chat needs a chat template: not the micro model's
EXPERIMENTS = ["01_baseline", "02_streaming", "03_sweep", "04_long_stream", "05_generation", "06_retrieval"]
CHAIN = ["00_download", *EXPERIMENTS, "07_report"]


def test_notebooks_are_one_source_each():
    """The chain is the py:percent files; no notebook JSON (with outputs) is committed beside them."""
    assert [p.stem for p in notebook_sources()][: len(CHAIN)] == CHAIN
    if (ROOT / ".git").exists():
        tracked = subprocess.run(["git", "ls-files", "notebooks"], cwd=ROOT, capture_output=True, text=True).stdout
        assert ".ipynb" not in tracked


@pytest.mark.parametrize("source", notebook_sources(), ids=lambda p: p.stem)
def test_notebook_shape_and_parameters(source, tmp_path):
    nb = read_notebook(source)
    assert "parameters" in nb.cells[0].metadata.get("tags", [])
    nbformat.write(nb, tmp_path / "nb.ipynb")
    declared = [line.split("=")[0].strip() for line in nb.cells[0].source.splitlines() if "=" in line]
    assert list(pm.inspect_notebook(str(tmp_path / "nb.ipynb"))) == declared  # what papermill can set
    assert {"profile", "run_dir", "dry_run", "force"} <= set(declared)
    assert set(declared) - {"profile", "run_dir"} <= set(Config.__dataclass_fields__)
    assert nb.cells[1].cell_type == "markdown"
    code = [c.source for c in nb.cells[1:] if c.cell_type == "code"]
    assert all(len(src.splitlines()) <= 15 for src in code), "cells are short steps"
    assert not any(line.startswith("def ") for src in code for line in src.splitlines()), "no functions in notebooks"


def test_profiles_load_and_validate():
    for path in PROFILES_DIR.glob("*.yaml"):
        cfg = Config.load(path.stem)
        assert cfg.profile == path.stem
    with pytest.raises(ValueError, match="profile must be one of"):
        Config.load("nope")
    with pytest.raises(ValueError, match="window"):
        Config.load("smoke", window=0)
    with pytest.raises(ValueError, match="unknown parameter 'windw'; did you mean 'window'"):
        Config.load("smoke", windw=12)
    with pytest.raises(ValueError, match="sweep_sinks"):
        Config.load("smoke", sweep_sinks=[0, 64])
    with pytest.raises(ValueError, match="generation_top_p"):
        Config.load("smoke", generation_top_p=0)
    with pytest.raises(ValueError, match="generation_temperature"):
        Config.load("smoke", generation_temperature=-1.0)
    with pytest.raises(ValueError, match="device_map must be None or 'auto'"):
        Config.load("smoke", device_map="balanced")
    with pytest.raises(ValueError, match=r"head_map_method must be one of \['gates', 'retrieval'\]; got 'gate'"):
        Config.load("smoke", head_map_method="gate")
    with pytest.raises(ValueError, match=r"head_split_scored_seeds must be an integer in \[0, 1\]; got 2"):
        Config.load("smoke", head_split_scored_seeds=2)  # smoke asks 1 key per depth
    with pytest.raises(ValueError, match=r"task_policies must be a list of \['window', 'tova', 'h2o', 'burst'\]; got \['tova', 'H2O'\]"):
        Config.load("smoke", task_policies=["tova", "H2O"])
    assert Config.load("paper-12b").device_map == "auto"
    for name, bad in (("streameval_lines_back", []), ("streameval_lines_back", [0]), ("streameval_every", 0),
                      ("recall_turns", -1), ("recall_turns_back", []), ("recall_more_policies", 1),
                      ("long_stream_policies", ["dense"]), ("notebooks", []), ("notebooks", "04"),
                      ("quant_bits", [3]), ("quant_bits", 4), ("quant_budget", 5), ("h2o_heavy_shares", []),
                      ("h2o_heavy_shares", [1.0]), ("h2o_heavy_shares", 0.5), ("harness_seeds", -1)):
        with pytest.raises(ValueError, match=name):
            Config.load("smoke", **{name: bad})
    for outside in ("/tmp/figs", "../figures", ""):
        with pytest.raises(ValueError, match="figures_dir must be a folder inside the repository"):
            Config.load("smoke", figures_dir=outside)


def test_profiles_have_sections_and_extend_each_other(tmp_path):
    """A profile groups its parameters by notebook and may extend another; what it changes is all it writes."""
    offline, full = Config.load("offline"), Config.load("offline-full")
    assert full.profile == "offline-full" and full.model == offline.model and full.window == offline.window
    assert full.quant_bits == [8, 4, 2] and offline.quant_bits == []
    # H2O's splits: one in offline's 20 minutes, both in offline-full, each a heavy:recent split of the budget
    assert [str(p) for p in offline.h2o_policies(128)] == ["h2o:64+64"]
    assert [str(p) for p in full.h2o_policies(128)] == ["h2o:64+64", "h2o:32+96"]
    assert [str(p) for p in Config.load("smoke", h2o_heavy_shares=[0.01, 0.99]).h2o_policies(8)] == ["h2o:1+7", "h2o:7+1"]
    (tmp_path / "mine.yaml").write_text("base: smoke\nsweep:\n  sweep_more_policies: ['knorm:16+16']\n")
    mine = Config.load(str(tmp_path / "mine.yaml"))
    assert mine.profile == "mine" and mine.sweep_more_policies == ["knorm:16+16"]
    assert mine.sweep_cache_sizes == Config.load("smoke").sweep_cache_sizes
    (tmp_path / "loop.yaml").write_text("base: loop\n")
    with pytest.raises(ValueError, match="base profiles form a loop"):
        Config.load(str(tmp_path / "loop.yaml"))
    with pytest.raises(ValueError, match="sweep_more_policies entry 'dense'"):
        Config.load("smoke", sweep_more_policies=["dense"])


@pytest.mark.parametrize("profile", ["cpu", "paper", "paper-12b"])
def test_dry_run_keeps_every_parameter_and_scales_it_down(profile):
    full, dry = Config.load(profile), Config.load(profile, dry_run=True)
    assert dry.dry_run and dry.model.startswith("random:pythia") and dry.device == "cpu" and dry.device_map is None
    assert dry.tokenizer == "micro" and not dry.export_figures
    assert len(dry.datasets) == len(full.datasets) and len(dry.sweep_cache_sizes) == len(full.sweep_cache_sizes)
    assert dry.sweep_sinks == full.sweep_sinks and dry.pos_shift == full.pos_shift
    assert dry.n_sink + dry.window == (full.n_sink + full.window) // 4
    assert dry.sweep_recompute == full.sweep_recompute
    # every token count is smaller, and every cache still fills and evicts in the streams it is given
    for name in ("ppl_tokens", "sweep_tokens", "long_stream_tokens", "generation_new_tokens"):
        assert getattr(dry, name) <= getattr(full, name)
    assert max(dry.sweep_cache_sizes) < dry.sweep_tokens and dry.n_sink + dry.window < dry.ppl_tokens
    assert dry_run_values({"window": 252, "n_sink": 4})["window"] == 60


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "smoke"
    run_chain("smoke", str(run_dir), extra={"export_figures": False})
    return run_dir


def _inline_images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_smoke_chain_writes_everything(smoke_run):
    for name in EXPERIMENTS:
        executed = nbformat.read(smoke_run / f"{name}.ipynb", as_version=4)
        code = [c for c in executed.cells[1:] if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]
        assert len(code) >= 5, f"{name}: {len(code)} code cells besides the parameters"
        assert _inline_images(executed) >= 1, f"{name} shows no figure inline"
    report_nb = nbformat.read(smoke_run / "07_report.ipynb", as_version=4)
    assert _inline_images(report_nb) == len(FIGURES)
    for fig in FIGURES:
        for ext in ("pdf", "png"):
            path = smoke_run / "figures" / f"{fig}.{ext}"
            assert path.is_file() and path.stat().st_size > 1000, path
    report = (smoke_run / "report.md").read_text()
    assert report.startswith("# streamlib run") and "DRY RUN" not in report
    assert "## Eager and compiled decoding" in report
    # every table's header is read by a reader, not a program: no raw column names (lines_back, max_kv_mib)
    lines = report.splitlines()
    headers = [lines[i - 1] for i, line in enumerate(lines) if line.startswith("|---")]
    assert len(headers) >= 10 and not [h for h in headers if "_" in h]
    assert "| policy | part | 1 line (≈" in report  # StreamEval as a grid: distances across
    for fig in FIGURES:
        assert f"![{CAPTIONS[fig]}](figures/{fig}.png)" in report
    html = (smoke_run / "report.html").read_text()
    assert html.count("data:image/png;base64") >= len(FIGURES)
    # the page a lab shares: headings, tables, figures and their captions, and no code
    assert "<h2>Baseline against StreamingLLM</h2>" in html and "<table>" in html
    assert all(CAPTIONS[fig] in html for fig in FIGURES)
    assert "In [" not in html and "import " not in html and "wb." not in html
    assert "| ppl (kjv-heldout) |" in (smoke_run / "tables" / "comparison.md").read_text()
    df = load_results(smoke_run)
    ok = df[df.status == "ok"]
    assert (df.status == "failed").sum() == 0
    cfg = Config.load("smoke")
    ppl = ok[(ok.metric == "ppl") & (ok.n_tokens == cfg.ppl_tokens)]
    assert set(ppl.policy) >= {"dense", "streamingllm"}
    speed = ok[(ok.group == "speed") & (ok.metric == "ttft")]
    assert sorted(set(speed.batch_size)) == cfg.speed_batch_sizes
    assert set(ok[ok.group == "trace"].policy) == {"dense", "window", "recompute", "streamingllm", "burst"}
    # the lab's press and its tuning table, beside StreamingLLM at equal peak and equal mean memory
    burst_ppl = ok[(ok.metric == "ppl") & (ok.policy == "burst") & (ok.n_tokens == cfg.burst_tokens)]
    assert sorted(zip(burst_ppl.capacity, burst_ppl.discard_ratio)) == sorted(map(tuple, cfg.burst_configs))
    assert "## The lab's press: burst eviction beside StreamingLLM" in report
    assert "## The lab's speed metrics on our implementation" in report
    burst_trace = pd.concat([pd.read_csv(p) for p in (smoke_run / "curves").glob("burst_trace-*.csv")])
    lab = burst_trace[burst_trace.policy == "burst"].kv_resident_bytes
    assert lab.max() > lab.iloc[-1] and lab.diff().min() < 0  # a sawtooth: memory falls at a burst
    retrieval = ok[(ok.group == "retrieval") & (ok.metric == "trials")]
    assert set(retrieval.policy) == {"dense", "window", "streamingllm", "tova", "h2o"} and len(retrieval) == 7
    kept = retrieval[retrieval.policy == "streamingllm"]  # 4 sinks, and the prompt prefix kept as sinks
    prefix = passkey_trial(load_tokenizer("micro"), 64, 0.0, 0).prefix_tokens
    assert prefix > cfg.n_sink and sorted(kept.n_sink) == [cfg.n_sink, min(prefix, cfg.retrieval_cache // 2)]
    assert set(kept.n_sink + kept.window) == {cfg.retrieval_cache}  # the same KV budget
    assert "## Pass-key retrieval per policy (KV budget" in report
    streameval = ok[(ok.group == "streameval") & (ok.metric == "questions")]
    assert set(streameval.policy) == {"dense", "window", "streamingllm", "burst", "tova", "h2o"}
    assert len(streameval) == 7 and (streameval.value > 0).all()  # StreamingLLM twice: 4 sinks, the prompt kept
    assert set(streameval[streameval.policy == "tova"].tokens_read) == {cfg.streameval_scored_tokens}
    assert f"## StreamEval ({cfg.streameval_tokens} tokens" in report
    # the pass key through lm-evaluation-harness: its exact match per policy, the report's grid by distance
    harness = ok[(ok.group == "harness") & (ok.metric == "streamlib_passkey:exact_match")]
    assert set(harness.policy) == {"dense", "streamingllm", "h2o", "headsplit"} and harness.value.between(0, 1).all()
    assert "## The pass key through lm-evaluation-harness" in report
    # quantized caches: the bit widths on their own stream, each KV read from the cache, timed against Dense
    bits = ok[(ok.metric == "ppl") & (ok.n_tokens == cfg.quant_tokens)]
    assert sorted(set(bits.bits)) == sorted([16, *cfg.quant_bits]) and bits.quantize_sinks.fillna(False).sum() == 2
    caches = lambda d: set(zip(d.window, d.bits, d.quantize_sinks.fillna(False)))  # noqa: E731
    assert caches(bits) == caches(ok[ok.group == "quant_kv"]) and len(caches(bits)) == 1 + 3 * len(cfg.quant_bits)
    timed = ok[(ok.group == "quant_speed") & (ok.metric == "tpot_mean")]
    assert set(timed.bits.fillna(16)) == {16, 8, 4} and len(timed) == 2 + 2 * len(cfg.quant_bits)  # Dense, 3 + 2
    assert f"## Bits per kept token (kjv-heldout, {cfg.quant_tokens} tokens)" in report
    assert "| StreamingLLM 4+124 int8 | 8 | 128 |" in report  # equal code bytes: twice the tokens at 8 bits
    sweep_bits = ok[(ok.metric == "ppl") & (ok.n_tokens == cfg.sweep_tokens) & (ok.bits.fillna(16) < 16)]
    assert len(sweep_bits) == len(cfg.sweep_cache_sizes) * len(cfg.quant_bits)  # on the trade-off curves too
    # intervals beside every quality number, and how they were made
    assert "circular block bootstrap" in report
    comparison_md = (smoke_run / "tables" / "comparison.md").read_text()
    assert "baseline 95 % CI" in comparison_md and "change 95 % CI" in comparison_md
    ppl_row = next(line for line in comparison_md.splitlines() if line.startswith("| ppl ("))
    assert ppl_row.count("[") >= 3  # baseline, StreamingLLM and the paired change each with an interval
    assert "| perplexity | ppl 95 % CI | vs StreamingLLM 4 sinks | vs StreamingLLM 95 % CI |" in report
    assert "accuracy 95 % CI" in report and "TPOT vs Dense (IQR)" in report
    assert "change_%" not in report and "kv_mib" not in report and "tpot_ms" not in report
    streaming = burst_trace[burst_trace.policy == "streamingllm"].groupby("label")
    allocated = burst_trace[burst_trace.policy == "burst"].kv_bytes.max()
    assert streaming.kv_bytes.max().max() == allocated  # equal peak: the same slots (and sink keys) allocated
    assert streaming.kv_resident_bytes.max().min() < lab.max()  # equal mean: fewer held than the burst's peak
    swept = ok[(ok.group == "ppl") & (ok.n_tokens == cfg.sweep_tokens)]
    assert {"window", "streamingllm", "recompute", "tova", "h2o"} <= set(swept.policy)
    assert set(swept[swept.policy == "tova"].budget) == set(cfg.sweep_scored_cache_sizes)
    generated = ok[(ok.group == "generation") & (ok.metric == "tokens_generated")]
    assert set(generated.policy) == {"dense", "streamingllm"} and set(generated.value) == {cfg.generation_new_tokens}
    final_kv = ok[(ok.group == "generation") & (ok.metric == "final_kv_bytes")].set_index("policy").value
    assert final_kv["dense"] > 10 * final_kv["streamingllm"]  # Dense grew with the stream, StreamingLLM did not


def test_rerun_skips_what_is_recorded(smoke_run):
    before = len(load_results(smoke_run))
    run_chain("smoke", str(smoke_run), only=["02", "05"], extra={"export_figures": False})
    assert len(load_results(smoke_run)) == before
    executed = nbformat.read(smoke_run / "05_generation.ipynb", as_version=4)
    assert _inline_images(executed) >= 1  # figures are drawn from what was read back


def _is_timing(row: dict) -> bool:
    """Rows that measure the clock or the process's memory: they differ between any two runs."""
    return row.get("unit") in ("s", "tok/s") or row["metric"].startswith(
        ("ttft", "tpot", "decode_throughput", "e2e_time", "gen_peak_rss"))


def test_two_processes_record_what_one_does(smoke_run, tmp_path):
    """torchrun with two CPU processes (gloo) over the smoke chain's first notebooks: the same rows, each once, as the
    one-process run of the same notebooks; every non-timing value equal."""
    run_dir = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "streamlib",
           "run", "--profile", "smoke", "--run-dir", str(run_dir), "--only", "00,01,02"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = load_results(run_dir)
    two = {(r["key"], r["metric"]): r for r in rows.to_dict("records")}
    assert len(rows) == len(two) and set(rows.process) == {0, 1}  # each row once; both processes measured
    first = {"00_download", "01_baseline", "02_streaming"}
    one = {(r["key"], r["metric"]): r for r in load_results(smoke_run).to_dict("records") if r["notebook"] in first}
    assert len(one) > 100 and set(one) == set(two) and set(rows.notebook) <= first
    for k, row in one.items():
        if not _is_timing(row):
            assert two[k]["value"] == row["value"], k
    assert (run_dir / "02_streaming.ipynb").exists() and (run_dir / "processes" / "1" / "02_streaming.ipynb").exists()
    assert any((run_dir / "figures").glob("*.png")) and not (run_dir / "processes" / "1" / "figures").exists()


def test_notebook_with_parameters_outside_any_profile(tmp_path):
    out = tmp_path / "02.ipynb"
    pm.execute_notebook(read_notebook(NB_DIR / "02_streaming.py"), str(out), kernel_name="python3", progress_bar=False,
                        parameters={"profile": "smoke", "run_dir": str(tmp_path), "n_sink": 2, "window": 50,
                                    "pos_shift": False}, cwd=str(NB_DIR))
    df = load_results(tmp_path)
    ok = df[df.status == "ok"]
    streaming = ok[ok.policy == "streamingllm"]
    assert set(zip(streaming.n_sink, streaming.window, streaming.pos_shift)) == {(2, 50, False)}
    cfg = Config.load("smoke")
    assert set(streaming[streaming.metric == "ppl"].n_tokens) == {cfg.ppl_tokens}
    speed = streaming[streaming.group == "speed"]
    assert set(speed[speed.metric == "tpot_mean"].batch_size) == set(cfg.speed_batch_sizes)
    # eager and compiled decoding side by side, both timed
    modes = streaming[(streaming.group == "decode_modes") & (streaming.metric == "tpot_mean")]
    assert sorted(modes.compiled) == [False, True] and (modes.value > 0).all()
    assert json.loads((tmp_path / "config.json").read_text())["window"] == 50


def test_failing_notebook_is_named_with_its_cell(tmp_path):
    profile = yaml.safe_load((PROFILES_DIR / "smoke.yaml").read_text())
    profile["datasets"] = ["no-such-corpus"]
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(profile))
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "streamlib", "run", "--profile", str(path), "--run-dir", str(run_dir)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1
    assert "FAILED: notebook 00_download, cell" in proc.stderr
    assert "corpus must be one of" in proc.stderr
    assert not (run_dir / "01_baseline.ipynb").exists()  # stopped at the first failure


MY_NOTEBOOK = """# %% tags=["parameters"]
profile = "smoke"
run_dir = "runs/notebooks"
dry_run = False
force = False

# %% [markdown]
# # 07 · Mine

# %%
from streamlib import workbook as wb

# %%
cfg, run = wb.open_run(profile, run_dir=run_dir, dry_run=dry_run, force=force)
(run.path / "mine.txt").write_text(str(6 * 7))
"""


def test_a_notebook_added_runs_in_the_chain_and_its_edits_count(tmp_path):
    """A user's notebook joins the chain in the order of its number; editing its source changes the next run."""
    notebooks, run_dir = tmp_path / "notebooks", tmp_path / "run"
    notebooks.mkdir()
    shutil.copy(NB_DIR / "00_download.py", notebooks)
    (notebooks / "07_mine.py").write_text(MY_NOTEBOOK)
    (notebooks / "notes.py").write_text("raise SystemExit('not a notebook of the chain')\n")
    run_chain("smoke", str(run_dir), notebooks_dir=notebooks)
    assert sorted(p.name for p in run_dir.glob("*.ipynb")) == ["00_download.ipynb", "07_mine.ipynb"]
    assert (run_dir / "mine.txt").read_text() == "42"
    (notebooks / "07_mine.py").write_text(MY_NOTEBOOK.replace("6 * 7", "6 * 9"))
    run_chain("smoke", str(run_dir), only=["07"], notebooks_dir=notebooks)
    assert (run_dir / "mine.txt").read_text() == "54"


# -------------------------------------------------------------------------------------------- Run.measure --


def _curve_measurement(calls: list):
    calls.append(1)
    return Measurement(rows=[("ppl", 12.5, ""), ("tpot_mean", 0.004, "s")],
                       curve=pd.DataFrame({"position": [1, 2, 3], "nll": [3.0, 2.5, 2.0]}))


def test_run_measures_once_and_reads_back(tmp_path):
    run = Run(Config.load("smoke", run_dir=str(tmp_path)))
    calls = []
    policy = StreamingLLM(4, 60)
    first = run.measure("ppl", policy, lambda: _curve_measurement(calls), dataset="x", n_tokens=4)
    again = run.measure("ppl", policy, lambda: _curve_measurement(calls), dataset="x", n_tokens=4)
    assert len(calls) == 1 and (first.status, again.status) == ("ok", "skipped")
    assert again["ppl"] == 12.5 and again["tpot_mean"] == 0.004
    pd.testing.assert_frame_equal(first.curve, again.curve, check_dtype=False)
    assert list(again.curve.label.unique()) == ["StreamingLLM 4+60"] and set(again.curve.dataset) == {"x"}
    run.measure("ppl", Window(64), lambda: _curve_measurement(calls), dataset="x", n_tokens=4)
    assert len(calls) == 2 and len(run.curves("ppl")) == 6
    wide = run.metrics("ppl")
    assert sorted(wide.label) == ["StreamingLLM 4+60", "Window 64"] and list(wide.ppl) == [12.5, 12.5]
    forced = Run(Config.load("smoke", run_dir=str(tmp_path), force=True))
    forced.measure("ppl", policy, lambda: _curve_measurement(calls), dataset="x", n_tokens=4)
    assert len(calls) == 3


def test_failed_measurement_is_recorded_and_keeps_earlier_results(tmp_path):
    run = Run(Config.load("smoke", run_dir=str(tmp_path)))
    run.measure("ppl", Dense(), lambda: _curve_measurement([]), dataset="x", n_tokens=4)

    def boom():
        raise ValueError("window must be an integer >= 1; got 0")

    failed = run.measure("ppl", StreamingLLM(4, 60), boom, dataset="x", n_tokens=4)
    assert failed.status == "failed" and "window must be" in failed.error
    df = run.records()
    assert set(df.status) == {"ok", "failed"} and len(run.metrics("ppl")) == 1
    retried = run.measure("ppl", StreamingLLM(4, 60), lambda: _curve_measurement([]), dataset="x", n_tokens=4)
    assert retried.status == "ok"  # a failure is not "recorded": the next run measures it


def test_display_units_and_wide_metrics():
    table = pd.DataFrame({"metric": ["ttft", "kv", "big", "ppl"], "unit": ["s", "bytes", "bytes", ""],
                          "baseline": [0.0305, 2**20 * 4, 2**31, 9.79], "streamingllm": [0.0651, 2**20, 2**30, 10.1]})
    shown = in_display_units(table)
    assert list(shown.unit) == ["ms", "MiB", "GiB", ""]
    assert shown.baseline.tolist() == pytest.approx([30.5, 4.0, 2.0, 9.79])
    rows = pd.DataFrame([
        {"key": "a", "status": "ok", "group": "speed", "metric": "ttft", "value": 0.1, "policy": "dense",
         "batch_size": 1.0, "timestamp": "1"},
        {"key": "a", "status": "ok", "group": "speed", "metric": "tpot_mean", "value": 0.01, "policy": "dense",
         "batch_size": 1.0, "timestamp": "1"},
        {"key": "b", "status": "ok", "group": "speed", "metric": "ttft", "value": 0.2, "policy": "streamingllm",
         "n_sink": 4.0, "window": 60.0, "pos_shift": True, "batch_size": 1.0, "timestamp": "1"},
        {"key": "c", "status": "failed", "group": "speed", "metric": "speed", "value": None, "policy": "window",
         "window": 8.0, "timestamp": "1"},
    ])
    wide = metrics_wide(rows, "speed").set_index("label")
    assert sorted(wide.index) == ["Dense", "StreamingLLM 4+60"]
    assert wide.loc["Dense", "tpot_mean"] == 0.01 and pd.isna(wide.loc["StreamingLLM 4+60", "tpot_mean"])
    assert str(wide["window"].dtype) == "Int64" and wide.loc["StreamingLLM 4+60", "window"] == 60


def test_a_field_of_one_group_may_be_a_metric_of_another():
    # 06: head_scores is described by ``trials`` (its prompts); beyond_window measures ``trials``
    rows = pd.DataFrame([
        {"key": "h", "status": "ok", "group": "head_scores", "metric": "head_score_max", "value": 0.5,
         "policy": "dense", "spec": "dense", "trials": 6.0, "timestamp": "1"},
        {"key": "b", "status": "ok", "group": "beyond_window", "metric": "trials", "value": 16.0,
         "policy": "dense", "spec": "dense", "timestamp": "2"},
    ])
    assert metrics_wide(rows, "beyond_window").loc[0, "trials"] == 16.0
    assert metrics_wide(rows, "head_scores").loc[0, "trials"] == 6.0


def test_run_context_is_in_every_record(tmp_path):
    run = Run(Config.load("smoke", run_dir=str(tmp_path)))
    run.measure("x", Dense(), lambda: Measurement(rows=[("m", 1.0, "")]))
    row = run.records().iloc[0]
    assert (row["model"], row["device"], row["dtype"]) == ("micro", "cpu", "float32")
    assert row.torch == torch.__version__


def test_report_tables_compare_like_with_like(tmp_path):
    """Records at two token counts and two prompt lengths in one run: every report table uses the run's setting."""
    cfg = Config.load("smoke", run_dir=str(tmp_path))
    run = Run(cfg)
    streaming = cfg.streaming_policy()

    def rows(**metrics):
        return lambda: Measurement(rows=[(m, v, "s" if m != "ppl" else "") for m, v in metrics.items()])

    run.measure("ppl", Dense(), rows(ppl=79.19), dataset="kjv-heldout", n_tokens=cfg.ppl_tokens)
    run.measure("ppl", streaming, rows(ppl=63.33), dataset="kjv-heldout", n_tokens=cfg.ppl_tokens)
    run.measure("ppl", streaming, rows(ppl=65.71), dataset="kjv-heldout", n_tokens=cfg.sweep_tokens)
    speed = dict(ttft=0.1, tpot_mean=0.01, decode_throughput=100.0, kv_bytes_after_prompt=1e6, gen_peak_rss_mem=1e8)
    for policy in (Dense(), streaming):
        for prompt in (cfg.speed_prompt_tokens, 2 * cfg.speed_prompt_tokens):  # a re-run with another prompt
            scale = prompt / cfg.speed_prompt_tokens
            run.measure("speed", policy, rows(**{k: v * scale for k, v in speed.items()}), batch_size=1,
                        prompt_tokens=prompt, new_tokens=cfg.speed_new_tokens)
            run.measure("decode_modes", policy, rows(ttft=0.1 * scale, tpot_mean=0.01 * scale), compiled=False,
                        prompt_tokens=prompt, new_tokens=cfg.speed_new_tokens)
    table = comparison(run).set_index("metric")
    ppl = table.loc["ppl (kjv-heldout)"]
    assert (ppl["baseline"], ppl[streaming.label()]) == (79.19, 63.33)
    assert ppl["measured on"] == f"kjv-heldout, {cfg.ppl_tokens} tokens"
    assert table.loc["TTFT", "baseline"] == pytest.approx(100.0)  # ms, at the run's prompt length
    assert table.loc["TTFT", "measured on"] == f"batch 1, prompt {cfg.speed_prompt_tokens}, {cfg.speed_new_tokens} new"
    shown = speed_table(run)
    assert len(shown) == 2 and shown.ttft_ms.tolist() == pytest.approx([100.0, 100.0])
    modes = decode_modes_table(run)
    assert len(modes) == 2 and modes.tpot_ms.tolist() == pytest.approx([10.0, 10.0])


def test_latency_table_shows_ttft_only_for_the_prompt_dense_was_given(tmp_path):
    """03 times TOVA after a prompt of its budget (it reads a prompt token by token) beside Dense after the run's
    prompt: each record states its prompt, and the table does not put TOVA's TTFT under Dense's prompt."""
    from streamlib.policies import TOVA
    from streamlib.report.tables import latency_table

    cfg = Config.load("smoke", run_dir=str(tmp_path))
    run = Run(cfg)
    tova = TOVA(cfg.speed_prompt_tokens // 4)
    timed = [Dense(), cfg.streaming_policy(), tova]
    prompts = {p: p.budget if p.token_mode else cfg.speed_prompt_tokens for p in timed}

    def timing(p):
        base = {"ttft": 0.002 * prompts[p], "tpot_mean": 0.01, "tpot_vs_baseline": 1.0 if p == Dense() else 0.9}
        return Measurement(rows=[(m, v, "") for k, v in base.items()
                                 for m, v in ((k, v), (f"{k}_q1", v), (f"{k}_q3", v))])

    run.measure_all("sweep_speed", timed, lambda: {p: timing(p) for p in timed},
                    each={p: {"prompt_tokens": prompts[p]} for p in timed}, new_tokens=16, rounds=3)
    recorded = run.metrics("sweep_speed").set_index("label")["prompt_tokens"]
    assert recorded[tova.label()] == tova.budget and recorded["Dense"] == cfg.speed_prompt_tokens
    table = latency_table(run, "sweep_speed", new_tokens=16).set_index("label")
    assert table.loc["Dense", "ttft_ms"] == pytest.approx(2.0 * cfg.speed_prompt_tokens)
    assert pd.isna(table.loc[tova.label(), "ttft_ms"]) and table.loc[tova.label(), "tpot_ms"] == pytest.approx(10.0)
    assert table.loc[tova.label(), "TTFT IQR (ms)"] == f"(after a {tova.budget}-token prompt)"


def test_retrieval_tables_keep_each_policys_latest_trials(tmp_path):
    """A policy measured twice in one run (its record key changed between the two) counts its latest trials only:
    the tables never pool two measurements of one policy into twice the trials."""
    from streamlib.report.tasks import retrieval_summary, retrieval_trials

    cfg = Config.load("smoke", run_dir=str(tmp_path))
    run = Run(cfg)

    def trials(correct: bool):
        curve = pd.DataFrame([{"seed": s, "depth": 0.0, "prompt_tokens": 300, "distance": 6, "pass_key": "12345",
                               "answer": "", "found": None, "correct": correct, "key_cached": 1.0} for s in range(3)])
        return lambda: Measurement(rows=[("trials", 3, "")], curve=curve)

    setting = dict(new_tokens=cfg.retrieval_new_tokens, seeds=cfg.retrieval_seeds)
    run.measure("retrieval", Dense(), trials(False), attempt=1, **setting)
    run.measure("retrieval", Dense(), trials(True), attempt=2, **setting)  # another key: measured again
    assert len(run.curves("retrieval")) == 6
    assert len(retrieval_trials(run)) == 3 and retrieval_trials(run).correct.all()
    summary = retrieval_summary(run)
    assert summary.trials.tolist() == [3] and summary.correct.tolist() == [3]
