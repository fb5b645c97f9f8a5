"""JupyterLab as a user opens it (`make lab`): the notebooks' py:percent sources are served as notebooks, their first
cell tagged `parameters`, and a double click opens them as notebooks (jupytext's viewer is the default for Python
files in this venv's JupyterLab settings)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server from this venv, on loopback, started as `make lab` starts it (with no user settings of
    this machine's in the way)."""
    home = tmp_path_factory.mktemp("jupyter")
    isolated = {"JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTERLAB_SETTINGS_DIR": str(home / "lab-settings"),
                "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "JUPYTER_RUNTIME_DIR": str(home / "runtime")}
    subprocess.run(["bash", "scripts/setup_env.sh"], cwd=ROOT, check=True)  # writes the lab settings if missing
    port, token = _free_port(), "streamlib-test"
    jupyter = Path(sys.executable).parent / "jupyter"
    proc = subprocess.Popen([str(jupyter), "lab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
                             f"--ServerApp.port={port}", f"--IdentityProvider.token={token}",
                             "--ServerApp.root_dir=notebooks"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=open(home / "lab.log", "w"), env={**os.environ, **isolated})
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> dict:
        req = urllib.request.Request(base + path, headers={"Authorization": f"token {token}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    try:
        for _ in range(120):  # at most a minute to start
            try:
                get("/api/status")
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError((home / "lab.log").read_text()[-2000:])
                time.sleep(0.5)
        else:
            raise RuntimeError("JupyterLab did not answer within a minute")
        yield get
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_each_notebook_is_served_as_a_notebook_with_its_parameters_cell_first(lab, name):
    model = lab(f"/api/contents/{name}?type=notebook&content=1")
    assert model["type"] == "notebook"
    first = model["content"]["cells"][0]
    assert first["cell_type"] == "code" and "parameters" in first["metadata"].get("tags", [])


def test_a_double_click_opens_a_python_notebook_as_a_notebook(lab):
    plugin = lab("/lab/api/settings/@jupyterlab/docmanager-extension:plugin")
    # the venv's overrides.json becomes the schema's default, which JupyterLab applies where a user set nothing
    assert plugin["schema"]["properties"]["defaultViewers"]["default"]["python"] == "Jupytext Notebook"
    assert "defaultViewers" not in plugin["settings"]  # nothing from this machine's user settings in the way
