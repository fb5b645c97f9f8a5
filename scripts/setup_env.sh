#!/usr/bin/env bash
# Create or refresh the project's virtualenv (.venv) from pyproject.toml. Used by `make run` and `make test`.
#   With a CUDA GPU (nvidia-smi works) torch comes from PyPI's default build, which is a CUDA build.
#   Without one, torch is pinned to 2.13.0: a CPU build where one lies on local disk, and fast to install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && .venv/bin/python -c "import streamlib, torch, transformers, papermill" 2>/dev/null; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q "torch>=2.6"
  else
    .venv/bin/python -m pip install -q "torch==2.13.0"
  fi
fi
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
touch "$stamp"
