#!/usr/bin/env bash
# One prepared GPU check (issue 10): random-weight Pythia-2.8b in fp16, batch 1, prompt 2048, 256 new tokens.
# TTFT / TPOT / peak memory for Dense, StreamingLLM 4+252 and 4+1020, eager and compiled (CUDA graphs), and the
# adaptive budgets eager; every registered policy exact against its naive reference on the device; the copy
# bandwidth and TPOT over its floor; chunked-vs-token, fp16-vs-fp32 and compiled-vs-eager agreement. Writes
# gpu_check.json and gpu_check.md to --out (default bench/results/). About 6 minutes on one H200 (9 at most: the
# run is stopped at 540 s).
#
#   bash bench/gpu_check.sh [--out DIR] [--wheels DIR] [--smoke]
#
# --smoke     tiny shapes on the CPU, a few tokens (CI runs this so the script cannot rot)
# --wheels D  install the wheels in D (no network, no dependencies) into a private folder first. For a machine
#             whose transformers is older than 5.23 (streamlib passes `cache=`), bring ours:
#               pip download --no-deps transformers==5.24.0 -d wheels/   # on a machine with network
#               bash bench/gpu_check.sh --wheels wheels/
# PYTHON      the interpreter (default: .venv/bin/python when it exists, else python3); it needs torch with CUDA,
#             transformers, accelerate, pandas and psutil.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) WHEELS=${2:?--wheels needs a directory}; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
if [ -n "${WHEELS:-}" ]; then
    site=$(mktemp -d /tmp/streamlib-site.XXXX)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$WHEELS"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" - <<'PYCHECK'
import sys
import transformers
major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
if (major, minor) < (5, 23):
    sys.exit(f"gpu_check: transformers {transformers.__version__} is older than 5.23; bring a wheel of 5.24 "
             "(see the top of bench/gpu_check.sh: --wheels DIR)")
PYCHECK
exec timeout 540 "$PY" bench/gpu_check.py ${args[@]+"${args[@]}"}
