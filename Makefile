# Two entry points: `make demo` (main job end to end) and `make test` (whole suite). Both use .venv/.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# CPU build by default (installed from local disk on CI); `make TORCH=torch demo` or a torch already in
# .venv (e.g. a CUDA build) is left as it is because torch>=2.2 is all the package asks for.
TORCH ?= torch==2.13.0
DEMO_DIR ?= demo_out

.PHONY: venv demo test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) pipelines/demo.py --out $(DEMO_DIR)

test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check medseg pipelines tests benchmarks

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
