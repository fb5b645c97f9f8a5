"""A run directory and its records: one flat row per measured metric in ``results.jsonl``, a curve per measurement
in ``curves/``, the run's figures and tables, and the readers that turn the rows back into frames.

A measurement's rows are one locked ``write`` to a file opened for appending, synced, after its curve: a process
killed mid-run leaves every finished measurement whole (at worst a torn last line, which the reader skips). A
configuration (``key``) that already has ``ok`` rows is read back instead of measured again unless the run is forced;
a failure, CUDA out-of-memory included, becomes a ``failed`` row and the run goes on. Several processes may share a
run (:mod:`streamlib.experiments.processes`): each measures its share and reads the others' rows.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from ..core.format import to_latex, to_markdown
from ..loading.data import repo_root
from ..metrics.measurement import Measurement
from .processes import NOTEBOOK_ENV, Elsewhere, Share, owner_trouble
from .readers import COLUMNS, RESULTS_FILE, load_results, metrics_wide, read_appended, read_rows  # noqa: F401  (the readers, where a run is)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo_root(), capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def environment() -> dict:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "git_commit": git_commit(),
            "host": platform.node()}


def config_key(**fields) -> str:
    """A short stable hash of a configuration: the same fields in any order give the same key."""
    blob = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


class Run:
    """One run directory: its records (``results.jsonl``), curves (``curves/``), figures and tables.

    ``run.measure(group, policy, compute, **fields)`` runs ``compute()`` once per configuration and records what it
    returns; a configuration already recorded is read back instead (unless ``cfg.force``), so a notebook re-runs
    in seconds and a killed run resumes where it stopped. ``cfg`` is a :class:`streamlib.experiments.config.Config`.

    When several processes share the run (``share``, from the launcher), the n-th call of ``measure`` or
    ``measure_all`` is measured by process ``n % count``; the others get a measurement that is filled in from the
    owner's records when first read, and every read of the records (``records``, ``metrics``, ``curves``) first waits
    for what this notebook left to other processes.
    """

    def __init__(self, cfg):
        self.cfg = cfg
        self.path = cfg.run_path
        self.share = Share.from_env()
        if self.share.main:
            cfg.save()
        self.results_path = self.path / RESULTS_FILE
        device = cfg.torch_device()
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" and torch.cuda.is_available() else ""
        self.context = {"run": self.path.name, **environment(), "model": cfg.model,
                        "dtype": str(cfg.torch_dtype()).replace("torch.", ""), "device": device.type, "gpu": gpu,
                        "dry_run": cfg.dry_run}
        if os.environ.get(NOTEBOOK_ENV):  # which notebook of the chain measured a row
            self.context["notebook"] = os.environ[NOTEBOOK_ENV]
        if self.share.count > 1:  # which launch and process measured a row
            self.context.update(session=self.share.session, process=self.share.index)
        # metric rows of every configuration measured so far: key -> {metric: (metric, value, unit)}
        self._measured: dict[str, dict[str, tuple]] = {}
        self._fresh: set[str] = set()  # keys recorded ok by this launch's processes (a forced run waits for these)
        self._errors: dict[str, str] = {}  # keys whose measurement failed in this launch
        self._offset = 0  # how far results.jsonl has been read
        self._calls = 0  # measure and measure_all calls so far: which process measures the next
        self._pending: dict[str, tuple[str, str, int]] = {}  # key -> (group, label, owner) measured elsewhere
        self._read_new()

    # -- measuring --------------------------------------------------------------------------------------------
    def fields(self, group: str, policy, **more) -> dict:
        return {"group": group, "policy": policy.params(), "model": self.cfg.model,
                "dtype": self.context["dtype"], "device": self.context["device"], "bos": self.cfg.bos,
                **{k: int(v) if isinstance(v, torch.Tensor) else v for k, v in more.items()}}

    def measure(self, group: str, policy, compute: Callable[[], Measurement], **fields) -> Measurement:
        """``compute()`` returns a :class:`Measurement`; its rows go to the records and its curve to
        ``curves/<group>-<key>.csv`` with the policy's columns. A failure is recorded and returned as a
        ``failed`` measurement with its error (``KeyboardInterrupt`` still stops the run)."""
        full = self.fields(group, policy, **fields)
        key = config_key(**full)
        call, self._calls = self._calls, self._calls + 1
        if not self.cfg.force and key in self._measured:
            result = self._read_back(group, key)
        elif self.share.owns(call):
            result = self._compute(group, policy, compute, full, key, fields)
        else:
            result = self._elsewhere(group, policy, key, call)
        _say(group, policy, fields, result)
        return result

    def measure_all(self, group: str, policies: list, compute: Callable[[], dict], each: dict | None = None,
                    **fields) -> dict:
        """One measurement of several policies together (e.g. timings interleaved round by round): ``compute()``
        returns ``{policy: Measurement}`` and each policy's is recorded as :meth:`measure` would. ``each[policy]``
        holds the fields that differ by policy (the prompt a token-mode policy was given), so every record states
        what was measured. It runs only when some policy's configuration is not yet recorded (or the run is
        forced); a failure is recorded for each."""
        own = {p: {**fields, **(each or {}).get(p, {})} for p in policies}
        keys = {p: config_key(**self.fields(group, p, **own[p])) for p in policies}
        call, self._calls = self._calls, self._calls + 1
        if not (self.cfg.force or any(k not in self._measured for k in keys.values())):
            out = {p: self._read_back(group, keys[p]) for p in policies}
        elif not self.share.owns(call):
            out = {p: self._elsewhere(group, p, keys[p], call) for p in policies}
        else:
            try:
                results = compute()
            except Exception as err:  # noqa: BLE001 - recorded for every policy below, the run goes on
                results, failure = {}, err

                def compute_one(err=failure):
                    raise err
            else:
                compute_one = None
            out = {policy: self._compute(group, policy, compute_one or (lambda p=policy: results[p]),
                                         self.fields(group, policy, **own[policy]), keys[policy], own[policy])
                   for policy in policies}
        for policy in policies:
            _say(group, policy, own[policy], out[policy])
        return out

    def _compute(self, group, policy, compute, full: dict, key: str, fields: dict) -> Measurement:
        base = {"key": key, **_flatten(full)}
        try:
            result = compute()
        except Exception as err:  # noqa: BLE001 - any failure, CUDA OOM included, is a record, not a crash
            if isinstance(err, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            error = f"{type(err).__name__}: {err}"[:2000]
            self.append({**base, "status": "failed", "metric": group, "value": None, "error": error,
                         "extra": {"traceback": traceback.format_exc(limit=5)}})
            print(f"FAILED {group} {policy.label()}: {error}", file=sys.stderr)
            return Measurement(status="failed", error=error)
        if result.curve is not None:  # before the rows, which say the measurement is whole; returned as it is read
            result.curve = self._save_curve(group, key, policy, fields, result.curve)  # back: the policy's columns
        self._measured[key] = {metric: (metric, float(value), unit) for metric, value, unit in result.rows}
        self.append(*({**base, "status": "ok", "metric": metric, "value": float(value), "unit": unit}
                      for metric, value, unit in result.rows))
        return result

    def append(self, *rows: dict) -> None:
        """Record lines, written whole in one locked append and synced (processes sharing the run append to the same
        file)."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        data = "".join(json.dumps({**self.context, **row, "timestamp": stamp}, default=_jsonable) + "\n"
                       for row in rows).encode()
        fd = os.open(self.results_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)  # and the lock with it

    # -- measurements another process makes -------------------------------------------------------------------
    def _elsewhere(self, group: str, policy, key: str, call: int) -> Measurement:
        self._pending[key] = (group, policy.label(), self.share.owner(call))
        return Elsewhere(lambda: self._settled(group, key), owner=self.share.owner(call))

    def _settled(self, group: str, key: str) -> Measurement:
        self.settle()
        if key in self._errors:
            return Measurement(status="failed", error=self._errors[key])
        result = self._read_back(group, key)
        result.status = "ok"
        return result

    def settle(self, poll: float = 0.5) -> None:
        """Wait until every measurement this notebook left to other processes is recorded (at once when none is);
        raises naming the process that will not record one (it stopped, or its chain went another way)."""
        checked = time.time()
        while self._pending:
            self._read_new()
            for key in [k for k in self._pending if self._recorded(k)]:
                del self._pending[key]
            if self._pending and time.time() - checked > 10 * poll:
                checked = time.time()
                for key, (group, label, owner) in list(self._pending.items()):
                    why = owner_trouble(self.path, owner)
                    self._read_new()  # it may have written just before it moved on
                    if why and not self._recorded(key):
                        raise RuntimeError(f"{group} of {label} (process {owner}'s to measure): {why}. Run the same "
                                           "command again: every measurement recorded is read back.")
            if self._pending:
                time.sleep(poll)

    def _recorded(self, key: str) -> bool:
        return key in self._errors or (key in self._fresh if self.cfg.force else key in self._measured)

    def _read_new(self) -> None:
        """Take in the rows appended to the records since the last read."""
        rows, self._offset = read_appended(self.results_path, self._offset)
        for row in rows:
            key = row.get("key")
            ours = self.share.count > 1 and row.get("session") == self.share.session
            if key and row.get("status") == "ok":
                self._measured.setdefault(key, {})[row["metric"]] = (row["metric"], row["value"], row.get("unit", ""))
                if ours:
                    self._fresh.add(key)
            elif key and row.get("status") == "failed" and ours:
                self._errors[key] = row.get("error", "")

    def _read_back(self, group: str, key: str) -> Measurement:
        path = self.path / "curves" / f"{group}-{key}.csv"
        curve = pd.read_csv(path) if path.exists() else None
        return Measurement(rows=list(self._measured[key].values()), curve=curve, status="skipped")

    def _save_curve(self, group, key, policy, fields, curve: pd.DataFrame) -> pd.DataFrame:
        columns = {"key": key, "label": policy.label(),
                   **{k: v for k, v in {**policy.params(), **fields}.items() if not isinstance(v, (list, dict))}}
        out = curve.copy()
        for name, value in reversed(list(columns.items())):
            if name not in out:
                out.insert(0, name, value)
        path = self.path / "curves" / f"{group}-{key}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        out.to_csv(path, index=False)
        return out

    # -- reading back -----------------------------------------------------------------------------------------
    def records(self) -> pd.DataFrame:
        self.settle()
        return load_results(self.path)

    def metrics(self, group: str) -> pd.DataFrame:
        """One row per measurement of ``group``, one column per metric (see :func:`metrics_wide`)."""
        return metrics_wide(self.records(), group)

    def curves(self, group: str) -> pd.DataFrame:
        """Every curve recorded for ``group``, concatenated (empty when there is none), each row with its policy's
        ``spec`` (curves written before spec strings get it from their records)."""
        self.settle()
        frames = [pd.read_csv(p) for p in sorted((self.path / "curves").glob(f"{group}-*.csv"))
                  if p.stem.rsplit("-", 1)[1] in self._measured]
        if not frames:
            return pd.DataFrame()
        curves = pd.concat(frames, ignore_index=True)
        if "spec" not in curves or curves["spec"].isna().any():
            specs = self.records().drop_duplicates("key").set_index("key")["spec"]
            known = curves["spec"] if "spec" in curves else pd.Series(pd.NA, index=curves.index)
            curves["spec"] = known.fillna(curves["key"].map(specs))
        return curves

    # -- writing figures and tables ---------------------------------------------------------------------------
    def figure(self, fig, name: str) -> None:
        """Save ``fig`` as ``figures/<name>.pdf`` and ``.png`` in the run; the report's figures (``fig*``) go to the
        repository's ``figures_dir`` (``figures/``) too when ``export_figures``. A dry run's figures say so across the
        top. In a notebook the figure then shows inline, below the cell."""
        if self.cfg.dry_run:
            mark_dry_run(fig)
        export = self.cfg.export_figures and name.startswith("fig")
        dirs = [self.path / "figures"] + ([repo_root() / self.cfg.figures_dir] if export else [])
        dirs = dirs if self.share.main else []  # the first process draws the run's figures
        save_figure(fig, name, *dirs, close="ipykernel" not in sys.modules)

    def table(self, table: pd.DataFrame, name: str) -> pd.DataFrame:
        """Write ``tables/<name>.md`` and ``.tex`` (the first process of several); returns the table for display."""
        if not self.share.main:
            return table
        out = self.path / "tables"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.md").write_text(to_markdown(table) + "\n")
        (out / f"{name}.tex").write_text(to_latex(table) + "\n")
        return table


