# golf-recurrence: `make report` (the main job) and `make test` on a fresh machine.
# Both create or reuse the virtual environment in $(VENV) and install what they need.

VENV ?= .venv
PY := $(VENV)/bin/python
# On a CPU machine torch must be the CPU wheel (a looser spec pulls a multi-GB CUDA build).
# On a GPU node with torch preinstalled: make VENV_FLAGS=--system-site-packages TORCH_SPEC=
TORCH_SPEC ?= torch==2.13.0
VENV_FLAGS ?=

# CPU_ISA=avx2 (any target): cap torch's CPU kernels at AVX2 (ATen dispatch, oneDNN, MKL;
# golf_core.runs.ISA_LIMITS), so an AVX-512 machine runs what an AVX2-only CPU runs: bf16
# without instructions (a 256x256 bf16 matmul ~100x an fp32 one), fp32 GEMM at AVX2 width. It
# checks the dtype probes, the tests and the report's time under those kernels; the other
# CPU's clock, caches and memory it does not emulate. Runs record it in env.json (cpu_isa).
CPU_ISA ?=
ifneq ($(CPU_ISA),)
ifneq ($(CPU_ISA),avx2)
$(error CPU_ISA=$(CPU_ISA): only avx2 is supported (empty = this CPU's own kernels))
endif
export ATEN_CPU_CAPABILITY := avx2
export ONEDNN_MAX_CPU_ISA := AVX2
export MKL_ENABLE_INSTRUCTIONS := AVX2
endif

# Keep tool caches inside the repo's ignored folders (CI runs with a clean HOME).
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib
export TORCHINDUCTOR_CACHE_DIR := $(CURDIR)/.cache/inductor
export GOLF_KERNEL_CACHE := $(CURDIR)/.cache/kernels
export IPYTHONDIR := $(CURDIR)/.cache/ipython
export JUPYTER_RUNTIME_DIR := $(CURDIR)/.cache/jupyter/runtime
export PYTHONUNBUFFERED := 1

.PHONY: venv test test-fast lint data report study regime bench gpu-check clean

venv: $(VENV)/.installed
	@mkdir -p .cache/matplotlib .cache/inductor .cache/ipython .cache/jupyter/runtime

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -c "import torch" 2>/dev/null || { test -z "$(TORCH_SPEC)" || $(PY) -m pip install -q "$(TORCH_SPEC)"; }
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

lint: venv
	$(VENV)/bin/ruff check .

# The whole suite, slow end-to-end tests included (CI runs this), on one pytest-xdist worker
# per core (tests/conftest.py pins each worker to its core and keeps shared fixtures on one
# worker).
# TEST_WORKERS=0 runs it in this process, in collection order.
TEST_WORKERS ?= auto
test: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --durations=15

test-fast: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow"

data: venv
	$(PY) -m golf_core.data prepare

# REPORT_SCALE: cpu (default; from a fresh clone, install included: 2-core Intel Xeon,
# 2026-12-01: 13.7 min, 13.5 min with CPU_ISA=avx2; 2-core AMD EPYC Zen 4, 2026-12-03, the
# regime ladder niced beside it: 21 min, 14.8 of them training; quiet, installed: 9.4 min),
# ci (tiny, ~3-5 min) or gpu
# (upstream sizes, with REPORT_ARGS="--data-path DIR --tokenizer-path FILE --nproc 8").
# See report/README.md.
REPORT_SCALE ?= cpu
REPORT_ARGS ?=
report: venv
	$(PY) -m golf_core.report --scale $(REPORT_SCALE) $(REPORT_ARGS)

# The study scale (the writeup's verdicts): 110 runs, 10 paired seeds, two at a time; ~3 h
# on 2 cores, resumable (finished runs are skipped). Its small outputs land in results/study/
# (committed); `make report` then renders them in notebooks/08_study.ipynb and the index.
study: venv
	$(PY) -m golf_core.launch --scale study

# The regime ladder (golf_core/regime.py): looped vs flat at equal parameters and equal FLOPs,
# over tokens per parameter from 2 to 100, two sizes, 5 paired seeds; hours on 2 cores,
# resumable, rung by rung. Small outputs land in results/regime/ (committed).
regime: venv
	$(PY) -m golf_core.launch --scale regime

# throughput, cost split, eval, artifacts; then our step beside upstream's GPT + Muon
# (imports ../shared/reference/upstream_baseline_train_gpt.py; skips, saying so, without it);
# then each published family's step beside its PR's own script (benchmarks/families.py)
bench: venv
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.versus --compile blocks
	$(PY) -m benchmarks.families
	$(PY) -m benchmarks.kernels

# On a GPU node (torch with CUDA preinstalled): install, CUDA tests, upstream-size training,
# side by side with upstream, one notebook; ~8 min. Writes benchmarks/results/gpu_check_*.json
gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf .cache .pytest_cache .ruff_cache
