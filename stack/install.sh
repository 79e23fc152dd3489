#!/usr/bin/env bash
# Installs what crebito needs: the Debian packages (when missing and running as
# root; otherwise it names them) and the Python environment in .venv.
# With CREBITO_CITUS_TARBALL=/path/citus-....tar.gz (a build of Citus's `make
# install`, relative to /), also Citus for the distributed topology, and a
# postgresql-15 recent enough for that build (15.20 or later).
set -euo pipefail
cd "$(dirname "$0")/.."

faltam=()
command -v haproxy >/dev/null || faltam+=(haproxy)
[ -e /usr/include/ev.h ] || faltam+=(libev-dev)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || faltam+=(postgresql)
command -v psql >/dev/null || faltam+=(postgresql-client)
command -v pgbench >/dev/null || faltam+=(postgresql-contrib)
# The high-availability topology (make ha): Patroni, etcd and pgBackRest.
command -v patroni >/dev/null || faltam+=(patroni)
command -v etcd >/dev/null || faltam+=(etcd-server)
command -v pgbackrest >/dev/null || faltam+=(pgbackrest)
# Metrics (stack/metricas.py): PostgreSQL's exporter, and Prometheus for `make observar`.
command -v prometheus-postgres-exporter >/dev/null || faltam+=(prometheus-postgres-exporter)
command -v prometheus >/dev/null || faltam+=(prometheus)
# The saturation benchmark (bench/saturacao.py) drives wrk.
command -v wrk >/dev/null || faltam+=(wrk)
# The load report's test renders it in a headless browser (bench/test_relatorio.py).
command -v chromium >/dev/null || faltam+=(chromium)
python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
    || faltam+=(python3-dev)
python3 -c 'import venv, ensurepip' 2>/dev/null || faltam+=(python3-venv)

if [ ${#faltam[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "crebito: installing ${faltam[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${faltam[@]}" gcc >/dev/null
        # Their Debian services would take the ports the stack's own use
        # (:9090, :9187) on a machine run by systemd: only the binaries serve here.
        for servico in prometheus prometheus-postgres-exporter; do
            if [[ " ${faltam[*]} " == *" $servico "* ]] && [ -d /run/systemd/system ]; then
                systemctl disable --now "$servico" >/dev/null 2>&1 || true
            fi
        done
    else
        echo "crebito: missing Debian packages: ${faltam[*]}" >&2
        echo "crebito: install them with: sudo apt-get install ${faltam[*]}" >&2
        exit 1
    fi
fi

# The API instances' own OS user: a root launcher runs them as it, so they can
# reach the database only as crebito_api (HAProxy's user comes with its package);
# and the metrics exporters', which reaches it only as crebito_metricas.
for usuario in crebito-api crebito-metricas; do
    if [ "$(id -u)" = 0 ] && ! id "$usuario" >/dev/null 2>&1; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$usuario"
    fi
done

if [ -n "${CREBITO_CITUS_TARBALL:-}" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "crebito: installing Citus from $CREBITO_CITUS_TARBALL needs root" >&2
        exit 1
    fi
    [ -f "$CREBITO_CITUS_TARBALL" ] || { echo "crebito: no such file: $CREBITO_CITUS_TARBALL" >&2; exit 1; }
    # The build links against PostgreSQL 15.20's server: an older 15 is upgraded.
    versao=$(dpkg-query -W -f '${Version}' postgresql-15 2>/dev/null || true)
    if [ -z "$versao" ] || dpkg --compare-versions "$versao" lt 15.20; then
        echo "crebito: installing postgresql-15 >= 15.20 for Citus"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            postgresql-15 postgresql-client-15 libcurl4 liblz4-1 libzstd1 >/dev/null
    fi
    tar -C / -xzf "$CREBITO_CITUS_TARBALL"
    echo "crebito: Citus installed from $CREBITO_CITUS_TARBALL"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
touch .venv/.installed
