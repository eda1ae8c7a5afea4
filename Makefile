# The README's two commands: `make demo` (the closed GRPO loop in simulation) and `make test`.
# Each one creates or reuses the venv (.venv), installs the pinned wheels, builds the interfaces.
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export PYTHONUNBUFFERED := 1

.PHONY: setup test lint demo bench clean

setup:
	@bash scripts/setup_env.sh

lint: setup
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest -q test

demo: setup
	$(PY) -m tinyvla_grpo_ros.demo $(ARGS)

bench: setup
	$(PY) bench/run_all.py $(ARGS)

clean:
	rm -rf build install log .pytest_cache
