# crebito: `make run` serves the API on :9999; `make test` runs every test.
PY := .venv/bin/python
# Workers of the distributed topology started by `make citus`.
CREBITO_CITUS_WORKERS ?= 2

.PHONY: run citus ha backup restaurar reset test lint auditoria docker observar
run: .venv/.installed
	$(PY) stack/launcher.py

# The same API on a Citus cluster: a coordinator and CREBITO_CITUS_WORKERS workers.
citus: .venv/.installed
	CREBITO_CITUS_WORKERS=$(CREBITO_CITUS_WORKERS) $(PY) stack/launcher.py

# The same API on two PostgreSQL nodes run by Patroni (a primary and its
# synchronous standby) with one etcd member: see README's "High availability".
ha: .venv/.installed
	CREBITO_HA=1 $(PY) stack/launcher.py

# HA: a backup of the running cluster with pgBackRest (full the first time,
# then differential), and a restore to a moment into a new data directory:
#   make restaurar ALVO='2026-12-06 12:00:00+00' DESTINO=/path/to/new/pgdata
backup: .venv/.installed
	$(PY) stack/backup.py backup

restaurar: .venv/.installed
	$(PY) stack/backup.py restaurar "$(ALVO)" "$(DESTINO)"

# Starts with the database back at the five initial clients.
reset: .venv/.installed
	$(PY) stack/launcher.py --reset

# Checks the running stack's books; exits non-zero when api.auditoria() reports a violation.
auditoria: .venv/.installed
	$(PY) stack/launcher.py --auditoria

# Prometheus on 127.0.0.1:9090 beside the running stack (any topology),
# scraping its metrics endpoints every second; Ctrl-C stops it.
observar: .venv/.installed
	$(PY) stack/observar.py

# The same stack in Docker (compose.yml), in the foreground; Ctrl-C stops it and
# removes its containers, the database's volume stays. Builds what is missing.
docker:
	python3 docker/projeto.py

test: .venv/.installed
	$(PY) -m pytest

lint: .venv/.installed
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/sqlfluff lint db

.venv/.installed: requirements.txt requirements-dev.txt stack/install.sh
	bash stack/install.sh
