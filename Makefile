# Thin wrappers. Everything creates .venv on first use; see README for timings.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PROFILE ?= smoke
KERNEL  := emo
STAMP   := $(VENV)/.emolib-installed
PYTEST_ARGS ?=

.PHONY: setup reproduce rehearse test test-all lint lab bench list clean-results

setup: $(STAMP)

# Python caches compiled modules (.pyc) on first import; uv installs none, so where PYTHONDONTWRITEBYTECODE is set
# (as on our machines) every process compiled torch, timm, ... from source again: `import torch` 6.1 s instead of
# 2.5 s, the default test suite 867 s instead of 479 s on 2 cores. The targets below let Python write the cache;
# compiling only what is imported is cheaper than uv's --compile-bytecode of the whole stack (~35 s).
unexport PYTHONDONTWRITEBYTECODE

# uv installs the pinned set in ~30 s instead of ~140 s with pip; pip is the fallback if uv is unavailable.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing the pinned stack into $(VENV) (first time: a few minutes, ~5.9 GB)"
	@($(BIN)/python -m pip install -q uv==0.13.9 && \
	  $(BIN)/uv pip install -q --python $(BIN)/python -r requirements.txt -e .) || \
	  $(BIN)/python -m pip install -q -r requirements.txt -e .
	@$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "emolib ($(VENV))" >/dev/null
	@touch $(STAMP)

reproduce: $(STAMP)
	$(BIN)/emolib run params/$(PROFILE).yaml --kernel $(KERNEL)

# Rehearse the paper profiles on their synthetic releases (paper-size models, two short epochs) and write
# results/<profile>-rehearsal/estimate.{md,json}; REHEARSE=iemocap rehearses one.
REHEARSE ?= iemocap mosei sims
rehearse: $(STAMP)
	@for p in $(REHEARSE); do $(BIN)/emolib run params/$$p.yaml --rehearse --kernel $(KERNEL) || exit 1; done

# pytest exits 5 when it collected no tests: that is a failure here, never a silent pass.
# One pytest-xdist worker per core (PYTEST_WORKERS=0 runs in this process); conftest gives each worker one thread.
PYTEST_WORKERS ?= auto
test: $(STAMP)
	@$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

# ruff, configured in pyproject.toml; CI runs it before the tests.
lint: $(STAMP)
	$(BIN)/ruff check emolib tests

test-all: $(STAMP)
	@$(MAKE) --no-print-directory test PYTEST_ARGS="-m 'slow or not slow' $(PYTEST_ARGS)"

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=. --ServerApp.default_url=/lab/tree/notebooks

bench: $(STAMP)
	$(BIN)/python -m emolib.bench
	$(BIN)/python -m emolib.evaluate efficiency
	$(BIN)/emolib run params/smoke.yaml --bench 3 --kernel $(KERNEL)

list: $(STAMP)
	@$(BIN)/emolib list -v

clean-results:
	rm -rf results/$(PROFILE)
