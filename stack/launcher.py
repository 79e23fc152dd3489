"""Starts and supervises crebito's native stack in the foreground.

PostgreSQL (a private cluster under the data directory), two API instances
(server.py) and HAProxy on :9999; with CREBITO_CITUS_WORKERS=N, a Citus
coordinator and N workers instead of the one cluster (stack/topologia.py), the
API instances connected straight to the workers; with CREBITO_HA=1, two
clusters run by Patroni, a primary and its synchronous standby, with one etcd
member (stack/patroni.py), the API instances connected to whichever is the
primary. Each cluster is created and configured by stack/cluster.py; the
processes of a topology are listed here, as data (stack/processos.py's
Processo), and whatever dies is started again (stack/processos.py); Ctrl-C or
SIGTERM stops everything cleanly. Started as root, nothing it
starts stays root: PostgreSQL runs as `postgres`, the API instances as
`crebito-api` and HAProxy as `haproxy`, each switching user once its socket is
bound. `--reset` wipes the data first, so the
database holds only the five initial clients again. `--auditoria` starts
nothing: it checks the running stack's books with api.auditoria() and exits
non-zero when they show a violation.

Environment:
    CREBITO_VAR       data directory (default: var/ in the project, or
                      /var/lib/crebito-<path> when root and the project
                      directory is not reachable by the postgres user)
    CREBITO_PORT      HTTP port of HAProxy (default 9999)
    CREBITO_WORKERS   workers per API instance, 1 to 4 (default 3)
    CREBITO_PG_BIN    directory of PostgreSQL's binaries (default: found)
    CREBITO_PG_CONF   extra postgresql.conf settings file, included last
    CREBITO_CITUS_WORKERS  Citus workers of a new data directory (default 0:
                      single-node); an existing one keeps the topology it has
    CREBITO_CITUS_PORT     first TCP port of the Citus nodes (default: free ports)
    CREBITO_HA        1: the high-availability topology for a new data directory
    CREBITO_METRICAS_HAPROXY, CREBITO_METRICAS_POSTGRES, CREBITO_METRICAS_PROCESSOS
                      where the metrics endpoints listen (stack/metricas.py)
"""

import argparse
import contextlib
import http.client
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time

import backup
import metricas
import patroni
import processos
import rotas
import segredos
import topologia
from cluster import RAIZ, Cluster, log, pg_bin
from processos import Processo

PG_PORTA = str(topologia.PORTA_SOCKET)  # single-node: only names the unix socket
# The processes in front of the database: started once it answers.
FRENTE = ("api01", "api02", "haproxy")
# The OS users a root launcher runs the API instances and HAProxy as; stack/install.sh creates the first.
USUARIO_API = "crebito-api"
USUARIO_HAPROXY = "haproxy"
# The exporters' (stack/metricas.py); PostgreSQL lets it in only as crebito_metricas.
USUARIO_METRICAS = "crebito-metricas"


def esperar_200(porta, limite=30):
    """True once GET /clientes/1/extrato on 127.0.0.1:`porta` answers 200
    (the official readiness probe), False after `limite` seconds."""
    # http.client, not urllib: an http_proxy in the environment must not
    # stand between the caller and 127.0.0.1.
    fim = time.monotonic() + limite
    while time.monotonic() < fim:
        conn = http.client.HTTPConnection("127.0.0.1", int(porta), timeout=1)
        try:
            conn.request("GET", "/clientes/1/extrato")
            if conn.getresponse().status == 200:
                return True
        except (OSError, http.client.HTTPException):
            time.sleep(0.05)
        finally:
            conn.close()
    return False