def _say(group: str, policy, fields: dict, result: Measurement) -> None:
    status = f"process {result.owner}" if isinstance(result, Elsewhere) and result.waiting else result.status
    print(f"{group:>10} | {policy.label():<28} | {_describe(fields):<40} | {status}")


def _describe(fields: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in fields.items())[:40]


def _jsonable(value):
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    if isinstance(value, (Path, torch.device)):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _flatten(fields: dict) -> dict:
    """Policy params and other dicts are spread into the row; known columns keep their names."""
    out = {}
    for name, value in fields.items():
        if isinstance(value, dict):
            out.update(value)
        else:
            out[name] = value
    return out


def mark_dry_run(fig) -> None:
    """Say across the top of a figure that it comes from a dry run (random weights: mechanics, not results)."""
    fig.text(0.5, 1.0, "DRY RUN: random weights, embedded text, scaled-down counts. Not a result.",
             ha="center", va="bottom", color="#D55E00", fontsize=10, fontweight="bold")


def save_figure(fig, name: str, *dirs: str | Path, close: bool = True) -> list[Path]:
    """Write ``name.pdf`` and ``name.png`` into each directory; returns the paths written. ``close=False`` leaves
    the figure open for a notebook to show inline."""
    import matplotlib.pyplot as plt

    written = []
    for d in dirs:
        d = Path(d)
        d.mkdir(parents=True, exist_ok=True)
        for ext in ("pdf", "png"):
            path = d / f"{name}.{ext}"
            # no creation date in the PDF, so an unchanged figure is an unchanged file
            fig.savefig(path, metadata={"CreationDate": None} if ext == "pdf" else None)
            written.append(path)
    if close:
        plt.close(fig)
    return written
