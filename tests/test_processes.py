"""Several processes sharing one run (streamlib.experiments.processes): each measurement is made by one process,
every process reads every result, the records hold each row once, and a process that will not record what another
waits for is named."""

import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from streamlib.experiments.config import Config
from streamlib.experiments.processes import ENV, NOTEBOOK_ENV, Heartbeat, Share, beat_path, owner_trouble
from streamlib.experiments.records import Run
from streamlib.experiments.readers import read_rows
from streamlib.loading.data import repo_root
from streamlib.metrics.measurement import Measurement
from streamlib.policies import Dense, StreamingLLM

# One process's part: six measurements, then one measurement of two policies together; prints what it computed
# and what it read.
SCRIPT = """
import json, sys
import pandas as pd
from streamlib.experiments.config import Config
from streamlib.experiments.records import Run
from streamlib.metrics.measurement import Measurement
from streamlib.policies import Dense, StreamingLLM

run = Run(Config.load("smoke", run_dir=sys.argv[1]))
computed = []

def make(n):
    def compute():
        computed.append(n)
        return Measurement(rows=[("ppl", 10.0 + n, "")],
                           curve=pd.DataFrame({"position": [1, 2], "nll": [float(n), n + 0.5]}))
    return compute

results = [run.measure("ppl", StreamingLLM(4, 60), make(n), dataset="x", n_tokens=n) for n in range(6)]
policies = [Dense(), StreamingLLM(4, 60)]

def both():
    computed.append("both")
    return {p: Measurement(rows=[("acc", 0.5 if p == policies[0] else 0.25, "")]) for p in policies}

together = run.measure_all("acc", policies, both, dataset="x")
print(json.dumps({"computed": computed, "ppl": [r["ppl"] for r in results],
                  "curves": [r.curve.nll.tolist() for r in results],
                  "acc": [together[p]["acc"] for p in policies], "curve_rows": len(run.curves("ppl")),
                  "records": len(run.records())}))
"""


def _launch(run_dir, share: Share | None):
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env["PYTHONPATH"] = str(repo_root()) + os.pathsep + env.get("PYTHONPATH", "")
    if share:
        env[ENV] = share.encode()
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(run_dir)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc) -> dict:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_two_processes_measure_each_configuration_once_and_read_all(tmp_path):
    procs = [_launch(tmp_path, Share(i, 2, i, "launch1")) for i in range(2)]
    first, second = (_finish(p) for p in procs)
    # the n-th call belongs to process n % 2: the six ppl measurements alternate, measure_all is call 6
    assert first["computed"] == [0, 2, 4, "both"] and second["computed"] == [1, 3, 5]
    for seen in (first, second):
        assert seen["ppl"] == [10.0 + n for n in range(6)]
        assert seen["curves"] == [[float(n), n + 0.5] for n in range(6)]
        assert seen["acc"] == [0.5, 0.25] and seen["curve_rows"] == 12 and seen["records"] == 8
    rows = read_rows(tmp_path / "results.jsonl")
    assert len(rows) == 8 and len({(r["key"], r["metric"]) for r in rows}) == 8
    assert sorted(r["process"] for r in rows) == [0, 0, 0, 0, 0, 1, 1, 1] and {r["session"] for r in rows} == {"launch1"}
    # a later launch with one process reads everything back
    again = _finish(_launch(tmp_path, None))
    assert again["computed"] == [] and again["ppl"] == first["ppl"] and len(read_rows(tmp_path / "results.jsonl")) == 8


def _curve(n: float) -> Measurement:
    return Measurement(rows=[("ppl", n, "")], curve=pd.DataFrame({"position": [1], "nll": [n]}))


@pytest.mark.parametrize("beat, why", [({"done": True, "notebook": "02_streaming"}, "finished its chain"),
                                      ({"done": False, "notebook": "02_streaming", "age": 600}, "stopped"),
                                      ({"done": False, "notebook": "03_sweep"}, "went on to 03_sweep")])
