# Two commands do all the set-up on a fresh machine: `make tune EXP=master_v464` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
EXP    ?= master_v464
STAMP  := $(VENV)/.installed

.PHONY: tune test lint venv bench-overhead bench-store bench-kill bench-scale prometheus dashboards clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

tune: $(STAMP)
	$(PY) -m trainers.tune $(EXP) $(if $(RAY_ADDRESS),--address $(RAY_ADDRESS))

test: $(STAMP)
	$(PY) -m ruff check monitor trainers heuristics dashboards tests
	$(PY) -m pytest -q -x --durations=15

bench-overhead: $(STAMP)
	$(PY) -m bench.overhead

prometheus: $(STAMP)
	$(PY) -m monitor.prometheus_local

dashboards: $(STAMP)
	$(PY) -m dashboards.build

bench-kill: $(STAMP)
	$(PY) -m bench.kill $(if $(SCALE),--scale $(SCALE))

bench-store: $(STAMP)
	$(PY) -m bench.store

bench-scale: $(STAMP)
	$(PY) -m bench.scale

clean:
	rm -rf $(VENV) runs
