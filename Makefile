# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO ?= demo
# The demo embeds with a stand-in that has Path Foundation's interface (random weights): the real
# model is gated. With access: make demo MODEL=google/path-foundation (and HF_TOKEN set).
MODEL ?= $(DEMO)/standin-model

.PHONY: install demo test bench clean gpu-check

# Re-runs only when the pins, the build or the C++ sources change (engine/qc.py: the score layout of csrc/check.cpp).
$(STAMP): requirements.txt setup.py pyproject.toml engine/qc.py $(wildcard csrc/*.cpp csrc/*.hpp)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-build-isolation -e .
	touch $@

install: $(STAMP)

demo: install
	$(PY) -m histogen sample --run pretrained/he64 --n 64 --steps 25 --out $(DEMO)/he64 --beside pretrained/he64/real-grid.png
	$(PY) -m histosynth --demo $(DEMO)/slides
	$(PY) -m engine.tile --slides $(DEMO)/slides --out $(DEMO)/patches.zarr --quiet
	test "$(MODEL)" != "$(DEMO)/standin-model" || test -d $(MODEL) || $(PY) -m histosynth.standin_model $(MODEL)
	$(PY) -m engine.embed --store $(DEMO)/patches.zarr --model $(MODEL) --quiet
	$(PY) -m histogen train --model diffusion --data $(DEMO)/patches.zarr --out $(DEMO)/runs/diffusion-tiny --preset diffusion-tiny --quiet
	$(PY) -m histogen sample --run $(DEMO)/runs/diffusion-tiny --n 16 --steps 20 --out $(DEMO)/samples
	$(PY) -m histogen eval --run $(DEMO)/runs/diffusion-tiny --real $(DEMO)/patches.zarr --n 64 --steps 20 --encoder $(MODEL) --out $(DEMO)/report
	@echo "the shipped tissue model's samples beside held-out real tissue: $(DEMO)/he64/beside.png"
	@echo "patch store with embeddings: $(DEMO)/patches.zarr   QA pictures: $(DEMO)/patches.qa/"
	@echo "tiny diffusion run: $(DEMO)/runs/diffusion-tiny   samples: $(DEMO)/samples/grid.png"
	@echo "evaluation report: $(DEMO)/report/report.html"

# The linter first (its rules in pyproject.toml), then the tests.
test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench: install
	$(PY) -m benchmarks tiling
	$(PY) -m benchmarks embed
	$(PY) -m benchmarks cluster

# Every GPU path on a bare GPU machine in one command of under 9 minutes (benchmarks/gpu.py):
#   make gpu-check OUT=DIR [WORK=DIR] [BUNDLE=.gpu-bundle] [MINUTES=1.5]
#   make gpu-check DRY_RUN=1 OUT=DIR   the same in tiny sizes on the CPU (CI runs it)
# Uses the venv's Python where there is one, else python3 (a GPU machine's own, which cannot install
# requirements.txt: bring what it lacks with python -m benchmarks gpu-bundle).
OUT ?= gpu-check
WORK ?= $(OUT).work
BUNDLE ?= .gpu-bundle
MINUTES ?= 1.5
GPU_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON))

gpu-check:
	$(GPU_PY) -m benchmarks gpu --out $(OUT) --work $(WORK) --bundle $(BUNDLE) --minutes $(MINUTES) $(if $(DRY_RUN),--dry-run)

clean:
	rm -rf $(DEMO) build *.egg-info engine/_native*.so
