# Two commands do all set-up on a fresh machine:  make workbook  (run everything)  and  make test.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
READY  := $(VENV)/.installed
PARAMS ?= params/default.yaml
SWEEPS := $(filter-out params/tables/paper_%,$(wildcard params/tables/*.yaml))

.PHONY: setup workbook test lab tables results docs clean-outputs

setup: $(READY)

# Re-installs when the dependencies change; registers this clone's Jupyter kernel inside .venv (vici_utils/kernel.py).
$(READY): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	$(PY) -m vici_utils kernel >/dev/null
	touch $(READY)

workbook: setup
	$(PY) -m vici_utils run $(PARAMS)

test: setup
	$(PY) -m pytest -q

# Root (as in a container) needs --allow-root; the notebooks ask for the kernel that setup registers in .venv,
# found first through JUPYTER_PATH (before any per-user kernel of that name).
lab: setup
	JUPYTER_PATH=$(abspath $(VENV))/share/jupyter $(VENV)/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

# Runs shared between sweeps run once; a failed variant is recorded, the rest go on, results are still written.
tables: setup
	$(PY) -m vici_utils sweep $(SWEEPS); status=$$?; $(MAKE) results; exit $$status

results: setup
	$(PY) -m vici_utils results

# One measured run of the default workbook (from an empty outputs folder): the README's headline paragraph and
# the executed copy in docs/rendered/ for readers who run nothing (HTML, figures as small JPEGs).
docs: setup
	$(PY) -m vici_utils headline --params $(PARAMS)

clean-outputs:
	rm -rf outputs/*/
