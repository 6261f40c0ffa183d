# Two commands do all the set-up on a fresh machine: `make tune EXP=master_v464` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
EXP    ?= master_v464
STAMP  := $(VENV)/.installed

.PHONY: tune test lint venv constraints wheel bench-overhead bench-store bench-kill bench-scale bench-engine bench-coverage prometheus alertmanager dashboards clean

# pyproject.toml declares ranges; constraints.txt holds the exact versions the tests run with.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	# the bench extra: parallel-wavegan's setup.py imports pip (no build isolation) first
	$(PY) -m pip install -q -c constraints.txt setuptools
	$(PY) -m pip install -q -c constraints.txt --no-build-isolation 'parallel-wavegan==0.6.1'
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,bench]'
	touch $(STAMP)

venv: $(STAMP)

# Rewrite constraints.txt from what .venv holds now (after an upgrade that the tests passed).
constraints: $(STAMP)
	{ sed -n '1,2p' constraints.txt; $(PY) -m pip freeze --exclude-editable \
	  | sed -E 's/^(torch==[^+]*)\+cpu$$/\1/' | grep -iv '^voice.monitor'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	touch $(STAMP)

# The library wheel (monitor, heuristics, dashboards and their data) and the sdist it is built
# from, in build/dist/ (building from the sdist leaves no stale build/lib in the wheel).
wheel: $(STAMP)
	$(PY) -m build --outdir build/dist .

tune: $(STAMP)
	$(PY) -m trainers.tune $(EXP) $(if $(RAY_ADDRESS),--address $(RAY_ADDRESS))

test: $(STAMP)
	$(PY) -m ruff check monitor trainers heuristics dashboards bench tests examples
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -x --durations=15

bench-overhead: $(STAMP)
	$(PY) -m bench.overhead
	$(PY) -m bench.zoo.overhead --compiled

prometheus: $(STAMP)
	$(PY) -m monitor.serving.prometheus_local

# routes the alerts of `ALERTMANAGER_ADDRESS=127.0.0.1:9093 make prometheus` to $ALERT_WEBHOOK_URL
alertmanager: $(STAMP)
	$(PY) -m monitor.serving.alertmanager_local

dashboards: $(STAMP)
	$(PY) -m dashboards.build

bench-kill: $(STAMP)
	$(PY) -m bench.kill $(if $(SCALE),--scale $(SCALE))

bench-store: $(STAMP)
	$(PY) -m bench.store

bench-scale: $(STAMP)
	$(PY) -m bench.scale

bench-coverage: $(STAMP)
	$(PY) -m bench.coverage $(if $(COMPILED),--compiled)

bench-engine: $(STAMP)
	$(PY) -m bench.engine

clean:
	rm -rf $(VENV) runs build