class Stack(Cluster):
    def __init__(self, var, nos):
        self.var = os.path.abspath(var)
        self.nos = nos
        self.ha = topologia.ha(nos)
        self.citus = len(nos) > 1 and not self.ha
        self.sock = os.path.join(self.var, "sock")
        self.bin = pg_bin()
        self.porta = os.environ.get("CREBITO_PORT", "9999")
        self.workers = os.environ.get("CREBITO_WORKERS", "3")
        if self.workers not in ("1", "2", "3", "4"):
            sys.exit("crebito: CREBITO_WORKERS must be 1 to 4 (haproxy.cfg has a server for each of up to 4)")
        # Started as root, each component gets a user of its own (PostgreSQL
        # refuses root anyway); otherwise everything runs as the caller.
        root = os.geteuid() == 0
        self.usuario = "postgres" if root else None
        self.usuario_api = USUARIO_API if root else None
        self.usuario_haproxy = USUARIO_HAPROXY if root else None
        self.usuario_metricas = USUARIO_METRICAS if root else None
        for usuario in (self.usuario, self.usuario_api, self.usuario_haproxy, self.usuario_metricas):
            if usuario is not None:
                try:
                    pwd.getpwnam(usuario)
                except KeyError:
                    sys.exit(f"crebito: OS user {usuario} is missing; run `bash stack/install.sh` as root to create it")
        # Who started the stack: besides each component's own user, the only
        # OS user the database lets in (the tests, make auditoria, bench/).
        self.dono = pwd.getpwuid(os.geteuid()).pw_name
        self.supervisor = processos.Supervisor(self.var)

    def conninfo_api(self, nome):
        """Citus: every worker, api01's list from worker 1, api02's from worker
        2. server.py sends each call to the worker that holds its client and
        asks the first one that answers for the map; any worker would take
        any client's call and hand it to the client's node.
        HA: both nodes' sockets, and libpq keeps the one that takes writes.
        Single-node: the cluster's socket."""
        if self.ha:
            hosts = ",".join(no.pgrun for no in self.nos)
            portas = ",".join(str(no.porta) for no in self.nos)
            return f"host={hosts} port={portas} dbname=crebito user=crebito_api target_session_attrs=read-write"
        if not self.citus:
            no = self.nos[0]
            return f"host={no.pgrun} port={no.porta} dbname=crebito user=crebito_api"
        ws = topologia.workers(self.nos)
        i = (int(nome[-1]) - 1) % len(ws)
        portas = ",".join(str(no.porta) for no in ws[i:] + ws[:i])
        hosts = ",".join("127.0.0.1" for _ in ws)
        return f"host={hosts} port={portas} dbname=crebito user=crebito_api passfile={segredos.arquivo_api(self.var)}"

    # -- processes ----------------------------------------------------------

    def processos(self):
        """Every process of this topology, in the order they start."""
        lista = []
        if self.ha:
            cliente, pares = topologia.etcd(self.var)
            lista.append(
                Processo(
                    "etcd",
                    patroni.comando_etcd(self.var, cliente, pares),
                    como=self._como_postgres(),
                    ordem_de_parada=9,
                )
            )
        lista += [self._processo_do_no(i, no) for i, no in enumerate(self.nos)]
        # Citus: the shard map server.py writes for HAProxy's roteamento.lua.
        mapa = {"CREBITO_MAPA": os.path.join(self.sock, "mapa")} if self.citus else {}
        for nome in ("api01", "api02"):
            env = dict(
                os.environ,
                CREBITO_LISTEN=f"unix:{self.sock}/{nome}-{{worker}}.sock",
                CREBITO_WORKERS=self.workers,
                DATABASE_URL=f"{self.conninfo_api(nome)} application_name=crebito connect_timeout=2",
                **topologia.ambiente_api(self.nos),
                **mapa,
            )
            lista.append(
                Processo(
                    nome,
                    [sys.executable, os.path.join(RAIZ, "server.py")],
                    self._como(env, self.usuario_api),
                    ordem_de_parada=1,
                )
            )
        # One server per worker in HAProxy, so a request only goes to a free one.
        env = dict(os.environ, CREBITO_BIND=f"*:{self.porta}")
        env.update({f"CREBITO_{nome.upper()}": caminho for nome, caminho in self._sockets()})
        # HAProxy's own Prometheus exporter, on a listener apart from the API's,
        # bound here once (stack/metricas.py's escutar).
        fd = self.escuta_metricas.fileno()
        env["CREBITO_METRICAS"] = f"fd@{fd}"
        haproxy = ["haproxy", "-db", "-f", os.path.join(RAIZ, "haproxy.cfg")]
        if self.citus:
            cfg = os.path.join(self.var, "haproxy-nos.cfg")
            with open(cfg, "w") as f:
                f.write(rotas.configuracao(self._sockets(), [no.porta for no in topologia.workers(self.nos)]))
            env.update(mapa, CREBITO_ROTAS=os.path.join(RAIZ, "roteamento.lua"))
            haproxy += ["-f", cfg]
        lista.append(Processo("haproxy", haproxy, self._como(env, self.usuario_haproxy), fds=(fd,)))
        nomes = [p.nome for p in lista]
        como = self._como_metricas()
        return lista + metricas.processos(self.alvos, self.nos, self.var, nomes, como, self.usuario_metricas)

    def _como_metricas(self):
        """The exporters' user, with the API's group as well: the one group
        that may enter the database's socket directory, and which reaches
        nothing else (the API's sockets and password file are its user's)."""
        if self.usuario_metricas is None:
            return {}
        info = pwd.getpwnam(self.usuario_metricas)
        return {"user": info.pw_uid, "group": info.pw_gid, "extra_groups": [pwd.getpwnam(self.usuario_api).pw_gid]}

    def _processo_do_no(self, i, no):
        """A database node: postgres itself, or (HA) Patroni, which runs it.
        Stopped after the front, Citus's workers before their coordinator
        (which would otherwise keep reconnecting to them)."""
        ordem = 2 + len(self.nos) - i
        if self.ha:
            cfg = os.path.join(os.path.dirname(no.pgdata), "patroni.yml")
            return Processo(
                no.nome, ["patroni", cfg], como=self._como_postgres(), ordem_de_parada=ordem, espera_de_parada=40
            )
        env = None
        if self.citus:
            # Citus's connections to the other nodes find their passwords
            # here, and libpq its client files in the server user's home.
            env = dict(os.environ, PGPASSFILE=segredos.arquivo_nos(self.var))
            if self.usuario is not None:
                env["HOME"] = pwd.getpwnam(self.usuario).pw_dir
        return Processo(
            no.nome,
            [f"{self.bin}/postgres", "-D", no.pgdata],
            env,
            self._como_postgres(),
            sinal_de_parada=signal.SIGINT,
            ordem_de_parada=ordem,
        )

    @staticmethod
    def _como(env, usuario):
        """The API and HAProxy start as the launcher's user, so they can read
        the project wherever it is, and switch to CREBITO_USUARIO themselves
        once their socket is bound, before they serve anything."""
        env.pop("CREBITO_USUARIO", None)
        if usuario is not None:
            env["CREBITO_USUARIO"] = usuario
        return env

    def _sockets(self):
        """(api01_1, path), ...: each worker's own socket."""
        return [
            (f"{api}_{n}", os.path.join(self.sock, f"{api}-{n}.sock"))
            for api in ("api01", "api02")
            for n in range(1, int(self.workers) + 1)
        ]

    @staticmethod
    def _aceita(caminho):
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(caminho)
                return True
            except OSError:
                return False

    def rodar(self):
        t0 = time.monotonic()
        if self.citus:
            self.verificar_citus()
        if (self.citus or self.ha) and not os.path.exists(segredos.arquivo_nos(self.var)):
            segredos.gerar(self.var, self.usuario, self.usuario_api)
        novo = False
        for no in self.nos:
            novo = self.preparar_cluster(no) or novo
            self.configurar(no)
        if self.ha:
            backup.preparar(self.var, self.usuario)
        self.alvos = metricas.escolher(self.var, self.nos)
        self.escuta_metricas = metricas.escutar(metricas.endereco(self.alvos, "haproxy"))
        todos = {p.nome: p for p in self.processos()}
        for p in todos.values():
            if p.nome not in FRENTE:
                self.supervisor.iniciar(p)
        if self.ha:
            no = self.primario()
            self.esperar_postgres(no)
            novo = not self.tem_banco(no)
        else:
            no = topologia.coordenador(self.nos)
            for n in self.nos:
                self.esperar_postgres(n)
        if novo:
            self.carregar_schema(no)
        else:
            # A database made before the metrics' role and function gets them.
            self.psql(no, "-c", "set client_min_messages = warning", "-f", "db/metricas.sql")
        if self.ha:
            # The repository's stanza for this cluster (again on every start:
            # a no-op once made), so the primary's WAL can be archived.
            backup.pgbackrest(no, "stanza-create", usuario=self.usuario, check=True, stdout=subprocess.DEVNULL)
        for nome in ("api01", "api02"):
            self.supervisor.iniciar(todos[nome])
        # HAProxy last, once both instances accept connections (a stale socket
        # file from an earlier run refuses them), so it never starts with an
        # instance marked down.
        fim = time.monotonic() + 5
        while not all(self._aceita(caminho) for _, caminho in self._sockets()) and time.monotonic() < fim:
            time.sleep(0.01)
        self.supervisor.iniciar(todos["haproxy"])
        if esperar_200(self.porta):
            log(f"ready on http://127.0.0.1:{self.porta} in {time.monotonic() - t0:.2f}s (Ctrl-C stops)")
        else:
            log("the API did not answer within 30s; still trying")
        self.supervisor.supervisionar()

    def parar(self):
        self.supervisor.parar()


