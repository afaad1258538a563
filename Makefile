# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
WORDNET := /usr/share/wordnet/data.noun

.PHONY: venv demo test test-fast bench bench-simulate bench-compare bench-anytime bench-anytime-matrix lint data postgres browser clean

venv: $(STAMP)

# torch==2.13.0 is pinned in pyproject.toml: pip takes the CPU wheel on disk, not a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,postgres]'
	$(PY) -m pip install --quiet --no-deps $(PEERS)
	touch $(STAMP)

# bench/anytime.py's peers, without their declared dependencies (pyproject's dev extra
# lists what they use): DEHB 0.1.2 declares numpy<2 but runs on numpy 2 (the anytime
# smoke test checks it), and Syne Tune pulls xgboost and a 470 MB NCCL build for
# searchers the benchmark does not use.
PEERS := syne-tune==0.16.0 dehb==0.1.2

# Fashion-MNIST and WordNet come from the Debian packages dataset-fashion-mnist and
# wordnet-base (tests, examples and benchmarks).
data:
	@test -f $(FMNIST) -a -f $(WORDNET) || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist wordnet-base; \
	  else echo "Data missing: sudo apt-get install dataset-fashion-mnist wordnet-base"; fi; }

# PostgreSQL server binaries for the store tests, which start and stop a throwaway server.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	  else echo "PostgreSQL missing: sudo apt-get install postgresql (its store tests are skipped)"; fi; }

# Chromium for the dashboard's end-to-end test (driven by Playwright; no browser download).
browser:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "Chromium missing: sudo apt-get install chromium (the dashboard's browser test is skipped)"; fi; }

demo: venv
	$(VENV)/bin/modelhopper demo

# Two pytest-xdist workers, one test file each at a time (module fixtures stay in one process),
# every test that starts Ray in one worker (tests/conftest.py);
# the 25 slowest tests are listed at the end: the whole must stay under 15 minutes on 2 cores.
TEST_WORKERS ?= 2
test: venv data postgres browser
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25

test-fast: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

# Benchmarks write bench/results/*.json and *.md (minutes each on 2 cores).
bench: venv data
	$(PY) bench/end_to_end.py
	$(PY) bench/mop_efficiency.py
	$(PY) bench/store_overhead.py
	$(PY) bench/procedures.py
	$(PY) bench/ray_efficiency.py
	$(PY) bench/transfer.py
	$(PY) bench/adapters.py
	$(PY) bench/keras_grid.py
	$(PY) bench/elastic.py
	$(PY) bench/ray_elastic.py
	$(PY) bench/hybrid.py
	$(PY) bench/data_scale.py
	$(PY) bench/chaos.py
	$(PY) bench/chaos.py --executor ray
	$(PY) bench/soak.py

# modelhopper's procedures vs Optuna, Syne Tune and DEHB on the LCBench surrogate; the
# full size takes days on 2 cores: ARGS="--seeds 5 --max-budget 10 --workers 4" is ~20 min.
# Then accuracy vs epoch seconds (hypervolume): MO_ARGS="--seeds 5 --max-budget 10".
bench-anytime: venv
	$(PY) bench/anytime.py $(ARGS)
	$(PY) bench/anytime_mo.py $(MO_ARGS)
	$(PY) bench/first_reports.py

# The whole anytime matrix, one table, from the results files bench/anytime.py's
# MATRIX_SOURCES names (no run: seconds).
bench-anytime-matrix: venv
	$(PY) bench/anytime.py --matrix --tag matrix

bench-simulate: venv
	$(PY) bench/simulate.py

# MOP vs Ray Tune, DDP, model averaging and sequential training on one workload (~45 min);
# SYSTEMS=sequential,mop_local runs a subset. Then the data footprint on a 3-node loopback
# Ray cluster: Ray Tune's copy per node against MOP's one copy (~3 min).
bench-compare: venv data
	$(PY) bench/compare.py $(if $(SYSTEMS),--systems $(SYSTEMS))
	$(PY) bench/footprint.py

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

clean:
	rm -rf $(VENV) modelhopper-runs .pytest_cache
