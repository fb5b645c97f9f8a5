# The two commands of the README:  make run  (the notebook chain)  and  make test  (the test suite).
PY := .venv/bin/python
PROFILE ?= auto

.PHONY: run test env lab bench gpu-check clean-runs

env:
	@bash scripts/setup_env.sh

# GPUS=8: one process per GPU through accelerate, each measuring its share of every notebook (README, "Several GPUs")
GPUS ?= 1
run: env
ifeq ($(GPUS),1)
	@$(PY) -m streamlib run --profile $(PROFILE)
else
	@.venv/bin/accelerate launch --multi_gpu --num_processes $(GPUS) -m streamlib run --profile $(PROFILE)
endif

# JupyterLab on notebooks/ with the project's kernel; a double click opens a notebook as a notebook. As root (a
# container) JupyterLab wants --allow-root.
lab: env
	.venv/bin/jupyter lab --ServerApp.root_dir=notebooks $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

# Two processes of one thread each (OMP_NUM_THREADS=1 reaches the notebook kernels the dry runs start, so two
# processes never run four threads on two cores); each file's tests stay in one process, so a file's models and the
# smoke chain are made once, and the longest files go first (tests/conftest.py).
test: env
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25

bench: env
	HF_HUB_OFFLINE=1 $(PY) bench/bench_policies.py
	HF_HUB_OFFLINE=1 $(PY) bench/bench_quality.py
	HF_HUB_OFFLINE=1 $(PY) bench/bench_scored.py
	HF_HUB_OFFLINE=1 $(PY) bench/bench_decode.py
	HF_HUB_OFFLINE=1 $(PY) bench/bench_quant.py

gpu-check: env
	bash bench/gpu_check.sh

clean-runs:
	rm -rf runs
