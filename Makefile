# `make run` and `make test` are all the set-up a fresh clone needs.
PY      := .venv/bin/python
STAMP   := .venv/.installed

.PHONY: setup run test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m dfkd.run $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

bench: $(STAMP)
	bash experiments/digits_recovery.sh

clean:  # caches only: runs (students, checkpoints, dreams) stay in outputs/ until you delete them
	rm -rf .pytest_cache
	find dfkd tests experiments -name __pycache__ -type d -prune -exec rm -rf {} +
	@echo "Runs are kept in outputs/ (rm -rf outputs deletes them)."
