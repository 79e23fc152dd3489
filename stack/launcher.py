"""Starts and supervises crebito's native stack in the foreground.

PostgreSQL (a private cluster under the data directory), two API instances
(server.py) and HAProxy on :9999; with CREBITO_CITUS_WORKERS=N, a Citus
coordinator and N workers instead of the one cluster (stack/topologia.py), the
API instances connected straight to the workers. Whatever dies is started
again; Ctrl-C or SIGTERM stops everything cleanly. Started as root, nothing it
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
"""

import argparse
import contextlib
import fcntl
import glob
import http.client
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time

import segredos
import topologia

RAIZ = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CITUS_AUSENTE = (
    "crebito: Citus is not installed for PostgreSQL {versao}. With the internet, install Citus's own packages"
    " (curl https://install.citusdata.com/community/deb.sh | sudo bash;"
    " apt-get install postgresql-{versao}-citus-13.2);"
    " otherwise, as root: CREBITO_CITUS_TARBALL=/path/citus-13.2.2-pg{versao}-amd64.tar.gz bash stack/install.sh"
)
PG_PORTA = str(topologia.PORTA_SOCKET)  # single-node: only names the unix socket
# The OS users a root launcher runs the API instances and HAProxy as; stack/install.sh creates the first.
USUARIO_API = "crebito-api"
USUARIO_HAPROXY = "haproxy"


def log(msg):
    print(f"crebito: {msg}", file=sys.stderr, flush=True)


def pg_bin():
    escolhido = os.environ.get("CREBITO_PG_BIN")
    if escolhido:
        return escolhido
    versoes = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if versoes:
        return versoes[-1]
    postgres = shutil.which("postgres")
    if postgres:
        return os.path.dirname(os.path.realpath(postgres))
    sys.exit("crebito: PostgreSQL not found; install it (apt-get install postgresql) or set CREBITO_PG_BIN")


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


