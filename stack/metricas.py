"""The metrics endpoints of a stack, as data: what each one answers, where it
listens, and the process that serves it. None is on a request's path: HAProxy
serves its own on a listener apart from the API's port, the others are
processes of their own that Prometheus asks.

    haproxy    HAProxy's built-in Prometheus exporter (haproxy.cfg's frontend
               `metricas`): frontends, backends, each worker as a server
    postgres   prometheus-postgres-exporter, one per database node, through
               the node's unix socket as `crebito_metricas` (peer, pg_monitor);
               each database's size (stack/metricas-no.yml) and crebito's own
               figures (stack/metricas.yml) where a node sees the whole ledger
    processos  stack/consumo.py: CPU and memory of each process of the stack

Each listens on 127.0.0.1 at the port its variable names (the postgres
exporters from that port on, one per node), or at a free port when that one
is taken (a second stack on the machine, a test); the addresses in use are
recorded in <var>/metricas.json, where `make observar` finds them. A compose
project's (docker/projeto.py) are recorded the same way, in pasta_docker(name).
"""

import fcntl
import json
import os
import shutil
import socket
import sys
from dataclasses import asdict, dataclass

from cluster import log
from processos import Processo

RAIZ = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPORTADOR_PG = "prometheus-postgres-exporter"
# (job, variable, default address)
PADROES = (
    ("haproxy", "CREBITO_METRICAS_HAPROXY", "127.0.0.1:8404"),
    ("postgres", "CREBITO_METRICAS_POSTGRES", "127.0.0.1:9187"),
    ("processos", "CREBITO_METRICAS_PROCESSOS", "127.0.0.1:9256"),
)
# Whether a node's exporter asks crebito's figures (ops.metricas): a Citus
# worker holds only some of the clients, and would run the whole audit again.
PAPEIS_COM_LIVRO = {"unico", "coordenador", "patroni"}
# The exporter's queries files: every node's, then crebito's (both YAML maps,
# so the second file appended to the first is one map).
QUERIES = ("metricas-no.yml", "metricas.yml")
# Nodes whose process (Patroni) runs PostgreSQL detached from its own tree:
# stack/consumo.py finds the postmaster by its data directory.
PAPEIS_DESTACADOS = {"patroni"}


@dataclass(frozen=True)
class Alvo:
    job: str
    endereco: str  # host:port
    no: str = ""  # the database node a postgres exporter watches


def arquivo(var):
    return os.path.join(var, "metricas.json")


def _livre(host, porta):
    with socket.socket() as s:
        # As the servers bind: a port whose last connections linger in
        # TIME_WAIT is free for them.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, porta))
            return True
        except OSError:
            return False


def _endereco(job, host, porta):
    if _livre(host, porta):
        return f"{host}:{porta}"
    with socket.socket() as s:
        s.bind((host, 0))
        livre = s.getsockname()[1]
    log(f"metrics: {host}:{porta} is taken; {job} on {host}:{livre}")
    return f"{host}:{livre}"


def escolher(var, nos):
    """The endpoints of this start, recorded in <var>/metricas.json."""
    alvos = []
    for job, variavel, padrao in PADROES:
        host, porta = os.environ.get(variavel, padrao).rsplit(":", 1)
        if job != "postgres":
            alvos.append(Alvo(job, _endereco(job, host, int(porta))))
        elif shutil.which(EXPORTADOR_PG) is None:
            log(f"metrics: {EXPORTADOR_PG} is not installed (bash stack/install.sh); PostgreSQL's are off")
        else:
            alvos += [Alvo(job, _endereco(job, host, int(porta) + i), no.nome) for i, no in enumerate(nos)]
    gravar(var, alvos)
    # The exporters read their queries beside the data, not in the project
    # (which their user may not reach, e.g. a clone under /root): every node's
    # own, and those followed by crebito's for the nodes that see the ledger.
    for com_livro in (False, True):
        with open(consultas(var, com_livro), "w") as f:
            for nome in QUERIES[: 1 + com_livro]:
                with open(os.path.join(RAIZ, "stack", nome)) as origem:
                    f.write(origem.read())
    return alvos


def gravar(var, alvos):
    with open(arquivo(var), "w") as f:
        json.dump([asdict(a) for a in alvos], f, indent=1)


# Held (flock) while a stack runs with a data directory: the launcher's, or
# docker/projeto.py's in a compose project's folder.
TRAVA = "launcher.lock"


