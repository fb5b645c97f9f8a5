"""Dry runs: the cpu profile's whole chain offline on random weights, and the million-token profile's own notebooks,
each as a user runs it (``python -m streamlib run --profile P --dry-run``); the paper profiles' are in
tests/test_dry_runs_paper.py. Files apart from tests/test_workbook.py so that ``make test``'s two processes run the
chains side by side."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from conftest import check_dry_run
from streamlib.experiments.config import PROFILES_DIR, Config
from streamlib.experiments.records import load_results

ROOT = Path(__file__).resolve().parents[1]


def test_the_long_profile_runs_its_own_notebooks(tmp_path):
    """A dry run of the million-token profile: only the notebooks it names, StreamingLLM alone reading the whole
    stream, and the KV bytes recorded after every forward."""
    profile = yaml.safe_load((PROFILES_DIR / "long.yaml").read_text())
    profile["max_dense_tokens"] = 1024  # below the dry run's 2,048-token stream, so reading it all shows
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(profile))
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "streamlib", "run", "--profile", str(path), "--dry-run",
                           "--run-dir", str(run_dir)], capture_output=True, text=True, cwd=ROOT,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.stem for p in run_dir.glob("*.ipynb")) == ["00_download", "04_long_stream", "07_report"]
    cfg = Config.load(str(path), dry_run=True)
    assert cfg.max_dense_tokens == 1024 < cfg.long_stream_tokens
    ok = load_results(run_dir)
    read = ok[(ok.group == "long_nll") & (ok.metric == "ppl")].set_index("policy").n_tokens
    assert read["streamingllm"] == cfg.long_stream_tokens  # the whole stream
    assert read["window"] == read["burst"] == read["dense"] == cfg.max_dense_tokens  # stopped with Dense
    curves = pd.concat([pd.read_csv(p) for p in (run_dir / "curves").glob("long_nll-*.csv")])
    held = curves.dropna(subset=["kv_bytes"])
    streaming = held[held.policy == "streamingllm"].kv_bytes
    assert len(streaming) >= 3 and streaming.nunique() == 1  # flat after every forward
    assert held[held.policy == "dense"].kv_bytes.is_monotonic_increasing
    assert (run_dir / "figures" / "fig12_kv_whole_stream.png").is_file()


def test_dry_run_of_the_cpu_profile_runs_offline(tmp_path):
    check_dry_run("cpu", tmp_path)
