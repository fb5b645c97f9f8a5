"""The notebook chain: papermill parameters, the smoke profile end to end, non-profile parameters, failures."""

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill as pm
import pytest
import yaml

from streamlib.results import load_results
from streamlib.runner import run_chain
from streamlib.workbook import NOTEBOOKS, PROFILES_DIR, Config

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
FIGURES = ["fig1_nll_vs_position", "fig2_memory_vs_position", "fig3_latency_vs_position", "fig4_tradeoff",
           "fig5_ppl_vs_sinks", "fig6_speed", "fig7_attention_sinks"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_shape_and_parameters(name):
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    assert "parameters" in nb.cells[0].metadata.get("tags", [])
    assert all(c.get("outputs", []) == [] and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    out = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook", str(NB_DIR / f"{name}.ipynb")],
                         capture_output=True, text=True, check=True).stdout
    declared = [line.split("=")[0].strip() for line in nb.cells[0].source.splitlines() if "=" in line]
    assert {"profile", "run_dir", "force"} <= set(declared)
    for param in declared:
        assert param in out, f"{param} missing from papermill --help-notebook"
    fields = set(Config.__dataclass_fields__)
    assert set(declared) - {"profile", "run_dir"} <= fields


def test_profiles_load_and_validate():
    for path in PROFILES_DIR.glob("*.yaml"):
        cfg = Config.load(path.stem)
        assert cfg.profile == path.stem
    with pytest.raises(ValueError, match="profile must be one of"):
        Config.load("nope")
    with pytest.raises(ValueError, match="window"):
        Config.load("smoke", window=0)
    with pytest.raises(ValueError, match="unknown parameters"):
        Config.load("smoke", windw=12)
    with pytest.raises(ValueError, match="sweep_sinks"):
        Config.load("smoke", sweep_sinks=[0, 64])


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "smoke"
    run_chain("smoke", str(run_dir), extra={"export_figures": False})
    return run_dir


def test_smoke_chain_writes_everything(smoke_run):
    for name in NOTEBOOKS:
        executed = nbformat.read(smoke_run / f"{name}.ipynb", as_version=4)
        assert any(c.get("outputs") for c in executed.cells if c.cell_type == "code")
    for fig in FIGURES:
        for ext in ("pdf", "png"):
            path = smoke_run / "figures" / f"{fig}.{ext}"
            assert path.is_file() and path.stat().st_size > 1000, path
    assert (smoke_run / "report.md").read_text().startswith("# streamlib run")
    assert "| ppl (kjv-heldout) |" in (smoke_run / "tables" / "comparison.md").read_text()
    df = load_results(smoke_run)
    ok = df[df.status == "ok"]
    assert (df.status == "failed").sum() == 0
    cfg = Config.load("smoke")
    ppl = ok[(ok.metric == "ppl") & (ok.n_tokens == cfg.ppl_tokens)]
    assert set(ppl.policy) >= {"dense", "streamingllm"}
    speed = ok[(ok.group == "speed") & (ok.metric == "ttft")]
    assert sorted(set(speed.batch_size)) == cfg.speed_batch_sizes
    assert set(ok[ok.group == "trace"].policy) == {"dense", "window", "recompute", "streamingllm"}


def test_rerun_skips_what_is_recorded(smoke_run):
    before = len(load_results(smoke_run))
    run_chain("smoke", str(smoke_run), only=["02"], extra={"export_figures": False})
    assert len(load_results(smoke_run)) == before


def test_notebook_with_parameters_outside_any_profile(tmp_path):
    out = tmp_path / "02.ipynb"
    pm.execute_notebook(str(NB_DIR / "02_streaming.ipynb"), str(out), kernel_name="python3", progress_bar=False,
                        parameters={"profile": "smoke", "run_dir": str(tmp_path), "n_sink": 2, "window": 50,
                                    "pos_shift": False}, cwd=str(NB_DIR))
    df = load_results(tmp_path)
    ok = df[df.status == "ok"]
    streaming = ok[ok.policy == "streamingllm"]
    assert set(zip(streaming.n_sink, streaming.window, streaming.pos_shift)) == {(2, 50, False)}
    cfg = Config.load("smoke")
    assert set(streaming[streaming.metric == "ppl"].n_tokens) == {cfg.ppl_tokens}
    assert set(streaming[streaming.metric == "tpot_mean"].batch_size) == set(cfg.speed_batch_sizes)
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
