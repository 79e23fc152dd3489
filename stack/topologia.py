"""The database nodes of a stack, as data.

Single-node: one cluster, `postgres`, reached only through its unix socket.
Distributed (Citus): a coordinator and N workers, each its own cluster under
the data directory, listening on 127.0.0.1.
High availability (HA): two clusters, `pg1` and `pg2`, each run by Patroni,
one the primary and the other its synchronous standby, replicating over
127.0.0.1; Patroni's REST API on a port of each node's own, and one etcd
member holding who is the primary.
The choice is made when the data directory is created and recorded in it
(topologia.json), so a restart, `make auditoria` and the tests find the same
nodes on the same ports.
"""

import json
import os
import socket
from dataclasses import asdict, dataclass

PORTA_SOCKET = 5432  # single-node: only names the unix socket


@dataclass(frozen=True)
class No:
    nome: str  # process name, pid file and folder: postgres, coordenador, worker1, pg1, ...
    papel: str  # unico, coordenador, worker or patroni
    pgdata: str
    pgrun: str  # unix socket directory
    porta: int  # TCP port on 127.0.0.1 (distributed, HA) or the socket's name (single-node)
    porta_rest: int = 0  # HA: Patroni's REST API on 127.0.0.1

    @property
    def tcp(self):
        return self.papel != "unico"


def _arquivo(var):
    return os.path.join(var, "topologia.json")


def _porta_livre():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nos_ha(var, portas):
    """The two Patroni nodes: portas holds each one's PostgreSQL port, then
    each one's REST port."""
    return [
        No(nome, "patroni", os.path.join(var, nome, "pgdata"), os.path.join(var, nome, "pgrun"), pg, rest)
        for nome, pg, rest in zip(("pg1", "pg2"), portas[:2], portas[2:4], strict=True)
    ]


def nos(var, workers, portas):
    """The nodes of a stack with `workers` Citus workers (0: single-node)."""
    if workers == 0:
        return [No("postgres", "unico", os.path.join(var, "pgdata"), os.path.join(var, "pgrun"), PORTA_SOCKET)]
    nomes = ["coordenador"] + [f"worker{i}" for i in range(1, workers + 1)]
    return [
        No(
            nome,
            "coordenador" if i == 0 else "worker",
            os.path.join(var, nome, "pgdata"),
            os.path.join(var, nome, "pgrun"),
            porta,
        )
        for i, (nome, porta) in enumerate(zip(nomes, portas, strict=True))
    ]


def ler(var):
    """The recorded topology of `var`, or None when none was recorded yet (a
    single-node data directory from before topologies were recorded is single-node)."""
    try:
        with open(_arquivo(var)) as f:
            dados = json.load(f)
    except FileNotFoundError:
        return None
    return [No(**n) for n in dados["nos"]]


def etcd(var):
    """HA: etcd's (client, peer) ports on 127.0.0.1."""
    with open(_arquivo(var)) as f:
        return tuple(json.load(f)["etcd"])


def _portas(quantas, base):
    portas = []
    while len(portas) < quantas:
        porta = base + len(portas) if base else _porta_livre()
        if porta not in portas:
            portas.append(porta)
    return portas


def definir(var, workers, base=None, ha=False):
    """Records a new topology: ports from `base` on, or free ones."""
    extra = {}
    if ha:
        portas = _portas(6, base)
        lista = nos_ha(var, portas[:4])
        extra["etcd"] = portas[4:]
    else:
        lista = nos(var, workers, _portas(workers + 1 if workers else 0, base))
    with open(_arquivo(var), "w") as f:
        json.dump({"nos": [asdict(n) for n in lista], **extra}, f, indent=1)
    return lista


def ha(lista):
    return lista[0].papel == "patroni"


# What each topology adds to the API instances' environment, by its first
# node's role. HA: a primary that hangs (a frozen machine) keeps its sockets
# open, so no call may wait for it longer than this. Citus: each call to the
# worker that holds its client (server.py's Roteador).
AMBIENTE_API = {
    "patroni": {"CREBITO_PRAZO_BANCO": "3"},
    "coordenador": {"CREBITO_ROTEAMENTO": "citus"},
}


# Citus: shards of each table per worker the cluster is created with, instead
# of Citus's 32 in all. Each API session on a worker keeps three prepared
# statements and the relation caches of every shard it touches: with 8 shards
# a worker spent 0.89x the CPU per call of one with 32 under pgbench, and 4 per
# worker about 0.95x through the API (bench/RESULTADOS.md, 2026-12-07).
# Shards move between workers, so a cluster grows by moving them up to this
# many times its first size; past that, alter_distributed_table(shard_count
# => N) rewrites the tables.
SHARDS_POR_WORKER = 4


def shards(lista):
    return SHARDS_POR_WORKER * len(workers(lista))


def ambiente_api(lista):
    return AMBIENTE_API.get(lista[0].papel, {})


def coordenador(lista):
    """The node that takes DDL and the audit: the coordinator, or the only node
    (HA: the first node, which may be the standby; see the launcher's primario)."""
    return lista[0]


def workers(lista):
    return [n for n in lista if n.papel == "worker"]