def var_padrao():
    """var/ in the project, unless PostgreSQL (running as `postgres` because
    we are root) could not reach it there, e.g. in a clone under /root."""
    var = os.path.join(RAIZ, "var")
    if os.geteuid() == 0:
        caminho = RAIZ
        while caminho != "/":
            if not os.stat(caminho).st_mode & 0o001:
                return "/var/lib/crebito" + RAIZ.replace("/", "-")
            caminho = os.path.dirname(caminho)
    return var


def auditar(var):
    """`make auditoria`: prints each violation api.auditoria() finds in the
    running cluster's books, one per line; exits 1 if there is any, 2 if the
    database could not be asked."""
    nos = topologia.ler(var) or topologia.nos(var, 0, [])
    # HA: the primary, which holds every acknowledged write; a standby may
    # still be replaying after a failover and refuse connections.
    no = patroni.primario(nos) if topologia.ha(nos) else topologia.coordenador(nos)
    if no is None:
        log("the audit could not run: no primary answers")
        sys.exit(2)
    consulta = "select cliente, violacao from api.auditoria() order by cliente, violacao"
    r = subprocess.run(
        [f"{pg_bin()}/psql", "-X", "-q", "-A", "-t", "-F", " | ", "-v", "ON_ERROR_STOP=1", "-h", no.pgrun]
        + ["-p", str(no.porta), "-U", "postgres", "-d", "crebito", "-c", consulta],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        log(f"the audit could not run: {r.stderr.strip()}")
        sys.exit(2)
    sys.stdout.write(r.stdout)
    sys.exit(1 if r.stdout.strip() else 0)


def travar(var):
    """One launcher per data directory: a second one would find the port and
    the cluster taken and report the first one's answers as its own."""
    try:
        return metricas.travar(var)
    except BlockingIOError:
        sys.exit(f"crebito: another launcher is already running with {var}; stop it first (Ctrl-C)")


def escolher_topologia(var):
    """The nodes for this start: those recorded in `var`, which must be the
    ones asked for (CREBITO_CITUS_WORKERS, default 0), or new ones."""
    pedidos = int(os.environ.get("CREBITO_CITUS_WORKERS") or 0)
    ha = os.environ.get("CREBITO_HA") == "1"
    nos = topologia.ler(var)
    if nos is None and os.path.exists(os.path.join(var, "pgdata", "PG_VERSION")):
        nos = topologia.nos(var, 0, [])
    if nos is None:
        base = os.environ.get("CREBITO_CITUS_PORT")
        return topologia.definir(var, pedidos, int(base) if base else None, ha=ha)
    existentes = len(topologia.workers(nos))
    if topologia.ha(nos) != ha or existentes != pedidos:
        if topologia.ha(nos):
            tem, como = "an HA stack", "CREBITO_HA=1"
        elif existentes:
            tem, como = f"a Citus stack with {existentes} workers", f"CREBITO_CITUS_WORKERS={existentes}"
        else:
            tem, como = "a single-node stack", "neither CREBITO_HA nor CREBITO_CITUS_WORKERS"
        sys.exit(f"crebito: {var} holds {tem}; start it with {como} or remove it with --reset")
    return nos


def apagar(var):
    """--reset: every node's data, the topology and the passwords."""
    log(f"reset: removing the databases in {var}")
    for nome in ["pgdata", "segredos", "etcd", *(n.nome for n in topologia.ler(var) or [])]:
        shutil.rmtree(os.path.join(var, nome), ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(var, "topologia.json"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    acao = ap.add_mutually_exclusive_group()
    acao.add_argument("--reset", action="store_true", help="start with only the five initial clients")
    acao.add_argument("--auditoria", action="store_true", help="check the running stack's books and exit")
    args = ap.parse_args()
    var = os.environ.get("CREBITO_VAR") or var_padrao()
    if args.auditoria:
        auditar(var)
    _trava = travar(var)  # held until the process exits
    if args.reset:
        apagar(var)
    stack = Stack(var, escolher_topologia(var))
    # Both set explicitly: a shell that starts us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        stack.rodar()
    except KeyboardInterrupt:
        pass
    finally:
        stack.parar()


if __name__ == "__main__":
    main()