class Stack:
    def __init__(self, var, nos):
        self.var = os.path.abspath(var)
        self.nos = nos
        self.citus = len(nos) > 1
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
        for usuario in (self.usuario, self.usuario_api, self.usuario_haproxy):
            if usuario is not None:
                try:
                    pwd.getpwnam(usuario)
                except KeyError:
                    sys.exit(f"crebito: OS user {usuario} is missing; run `bash stack/install.sh` as root to create it")
        # Who started the stack: besides each component's own user, the only
        # OS user the database lets in (the tests, make auditoria, bench/).
        self.dono = pwd.getpwuid(os.geteuid()).pw_name
        self.processos = {}  # nome -> (Popen, started_at)
        self.parando = False

    # -- PostgreSQL -------------------------------------------------------

    def _como_postgres(self):
        if self.usuario is None:
            return {}
        return {"user": self.usuario, "group": pwd.getpwnam(self.usuario).pw_gid, "extra_groups": []}

    def _dono(self, caminho, usuario, grupo=None, modo=0o755):
        """Creates `caminho` owned by `usuario` (and `grupo`'s group) with `modo`;
        when not root, the caller keeps it and nobody else gets in."""
        os.makedirs(caminho, exist_ok=True)
        if usuario is None:
            os.chmod(caminho, modo & 0o700)
            return
        os.chown(caminho, pwd.getpwnam(usuario).pw_uid, pwd.getpwnam(grupo or usuario).pw_gid)
        os.chmod(caminho, modo)

    def preparar_cluster(self, no):
        # Other local users must reach neither the database's socket nor the
        # API's: only the API's user may enter pgrun, only HAProxy's sock.
        os.makedirs(self.var, exist_ok=True)
        if self.usuario is not None:
            self._dono(self.var, self.usuario)
            self._dono(os.path.dirname(no.pgdata), self.usuario)
        self._dono(no.pgrun, self.usuario, self.usuario_api, 0o750)
        self._dono(self.sock, self.usuario_api, self.usuario_haproxy, 0o750)
        if os.path.exists(os.path.join(no.pgdata, "PG_VERSION")):
            return False
        log(f"creating the PostgreSQL cluster in {no.pgdata}")
        subprocess.run(
            [
                f"{self.bin}/initdb",
                "-D",
                no.pgdata,
                "-U",
                "postgres",
                # Replaced by configurar() before the first start; never trust.
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-instructions",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            cwd="/",
            **self._como_postgres(),
        )
        with open(os.path.join(no.pgdata, "postgresql.conf"), "a") as conf:
            conf.write("\ninclude 'crebito.conf'\n")
        return True

    def configurar(self, no):
        """Copies the project's settings into the cluster on every start, so an
        edit of stack/postgresql.conf applies on restart and the server never
        needs to read the project directory. The topology adds only where the
        node listens and, on a Citus node, the extension."""
        with open(os.path.join(RAIZ, "stack", "postgresql.conf")) as f:
            texto = f.read()
        texto += f"unix_socket_directories = '{no.pgrun}'\n"
        if no.tcp:
            texto += f"listen_addresses = '127.0.0.1'\nport = {no.porta}\nshared_preload_libraries = 'citus'\n"
        extra = os.environ.get("CREBITO_PG_CONF")
        if extra:
            with open(extra) as f:
                texto += f.read()
        self._escrever_no_cluster(no, "crebito.conf", texto)
        hba = "# Written by stack/launcher.py: the unix socket by OS user"
        if no.tcp:
            # Citus's nodes talk over TCP: a password, never trust.
            hba += "; 127.0.0.1 with a password.\nhost all all 127.0.0.1/32 scram-sha-256\n"
        else:
            hba += " only.\n"
        self._escrever_no_cluster(no, "pg_hba.conf", hba + "local all all peer map=crebito\n")
        self._escrever_no_cluster(no, "pg_ident.conf", self.mapa_de_usuarios())

    def mapa_de_usuarios(self):
        """pg_ident.conf: which OS user may connect as which role. The API's
        user only as crebito_api; whoever started the stack as anything."""
        pares = [("postgres", "postgres"), (self.dono, "postgres"), (self.dono, "crebito_api")]
        if self.usuario_api is not None:
            pares.append((self.usuario_api, "crebito_api"))
        return "".join(f"crebito {so} {papel}\n" for so, papel in dict.fromkeys(pares))

    def _escrever_no_cluster(self, no, nome, texto):
        destino = os.path.join(no.pgdata, nome)
        with open(destino, "w") as f:
            f.write(texto)
        if self.usuario is not None:
            info = pwd.getpwnam(self.usuario)
            os.chown(destino, info.pw_uid, info.pw_gid)

    def psql(self, no, *args, banco="crebito", entrada=None):
        cmd = [f"{self.bin}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", no.pgrun, "-p", str(no.porta)]
        subprocess.run([*cmd, "-U", "postgres", "-d", banco, *args], check=True, cwd=RAIZ, input=entrada, text=True)

    def montar_cluster(self):
        """Citus: the extension on every node, passwords for the roles that
        connect between nodes, the workers added to the coordinator, all
        before the schema is loaded, so the shards land on the workers."""
        coordenador = topologia.coordenador(self.nos)
        senhas = segredos.ler(self.var)
        for no in self.nos:
            self.psql(no, "-c", "create database crebito", banco="postgres")
            self.psql(no, "-c", "create extension citus")
            # On stdin, so the password shows in no process list.
            self.psql(no, entrada=f"alter role postgres password '{senhas['postgres']}';")
        self.psql(coordenador, "-c", f"select citus_set_coordinator_host('127.0.0.1', {coordenador.porta})")
        for no in topologia.workers(self.nos):
            self.psql(coordenador, "-c", f"select citus_add_node('127.0.0.1', {no.porta})")
        # Created on the coordinator, the roles and their passwords reach every worker.
        self.psql(
            coordenador,
            entrada=f"create role crebito nologin password '{senhas['crebito']}';\n"
            f"create role crebito_api login password '{senhas['crebito_api']}';\n",
        )

    def carregar_schema(self):
        log("loading db/schema.sql")
        no = topologia.coordenador(self.nos)
        if self.citus:
            self.montar_cluster()
            self.psql(no, "-v", "citus=1", "-f", "db/schema.sql")
        else:
            self.psql(no, "-c", "create database crebito", banco="postgres")
            self.psql(no, "-f", "db/schema.sql")

    def esperar_postgres(self, no, limite=30):
        fim = time.monotonic() + limite
        while time.monotonic() < fim:
            pronto = subprocess.run(
                [f"{self.bin}/pg_isready", "-q", "-h", no.pgrun, "-p", str(no.porta), "-U", "postgres"]
                + ["-d", "postgres"],
                stdout=subprocess.DEVNULL,
            )
            if pronto.returncode == 0:
                return
            if self.processos[no.nome][0].poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"PostgreSQL ({no.nome}) did not start")

    def conninfo_api(self, nome):
        """api01 -> worker 1, api02 -> worker 2 (the one worker when there is
        one), then the other workers: any worker takes any client's call and
        hands it to the client's node, so while one worker is down the
        instance reconnects to another and only that worker's clients fail.
        Single-node: the cluster's socket."""
        if not self.citus:
            no = self.nos[0]
            return f"host={no.pgrun} port={no.porta} dbname=crebito user=crebito_api"
        ws = topologia.workers(self.nos)
        i = (int(nome[-1]) - 1) % len(ws)
        portas = ",".join(str(no.porta) for no in ws[i:] + ws[:i])
        hosts = ",".join("127.0.0.1" for _ in ws)
        return f"host={hosts} port={portas} dbname=crebito user=crebito_api passfile={segredos.arquivo_api(self.var)}"

    # -- processes ----------------------------------------------------------

    def _comando(self, nome):
        no = next((n for n in self.nos if n.nome == nome), None)
        if no is not None:
            env = None
            if self.citus:
                # Citus's connections to the other nodes find their passwords
                # here, and libpq its client files in the server user's home.
                env = dict(os.environ, PGPASSFILE=segredos.arquivo_nos(self.var))
                if self.usuario is not None:
                    env["HOME"] = pwd.getpwnam(self.usuario).pw_dir
            return [f"{self.bin}/postgres", "-D", no.pgdata], self._como_postgres(), env
        if nome in ("api01", "api02"):
            env = dict(
                os.environ,
                CREBITO_LISTEN=f"unix:{self.sock}/{nome}-{{worker}}.sock",
                CREBITO_WORKERS=self.workers,
                DATABASE_URL=f"{self.conninfo_api(nome)} application_name=crebito connect_timeout=2",
            )
            return [sys.executable, os.path.join(RAIZ, "server.py")], {}, self._como(env, self.usuario_api)
        # One server per worker in HAProxy, so a request only goes to a free one.
        env = dict(os.environ, CREBITO_BIND=f"*:{self.porta}")
        env.update({f"CREBITO_{nome.upper()}": caminho for nome, caminho in self._sockets()})
        return ["haproxy", "-db", "-f", os.path.join(RAIZ, "haproxy.cfg")], {}, self._como(env, self.usuario_haproxy)

    @staticmethod
    def _como(env, usuario):
        """The API and HAProxy start as the launcher's user, so they can read
        the project wherever it is, and switch to CREBITO_USUARIO themselves
        once their socket is bound, before they serve anything."""
        env.pop("CREBITO_USUARIO", None)
        if usuario is not None:
            env["CREBITO_USUARIO"] = usuario
        return env

    def iniciar(self, nome):
        cmd, extra, env = self._comando(nome)
        # Own session: Ctrl-C reaches only the launcher, which stops the rest in order.
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, cwd="/", **extra)
        self.processos[nome] = (proc, time.monotonic())
        with open(os.path.join(self.var, f"{nome}.pid"), "w") as f:
            f.write(f"{proc.pid}\n")

    def supervisionar(self):
        while not self.parando:
            time.sleep(0.1)
            for nome, (proc, inicio) in list(self.processos.items()):
                if self.parando or proc.poll() is None:
                    continue
                log(f"{nome} exited with {proc.returncode}; restarting")
                if time.monotonic() - inicio < 1:
                    time.sleep(0.5)  # a process that dies at once must not spin
                self.iniciar(nome)

    def parar(self):
        self.parando = True
        log("stopping")
        # Front to back: no new requests, then the workers, then the database.
        ordem = [("haproxy", signal.SIGTERM), ("api01", signal.SIGTERM), ("api02", signal.SIGTERM)]
        # Workers before the coordinator, which would otherwise keep reconnecting to them.
        ordem += [(no.nome, signal.SIGINT) for no in reversed(self.nos)]
        for nome, sinal in ordem:
            if nome not in self.processos:
                continue
            proc = self.processos[nome][0]
            if proc.poll() is None:
                proc.send_signal(sinal)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

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

    def verificar_citus(self):
        # Debian's layout (.../15/bin beside .../15/lib) unless pg_config says otherwise.
        pkglib = os.path.join(os.path.dirname(self.bin), "lib")
        if os.path.exists(f"{self.bin}/pg_config"):
            saida = subprocess.run([f"{self.bin}/pg_config", "--pkglibdir"], capture_output=True, text=True)
            pkglib = saida.stdout.strip() or pkglib
        if not os.path.exists(os.path.join(pkglib, "citus.so")):
            sys.exit(CITUS_AUSENTE.format(versao=os.path.basename(os.path.dirname(self.bin))))

    def rodar(self):
        t0 = time.monotonic()
        if self.citus:
            self.verificar_citus()
        novo = False
        for no in self.nos:
            novo = self.preparar_cluster(no) or novo
            self.configurar(no)
        if self.citus and not os.path.exists(segredos.arquivo_nos(self.var)):
            segredos.gerar(self.var, self.usuario, self.usuario_api)
        for no in self.nos:
            self.iniciar(no.nome)
        for no in self.nos:
            self.esperar_postgres(no)
        if novo:
            self.carregar_schema()
        for nome in ("api01", "api02"):
            self.iniciar(nome)
        # HAProxy last, once both instances accept connections (a stale socket
        # file from an earlier run refuses them), so it never starts with an
        # instance marked down.
        fim = time.monotonic() + 5
        while not all(self._aceita(caminho) for _, caminho in self._sockets()) and time.monotonic() < fim:
            time.sleep(0.01)
        self.iniciar("haproxy")
        if esperar_200(self.porta):
            log(f"ready on http://127.0.0.1:{self.porta} in {time.monotonic() - t0:.2f}s (Ctrl-C stops)")
        else:
            log("the API did not answer within 30s; still trying")
        self.supervisionar()


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
    no = topologia.coordenador(nos)
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
    os.makedirs(var, exist_ok=True)
    trava = open(os.path.join(var, "launcher.lock"), "w")
    try:
        fcntl.flock(trava, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"crebito: another launcher is already running with {var}; stop it first (Ctrl-C)")
    return trava


def escolher_topologia(var):
    """The nodes for this start: those recorded in `var`, which must be the
    ones asked for (CREBITO_CITUS_WORKERS, default 0), or new ones."""
    pedidos = int(os.environ.get("CREBITO_CITUS_WORKERS") or 0)
    nos = topologia.ler(var)
    if nos is None and os.path.exists(os.path.join(var, "pgdata", "PG_VERSION")):
        nos = topologia.nos(var, 0, [])
    if nos is None:
        base = os.environ.get("CREBITO_CITUS_PORT")
        return topologia.definir(var, pedidos, int(base) if base else None)
    existentes = len(topologia.workers(nos))
    if existentes != pedidos:
        tem = f"a Citus stack with {existentes} workers" if existentes else "a single-node stack"
        sys.exit(
            f"crebito: {var} holds {tem}; start it with CREBITO_CITUS_WORKERS={existentes} or remove it with --reset"
        )
    return nos


def apagar(var):
    """--reset: every node's data, the topology and the passwords."""
    log(f"reset: removing the databases in {var}")
    for nome in ["pgdata", "segredos", *(n.nome for n in topologia.ler(var) or [])]:
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
