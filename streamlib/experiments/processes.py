"""Several processes sharing one run: ``accelerate launch --multi_gpu --num_processes 8 -m streamlib run ...`` (or
``torchrun``, or ``mpirun``: whatever sets the ranks accelerate's ``PartialState`` reads).

Every process executes the whole notebook chain, so each notebook's control flow, tables and figures stay where a
reader expects them; only the measurements are dealt out. The n-th ``run.measure`` of a notebook is measured by
process ``n % count`` and by no other: every process makes the same calls in the same order, so they agree without
talking. A process that does not own a measurement goes on at once; it waits for the owner's record only when it
reads the result (a table, a curve, a value), which lets a loop of measurements run spread over the processes. The
records stay one ``results.jsonl``: a measurement's rows are one locked append, so rows are neither lost nor
doubled, and a run killed anywhere resumes (the same command, the same run directory) with everything recorded read
back. Only the first process writes what there is one of: figures, tables, ``config.json`` and the report.

The processes know each other only through the run directory: each launcher process writes a heartbeat
(``processes/<index>.json``: the notebook it is executing, refreshed every few seconds), from which a waiting
process tells an owner that died or took another path from one that is merely behind.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..metrics.measurement import Measurement

ENV = "STREAMLIB_PROCESSES"  # "index/count/local index/session", set by the launcher process for its kernels
NOTEBOOK_ENV = "STREAMLIB_NOTEBOOK"  # the notebook a kernel executes (set by the chain): in its records, and for
# the heartbeat comparison
BEAT_SECONDS = 5.0
SILENT_SECONDS = 120.0  # a heartbeat older than this: the process is gone


@dataclass(frozen=True)
class Share:
    """This process's place in the run: ``index`` of ``count`` processes, ``local`` its index on this machine (its
    GPU), ``session`` one id for all processes of one launch (records of earlier launches are told apart by it)."""

    index: int = 0
    count: int = 1
    local: int = 0
    session: str = ""

    @property
    def main(self) -> bool:
        """Whether this process writes what a run has one of (figures, tables, the report)."""
        return self.index == 0

    def owns(self, call: int) -> bool:
        return call % self.count == self.index

    def owner(self, call: int) -> int:
        return call % self.count

    def encode(self) -> str:
        return f"{self.index}/{self.count}/{self.local}/{self.session}"

    @classmethod
    def from_env(cls) -> Share:
        """The share the launcher process handed to this kernel; one process of one when there is none."""
        text = os.environ.get(ENV, "")
        if not text:
            return cls()
        index, count, local, session = text.split("/", 3)
        return cls(int(index), int(count), int(local), session)


def join(run_path: str | Path | None) -> tuple[Share, Path | None]:
    """In the launcher process (``python -m streamlib run``): this process's share of the launch and the run
    directory every process uses (the first process's choice, so a default path with a timestamp is one path).
    Several processes meet through accelerate's ``PartialState`` (on the CPU, gloo: nothing here needs a GPU's
    collective); one process alone starts nothing. Sets the share for the kernels this process starts."""
    if _world_size() <= 1:
        os.environ.pop(ENV, None)
        return Share(), run_path and Path(run_path)
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState(cpu=True)
    chosen = [str(run_path) if run_path else None, uuid.uuid4().hex[:12]]
    broadcast_object_list(chosen, from_process=0)
    share = Share(state.process_index, state.num_processes, state.local_process_index, chosen[1])
    os.environ[ENV] = share.encode()
    return share, chosen[0] and Path(chosen[0])


def _world_size() -> int:
    for name in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(name):
            return int(os.environ[name])
    return 1


class Heartbeat:
    """The launcher process's sign of life in ``processes/<index>.json``: the notebook it executes and whether its
    chain has ended, rewritten every few seconds by a daemon thread (a process that dies stops writing)."""

    def __init__(self, run_path: Path, share: Share):
        self.path = beat_path(run_path, share.index)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.notebook, self.done = "", False
        self._stop = threading.Event()
        self._write()
        threading.Thread(target=self._beat, daemon=True).start()

    def at(self, notebook: str) -> None:
        self.notebook = notebook
        self._write()

    def finish(self) -> None:
        self.done = True
        self._stop.set()
        self._write()

    def _beat(self) -> None:
        while not self._stop.wait(BEAT_SECONDS):
            self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"notebook": self.notebook, "done": self.done, "time": time.time()}))
        tmp.replace(self.path)  # whole or not at all


def beat_path(run_path: Path, index: int) -> Path:
    return Path(run_path) / "processes" / f"{index}.json"


def owner_trouble(run_path: Path, owner: int) -> str:
    """Why the process ``owner`` will never record what this kernel waits for, or "" while it may: it stopped (no
    heartbeat for ``SILENT_SECONDS``), its chain ended, or it executes a later notebook than this kernel's."""
    try:
        beat = json.loads(beat_path(run_path, owner).read_text())
    except (OSError, json.JSONDecodeError):
        return ""  # not started yet, or being rewritten
    if beat["done"]:
        return f"process {owner} finished its chain without recording it"
    if time.time() - beat["time"] > SILENT_SECONDS:
        return f"process {owner} stopped (no heartbeat for {SILENT_SECONDS:.0f} s)"
    mine = os.environ.get(NOTEBOOK_ENV, "")
    if mine and beat["notebook"] > mine:
        return f"process {owner} went on to {beat['notebook']} without recording it"
    return ""


class Elsewhere(Measurement):
    """A measurement another process of the run makes: its fields are filled in from that process's records when
    first read (waiting for them), so a loop of measurements goes on without waiting."""

    def __init__(self, settle: Callable[[], Measurement], owner: int):
        self._settle, self.owner, self._done = settle, owner, None

    @property
    def waiting(self) -> bool:
        """Whether the result has not been read yet."""
        return self._done is None

    def _result(self) -> Measurement:
        if self._done is None:
            self._done = self._settle()
        return self._done

    # properties, not fields: Measurement's class defaults (status "ok", curve None) must not answer for a result
    # that is not in yet
    rows = property(lambda self: self._result().rows)
    curve = property(lambda self: self._result().curve)
    status = property(lambda self: self._result().status)
    error = property(lambda self: self._result().error)
