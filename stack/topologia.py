"""The database nodes of a stack, as data.

Single-node: one cluster, `postgres`, reached only through its unix socket.
Distributed (Citus): a coordinator and N workers, each its own cluster under
the data directory, listening on 127.0.0.1. The choice is made when the data
directory is created and recorded in it (topologia.json), so a restart, `make
auditoria` and the tests find the same nodes on the same ports.
"""

import json
import os
import socket
from dataclasses import asdict, dataclass

PORTA_SOCKET = 5432  # single-node: only names the unix socket


@dataclass(frozen=True)
class No:
    nome: str  # process name, pid file and folder: postgres, coordenador, worker1, ...
    papel: str  # unico, coordenador or worker
    pgdata: str
    pgrun: str  # unix socket directory
    porta: int  # TCP port on 127.0.0.1 (distributed) or the socket's name (single-node)

    @property
    def tcp(self):
        return self.papel != "unico"


def _arquivo(var):
    return os.path.join(var, "topologia.json")


def _porta_livre():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def definir(var, workers, base=None):
    """Records a new topology: ports from `base` on, or free ones."""
    portas = []
    while workers and len(portas) < workers + 1:
        porta = base + len(portas) if base else _porta_livre()
        if porta not in portas:
            portas.append(porta)
    lista = nos(var, workers, portas)
    with open(_arquivo(var), "w") as f:
        json.dump({"nos": [asdict(n) for n in lista]}, f, indent=1)
    return lista


def coordenador(lista):
    """The node that takes DDL and the audit: the coordinator, or the only node."""
    return lista[0]


def workers(lista):
    return [n for n in lista if n.papel == "worker"]