def travar(var):
    """Takes var's lock for as long as the returned file stays open; raises
    BlockingIOError when another stack holds it."""
    os.makedirs(var, exist_ok=True)
    trava = open(os.path.join(var, TRAVA), "w")
    try:
        fcntl.flock(trava, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        trava.close()
        raise
    return trava


def rodando(var):
    """Whether a stack holds var's lock."""
    try:
        with open(os.path.join(var, TRAVA)) as trava:
            fcntl.flock(trava, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except FileNotFoundError:
        pass
    return False


def pasta_docker(projeto):
    """Where docker/projeto.py records a compose project's endpoints and the
    files its processes exporter reads: beside the native stack's data, so
    whoever may enter that (the exporter's user) may enter this too."""
    import launcher  # imports this module: asked only here

    return os.path.join(launcher.var_padrao(), "docker", projeto)


def pastas():
    """Where a stack's endpoints may be recorded, in the order they are
    looked for: CREBITO_VAR's alone when it is set, else the native stack's
    default data directory and the default compose project's folder."""
    if os.environ.get("CREBITO_VAR"):
        return [os.path.abspath(os.environ["CREBITO_VAR"])]
    import launcher

    projeto = os.environ.get("COMPOSE_PROJECT_NAME") or os.path.basename(RAIZ)
    return [launcher.var_padrao(), pasta_docker(projeto)]


def procurar():
    """The folder of the running stack (the first of pastas() whose lock is
    held), else the first with a metricas.json, else the first."""
    candidatas = pastas()
    com_arquivo = [p for p in candidatas if os.path.exists(arquivo(p))]
    return next((p for p in com_arquivo if rodando(p)), (com_arquivo or candidatas)[0])


def consultas(var, com_livro):
    return os.path.join(var, QUERIES[com_livro])


def escutar(endereco):
    """A listening socket on endereco, for a process to inherit (HAProxy's
    `bind fd@N`): held by the launcher, the port stays the stack's across
    HAProxy's restarts, so a metrics port taken meanwhile can never keep
    HAProxy, and the API behind it, from starting again."""
    host, porta = endereco.rsplit(":", 1)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(porta)))
    s.listen(128)
    s.set_inheritable(True)
    return s


def ler(var):
    """The endpoints the running stack of `var` recorded."""
    with open(arquivo(var)) as f:
        return [Alvo(**a) for a in json.load(f)]


def endereco(alvos, job):
    return next(a.endereco for a in alvos if a.job == job)


def processos(alvos, nos, var, nomes, como, usuario):
    """The exporters' processes: one per postgres endpoint, run as `como`
    says, and stack/consumo.py for the processes `nomes` and the exporters
    themselves (what watching costs is seen too), which switches to
    `usuario` itself once bound (as the API does: the project's Python may
    be out of that user's reach). Stopped with the front, before the database."""
    por_nome = {no.nome: no for no in nos}
    lista = []
    for alvo in alvos:
        if alvo.job == "postgres":
            no = por_nome[alvo.no]
            # pg_settings (about 4 ms of the database's CPU per scrape) changes
            # only on a reload; the database sizes come from metricas-no.yml.
            cmd = [EXPORTADOR_PG, f"--web.listen-address={alvo.endereco}", "--log.level=warn"]
            cmd += ["--disable-settings-metrics", "--no-collector.database"]
            cmd.append(f"--extend.query-path={consultas(var, no.papel in PAPEIS_COM_LIVRO)}")
            # The node's socket, by OS user (peer): no password to keep.
            dsn = f"host={no.pgrun} port={no.porta} dbname=crebito user=crebito_metricas sslmode=disable"
            env = dict(os.environ, DATA_SOURCE_NAME=dsn)
            lista.append(Processo(f"metricas-{no.nome}", cmd, env, como))
    for alvo in alvos:
        if alvo.job == "processos":
            destacados = {no.nome: f"{no.nome}={no.pgdata}" for no in nos if no.papel in PAPEIS_DESTACADOS}
            medidos = [destacados.get(n, n) for n in [*nomes, *(p.nome for p in lista), "metricas-processos"]]
            cmd = [sys.executable, os.path.join(RAIZ, "stack", "consumo.py"), alvo.endereco, var, *medidos]
            env = dict(os.environ)
            env.pop("CREBITO_USUARIO", None)
            if usuario is not None:
                env["CREBITO_USUARIO"] = usuario
            lista.append(Processo("metricas-processos", cmd, env))
    return lista
