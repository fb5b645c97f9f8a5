"""bench/gpu_check.sh --smoke: the prepared GPU check runs on the CPU with tiny shapes, so it cannot rot between the
rare sessions that have a GPU. Its numbers here are CPU numbers; the test checks what it writes and that its
agreement checks agree."""

import json
import subprocess
from pathlib import Path

import pytest
import torch

from streamlib.policies import GrowingWindow, HeadSplit, LayerBudgets, registered

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert results["complete"]
    rows = {(r["policy"], r["compiled"]): r for r in results["speed"]}
    assert set(rows) == {("Dense", False), ("Dense", True), ("StreamingLLM 4+12", False), ("StreamingLLM 4+12", True),
                         ("StreamingLLM 4+28", False), ("StreamingLLM 4+28", True),
                         ("StreamingLLM 4+28 int4", False), (HeadSplit(4, 12, "every4").label(), False),
                         (LayerBudgets.pyramid(4, 12, 6).label(), False),
                         (GrowingWindow(4, 0.25, 12, 28).label(), False)}
    # only Dense and full-precision StreamingLLM compile; the quantized and adaptive caches run eager
    for row in rows.values():
        assert row["ttft_ms"] > 0 and row["tpot_ms"] > 0 and row["tpot_over_floor"] > 0 and row["peak_mem_gib"] > 0
    # the bounded caches hold less than Dense after a 64-token prompt
    assert rows[("StreamingLLM 4+12", False)]["kv_mib"] < rows[("Dense", False)]["kv_mib"]
    assert results["chunked_vs_token"]["max_abs_nll_diff"] < 1e-4
    micro = results["micro"]
    assert micro["max_abs_nll_diff_vs_fp32_cpu"] == 0.0  # on the CPU both are fp32
    assert micro["quantized_chunked_vs_token"]["max_abs_nll_diff"] < 1e-4
    assert "StreamingLLM 4+124 int4" in (tmp_path / "gpu_check.md").read_text()
    assert micro["chunked_vs_token"]["max_abs_nll_diff"] < 1e-4
    exact = results["exact"]
    assert len(exact) == 3 * len([p for cls in registered() for p in cls.examples(12)])
    assert all(r["max_abs_nll_diff"] < 1e-4 for r in exact), [r for r in exact if not r["max_abs_nll_diff"] < 1e-4]
    assert "Exact on" in (tmp_path / "gpu_check.md").read_text()
    assert micro["compiled_vs_eager"]["same_greedy_tokens"] == micro["compiled_vs_eager"]["steps"]
    assert micro["compiled_vs_eager"]["max_abs_logit_diff"] < 1e-4
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| StreamingLLM 4+28 | compiled |" in table and "agreement check" in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the full check would run")
def test_gpu_check_without_a_gpu_says_so(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "no CUDA device is visible; run with --smoke" in proc.stderr
