# `make demo` and `make test` each set up .venv (once) and run.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The machine's pip config lists local indexes that may be absent; their warnings are noise.
# (grep exits 1 when it prints nothing; pipefail still reports a failing pip.)
QUIET_PIP := { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: demo test test-fast bench install browser clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing prunetune into $(VENV) (first time takes a few minutes: torch wheels)..."
	$(PY) -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,dashboard]' 2>&1 | $(QUIET_PIP)
	$(PY) -c "import torch, torchvision, torch_pruning, ray, optuna, pyarrow, pandas, pydantic, onnx, onnxruntime, onnxscript" 
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/prunetune run configs/demo.yaml --fresh

# The HTML report is tested in Debian's headless Chromium; as root, install it when absent
# (a fresh CI machine has none). Without it those tests skip and say why.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && echo "installing chromium (Debian package) for the report's browser test..." \
	  && apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null; } \
	  || echo "chromium not installed: the report's browser tests will be skipped"

test: $(STAMP) browser
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# Each benchmark's output is kept in benchmarks/results/ and spliced into the README
# (benchmarks/run_all.py: one at a time, each timed, bench_times.md says how long the whole took).
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
bench: $(STAMP)
	@# Fashion-MNIST comes from Debian's package (no downloads at run time); root can install it.
	@if [ ! -d $(FASHION_MNIST_DIR) ] && [ "$$(id -u)" = 0 ]; then \
	  echo "installing dataset-fashion-mnist (Debian package) into $(FASHION_MNIST_DIR)..."; \
	  apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null; fi
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) *.egg-info
