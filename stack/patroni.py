"""What the high-availability topology adds to a node, in one place: Patroni's
configuration of each node (written as JSON, which Patroni reads as YAML) and
etcd's command line. The PostgreSQL settings stay those of
stack/postgresql.conf (each node's `custom_conf`); HA adds only the
replication settings below, and Patroni writes `synchronous_standby_names`.

The promise: with both nodes up, a commit returns (and so an answer leaves)
only once it is flushed on the primary and on its synchronous standby
(`synchronous_commit = on` with Patroni's synchronous mode). Only the
synchronous standby may be promoted, so a failover loses no acknowledged
commit. Not strict: once a node is lost (the primary, after the failover, or
the standby), the survivor goes on alone, each commit flushed on its own disk
as in the single-node topology, until the other is back and has caught up;
strict mode would instead stop every write until then.
"""

import http.client
import json
import os

ESCOPO = "crebito"

# Failure detection: the leader key lives `ttl` seconds in etcd unless its
# holder renews it (every `loop_wait`); a standby promotes itself once it has
# expired. Patroni wants ttl >= loop_wait + 2 * retry_timeout; shorter, a
# leader slowed down by a busy machine loses its key to no failure at all.
# A frozen primary costs 2 s more than a dead one: the standby asks its REST
# API before taking the key, and Patroni waits 2 s for the answer. So 7 s:
# the least the rule allows, to keep a frozen primary's failover under 10 s.
DCS = {
    "ttl": 7,
    "loop_wait": 1,
    "retry_timeout": 3,
    "maximum_lag_on_failover": 0,
    "synchronous_mode": True,
    "synchronous_mode_strict": False,
    "postgresql": {
        # The old primary comes back as a standby by rewinding what it wrote
        # past the promotion (none of it was acknowledged: strict sync).
        "use_pg_rewind": True,
        "use_slots": True,
    },
}

# On top of stack/postgresql.conf (which sets wal_level = minimal and no WAL
# senders, for the single node).
PARAMETROS_HA = {
    "wal_level": "replica",
    "max_wal_senders": 4,
    "max_replication_slots": 4,
    # pg_rewind needs hint-bit changes in the WAL.
    "wal_log_hints": "on",
    "hot_standby": "on",
    # Every WAL segment to pgBackRest's repository (stack/backup.py), from
    # whichever node is the primary.
    "archive_mode": "on",
}

# Settings Patroni passes on postgres's command line (so a value in the
# custom_conf would be overridden by Patroni's default): taken from
# stack/postgresql.conf into the cluster-wide configuration instead.
DE_PATRONI = ("max_connections", "max_locks_per_transaction", "max_worker_processes", "max_prepared_transactions")


def _configuracoes(texto):
    lidas = {}
    for linha in texto.splitlines():
        linha = linha.split("#", 1)[0].strip()
        if "=" in linha:
            chave, valor = (p.strip() for p in linha.split("=", 1))
            lidas[chave] = valor.strip("'")
    return lidas


def config(no, etcd_cliente, senhas, bin_dir, custom_conf, base_conf, pg_ident, archive_command):
    """Patroni's configuration of node `no` (stack/topologia.py)."""
    parametros = {k: v for k, v in _configuracoes(base_conf).items() if k in DE_PATRONI}
    pasta = os.path.dirname(no.pgdata)
    return {
        "scope": ESCOPO,
        "name": no.nome,
        "log": {"level": "WARNING"},
        "restapi": {
            "listen": f"127.0.0.1:{no.porta_rest}",
            "connect_address": f"127.0.0.1:{no.porta_rest}",
            # Reads (who is primary) are open; changes need the password.
            "authentication": {"username": "patroni", "password": senhas["patroni"]},
        },
        # etcd's v2 API: there Patroni renews the leader key only while it still
        # holds its own name (compare-and-swap). Patroni 3.0's v3 client renews
        # it unconditionally once its lease has expired, so a primary that
        # froze past the ttl and woke up took the key back from the promoted
        # standby, which then rewound away the writes it had acknowledged.
        "etcd": {"hosts": [f"127.0.0.1:{etcd_cliente}"]},
        "bootstrap": {
            "dcs": {**DCS, "postgresql": {**DCS["postgresql"], "parameters": {**parametros, **PARAMETROS_HA}}},
            "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, {"auth-local": "peer"}, {"auth-host": "scram-sha-256"}],
        },
        "postgresql": {
            "listen": f"127.0.0.1:{no.porta}",
            "connect_address": f"127.0.0.1:{no.porta}",
            "data_dir": no.pgdata,
            "bin_dir": bin_dir,
            "custom_conf": custom_conf,
            "pgpass": os.path.join(pasta, "pgpass"),
            # Patroni's own connections go through the socket, by OS user.
            "use_unix_socket": True,
            "authentication": {
                "superuser": {"username": "postgres", "password": senhas["postgres"]},
                "replication": {"username": "replicador", "password": senhas["replicador"]},
                "rewind": {"username": "postgres", "password": senhas["postgres"]},
            },
            "parameters": {"unix_socket_directories": no.pgrun, "archive_command": archive_command},
            # Never trust: the socket by OS user (pg_ident below), TCP (the
            # other node's replication and pg_rewind) with a SCRAM password.
            "pg_hba": [
                "local all all peer map=crebito",
                "host replication replicador 127.0.0.1/32 scram-sha-256",
                "host all postgres 127.0.0.1/32 scram-sha-256",
            ],
            "pg_ident": pg_ident,
        },
    }


def primario(nos):
    """The node whose Patroni answers 200 on /primary, or None."""
    return next((no for no in nos if status_rest(no, "/primary") == 200), None)


def status_rest(no, caminho):
    """The status of GET caminho on node no's REST API, or None."""
    conn = http.client.HTTPConnection("127.0.0.1", no.porta_rest, timeout=1)
    try:
        conn.request("GET", caminho)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def escrever(caminho, dados):
    fd = os.open(caminho, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(dados, f, indent=1)


def comando_etcd(var, cliente, pares):
    """One etcd member on 127.0.0.1, its data under var/etcd."""
    url_cliente = f"http://127.0.0.1:{cliente}"
    url_pares = f"http://127.0.0.1:{pares}"
    return [
        "etcd",
        "--name",
        ESCOPO,
        "--data-dir",
        os.path.join(var, "etcd"),
        "--listen-client-urls",
        url_cliente,
        "--advertise-client-urls",
        url_cliente,
        "--listen-peer-urls",
        url_pares,
        "--initial-advertise-peer-urls",
        url_pares,
        "--initial-cluster",
        f"{ESCOPO}={url_pares}",
        "--log-level",
        "warn",
        "--enable-v2=true",
    ]
