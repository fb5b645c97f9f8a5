"""Run the notebook chain with papermill into a run directory: executed notebooks, records, curves, figures."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from .data import hub_reachable, repo_root
from .models import is_cached
from .workbook import NOTEBOOKS, Config

PROFILE_MODELS = {"paper": "EleutherAI/pythia-2.8b", "cpu": "EleutherAI/pythia-160m"}


def choose_profile() -> tuple[str, str]:
    """(profile, why): CUDA and the Hub (or cached weights) -> paper; the Hub but no CUDA -> cpu; else smoke."""
    cuda = torch.cuda.is_available()
    if cuda and (is_cached(PROFILE_MODELS["paper"]) or hub_reachable()):
        return "paper", "a CUDA GPU and Pythia-2.8b (cached or on the Hub)"
    if is_cached(PROFILE_MODELS["cpu"]) or hub_reachable():
        return "cpu", "no CUDA GPU; Pythia-160m cached or on the Hub"
    return "smoke", "no CUDA GPU and no Hub: the embedded micro model"


def run_chain(profile: str = "auto", run_dir: str | None = None, only: list[str] | None = None,
              force: bool = False, extra: dict | None = None) -> Path:
    """Execute the notebooks in order; stop at the first failure, naming the notebook and the cell."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    if profile == "auto":
        profile, why = choose_profile()
        print(f"profile: {profile} ({why})")
    cfg = Config.load(profile, **(extra or {}))  # validates the profile before any notebook starts
    run_path = Path(run_dir) if run_dir else repo_root() / "runs" / f"{profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_path = run_path.resolve()
    run_path.mkdir(parents=True, exist_ok=True)
    names = NOTEBOOKS if not only else [n for n in NOTEBOOKS if any(n.startswith(o) for o in only)]
    if only and not names:
        raise ValueError(f"only must name notebooks among {NOTEBOOKS}; got {only}")
    print(f"run directory: {run_path}\nmodel: {cfg.model} on {cfg.device}")
    for i, name in enumerate(names, 1):
        src = repo_root() / "notebooks" / f"{name}.ipynb"
        dst = run_path / f"{name}.ipynb"
        print(f"[{i}/{len(names)}] {name}", flush=True)
        started = time.time()
        try:
            pm.execute_notebook(str(src), str(dst), parameters={"profile": profile, "run_dir": str(run_path),
                                                                "force": force, **(extra or {})},
                                kernel_name="python3", progress_bar=sys.stderr.isatty(), cwd=str(src.parent))
        except PapermillExecutionError as err:
            print(f"FAILED: notebook {name}, cell {err.cell_index} (execution count {err.exec_count}): "
                  f"{err.ename}: {err.evalue}\n  executed notebook with the traceback: {dst}", file=sys.stderr)
            raise SystemExit(1) from None
        print(f"      done in {time.time() - started:.0f} s", flush=True)
    print(f"finished: {run_path}/report.md, figures in {run_path}/figures")
    return run_path