def test_a_process_that_will_not_record_is_named_and_a_rerun_resumes(tmp_path, monkeypatch, beat, why):
    monkeypatch.setenv(ENV, Share(0, 2, 0, "launch1").encode())
    monkeypatch.setenv(NOTEBOOK_ENV, "02_streaming")
    path = beat_path(tmp_path, 1)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"notebook": beat["notebook"], "done": beat["done"],
                                "time": time.time() - beat.get("age", 0)}))
    run = Run(Config.load("smoke", run_dir=str(tmp_path)))
    mine = run.measure("ppl", Dense(), lambda: _curve(1.0), dataset="x")
    theirs = run.measure("ppl", StreamingLLM(4, 60), lambda: _curve(2.0), dataset="x")
    assert mine.status == "ok" and theirs.owner == 1
    with pytest.raises(RuntimeError, match=f"StreamingLLM 4\\+60 \\(process 1's to measure\\): process 1 {why}"):
        run.settle(poll=0.01)
    # the same command again, now one process: the first result is read back, the missing one measured
    monkeypatch.delenv(ENV)
    calls = []
    resumed = Run(Config.load("smoke", run_dir=str(tmp_path)))
    again = resumed.measure("ppl", Dense(), lambda: calls.append(1) or _curve(1.0), dataset="x")
    other = resumed.measure("ppl", StreamingLLM(4, 60), lambda: calls.append(2) or _curve(2.0), dataset="x")
    assert (again.status, other.status, calls) == ("skipped", "ok", [2]) and other["ppl"] == 2.0


def test_a_waiting_process_sees_a_live_owner_as_behind(tmp_path, monkeypatch):
    monkeypatch.setenv(NOTEBOOK_ENV, "02_streaming")
    beat = Heartbeat(tmp_path, Share(1, 2, 1, "launch1"))
    beat.at("01_baseline")
    assert owner_trouble(tmp_path, 1) == "" and owner_trouble(tmp_path, 0) == ""  # behind; not started
    beat.at("02_streaming")
    assert owner_trouble(tmp_path, 1) == ""
    beat.finish()
    assert "finished its chain" in owner_trouble(tmp_path, 1)


def test_only_the_first_process_writes_what_a_run_has_one_of(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, Share(1, 2, 1, "launch1").encode())
    run = Run(Config.load("smoke", run_dir=str(tmp_path)))
    run.table(pd.DataFrame({"a": [1]}), "t")
    assert not (tmp_path / "config.json").exists() and not (tmp_path / "tables").exists()
    monkeypatch.setenv(ENV, Share(0, 2, 0, "launch1").encode())
    run = Run(Config.load("smoke", run_dir=str(tmp_path)))
    run.table(pd.DataFrame({"a": [1]}), "t")
    assert (tmp_path / "config.json").exists() and (tmp_path / "tables" / "t.md").exists()


def test_a_harness_measurement_returns_its_results_on_any_rank(tmp_path, monkeypatch):
    """lm-eval returns results on local rank 0 alone; a measurement owned by process 1 of a launch must get its own."""
    pytest.importorskip("lm_eval")
    from streamlib.loading.models import load_model, load_tokenizer
    from streamlib.metrics.harness import measure_harness
    from streamlib.metrics.harness_tasks import PASSKEY, task_configs

    tokenizer, model = load_tokenizer("micro"), load_model("micro")
    tasks = [t for t in task_configs(tmp_path, tokenizer, passkey_tokens=(128,), passkey_depths=(0.5,),
                                     passkey_seeds=1) if t["task"] == PASSKEY]
    for name, value in (("LOCAL_RANK", "1"), ("RANK", "1"), ("WORLD_SIZE", "2")):
        monkeypatch.setenv(name, value)
    measured = measure_harness(model, tokenizer, StreamingLLM(4, 60), tasks)
    assert [r[0] for r in measured.rows] == ["streamlib_passkey:exact_match"] and len(measured.curve) == 1
    assert (os.environ["LOCAL_RANK"], os.environ["WORLD_SIZE"]) == ("1", "2")  # the launcher's ranks handed back
