# crebito: `make run` serves the API on :9999; `make test` runs every test.
PY := .venv/bin/python

.PHONY: run reset test lint
run: .venv/.installed
	$(PY) stack/launcher.py

# Starts with the database back at the five initial clients.
reset: .venv/.installed
	$(PY) stack/launcher.py --reset

test: .venv/.installed
	$(PY) -m pytest

lint: .venv/.installed
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/sqlfluff lint db

.venv/.installed: requirements.txt requirements-dev.txt stack/install.sh
	bash stack/install.sh
