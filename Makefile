# Two commands do everything on a fresh Debian 12 / Ubuntu 22.04+ machine:
#   make demo   set up (first time) and run the main job on the bundled default
#   make test   set up (first time) and run the tests
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-gpu clean
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml scripts/install.sh
	./scripts/install.sh

demo: setup
	$(VENV)/bin/run_pipeline --demo

test: setup
	$(PY) -m pytest -q

test-gpu: setup
	$(PY) -m pytest -q -m "gpu or tensorrt"

clean:
	rm -rf out build *.egg-info
